"""The rollout engine: prompts in, a scored and rewarded `Experience` out.

    sample   responses for a batch of rows, KV-cached and compiled, `rollout_batch_size` rows at a time
             (with an environment, multi-turn episodes: `tf_ppo.rl.episodes`);
    score    the policy's (and the reference's) log-probs and the critic's values, one forward pass each;
    reward   the reward function(s) on the decoded texts (and the gold judge, if one is given);
    shape    the missing-EOS and overlong penalties, and the loss mask of `mask_truncated_completions`.

The engine holds the models by role (a reference and a critic only when the
algorithm uses them) and knows nothing of advantages or losses.
"""

import dataclasses
import functools
import time

import numpy as np
import tensorflow as tf

from tf_ppo.chat import chat_format, no_template_error, stop_token_ids
from tf_ppo.data import encode_prompts, is_conversation, prompt_token_counts, start_token_ids
from tf_ppo.generation.responses import (detokenize, detokenize_ids, is_stop_token, response_tokens,
                                        response_view)
from tf_ppo.generation.sampling import Sampled, Turn, sample_responses, sample_turn
from tf_ppo.models.forward import response_logits
from tf_ppo.rl.episodes import concatenate_episodes, run_episodes
from tf_ppo.rl.experience import Experience
from tf_ppo.rl.functional import masked
from tf_ppo.rl.functional.estimators import overlong_penalty
from tf_ppo.rl.functional.importance import sampler_divergence
from tf_ppo.rl.rewards import compute_scores, weighted_rewards
from tf_ppo.training.compiled import compiled
from tf_ppo.training.distribute import compiled_per_replica, gather, replica_row_offset, split_batch


@dataclasses.dataclass
class Rollout:
    """One sampled, scored and rewarded batch: the tensors the algorithm trains on, and what is logged."""

    experience: Experience  # advantages not yet filled in
    entropy: float  # mean entropy of the policy over response tokens, nats
    texts: list  # decoded responses: the replies alone (no stop token)
    prompt_texts: list  # the prompts as the policy saw them (chat-rendered, for conversations)
    gold_scores: np.ndarray | None  # the independent judge's scores, if one is given
    reward_scores: dict  # name -> [batch] scores of each reward function (several reward functions only)
    reward_failure: str | None  # why the reward could not be computed; the update is then skipped
    seconds: dict  # generate / score / reward wall time
    episodes: object = None  # multi-turn runs: the `tf_ppo.rl.episodes.Episodes` (turns, tool calls, ...)
    sampler_logprobs: tf.Tensor = None  # [batch, R] the sampler's log-probs of the response tokens
    sampler_divergence: dict = dataclasses.field(default_factory=dict)  # `old_logprobs="recompute"`: sampler_kl, ...


def response_logprobs(model, sequence_ids, responses, temperature, packed=None):
    """Log-probs `[batch, R]` and logits `[batch, R, V]` of the response tokens, logits / temperature.

    The one path that old (rollout) and new (training) log-probs both take (`packed`: `response_logits`).

    Example:
        logprobs, logits = response_logprobs(policy, experience.sequence_ids, experience.responses, 1.0)
    """
    logits = response_logits(model, sequence_ids, responses.positions, packed) / temperature
    return masked.logprobs_from_logits(logits, responses.token_ids), logits  # [batch, R], [batch, R, V]


