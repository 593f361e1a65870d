"""Mixed precision: bfloat16 / float16 compute, float32 PPO maths, loss scaling for float16."""

import keras
import numpy as np
import tensorflow as tf

from tests.conftest import tiny_config
from tf_ppo.training.distribute import split_batch
from tf_ppo.rl.trainer import PPOTrainer

LOSSES = ("policy_loss", "value_loss", "kl", "approx_kl", "grad_norm")


def test_mixed_bfloat16_logprobs_match_float32_and_the_run_stays_finite(tmp_path, sft_policy):
    float32 = PPOTrainer(tiny_config(tmp_path / "f32"), policy=sft_policy, show_progress=False)
    bfloat16 = PPOTrainer(tiny_config(tmp_path / "bf16", dtype="mixed_bfloat16", total_updates=2),
                          policy=sft_policy, show_progress=False)
    assert bfloat16.policy.dtype_policy.name == "mixed_bfloat16"
    assert bfloat16.policy.backbone.token_embedding.embeddings.dtype == "float32"  # float32 master weights

    # The first update's rollout, scored by both: the same tokens, so the log-probs must agree.
    lengths = float32.prompt_lengths[:32]
    rollout = float32.rollout(float32.prompt_ids[:32], lengths, tf.constant([0, 1]))
    scored = bfloat16.engine._score(split_batch(
        bfloat16.strategy, {"sequence_ids": rollout.experience.sequence_ids, "prompt_lengths": lengths}))
    logprobs, ref_logprobs, values = scored["logprobs"], scored["ref_logprobs"], scored["values"]
    assert logprobs.dtype == ref_logprobs.dtype == values.dtype == tf.float32
    mask = rollout.experience.responses.mask.numpy()
    difference = np.abs(logprobs.numpy() - rollout.experience.logprobs.numpy())[mask]
    # bfloat16 keeps 8 significant bits (relative rounding 2**-9 per op): a few hundredths of a nat is its
    # noise, a cast bug is off by whole nats. > 0: bfloat16 really computed something.
    assert 0 < difference.max() < 5e-2, difference.max()

    result = bfloat16.train()
    assert all(np.isfinite(row[key]) for row in result.history for key in LOSSES)
    assert all(row["skipped_steps"] == 0 for row in result.history)


def test_mixed_float16_trains_with_loss_scaling(tmp_path, sft_policy):
    trainer = PPOTrainer(tiny_config(tmp_path, dtype="mixed_float16", total_updates=2), policy=sft_policy,
                         show_progress=False)
    assert isinstance(trainer.optimizer, keras.optimizers.LossScaleOptimizer)
    before = [w.numpy() for w in trainer.policy.trainable_weights]
    result = trainer.train()
    assert all(np.isfinite(row[key]) for row in result.history for key in LOSSES)
    assert any(not np.array_equal(a, w.numpy()) for a, w in zip(before, trainer.policy.trainable_weights))
