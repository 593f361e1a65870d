"""The stages of RLHF in one call: SFT -> reward model -> PPO, or SFT -> DPO, all in one run directory.

Layout of `run_dir`:
    config.json                               the config (its sections of the method's stages) and provenance
    sft/policy.keras, sft/checkpoints/        stage 1 (the cached SFT policy when one of the same settings exists)
    reward/reward_model.keras, checkpoints/   stage 2 (normalised on the SFT policy's samples)
    ppo/...                                   stage 3 (a `tf_ppo.train` run directory)
    dpo/...                                   method="dpo": stage 2 instead (a `tf_ppo.preference.dpo` run directory)
    summary.json

Both methods' summaries share the keys that compare line by line: the gold
score (default VADER sentiment, which neither the reward model nor DPO ever
saw) and the KL to the SFT policy, on sampled completions of the same held-out
prompts with the same seed, with fluency, steps and time. PPO's adds the reward
model's held-out accuracy and the proxy (its score) before and after; DPO has
neither, and adds `implicit_reward_heldout_accuracy`, the held-out preference
accuracy of its implicit reward, beta x log(policy / SFT). `tf-ppo dpo` reports
the same DPO summary (`judge_dpo`, `dpo_summary`).

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
from tf_ppo.preference.dpo import dpo, dpo_sections
from tf_ppo.preference.reward_model import RewardModel
from tf_ppo.preference.reward_training import save_atomically, train_reward_model
from tf_ppo.tasks.sentiment import sentiment_reward
from tf_ppo.sft import cache_policy, cached_policy, sft
from tf_ppo.rl.evaluator import evaluate
from tf_ppo.rl.trainer import TrainResult, train
from tf_ppo.training.interrupts import Interrupted


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
        policy: skip SFT and start from this policy (it is saved as the SFT stage);
            None: the cached SFT policy of the same settings (`tf_ppo.default_policy`'s), else one trained here.
        method: "ppo" (reward model, then `config.algorithm`) or "dpo" (`config.dpo`).

    Returns:
        `PipelineResult`; `summary` has gold scores before and after on
        held-out prompts, KL and fluency; PPO's also the proxy's scores and the
        reward model's held-out accuracy, DPO's its implicit reward's.

    Raises:
        Interrupted: Ctrl-C or SIGTERM stopped a stage after its checkpoint;
            the same call (the same `run_dir`) continues it.

    Example:
        result = pipeline(PPOConfig(run_dir="runs/rlhf"))
        result.summary["gold_after"] > result.summary["gold_before"]
    """
    config = run_config(config)
    run_dir = pathlib.Path(config.run_dir or f"runs/pipeline-{datetime.datetime.now():%Y%m%d-%H%M%S}")
    if method not in ("ppo", "dpo"):
        raise ConfigError(f"pipeline: method must be 'ppo' or 'dpo', got {method!r}")
    run_dir.mkdir(parents=True, exist_ok=True)
    sections = ("sft", "reward") if method == "ppo" else ("sft", *dpo_sections(config))
    (run_dir / "config.json").write_text(config.to_json(sections=sections))
    started = time.perf_counter()
    policy = _sft_stage(config, run_dir / "sft", policy, show_progress)
    if method == "dpo":
        result = _dpo_stage(config, run_dir / "dpo", policy, gold_reward_fn, show_progress)
        summary = dpo_summary(result, time.perf_counter() - started, run_dir)
        return PipelineResult(run_dir, result.history, result, write_summary(run_dir, summary))
    reward_model, reward_history = _reward_stage(config, run_dir / "reward", policy, show_progress)
    ppo_dir = run_dir / "ppo"
    result = train(config.replace(run_dir=str(ppo_dir)), reward_fn=reward_model, policy=policy,
                   resume=(ppo_dir / "checkpoints" / "checkpoint").exists(), show_progress=show_progress,
                   gold_reward_fn=gold_reward_fn)
    _stop_if_stopped(result, "PPO", f"update {result.updates_done}/{result.config.total_updates}", run_dir)
    summary = _ppo_summary(result, reward_history, time.perf_counter() - started, run_dir)
    return PipelineResult(run_dir, reward_history, result, write_summary(run_dir, summary))


def _sft_stage(config, directory, policy, show_progress):
    """The SFT policy: this run's, else the given one, else the cached one of the same settings, else trained."""
    path = directory / "policy.keras"
    if path.exists():
        return keras.saving.load_model(path, compile=False)
    if policy is None:
        policy = cached_policy(config)  # what `tf-ppo train` and `tf-ppo dpo` start from: trained once for all
        if policy is not None and show_progress:
            print("SFT: the cached policy of these model and SFT settings and data (not retrained)")
    if policy is None:
        result = sft(config, show_progress=show_progress, checkpoint_dir=directory / "checkpoints")
        _stop_if_stopped(result, "SFT", f"step {result.steps_done}/{result.total_steps}", directory.parent)
        policy = result.policy
        cache_policy(config, policy)
    save_atomically(policy, path)
    return policy


