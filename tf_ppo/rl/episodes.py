"""Multi-turn episodes: the model writes a turn, the environment answers, in lockstep over a batch.

Every episode of a batch advances one turn at a time. A turn samples (`sampling.sample_turn`) until each
row's stop token (its end token, or its chat format's end of turn) or `max_tokens_per_turn`; the host then
steps every open episode's environment at once (`environment.step_all`), writes each observation's tokens
after its turn, and the next turn feeds only the tokens from the first changed position on (the cache of
the episode so far is kept, not encoded again).

An episode ends when its environment says done (finished), or is cut (truncated) by a budget: a turn that
reaches `max_tokens_per_turn` without its stop token, `max_turns` turns, or the `response_length` slots of
its row. The rollout buffer keeps the single-turn layout (`tf_ppo.generation.sampling`): the response
slots hold the model's turns and the environment's replies in order; `model_mask` marks the model's.
"""

import dataclasses

import numpy as np

from tf_ppo.generation.sampling import Turn
from tf_ppo.rl.environment import reset_all, step_all


@dataclasses.dataclass
class Episodes:
    """A batch of finished or cut episodes, in the rollout buffer's layout; R = response_length."""

    sequence_ids: np.ndarray  # int32 [batch, P + R]: prompt, then the model's turns and the environment's replies
    model_mask: np.ndarray  # bool [batch, R]: the model's tokens (each turn's stop token included)
    environment_mask: np.ndarray  # bool [batch, R]: the environment's tokens
    step_rewards: np.ndarray  # float32 [batch, R]: each step's reward, on the last model token of its turn
    sampler_logprobs: np.ndarray  # float32 [batch, R]: the sampler's log-prob of each model token, else 0
    sampler_entropies: np.ndarray  # float32 [batch, R]: the sampler's entropy at each model token, else 0
    finished: np.ndarray  # bool [batch]: the environment ended the episode within the budgets
    turns: np.ndarray  # int32 [batch]: model turns
    tool_calls: np.ndarray  # int32 [batch]: (tool environments; 0 for others)
    tool_errors: np.ndarray  # int32 [batch]
    transcripts: list  # per row: [(speaker, text), ...], speaker "model" or "environment"


def run_episodes(sample_turn, environments, prompt_ids, prompt_lengths, prompt_texts, response_length,
                 tokenize, detokenize, stop_token_ids, max_turns, max_tokens_per_turn=None):
    """Run one batch of episodes to their end.

    Args:
        sample_turn: `(buffer, cache, Turn, index) -> sampling.Sampled`, the compiled sampler
            (`RolloutEngine.turn_sampler`); `cache` and `index` None on the first turn.
        environments: one environment per row, fresh (`reset` is called here).
        prompt_ids: int32 `[batch, P]` right-padded; prompt_lengths: int32 `[batch]`.
        prompt_texts: the prompts as the policy sees them, for `reset`.
        tokenize: text -> list of token ids (an observation); detokenize: token ids -> text (a model turn).
        stop_token_ids: the tokens that end a model turn.
        max_turns: model turns per episode (>= 1); max_tokens_per_turn: None = the whole response.

    Example:
        episodes = run_episodes(engine.sample_turn, [make() for _ in rows], prompt_ids, prompt_lengths,
                                texts, 64, engine.tokenize_observation, engine.detokenize, (50256,), 3)
    """
    batch = len(prompt_ids)
    record = _Record(prompt_ids, prompt_lengths, response_length)
    open_rows = np.ones(batch, bool)
    for row, observation in enumerate(reset_all(environments, prompt_texts)):
        open_rows[row] = record.answer(row, int(prompt_lengths[row]), observation, tokenize)
    cache, index = None, None
    per_turn = max_tokens_per_turn or response_length
    for turn in range(max_turns):
        limit = np.where(open_rows, np.minimum(record.forced_until + per_turn, record.row_end), 0).astype(np.int32)
        sampled = sample_turn(record.buffer, cache, Turn(record.forced_until, limit, stop_token_ids), index)
        cache = sampled.cache
        record.buffer, turn_end = np.array(sampled.buffer), np.asarray(sampled.turn_end)
        record.logprobs += np.asarray(sampled.logprobs)  # 0 but where this turn sampled
        record.entropies += np.asarray(sampled.entropies)
        texts = [record.model_turn(row, turn_end[row], stop_token_ids, detokenize) if open_rows[row] else None
                 for row in range(batch)]
        open_rows &= np.array([text is not None for text in texts])  # a turn cut by a budget: truncated
        for row, step in enumerate(step_all(environments, texts)):
            if step is None:
                continue
            record.step_rewards[row, turn_end[row] - 1 - prompt_lengths[row]] += step.reward
            record.finished[row] = step.done
            open_rows[row] = (not step.done and turn + 1 < max_turns
                              and record.answer(row, turn_end[row], step.observation, tokenize))
        if not open_rows.any():
            break
        index = np.int32(turn_end[open_rows].min())  # the first position a continuing row's cache lacks
    return record.episodes(environments)


