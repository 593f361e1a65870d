"""What an update logs beside its losses: the gold score's agreement with the proxy, the warnings when the
proxy rises while the gold score falls or the policy drifts far from the reference, and the progress line."""

import collections
import json
import warnings

import numpy as np

from tf_ppo.rl.callbacks import Callback
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


class DriftWarning(UserWarning):
    """The policy drifts far from the reference: its KL stays past `kl_warning`, or its fluency collapses."""


class DriftWatch(Callback):
    """Warns once, in plain words, when the policy drifts far from the reference model.

    That is: the batch KL stays above `kl_limit` nats per response for
    `window` updates in a row (or a held-out evaluation's KL passes it), or the
    fluent share of the batch stays below half of its first `window` updates'
    mean. A KL that far means the reward is being gamed at the cost of the
    text (GRPO at beta 0.04 on the sentiment reward: 47 nats, 0% fluent).

    Example:
    >>> watch = DriftWatch(kl_limit=10.0, window=2)
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     watch.on_update_end(1, {"kl": 12.0}); watch.on_update_end(2, {"kl": 15.0})
    >>> print(caught[0].message)
    update 2: the policy is drifting far from the reference (KL to it above 10 nats per response for 2 updates): raise beta (kl_coef), or set target_kl
    """

    def __init__(self, kl_limit, window=5):
        self.kl_limit, self.window = kl_limit, window
        self.recent = collections.deque(maxlen=window)  # the last `window` updates' logs
        self.first_fluency = []  # the first `window` updates' fluent shares
        self.warned = False

    def on_update_end(self, update, logs):
        if self.kl_limit is None or self.warned:
            return
        self.recent.append(logs)
        if "fluency" in logs and len(self.first_fluency) < self.window:
            self.first_fluency.append(logs["fluency"])
        reason = self._reason(logs)
        if reason:
            self.warned = True
            warnings.warn(f"update {update}: the policy is drifting far from the reference ({reason}): raise beta "
                          f"(kl_coef), or set target_kl", DriftWarning)

    def _reason(self, logs):
        if logs.get("heldout_kl", 0.0) > self.kl_limit:
            return f"held-out KL {logs['heldout_kl']:.1f} nats per response, above {self.kl_limit:g}"
        kls = [row["kl"] for row in self.recent if "kl" in row]
        if len(kls) == self.window and min(kls) > self.kl_limit:
            return f"KL to it above {self.kl_limit:g} nats per response for {self.window} updates"
        fluent = [row["fluency"] for row in self.recent if "fluency" in row]
        start = np.mean(self.first_fluency) if len(self.first_fluency) == self.window else None
        if start and len(fluent) == self.window and max(fluent) < start / 2:
            return f"fluent completions fell from {start:.0%} to {fluent[-1]:.0%}"
        return None


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
