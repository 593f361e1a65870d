"""The stages of RLHF in one call: SFT -> reward model -> PPO, or SFT -> DPO, all in one run directory.

Layout of `run_dir`:
    config.json
    sft/policy.keras, sft/checkpoints/        stage 1
    reward/reward_model.keras, checkpoints/   stage 2 (normalised on the SFT policy's samples)
    ppo/...                                   stage 3 (a `tf_ppo.train` run directory)
    dpo/...                                   method="dpo": stage 2 instead (a `tf_ppo.preference.dpo` run directory)
    summary.json

Both methods end with the same summary keys, so they compare line by line:
the gold score (default VADER sentiment, which neither the reward model nor
DPO ever saw) and the KL to the SFT policy, on sampled completions of the
same held-out prompts with the same seed. DPO has no proxy reward to report
(`proxy_*` are None); its `reward_model_heldout_accuracy` is the held-out
preference accuracy of its implicit reward, beta x log(policy / SFT).

Every stage is resumable: a finished stage is loaded, not redone; an
interrupted one continues from its checkpoints. During PPO the learned reward
(the proxy) is logged beside a gold score (default: VADER sentiment, which the
reward model never saw), so over-optimisation of the proxy is visible.
"""

import dataclasses
import datetime
import json
import pathlib
import time

import keras

from tf_ppo.config import ConfigError, run_config
from tf_ppo.preference.dpo import dpo
from tf_ppo.preference.reward_model import RewardModel
from tf_ppo.preference.reward_training import save_atomically, train_reward_model
from tf_ppo.tasks.sentiment import sentiment_reward
from tf_ppo.sft import sft
from tf_ppo.rl.evaluator import evaluate
from tf_ppo.rl.trainer import TrainResult, train


@dataclasses.dataclass
class PipelineResult:
    """What `pipeline` returns."""

    run_dir: pathlib.Path
    reward_history: list  # per epoch of reward-model (or DPO) training
    ppo: TrainResult  # method "dpo": the DPOResult
    summary: dict  # the figures also written to summary.json


def pipeline(config=None, gold_reward_fn=sentiment_reward, policy=None, show_progress=True, method="ppo"):
    """SFT, then a reward model from `config.reward.preferences_csv` and PPO against it (or DPO on `config.dpo.preferences_csv`).

    Args:
        config: `PPOConfig`; `run_dir` holds every stage (default
            `runs/pipeline-<time>`).
        gold_reward_fn: the independent judge logged beside the reward model.
        policy: skip SFT and start from this policy (it is saved as the SFT stage).
        method: "ppo" (reward model, then `config.algorithm`) or "dpo" (`config.dpo`).

    Returns:
        `PipelineResult`; `summary` has proxy and gold scores before and after
        PPO on held-out prompts, KL, and the reward model's held-out accuracy.

    Example:
        result = pipeline(PPOConfig(run_dir="runs/rlhf"))
        result.summary["gold_after"] > result.summary["gold_before"]
    """
    config = run_config(config)
    run_dir = pathlib.Path(config.run_dir or f"runs/pipeline-{datetime.datetime.now():%Y%m%d-%H%M%S}")
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(config.to_json())

    if method not in ("ppo", "dpo"):
        raise ConfigError(f"pipeline: method must be 'ppo' or 'dpo', got {method!r}")
    started = time.perf_counter()
    policy = _sft_stage(config, run_dir / "sft", policy, show_progress)
    if method == "dpo":
        result = _dpo_stage(config, run_dir / "dpo", policy, gold_reward_fn, show_progress)
        reward_history, evaluations = result.history, result.evaluations
        steps = len(result.steps)
    else:
        reward_model, reward_history = _reward_stage(config, run_dir / "reward", policy, show_progress)
        ppo_dir = run_dir / "ppo"
        result = train(config.replace(run_dir=str(ppo_dir)), reward_fn=reward_model, policy=policy,
                       resume=(ppo_dir / "checkpoints" / "checkpoint").exists(), show_progress=show_progress,
                       gold_reward_fn=gold_reward_fn)
        evaluations, steps = (result.evaluation_before, result.evaluation_after or {}), len(result.history)
    summary = _summary(method, evaluations, reward_history, steps, time.perf_counter() - started, run_dir)
    summary_path = run_dir / "summary.json"
    recorded = json.loads(summary_path.read_text()) if summary_path.is_file() else None
    if recorded is not None and _figures(recorded) == _figures(summary):
        summary = recorded  # a finished rerun: the file, and the first run's seconds, stay as they were
    else:
        summary_path.write_text(json.dumps(summary, indent=2))
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


def _dpo_stage(config, directory, policy, gold_reward_fn, show_progress):
    """DPO from the SFT policy, then the SFT and DPO policies' completions judged as the PPO route's are."""
    result = dpo(config.replace(run_dir=str(directory)), policy=policy, show_progress=show_progress,
                 resume=(directory / "checkpoints" / "checkpoint").exists())
    # The RL runs' own evaluation, with the SFT policy as the reference: the same prompts, seed, gold judge and
    # KL estimate as the PPO route. The proxy is left out: DPO has none.
    before, after = (evaluate(judged, config, reference=policy, reward_fn=gold_reward_fn,
                              gold_reward_fn=gold_reward_fn) for judged in (policy, result.policy))
    before["score_mean"] = after["score_mean"] = None
    return dataclasses.replace(result, evaluations=(before, after))


def _figures(summary):
    """The summary's figures without its seconds."""
    return {key: value for key, value in summary.items() if key != "seconds"}


def _summary(method, evaluations, reward_history, steps, seconds, run_dir):
    before, after = evaluations
    summary = {
        "method": method,
        "reward_model_heldout_accuracy": reward_history[-1]["heldout_accuracy"] if reward_history else None,
        "proxy_before": before["score_mean"], "proxy_after": after.get("score_mean"),
        "gold_before": before.get("gold_score_mean"), "gold_after": after.get("gold_score_mean"),
        "heldout_kl": after.get("heldout_kl"), "fluency": after.get("fluency"),
        "updates": steps, "seconds": seconds, "run_dir": str(run_dir),
    }
    return {key: round(value, 4) if isinstance(value, float) else value for key, value in summary.items()}