class RolloutEngine:
    """Samples, scores, rewards and shapes rollouts of one policy; compiled once per phase.

    Args:
        config: the run's `PPOConfig`.
        policy, tokenizer: the model that samples and its tokenizer.
        strategy: the `tf.distribute.Strategy` the models live under.
        reward_fns, reward_weights: the reward functions and their weights.
        reference: the frozen reference (its log-probs feed the KL), or None.
        value_model: the critic (its values feed GAE), or None.
        gold_reward_fn: an independent judge, scored beside the reward, or None.
        environment: a zero-argument function making one episode's environment (multi-turn), or None.
        packer: a `tf_ppo.models.packing.Packer`: scoring runs on packed rows (no padding, each prompt once).

    Example:
        engine = RolloutEngine(config, policy, tokenizer, strategy, [sentiment_reward], (1.0,))
        rollout = engine.rollout(prompt_ids, prompt_lengths, tf.constant([0, 1]))
    """

    def __init__(self, config, policy, tokenizer, strategy, reward_fns, reward_weights, reference=None,
                 value_model=None, gold_reward_fn=None, environment=None, packer=None):
        self.config, self.policy, self.tokenizer, self.strategy = config, policy, tokenizer, strategy
        self.packer = packer
        self.reward_fns, self.reward_weights, self.gold_reward_fn = reward_fns, reward_weights, gold_reward_fn
        self.reference, self.value_model, self.environment = reference, value_model, environment
        self.family = type(policy).__name__  # the keras-hub CausalLM class: its chat template
        self.chat = chat_format(tokenizer, config.model.chat_template, self.family)  # None: no template known
        self.stop_token_ids = stop_token_ids(tokenizer, self.chat)
        self.conversations = {}  # prompt token ids -> the conversation they render, for TRL-style rewards
        # One compiled function per phase, each with fixed shapes: traced once (once per device on several
        # replicas). Each runs its replica part with `strategy.run` and gathers the global batch back (identity
        # on one device). Sampling and scoring hold no cross-replica reduction: XLA on every replica.
        generate_replica = compiled_per_replica(strategy, self._generate_fn, config.generation_jit)
        score_replica = compiled_per_replica(strategy, self._score_fn, config.train_jit)
        greedy_replica = compiled_per_replica(strategy, functools.partial(self._generate_fn, greedy=True),
                                              config.generation_jit)
        self._generate = compiled(functools.partial(self._on_replicas, generate_replica))
        self._generate_greedy = compiled(functools.partial(self._on_replicas, greedy_replica))
        self._score = compiled(functools.partial(self._on_replicas, score_replica))
        self._turns = {greedy: compiled(functools.partial(
            self._on_replicas_keeping_cache, compiled_per_replica(
                strategy, functools.partial(self._turn_fn, greedy=greedy), config.generation_jit)))
            for greedy in (False, True)}

    # ----------------------------------------------------------------- compiled phases

    def _on_replicas(self, replica_fn, *args):
        return gather(self.strategy, self.strategy.run(replica_fn, args=args))

    def _on_replicas_keeping_cache(self, replica_fn, batch, cache, *args):
        outputs, cache = self.strategy.run(replica_fn, args=(batch, cache, *args))
        return gather(self.strategy, outputs), cache  # each replica's cache stays where it is

    def _turn_fn(self, batch, cache, index, seed, chunk_start, greedy=False):
        """One replica: one turn of its share of the episodes (`sampling.sample_turn`)."""
        c = self.config
        buffer = batch["buffer"]
        row_offset = chunk_start + replica_row_offset(tf.shape(buffer)[0])
        top_k, top_p = (1, 1.0) if greedy else (c.top_k, c.top_p)
        turn = Turn(batch["forced_until"], batch["limit"], self.stop_token_ids)
        sampled = sample_turn(self.policy, buffer, cache, turn, buffer.shape[1] - c.response_length,
                              c.response_length, seed, c.temperature, top_k, top_p, row_offset, index)
        return {"buffer": sampled.buffer, "turn_end": sampled.turn_end, "logprobs": sampled.logprobs,
                "entropies": sampled.entropies}, sampled.cache

    def _generate_fn(self, batch, seed, chunk_start, greedy=False):
        """One replica: sample responses for its share of the prompts (greedy: the most likely token each step).

        Returns the buffer `sequence_ids` `[batch, P + R]`, and the sampler's `logprobs` and `entropies`
        `[batch, R]` of the response slots. `chunk_start` is the batch row of the chunk's first row: every
        row draws its own noise, whatever chunk and replica it is sampled in.
        """
        c = self.config
        row_offset = chunk_start + replica_row_offset(tf.shape(batch["prompt_ids"])[0])
        top_k, top_p = (1, 1.0) if greedy else (c.top_k, c.top_p)
        sampled = sample_responses(self.policy, batch["prompt_ids"], batch["prompt_lengths"], seed,
                                   c.response_length, c.temperature, top_k, top_p, row_offset,
                                   self.stop_token_ids if c.stop_at_eos else ())
        positions = response_view(sampled.buffer, batch["prompt_lengths"], c.response_length).positions
        return {"sequence_ids": sampled.buffer, "logprobs": tf.gather(sampled.logprobs, positions, batch_dims=1),
                "entropies": tf.gather(sampled.entropies, positions, batch_dims=1)}

    def _score_fn(self, batch):
        """One replica: log-probs (policy, reference), values and entropies of its share of the rollouts.

        Returns a dict; `ref_logprobs` and `values` only when the run has a reference and a critic. With
        `old_logprobs="sampler"` the policy's forward pass is skipped: its log-probs and entropies are the
        sampler's (`batch["sampler_logprobs"]`, `batch["sampler_entropies"]`).
        """
        c = self.config
        responses, packed = self._responses(batch), batch.get("packed")
        if c.old_logprobs == "sampler":
            scored = {"responses": responses, "logprobs": batch["sampler_logprobs"],
                      "entropy": batch["sampler_entropies"]}
        else:
            logprobs, logits = response_logprobs(self.policy, batch["sequence_ids"], responses, c.temperature, packed)
            scored = {"responses": responses, "logprobs": logprobs, "entropy": masked.entropy_from_logits(logits)}
        if self.reference is not None:
            scored["ref_logprobs"], _ = response_logprobs(self.reference, batch["sequence_ids"], responses,
                                                          c.temperature, packed)
        if self.value_model is not None:
            scored["values"] = response_logits(self.value_model, batch["sequence_ids"], responses.positions, packed)
        return scored

    def _responses(self, batch):
        """The response view of a batch of rows: up to each response's stop token, or a multi-turn episode's turns."""
        c = self.config
        responses = response_view(batch["sequence_ids"], batch["prompt_lengths"], c.response_length,
                                  self.stop_token_ids if c.stop_at_eos else None)
        if "model_mask" in batch:  # a multi-turn episode's: its turns, not the environment's replies
            responses = responses._replace(mask=batch["model_mask"])
        return responses

    def _with_packed(self, batch):
        """The batch, and its rows packed when the run packs them (the packing is NumPy: before the compiled pass)."""
        if self.packer is None:
            return batch
        packed = self.packer(batch["sequence_ids"], batch["prompt_lengths"], self._responses(batch).mask)
        return {**batch, "packed": packed}

    def _in_chunks(self, run_chunk, tensors):
        """`run_chunk(chunk, chunk_start)` on `rollout_batch_size` rows at a time; the outputs concatenated.

        A chunk is split over the replicas. One chunk (the default) is the whole batch, run as is.
        """
        rows = len(next(iter(tensors.values())))
        size = self.config.rollout_batch_size or rows
        outputs = [run_chunk(split_batch(self.strategy, {name: value[start: start + size]
                                                         for name, value in tensors.items()}),
                             tf.constant(start, tf.int32))
                   for start in range(0, rows, size)]
        if len(outputs) == 1:
            return outputs[0]
        return tf.nest.map_structure(lambda *chunks: tf.concat(chunks, axis=0), *outputs)

    # ----------------------------------------------------------------- public steps

    def encode(self, prompts, seed=None):
        """Token ids and lengths of prompt texts (cut to their first k tokens if the config asks) or conversations.

        Conversations are rendered with the chat template, and remembered for reward functions that take
        TRL's conversational form.

        Example:
            prompt_ids, prompt_lengths = engine.encode(["the movie was"])
            prompt_ids, prompt_lengths = engine.encode([[{"role": "user", "content": "2 + 2 ?"}]])
        """
        c = self.config
        conversations = is_conversation(prompts[0])
        if conversations and self.chat is None:
            raise no_template_error(self.family)
        counts = prompt_token_counts(len(prompts), c.prompt_tokens_min, c.prompt_tokens_max,
                                     c.seed if seed is None else seed)
        token_ids, lengths = encode_prompts(self.tokenizer, prompts, c.max_prompt_length, c.truncate_prompts, counts,
                                            self.chat)
        for row, messages in enumerate(prompts if conversations else ()):
            self.conversations[tuple(token_ids[row, :lengths[row]].tolist())] = messages
        return token_ids, lengths

    def sample(self, prompt_ids, prompt_lengths, seed, greedy=False):
        """Prompt + response token ids `[rows, P + R]`, sampled (or greedy) in `rollout_batch_size` chunks.

        Example:
            sequence_ids = engine.sample(prompt_ids[:32], prompt_lengths[:32], tf.constant([0, 1]))
        """
        return self._sampled(prompt_ids, prompt_lengths, seed, greedy)["sequence_ids"]

    def _sampled(self, prompt_ids, prompt_lengths, seed, greedy=False):
        """`_generate_fn`'s outputs for every row (the buffer, the sampler's log-probs and entropies)."""
        generate_fn = self._generate_greedy if greedy else self._generate
        return self._in_chunks(lambda chunk, chunk_start: generate_fn(chunk, seed, chunk_start),
                               {"prompt_ids": prompt_ids, "prompt_lengths": prompt_lengths})

    def run_episodes(self, prompt_ids, prompt_lengths, seed, greedy=False):
        """Multi-turn episodes of these rows with the run's environment, `rollout_batch_size` rows at a time.

        Example:
            episodes = engine.run_episodes(prompt_ids[:32], prompt_lengths[:32], tf.constant([0, 1]))
        """
        c = self.config
        prompt_ids, prompt_lengths = np.asarray(prompt_ids), np.asarray(prompt_lengths)
        size = c.rollout_batch_size or len(prompt_ids)
        prompt_texts = self.prompt_texts(prompt_ids, prompt_lengths)
        conversations = self.conversations_of(prompt_ids, prompt_lengths) is not None
        tokenize = self.chat.observation_ids if conversations else (
            lambda text: list(np.asarray(self.tokenizer(text))))
        parts = []
        for start in range(0, len(prompt_ids), size):
            rows = slice(start, start + size)
            environments = [self.environment() for _ in range(len(prompt_ids[rows]))]
            parts.append(run_episodes(self.turn_sampler(seed, start, greedy), environments, prompt_ids[rows],
                                      prompt_lengths[rows], prompt_texts[rows], c.response_length, tokenize,
                                      functools.partial(detokenize_ids, self.tokenizer), self.stop_token_ids,
                                      c.max_turns, c.max_tokens_per_turn))
        return concatenate_episodes(parts)

    def turn_sampler(self, seed, chunk_start=0, greedy=False):
        """The compiled turn sampler `(buffer, cache, Turn, index) -> sampling.Sampled` of `run_episodes`,
        for the batch rows from `chunk_start` on (each row draws its own noise).

        Example:
            one_turn = engine.turn_sampler(tf.constant([0, 1]))
            sampled = one_turn(buffer, None, Turn(forced_until, limit), None)
        """
        def one_turn(buffer, cache, turn, index):
            batch = split_batch(self.strategy, {"buffer": tf.constant(buffer),
                                                "forced_until": tf.constant(turn.forced_until),
                                                "limit": tf.constant(turn.limit)})
            outputs, cache = self._turns[greedy](batch, cache, None if index is None else tf.constant(index),
                                                 seed, tf.constant(chunk_start, tf.int32))
            return Sampled(outputs["buffer"], cache, outputs["turn_end"], outputs["logprobs"], outputs["entropies"])

        return one_turn

    def completions(self, prompt_ids, prompt_lengths, seed, greedy=False):
        """The decoded responses of these rows: the reply (single-turn) or the whole episode (with an environment).

        Example:
            texts = engine.completions(prompt_ids[:32], prompt_lengths[:32], tf.constant([0, 1]), greedy=True)
        """
        if self.environment is not None:
            episodes = self.run_episodes(prompt_ids, prompt_lengths, seed, greedy)
            return self.episode_texts(episodes, prompt_lengths)
        sequence_ids = self.sample(prompt_ids, prompt_lengths, seed, greedy)
        return self.decode(response_view(sequence_ids, prompt_lengths, self.config.response_length,
                                         self.stop_token_ids if self.config.stop_at_eos else None))

    def episode_texts(self, episodes, prompt_lengths):
        """Each episode's text after its prompt: the model's turns and the environment's replies, no stop tokens."""
        responses = response_view(tf.constant(episodes.sequence_ids), tf.constant(prompt_lengths),
                                  self.config.response_length)
        return self.decode(responses._replace(mask=tf.constant(episodes.model_mask | episodes.environment_mask)))

    def rollout(self, prompt_ids, prompt_lengths, seed):
        """Sample, score, reward and shape one batch of rows (already repeated per generation).

        Example:
            rollout = engine.rollout(prompt_ids[:32], prompt_lengths[:32], tf.constant([0, 1]))
            rollout.experience.logprobs.shape  # [32, response_length]
        """
        started = time.perf_counter()
        episodes = None
        if self.environment is None:
            sampled = self._sampled(prompt_ids, prompt_lengths, seed)
            rows = {"sequence_ids": sampled["sequence_ids"], "prompt_lengths": prompt_lengths,
                    "sampler_logprobs": sampled["logprobs"], "sampler_entropies": sampled["entropies"]}
        else:
            episodes = self.run_episodes(prompt_ids, prompt_lengths, seed)
            rows = {"sequence_ids": tf.constant(episodes.sequence_ids), "prompt_lengths": prompt_lengths,
                    "model_mask": tf.constant(episodes.model_mask),
                    "sampler_logprobs": tf.constant(episodes.sampler_logprobs),
                    "sampler_entropies": tf.constant(episodes.sampler_entropies)}
        sequence_ids = rows["sequence_ids"]
        generated = time.perf_counter()
        scored = self._in_chunks(lambda chunk, _: self._score(self._with_packed(chunk)), rows)
        responses = scored["responses"]
        entropy = float(masked.masked_mean(scored["entropy"], responses.mask))
        scoring_done = time.perf_counter()
        texts = self.decode(responses) if episodes is None else self.episode_texts(episodes, prompt_lengths)
        prompt_texts = self.prompt_texts(sequence_ids, prompt_lengths)
        conversations = self.conversations_of(sequence_ids, prompt_lengths)
        scores, reward_scores, failure = self._rewards(texts, prompt_texts, conversations)
        gold_scores = (compute_scores(self.gold_reward_fn, texts, prompt_texts, conversations)
                       if self.gold_reward_fn else None)
        step_rewards = None
        if episodes is not None:  # the episode's total: its environment's step rewards too
            scores = scores + episodes.step_rewards.sum(axis=1, dtype=np.float64)
            step_rewards = tf.constant(episodes.step_rewards)
        scores, loss_mask = shaped(self.config, scores, responses, self.stop_token_ids,
                                   None if episodes is None else episodes.finished)
        experience = Experience(sequence_ids, responses, scored["logprobs"], tf.constant(scores, tf.float32),
                                loss_mask, scored.get("ref_logprobs"), scored.get("values"),
                                step_rewards=step_rewards)
        divergence = ({name: float(value) for name, value in sampler_divergence(
            scored["logprobs"], rows["sampler_logprobs"], responses.mask).items()}
            if self.config.old_logprobs == "recompute" else {})
        return Rollout(experience, entropy, texts, prompt_texts, gold_scores, reward_scores, failure,
                       {"generate": generated - started, "score": scoring_done - generated,
                        "reward": time.perf_counter() - scoring_done}, episodes, rows["sampler_logprobs"],
                       divergence)

    def prompt_texts(self, sequence_ids, prompt_lengths):
        """Each row's prompt as the policy saw it, decoded (chat-rendered, for conversations); no start token."""
        start = len(start_token_ids(self.tokenizer))  # 0 when the tokenizer has no start token (Qwen, ...)
        prompts = tf.RaggedTensor.from_tensor(sequence_ids[:, start:], lengths=prompt_lengths - start)
        return detokenize(self.tokenizer, prompts)

    def conversations_of(self, sequence_ids, prompt_lengths):
        """The conversation each row's prompt renders, or None when the prompts are texts."""
        if not self.conversations:
            return None
        rows, lengths = np.asarray(sequence_ids), np.asarray(prompt_lengths)
        return [self.conversations[tuple(row[:length].tolist())] for row, length in zip(rows, lengths)]

    def _rewards(self, texts, prompt_texts, conversations):
        return weighted_rewards(self.reward_fns, self.reward_weights, texts, prompt_texts, conversations)

    def decode(self, responses):
        """Response texts, without the stop token and the padding after it."""
        return detokenize(self.tokenizer, response_tokens(responses, self.stop_token_ids))


def shaped(config, scores, responses, stop_token_ids, finished=None):
    """`(scores [batch] with the missing-EOS and overlong penalties, loss mask [batch, R])`.

    A multi-turn episode has ended when its environment said done (`finished`), else it was truncated.

    Example:
        scores, loss_mask = shaped(config, scores, experience.responses, (50256,))
    """
    c = config
    ended = finished if finished is not None else np.any(
        is_stop_token(responses.token_ids, stop_token_ids).numpy(), axis=1)  # [batch]
    if c.missing_eos_penalty is not None:
        scores = scores - c.missing_eos_penalty * ~ended
    if c.overlong_buffer:
        lengths = tf.reduce_sum(tf.cast(responses.mask, tf.int32), axis=1)
        scores = scores + overlong_penalty(lengths, c.response_length, c.overlong_buffer,
                                           c.overlong_penalty).numpy()
    loss_mask = responses.mask
    if c.mask_truncated_completions:
        loss_mask = responses.mask & tf.constant(ended)[:, None]
    return scores, loss_mask
