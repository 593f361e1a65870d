"""Multi-turn episodes (`tf_ppo/rl/episodes.py`, `sampling.sample_turn`) on the tiny GPT-2 policy.

The untrained policy rarely samples its end token, so these engines stop a turn at every 7th token id
of the vocabulary: turns of a few tokens, several per episode.
"""

import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import tiny_config
from tf_ppo import PPOConfig
from tf_ppo.config import ConfigError
from tf_ppo.generation.responses import response_view
from tf_ppo.models import build_policy, load_tokenizer
from tf_ppo.rl.algorithms import ALGORITHMS, Experience, Forward, create
from tf_ppo.rl.environment import Environment, EpisodeError, environment_factory
from tf_ppo.rl.functional import masked
from tf_ppo.rl.rollout import RolloutEngine, response_logprobs
from tf_ppo.rl.tools import ToolError

PROMPTS = ["the film was", "a great movie", "i hated it", "what a"] * 2
SEED = tf.constant([3, 4])
REPLY = " ok ok ok"


class Silent(Environment):
    """Answers nothing and never ends: the model goes on right after its stop token."""

    def step(self, model_text):
        return None, 0.0, False


class OneTurn(Environment):
    def step(self, model_text):
        return None, 0.0, True


class Echo(Environment):
    """Replies to every turn, with a reward of 0.5 per step."""

    def step(self, model_text):
        return REPLY, 0.5, False


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    config = tiny_config(tmp_path_factory.mktemp("episodes"), batch_size=8, num_mini_batches=1, max_turns=8)
    tokenizer = load_tokenizer(config.vocabulary, config.merges)
    policy = build_policy(config.model, tokenizer.vocabulary_size())
    return config, tokenizer, policy


def engine(setup, environment=None, **changes):
    config, tokenizer, policy = setup
    made = RolloutEngine(config.replace(**changes), policy, tokenizer, tf.distribute.get_strategy(),
                         [lambda responses: [0.0] * len(responses)], (1.0,),
                         environment=None if environment is None else environment_factory(environment))
    made.stop_token_ids = tuple(range(0, tokenizer.vocabulary_size(), 7))  # read when first compiled
    return made


def view(setup, sequence_ids, prompt_lengths, stop_token_ids=None):
    return response_view(tf.constant(sequence_ids), tf.constant(prompt_lengths), setup[0].response_length,
                         stop_token_ids)


@pytest.fixture(scope="module")
def single_turn(setup):
    single = engine(setup)
    prompt_ids, prompt_lengths = single.encode(PROMPTS)
    return single, prompt_ids, prompt_lengths, single.sample(prompt_ids, prompt_lengths, SEED).numpy()


def assert_same_tokens_up_to_the_single_turns_stop(episode_ids, single_ids, prompt_lengths, config, stop_token_ids):
    """The episodes' tokens are the single-turn responses' up to their first stop token (after it, the single
    turn writes nothing, the episode goes on)."""
    single = response_view(tf.constant(single_ids), tf.constant(prompt_lengths), config.response_length,
                           stop_token_ids)
    episode = response_view(tf.constant(episode_ids), tf.constant(prompt_lengths), config.response_length)
    mask = single.mask.numpy()
    assert not mask.all() and mask.sum() > len(mask)  # some responses stop early, none at once
    np.testing.assert_array_equal(episode.token_ids.numpy()[mask], single.token_ids.numpy()[mask])


def test_an_environment_that_never_answers_samples_exactly_the_single_turn_tokens(setup, single_turn):
    single, prompt_ids, prompt_lengths, sequence_ids = single_turn
    # A turn samples at least one token, so response_length turns let every episode fill its slots.
    episodes = engine(setup, Silent, max_turns=setup[0].response_length).run_episodes(prompt_ids, prompt_lengths,
                                                                                      SEED)
    assert episodes.turns.max() > 2  # the cache was carried over several turns
    assert_same_tokens_up_to_the_single_turns_stop(episodes.sequence_ids, sequence_ids, prompt_lengths, setup[0],
                                                   single.stop_token_ids)
    assert episodes.model_mask.all() and not episodes.environment_mask.any() and not episodes.finished.any()


