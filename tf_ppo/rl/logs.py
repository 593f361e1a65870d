"""What an update logs beside its losses: the gold score's agreement with the proxy, the warning when the
proxy rises while the gold score falls, and the one-line progress report."""

import json
import warnings

import numpy as np

from tf_ppo.rl.rewards import proxy_rises_gold_falls


class OveroptimisationWarning(UserWarning):
    """The proxy reward keeps rising while the gold score falls: reward hacking."""


class OveroptimisationWatch:
    """Warns once each time the proxy reward starts rising while the gold score falls over `window` updates.

    Example:
        watch = OveroptimisationWatch(window=10)
        watch.check(history)  # after each update
    """

    def __init__(self, window):
        self.window, self.diverging = window, False

    def check(self, history):
        rows = [row for row in history if "gold_score_mean" in row]  # a resumed run's older rows may have none
        diverging = proxy_rises_gold_falls([row["score_mean"] for row in rows],
                                           [row["gold_score_mean"] for row in rows], self.window)
        if diverging and not self.diverging:
            warnings.warn(f"update {history[-1]['update']}: over the last {self.window} updates the proxy reward "
                          f"rose while the gold score fell: the policy may be exploiting the reward model "
                          f"(raise the KL coefficient or stop here)", OveroptimisationWarning)
        self.diverging = diverging


def gold_metrics(rollout):
    """The gold score beside the proxy, and how well they agree on this batch."""
    if rollout.gold_scores is None:
        return {}
    proxy, gold = rollout.experience.scores.numpy(), rollout.gold_scores
    agree = float(np.corrcoef(proxy, gold)[0, 1]) if proxy.std() > 0 and gold.std() > 0 else 0.0
    return {"gold_score_mean": float(np.mean(gold)), "proxy_gold_correlation": agree}


def metrics_line(update, total_updates, logs, kl_estimator):
    """The one-line progress report of an update."""
    shown = ("score_mean", "gold_score_mean", "kl", "kl_coef", "entropy", "clipfrac", "approx_kl", "value_loss",
             "fluency")
    # The batch KL with the configured estimator, named apart from the held-out evaluation's k1 `heldout_kl`.
    labels = {"kl": f"kl[{kl_estimator}]"}
    values = " ".join(f"{labels.get(key, key)} {logs[key]:.3f}" for key in shown if key in logs)
    return f"update {update}/{total_updates}: {values} ({logs['seconds_update']:.2f} s)"


def summary(evaluation):
    return json.dumps({k: round(v, 3) for k, v in evaluation.items() if isinstance(v, float)})


def heldout_metrics(evaluation):
    """An evaluation's figures as history columns: `heldout_score_mean`, `heldout_accuracy`, `heldout_pass@4`, ..."""
    return {f"heldout_{name}": value for name, value in evaluation.items() if isinstance(value, float)}
