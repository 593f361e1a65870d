"""GSPO (`tf_ppo/rl/algorithms/gspo.py`) against a float64 NumPy reference, and one short run.

The reference clips one ratio per response, the geometric mean of its tokens' ratios over the loss mask
(Zheng et al. 2025, eq. 7), on the batch of `test_estimators`: an all-padding row, a one-token row, a full
row, and truncated responses masked out of the loss.
"""

import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import tiny_config
from tests.unit.rl.functional.test_estimators import (BATCH, G, LENGTH, RNG, arrays, close, dtype,  # noqa: F401
                                                      experience, np_clipped, np_k)
from tests.integration.test_algorithms import varied_reward
from tf_ppo import PPOConfig, train
from tf_ppo.rl.algorithms import Forward, create

EPSILON, EPSILON_HIGH, BETA = 0.05, 0.08, 0.04


def np_sequence_ratio_loss(new, old, advantages, mask):
    """Per-token loss: each response's tokens share the clipped loss of its one sequence-level ratio."""
    per_token = np.zeros_like(new)
    for row in range(len(new)):
        log_ratio = (new[row] - old[row])[mask[row]].mean() if mask[row].any() else 0.0  # log s_i
        per_token[row], _ = np_clipped(np.full(new.shape[1], log_ratio), np.zeros(new.shape[1]), advantages[row],
                                       EPSILON, EPSILON_HIGH, None)
    return per_token


def gspo_config(loss_type="grpo", **changes):
    return PPOConfig(algorithm="gspo", num_generations=G, batch_size=BATCH, num_mini_batches=1, beta=BETA,
                     epsilon=EPSILON, epsilon_high=EPSILON_HIGH, loss_type=loss_type, response_length=LENGTH,
                     max_prompt_length=4, mask_truncated_completions=True, **changes)


@pytest.mark.parametrize("loss_type", ["grpo", "dapo", "dr_grpo"])
def test_gspo_loss_clips_one_sequence_level_ratio_per_response(dtype, loss_type):
    algorithm = create(gspo_config(loss_type))
    ended = np.arange(BATCH) != BATCH - 1  # the last response is truncated: out of the loss
    batch, _ = algorithm.advantages(experience(dtype, ended), tf.constant(0.0, dtype))
    a = arrays(batch)
    # Each row's log-ratios around its own offset: half the responses beyond the clip range on the side of their
    # advantage (the clip is active there), half inside it.
    row_advantages = np.asarray(batch.advantages).sum(axis=1)
    offsets = np.where(np.arange(BATCH) % 2 == 0, 0.2 * np.sign(row_advantages), 0.01)[:, None]
    new_logprobs = a["logprobs"] + offsets + RNG.normal(scale=0.1, size=a["logprobs"].shape)
    loss, metrics = algorithm.loss(Forward(tf.constant(new_logprobs, dtype), None), batch)
    mask = a["loss_mask"]
    per_token = np_sequence_ratio_loss(new_logprobs, a["logprobs"], np.asarray(batch.advantages), mask)
    per_token = per_token + BETA * np_k(new_logprobs - a["ref_logprobs"], "k3")
    rows = [per_token[b][mask[b]].mean() if mask[b].any() else 0.0 for b in range(BATCH)]
    want = {"grpo": np.mean(rows), "dapo": per_token[mask].mean(), "dr_grpo": per_token[mask].sum() / (BATCH * LENGTH)}
    close(loss, want[loss_type], dtype)
    assert 0.0 < float(metrics["clipfrac"]) < 1.0  # both regimes are exercised


def test_gspo_is_grpo_when_every_token_has_the_same_ratio(dtype):
    """With one log-ratio for all of a response's tokens, the sequence ratio is the token ratio."""
    gspo, grpo = create(gspo_config()), create(gspo_config().replace(algorithm="grpo"))
    batch, _ = gspo.advantages(experience(dtype), tf.constant(0.0, dtype))
    forward = Forward(batch.logprobs + np.linspace(-0.2, 0.2, BATCH)[:, None].astype(dtype), None)
    close(gspo.loss(forward, batch)[0], float(grpo.loss(forward, batch)[0]), dtype)


def test_a_short_gspo_run_trains_to_finite_weights(tmp_path, sft_policy_path):
    config = tiny_config(tmp_path, algorithm="gspo", num_generations=4, batch_size=16, eval_size=16,
                         total_updates=2, epsilon=3e-4, epsilon_high=4e-4)
    result = train(config, reward_fn=varied_reward, show_progress=False)
    assert result.value_model is None and len(result.history) == 2
    assert all(np.all(np.isfinite(w)) for w in result.policy.get_weights())
    assert [row["skipped_steps"] for row in result.history] == [0, 0]
