"""The three stages of RLHF in one call: SFT -> reward model -> PPO, all in one run directory.

Layout of `run_dir`:
    config.json
    sft/policy.keras, sft/checkpoints/        stage 1
    reward/reward_model.keras, checkpoints/   stage 2 (normalised on the SFT policy's samples)
    ppo/...                                   stage 3 (a `tf_ppo.train` run directory)
    summary.json

Every stage is resumable: a finished stage is loaded, not redone; an
interrupted one continues from its checkpoints. During PPO the learned reward
(the proxy) is logged beside a gold score (default: VADER sentiment, which the
reward model never saw), so over-optimisation of the proxy is visible.
"""

import dataclasses
import datetime
import json
import pathlib

import keras

from tf_ppo.config import PPOConfig
from tf_ppo.reward_model import RewardModel, save_atomically, train_reward_model
from tf_ppo.rewards import sentiment_reward
from tf_ppo.sft import sft
from tf_ppo.trainer import TrainResult, train


@dataclasses.dataclass
class PipelineResult:
    """What `pipeline` returns."""

    run_dir: pathlib.Path
    reward_history: list  # per epoch of reward-model training (empty when loaded from an earlier run)
    ppo: TrainResult
    summary: dict  # the figures also written to summary.json


def pipeline(config=None, gold_reward_fn=sentiment_reward, policy=None, show_progress=True):
    """SFT, then a reward model from `config.reward.preferences_csv`, then PPO against it.

    Args:
        config: `PPOConfig`; `run_dir` holds every stage (default
            `runs/pipeline-<time>`).
        gold_reward_fn: the independent judge logged beside the reward model.
        policy: skip SFT and start from this policy (it is saved as the SFT stage).

    Returns:
        `PipelineResult`; `summary` has proxy and gold scores before and after
        PPO on held-out prompts, KL, and the reward model's held-out accuracy.

    Example:
        result = pipeline(PPOConfig(run_dir="runs/rlhf"))
        result.summary["gold_after"] > result.summary["gold_before"]
    """
    config = config or PPOConfig()
    run_dir = pathlib.Path(config.run_dir or f"runs/pipeline-{datetime.datetime.now():%Y%m%d-%H%M%S}")
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(config.to_json())

    policy = _sft_stage(config, run_dir / "sft", policy, show_progress)
    reward_model, reward_history = _reward_stage(config, run_dir / "reward", policy, show_progress)
    ppo_dir = run_dir / "ppo"
    result = train(config.replace(run_dir=str(ppo_dir)), reward_fn=reward_model, policy=policy,
                   resume=(ppo_dir / "checkpoints" / "checkpoint").exists(), show_progress=show_progress,
                   gold_reward_fn=gold_reward_fn)
    summary = _summary(result, reward_history, run_dir)
    summary_path = run_dir / "summary.json"
    text = json.dumps(summary, indent=2)
    if not summary_path.is_file() or summary_path.read_text() != text:  # a finished rerun leaves the file alone
        summary_path.write_text(text)
    return PipelineResult(run_dir, reward_history, result, summary)


def _sft_stage(config, directory, policy, show_progress):
    path = directory / "policy.keras"
    if path.exists():
        return keras.saving.load_model(path, compile=False)
    if policy is None:
        policy = sft(config, show_progress=show_progress, checkpoint_dir=directory / "checkpoints").policy
    save_atomically(policy, path)
    return policy


def _reward_stage(config, directory, policy, show_progress):
    path = directory / "reward_model.keras"
    if path.exists():
        return RewardModel.load(path), json.loads((directory / "checkpoints" / "history.json").read_text())
    result = train_reward_model(config, policy.backbone if hasattr(policy, "backbone") else None, directory,
                                show_progress, policy=policy)
    return result.model, result.history


def _summary(result, reward_history, run_dir):
    before, after = result.evaluation_before, result.evaluation_after or {}
    summary = {
        "reward_model_heldout_accuracy": reward_history[-1]["heldout_accuracy"] if reward_history else None,
        "proxy_before": before["score_mean"], "proxy_after": after.get("score_mean"),
        "gold_before": before.get("gold_score_mean"), "gold_after": after.get("gold_score_mean"),
        "heldout_kl": after.get("heldout_kl"), "fluency": after.get("fluency"),
        "updates": len(result.history), "run_dir": str(run_dir),
    }
    return {key: round(value, 4) if isinstance(value, float) else value for key, value in summary.items()}