def test_an_episode_of_one_turn_is_the_single_turn_response(setup, single_turn):
    single, prompt_ids, prompt_lengths, sequence_ids = single_turn
    episodes = engine(setup, OneTurn).run_episodes(prompt_ids, prompt_lengths, SEED)
    want = view(setup, sequence_ids, prompt_lengths, single.stop_token_ids)
    got = view(setup, episodes.sequence_ids, prompt_lengths)
    np.testing.assert_array_equal(episodes.model_mask, want.mask)
    np.testing.assert_array_equal(np.where(want.mask, got.token_ids, 0), np.where(want.mask, want.token_ids, 0))
    assert (episodes.turns == 1).all()
    # Finished where the reply stopped; the others ran out of response slots (truncated), as in single-turn.
    np.testing.assert_array_equal(episodes.finished, ~want.mask.numpy().all(axis=1))
    assert episodes.finished.any() and not episodes.finished.all()


@pytest.fixture(scope="module")
def echo(setup, single_turn):
    _, prompt_ids, prompt_lengths, _ = single_turn
    echo_engine = engine(setup, Echo)
    return echo_engine, prompt_lengths, echo_engine.run_episodes(prompt_ids, prompt_lengths, SEED)


def test_the_cached_append_gives_the_log_probs_and_entropies_of_a_full_forward_pass(setup, echo):
    _, prompt_lengths, episodes = echo
    assert episodes.environment_mask.sum() > 20 and episodes.turns.max() >= 2
    responses = view(setup, episodes.sequence_ids, prompt_lengths)
    logprobs, logits = response_logprobs(setup[2], tf.constant(episodes.sequence_ids), responses,
                                         setup[0].temperature)
    np.testing.assert_allclose(np.where(episodes.model_mask, logprobs, 0.0), episodes.sampler_logprobs, atol=1e-5)
    np.testing.assert_allclose(np.where(episodes.model_mask, masked.entropy_from_logits(logits), 0.0),
                               episodes.sampler_entropies, atol=1e-5)


class LongEcho(Environment):
    """A reply of 21 tokens: it goes into the cache as one pass of 16 tokens, one of 4, and the first step."""

    def step(self, model_text):
        return " ok" * 21, 0.0, False


def test_a_long_reply_appended_in_chunks_gives_the_log_probs_of_a_full_forward_pass(setup, single_turn):
    _, prompt_ids, prompt_lengths, _ = single_turn
    long_echo = engine(setup, LongEcho, response_length=48, max_turns=3)
    episodes = long_echo.run_episodes(prompt_ids, prompt_lengths, SEED)
    assert (episodes.environment_mask.sum(axis=1) >= 21).sum() >= 4, episodes.environment_mask.sum(axis=1)
    responses = response_view(tf.constant(episodes.sequence_ids), tf.constant(prompt_lengths), 48)
    logprobs, _ = response_logprobs(setup[2], tf.constant(episodes.sequence_ids), responses, setup[0].temperature)
    np.testing.assert_allclose(np.where(episodes.model_mask, logprobs, 0.0), episodes.sampler_logprobs, atol=1e-5)


def test_the_environment_writes_its_reply_after_each_turn_and_is_credited_at_the_turns_last_token(setup, echo):
    echo_engine, prompt_lengths, episodes = echo
    reply_ids = list(np.asarray(echo_engine.tokenizer(REPLY)))
    token_ids = view(setup, episodes.sequence_ids, prompt_lengths).token_ids.numpy()
    assert not (episodes.model_mask & episodes.environment_mask).any()
    for row in range(len(token_ids)):
        speaker = np.where(episodes.model_mask[row], 1, np.where(episodes.environment_mask[row], 2, 0))
        turn_ends = np.flatnonzero((speaker[:-1] == 1) & (speaker[1:] == 2))  # a turn the environment answered
        for end in turn_ends:
            assert token_ids[row, end] in echo_engine.stop_token_ids
            assert token_ids[row, end + 1: end + 1 + len(reply_ids)].tolist() == reply_ids
        # Every turn that ended at a stop token was stepped; a turn cut by the budget was not.
        stepped = np.flatnonzero(episodes.model_mask[row] & np.isin(token_ids[row], echo_engine.stop_token_ids))
        np.testing.assert_array_equal(np.flatnonzero(episodes.step_rewards[row]), stepped)
        assert set(turn_ends) <= set(stepped) and episodes.step_rewards[row].sum() == 0.5 * len(stepped)