def _reward_stage(config, directory, policy, show_progress):
    path = directory / "reward_model.keras"
    if path.exists():
        return RewardModel.load(path), json.loads((directory / "checkpoints" / "history.json").read_text())
    result = train_reward_model(config, policy.backbone if hasattr(policy, "backbone") else None, directory,
                                show_progress, policy=policy)
    _stop_if_stopped(result, "reward model", f"step {result.steps_done}/{result.total_steps}", directory.parent)
    return result.model, result.history


def _dpo_stage(config, directory, policy, gold_reward_fn, show_progress):
    """DPO from the SFT policy, then the SFT and DPO policies' completions judged as the PPO route's are."""
    result = dpo(config.replace(run_dir=str(directory)), policy=policy, show_progress=show_progress,
                 resume=(directory / "checkpoints" / "checkpoint").exists())
    _stop_if_stopped(result, "DPO", f"step {result.steps_done}/{result.total_steps}", directory.parent)
    return judge_dpo(result, policy, config, gold_reward_fn)


def judge_dpo(result, start, config, gold_reward_fn=sentiment_reward):
    """`result` (a `DPOResult`) with `evaluations`: the held-out figures of `start` and of the DPO policy.

    The RL runs' own evaluation, with `start` (the policy DPO started from) as
    the reference: the same prompts, seed, gold judge and KL estimate as the PPO
    route's. The score is the gold judge's too, so `score_mean` is left None: DPO has no proxy.

    Example:
        judged = judge_dpo(dpo(config, policy=sft_policy), sft_policy, config)
        judged.evaluations[1]["heldout_kl"], judged.evaluations[1]["gold_score_mean"]
    """
    before, after = (evaluate(judged, config, reference=start, reward_fn=gold_reward_fn,
                              gold_reward_fn=gold_reward_fn) for judged in (start, result.policy))
    before["score_mean"] = after["score_mean"] = None
    return dataclasses.replace(result, evaluations=(before, after))


def _stop_if_stopped(result, stage, reached, run_dir):
    """Raise `Interrupted` if Ctrl-C or SIGTERM stopped the stage: the next must not start from a half-trained model."""
    if result.interrupted or result.preempted:
        how, signal_name = ("interrupted", "SIGINT") if result.interrupted else ("stopped by SIGTERM", "SIGTERM")
        raise Interrupted(f"{how} in the {stage} stage at {reached}; resume with: tf-ppo pipeline --run_dir {run_dir} "
                          f"and the same flags", signal_name)


def write_summary(run_dir, summary):
    """Write `summary` to `run_dir/summary.json`; returns what the file then holds.

    A finished run's rerun has the same figures: the first run's file, and its seconds, stay as they were.

    Example:
        summary = write_summary(run_dir, dpo_summary(judged, seconds, run_dir))
    """
    path = pathlib.Path(run_dir) / "summary.json"
    recorded = json.loads(path.read_text()) if path.is_file() else None
    if recorded is not None and _figures(recorded) == _figures(summary):
        return recorded
    path.write_text(json.dumps(summary, indent=2))
    return summary


def _figures(summary):
    """The summary's figures without its seconds."""
    return {key: value for key, value in summary.items() if key != "seconds"}


def dpo_summary(result, seconds, run_dir):
    """The figures of a DPO run judged by `judge_dpo`: the gold score and KL the PPO route reports, no proxy.

    Example:
        dpo_summary(judge_dpo(result, sft_policy, config), 60.0, result.run_dir)["heldout_kl"]
    """
    before, after = result.evaluations
    return _rounded({"method": "dpo", "implicit_reward_heldout_accuracy": result.history[-1]["heldout_accuracy"],
                     **_judged(before, after), "updates": len(result.steps), "seconds": seconds,
                     "run_dir": str(run_dir)})


def _ppo_summary(result, reward_history, seconds, run_dir):
    before, after = result.evaluation_before, result.evaluation_after or {}
    accuracy = reward_history[-1]["heldout_accuracy"] if reward_history else None
    return _rounded({"method": "ppo", "reward_model_heldout_accuracy": accuracy, "proxy_before": before["score_mean"],
                     "proxy_after": after.get("score_mean"), **_judged(before, after), "updates": len(result.history),
                     "seconds": seconds, "run_dir": str(run_dir)})


def _judged(before, after):
    """What both methods report alike: the gold judge's score before and after, the KL to the SFT policy, fluency."""
    return {"gold_before": before.get("gold_score_mean"), "gold_after": after.get("gold_score_mean"),
            "heldout_kl": after.get("heldout_kl"), "fluency": after.get("fluency")}


def _rounded(summary):
    return {key: round(value, 4) if isinstance(value, float) else value for key, value in summary.items()}