class _Record:
    """The buffer and masks of a batch of episodes as they are written.

    Row i's response slots are `prompt_lengths[i] ... prompt_lengths[i] + R - 1` of its buffer row.
    """

    def __init__(self, prompt_ids, prompt_lengths, response_length):
        batch, prompt_width = prompt_ids.shape
        self.buffer = np.zeros([batch, prompt_width + response_length], np.int32)
        self.buffer[:, :prompt_width] = prompt_ids
        self.prompt_lengths = np.asarray(prompt_lengths, np.int32)
        self.row_end = self.prompt_lengths + response_length  # [batch]: past each row's last response slot
        self.forced_until = self.prompt_lengths.copy()  # [batch]: where the model writes next
        self.speaker = np.zeros_like(self.buffer, np.int8)  # 1: the model's token, 2: the environment's
        self.step_rewards = np.zeros([batch, response_length], np.float32)
        self.logprobs = np.zeros(self.buffer.shape, np.float32)
        self.entropies = np.zeros(self.buffer.shape, np.float32)
        self.finished = np.zeros(batch, bool)
        self.turns = np.zeros(batch, np.int32)
        self.transcripts = [[] for _ in range(batch)]

    def model_turn(self, row, turn_end, stop_token_ids, detokenize):
        """Record row's turn; its text without the stop token, or None when no stop token ended it."""
        start = self.forced_until[row]
        tokens = self.buffer[row, start:turn_end]
        self.speaker[row, start:turn_end] = 1
        self.turns[row] += 1
        stopped = len(tokens) > 0 and tokens[-1] in stop_token_ids
        text = detokenize(tokens[:-1] if stopped else tokens)
        self.transcripts[row].append(("model", text))
        return text if stopped else None

    def answer(self, row, position, observation, tokenize):
        """Write an observation at `position`; False when it leaves no slot for the model (truncated)."""
        token_ids = tokenize(observation) if observation else []
        end = position + len(token_ids)
        if end >= self.row_end[row]:
            return False
        self.buffer[row, position:end] = token_ids
        self.speaker[row, position:end] = 2
        self.forced_until[row] = end
        if observation:
            self.transcripts[row].append(("environment", observation))
        return True

    def episodes(self, environments):
        counts = {name: np.array([getattr(environment, name, 0) for environment in environments], np.int32)
                  for name in ("tool_calls", "tool_errors")}
        slots = self.prompt_lengths[:, None] + np.arange(self.step_rewards.shape[1])[None, :]  # [batch, R]
        speaker = np.take_along_axis(self.speaker, slots, axis=1)
        return Episodes(self.buffer, speaker == 1, speaker == 2, self.step_rewards,
                        np.take_along_axis(self.logprobs, slots, axis=1),
                        np.take_along_axis(self.entropies, slots, axis=1), self.finished, self.turns,
                        counts["tool_calls"], counts["tool_errors"],
                        self.transcripts)


def concatenate_episodes(parts):
    """One `Episodes` of several batches' (row-major, in order).

    Example:
        episodes = concatenate_episodes([first_chunk, second_chunk])
    """
    if len(parts) == 1:
        return parts[0]
    fields = {field.name: [getattr(part, field.name) for part in parts] for field in dataclasses.fields(Episodes)}
    return Episodes(**{name: sum(values, []) if name == "transcripts" else np.concatenate(values)
                       for name, values in fields.items()})


def episode_metrics(episodes):
    """Per-update means of a batch of episodes (for the metrics CSV and TensorBoard); {} when single-turn.

    Example:
        episode_metrics(rollout.episodes)["episodes/turns"]
    """
    if episodes is None:
        return {}
    return {"episodes/turns": float(np.mean(episodes.turns)),
            "episodes/tool_calls": float(np.mean(episodes.tool_calls)),
            "episodes/tool_errors": float(np.mean(episodes.tool_errors)),
            "episodes/finished": float(np.mean(episodes.finished))}