def test_a_rollout_of_episodes_scores_the_model_tokens_and_sums_the_step_rewards(setup, echo, single_turn):
    echo_engine, prompt_lengths, episodes = echo
    rollout = echo_engine.rollout(single_turn[1], prompt_lengths, SEED)
    np.testing.assert_array_equal(rollout.experience.model_mask, episodes.model_mask)
    np.testing.assert_allclose(rollout.experience.scores, episodes.step_rewards.sum(axis=1))
    assert rollout.experience.scores.numpy().max() >= 1.0
    assert REPLY in rollout.texts[0] or episodes.turns[0] == 1


def test_episodes_are_the_same_whole_or_in_chunks(setup, single_turn, echo):
    _, prompt_ids, prompt_lengths, _ = single_turn
    chunked = engine(setup, Echo, rollout_batch_size=4).run_episodes(prompt_ids, prompt_lengths, SEED)
    np.testing.assert_array_equal(chunked.sequence_ids, echo[2].sequence_ids)
    np.testing.assert_array_equal(chunked.model_mask, echo[2].model_mask)


def test_budgets_cut_episodes_as_truncated(setup, single_turn):
    _, prompt_ids, prompt_lengths, _ = single_turn
    episodes = engine(setup, Echo, max_turns=2, max_tokens_per_turn=3).run_episodes(prompt_ids, prompt_lengths,
                                                                                     SEED)
    assert episodes.turns.max() <= 2 and not episodes.finished.any()
    for row in episodes.model_mask:  # no turn longer than 3 tokens
        runs = np.diff(np.flatnonzero(np.diff(np.concatenate([[0], row.astype(int), [0]]))))[::2]
        assert runs.max() <= 3


def test_an_environment_that_breaks_the_api_gets_a_named_error(setup, single_turn):
    class Wrong(Environment):
        def step(self, model_text):
            return "higher"

    with pytest.raises(EpisodeError, match=r"Wrong.step must return \(observation: str or None, reward: float"):
        engine(setup, Wrong).run_episodes(single_turn[1], single_turn[2], SEED)


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_the_environments_tokens_get_no_gradient(name):
    """d loss / d logits is exactly 0 at every environment token, for every algorithm (entropy and KL on)."""
    rng = np.random.default_rng(0)
    batch, length, vocab = 8, 10, 11
    config = PPOConfig(algorithm=name, batch_size=batch, num_mini_batches=1, response_length=length,
                       entropy_coef=0.01, **({"num_generations": 4} if ALGORITHMS[name].min_generations > 1 else {}),
                       **({"beta": 0.1} if name in ("grpo", "dr_grpo", "gspo") else {}))
    algorithm = create(config)
    model_mask = rng.random((batch, length)) < 0.6
    token_ids = tf.constant(rng.integers(0, vocab, (batch, length)), tf.int32)
    responses = tf.constant(np.arange(length)[None].repeat(batch, 0), tf.int32), token_ids, tf.constant(model_mask)
    from tf_ppo.generation.responses import Responses
    logits = tf.Variable(rng.normal(size=(batch, length, vocab)), dtype=tf.float32)
    old_logprobs = masked.logprobs_from_logits(logits + 0.1 * rng.normal(size=logits.shape), token_ids)
    experience = Experience(tf.zeros([batch, length + 2], tf.int32), Responses(*responses), old_logprobs,
                            tf.constant(rng.normal(size=batch), tf.float32), tf.constant(model_mask),
                            ref_logprobs=old_logprobs - 0.05, values=tf.constant(rng.normal(size=(batch, length)),
                                                                                 tf.float32))
    experience, _ = algorithm.advantages(experience, tf.constant(0.1))
    with tf.GradientTape() as tape:
        logprobs = masked.logprobs_from_logits(logits, token_ids)
        loss, _ = algorithm.objective(Forward(logprobs, logits, experience.values * 0.9), experience)
    gradient = tape.gradient(loss, logits).numpy()
    assert np.all(gradient[~model_mask] == 0.0)
    assert np.abs(gradient[model_mask]).max() > 0


