"""`tf_ppo.evaluate`: any policy's held-out figures without an RL trainer, the same as the trainer's own."""

import numpy as np
import pytest

import tf_ppo
from tests.conftest import tiny_config
from tf_ppo.models import frozen_copy
from tf_ppo.rl.trainer import RLTrainer
from tf_ppo.tasks.sentiment import sentiment_reward


def test_evaluate_alone_gives_the_trainers_figures(tmp_path, sft_policy):
    config = tiny_config(tmp_path, eval_size=16)
    reference = frozen_copy(sft_policy)
    alone = tf_ppo.evaluate(sft_policy, config, reference=reference, gold_reward_fn=sentiment_reward)
    trainer = RLTrainer(config, policy=sft_policy, gold_reward_fn=sentiment_reward, show_progress=False)
    in_trainer = trainer.evaluate()
    assert alone["samples"] == in_trainer["samples"] and len(alone["samples"]) == 16
    for name in ("score_mean", "heldout_kl", "fluency", "gold_score_mean"):
        assert alone[name] == pytest.approx(in_trainer[name], abs=1e-6), name
    assert alone["heldout_kl"] == pytest.approx(0.0, abs=1e-6)  # the policy against a copy of itself


def test_evaluate_without_a_reference_reports_no_kl(tmp_path, sft_policy):
    figures = tf_ppo.evaluate(sft_policy, tiny_config(tmp_path, eval_size=8), reward_fn=lambda texts: [1.0] * len(texts))
    assert "heldout_kl" not in figures and figures["score_mean"] == 1.0
    assert 0.0 <= figures["fluency"] <= 1.0 and np.isfinite(figures["fluency"])
