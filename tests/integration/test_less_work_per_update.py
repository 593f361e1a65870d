"""Less work per update, on the tiny policy: `old_logprobs="sampler"` (with the sampler-trainer diagnostics and
truncated importance sampling of the recompute mode), and `padding_free` packed rows. Each trains to the weights
of the plain run, within float32 rounding."""

import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import tiny_config
from tf_ppo import PPOTrainer
from tf_ppo.models.packing import ROW_BUCKETS
from tf_ppo.rl import rollout as rollout_module
from tf_ppo.rl.functional import masked

# One minibatch per update: a packed run draws its minibatches by whole groups and a padded one by rows, so only
# with one (the same rows) do they take the same steps.
GRPO = {"algorithm": "grpo", "num_generations": 4, "beta": 0.04, "batch_size": 16, "eval_size": 16,
        "total_updates": 2, "response_length": 12, "num_mini_batches": 1}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, sft_policy_path):
    """Two GRPO updates recomputed with truncated importance sampling (a cap of 1.5), and two with sampler
    log-probs on packed rows, from the same policy and seed (PPO on packed rows: test_rl_trainer.py):
    `{mode: (trainer, result, the models the scoring pass ran)}`."""
    modes = {"corrected": {"vllm_importance_sampling_correction": True, "vllm_importance_sampling_cap": 1.5},
             "sampler": {"old_logprobs": "sampler", "padding_free": True}}
    runs = {}
    original = rollout_module.response_logprobs
    for name, change in modes.items():
        scored_by = []
        with pytest.MonkeyPatch.context() as patch:  # records which models the scoring pass runs, while it traces
            patch.setattr(rollout_module, "response_logprobs",
                          lambda model, *args: scored_by.append(model) or original(model, *args))
            trainer = PPOTrainer(tiny_config(tmp_path_factory.mktemp(name), **{**GRPO, **change}), show_progress=False)
            runs[name] = trainer, trainer.train(), scored_by
    return runs


def test_sampler_logprobs_and_entropies_equal_the_recomputed_ones_in_float32(runs):
    trainer = runs["corrected"][0]
    rollout = trainer.rollout(trainer.prompt_ids[:16], trainer.prompt_lengths[:16], tf.constant([3, 4]))
    mask = rollout.experience.model_mask.numpy()
    assert mask.sum() > 16 and not mask.all()  # responses of mixed lengths
    np.testing.assert_allclose(np.where(mask, rollout.sampler_logprobs, 0),
                               np.where(mask, rollout.experience.logprobs, 0), atol=1e-5)
    assert rollout.sampler_divergence["sampler_logprob_diff_max"] < 1e-5
    assert 0 <= rollout.sampler_divergence["sampler_kl"] < 1e-10
    sampler = trainer.engine._sampled(trainer.prompt_ids[:16], trainer.prompt_lengths[:16], tf.constant([3, 4]))
    np.testing.assert_allclose(float(masked.masked_mean(sampler["entropies"], mask)), rollout.entropy, rtol=1e-5)


def test_sampler_mode_skips_the_policys_scoring_pass(runs):
    trainer, _, scored_by = runs["sampler"]
    assert trainer.policy not in scored_by and trainer.reference in scored_by  # only the reference is scored
    assert runs["corrected"][0].policy in runs["corrected"][2]
    rollout = trainer.rollout(trainer.prompt_ids[:16], trainer.prompt_lengths[:16], tf.constant([3, 4]))
    np.testing.assert_array_equal(rollout.experience.logprobs, rollout.sampler_logprobs)
    assert rollout.sampler_divergence == {}


def test_both_ways_train_to_the_same_weights_in_float32(runs):
    (trainer, result, _), (want_trainer, want, _) = runs["sampler"], runs["corrected"]
    for want_weights, got in zip(want_trainer.policy.get_weights(), trainer.policy.get_weights()):
        np.testing.assert_allclose(got, want_weights, atol=1e-5)
    assert [row["score_mean"] for row in result.history] == [row["score_mean"] for row in want.history]


def test_a_packed_run_traces_a_few_shapes(runs):
    trainer = runs["sampler"][0]
    assert trainer.learner.packer is trainer.engine.packer is not None
    for compiled in (trainer.engine._score, trainer.learner.step._step):
        assert 1 <= compiled.experimental_get_tracing_count() <= ROW_BUCKETS


def test_recompute_mode_logs_the_divergence_and_sampler_mode_does_not(runs):
    history = runs["corrected"][1].history
    assert all(0 <= row["sampler_kl"] < 1e-10 and row["sampler_logprob_diff_max"] < 1e-5 for row in history)
    assert "sampler_kl" not in runs["sampler"][1].history[0]
    assert runs["sampler"][1].history[0]["entropy"] == pytest.approx(history[0]["entropy"], rel=1e-5)