def test_max_turns_below_one_and_a_tool_without_type_hints_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="max_turns"):
        PPOConfig(max_turns=0)

    def add(a, b):
        """The sum."""
        return a + b

    from tf_ppo import train
    with pytest.raises(ToolError, match="add"):
        train(tiny_config(tmp_path), tools=[add], show_progress=False)


@pytest.mark.parametrize("family", ["gemma3", "qwen3_5"])
def test_other_caches_carry_episodes_too(family, tmp_path):
    """Gemma 3's per-layer tuple cache is rewound; Qwen 3.5's recurrent state is fed from the start each turn."""
    from tests.presets import causal_lm

    policy = causal_lm(family)
    config = tiny_config(tmp_path, batch_size=8, max_turns=12, response_length=12, generation_jit=False)
    made = {}
    for name, environment in (("single", None), ("silent", Silent), ("echo", Echo)):
        made[name] = RolloutEngine(config, policy, policy.preprocessor.tokenizer, tf.distribute.get_strategy(),
                                   [lambda responses: [0.0] * len(responses)], (1.0,),
                                   environment=None if environment is None else environment_factory(environment))
        made[name].stop_token_ids = tuple(range(3, policy.preprocessor.tokenizer.vocabulary_size(), 5))
    prompt_ids, prompt_lengths = made["single"].encode(PROMPTS)
    single = made["single"].sample(prompt_ids, prompt_lengths, SEED).numpy()
    silent = made["silent"].run_episodes(prompt_ids, prompt_lengths, SEED)
    assert silent.turns.max() > 1
    assert_same_tokens_up_to_the_single_turns_stop(silent.sequence_ids, single, prompt_lengths, config,
                                                   made["single"].stop_token_ids)
    echo = made["echo"].run_episodes(prompt_ids, prompt_lengths, SEED)
    assert echo.environment_mask.any()
    responses = view((config,), echo.sequence_ids, prompt_lengths)
    logprobs, _ = response_logprobs(policy, tf.constant(echo.sequence_ids), responses, config.temperature)
    np.testing.assert_allclose(np.where(echo.model_mask, logprobs, 0.0), echo.sampler_logprobs, atol=1e-5)


def test_chat_episodes_append_the_reply_as_the_users_next_message(tmp_path):
    from tests.presets import causal_lm

    policy = causal_lm("gemma3")
    config = tiny_config(tmp_path, batch_size=4, max_turns=4, max_prompt_length=24, response_length=40,
                         generation_jit=False)
    made = RolloutEngine(config, policy, policy.preprocessor.tokenizer, tf.distribute.get_strategy(),
                         [lambda responses: [0.0] * len(responses)], (1.0,), environment=environment_factory(Echo))
    made.stop_token_ids = tuple(range(3, policy.preprocessor.tokenizer.vocabulary_size(), 5))
    conversations = [[{"role": "user", "content": text}] for text in PROMPTS[:4]]
    prompt_ids, prompt_lengths = made.encode(conversations)
    episodes = made.run_episodes(prompt_ids, prompt_lengths, SEED)
    observation = made.chat.observation_ids(REPLY)  # "<end_of_turn>\n<start_of_turn>user\n ok ok ok<end_of..."
    token_ids = view((config,), episodes.sequence_ids, prompt_lengths).token_ids.numpy()
    replies = 0
    for row in range(len(token_ids)):
        starts = np.flatnonzero(np.diff(episodes.environment_mask[row].astype(int)) == 1) + 1
        for start in starts:
            assert token_ids[row, start: start + len(observation)].tolist() == observation
            replies += 1
    assert replies >= 2


class DoneAfterTwo(Echo):
    def reset(self, prompt):
        self.steps = 0

    def step(self, model_text):
        self.steps += 1
        return REPLY, 0.5, self.steps == 2


def test_mask_truncated_completions_masks_the_episodes_a_budget_cut_and_only_those(setup, single_turn):
    made = engine(setup, DoneAfterTwo, mask_truncated_completions=True, max_turns=3)
    rollout = made.rollout(single_turn[1], single_turn[2], SEED)
    finished, loss_mask = rollout.episodes.finished, rollout.experience.loss_mask.numpy()
    assert finished.any() and not finished.all(), finished
    np.testing.assert_array_equal(loss_mask, rollout.episodes.model_mask & finished[:, None])
