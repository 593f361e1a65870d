"""Direct preference losses (DPO and its variants): pure functions of the four sequence log-probs.

Each pair has a chosen and a rejected response. The policy's and the frozen reference's summed
log-probs of each give two log-ratios, `log pi(y) - log ref(y)`, and the loss pushes the chosen one
above the rejected one. `beta` is how far the policy may move from the reference. The names follow
TRL's `DPOConfig` (`beta`, `loss_type`, `label_smoothing`).

| `loss_type` | per-pair loss of `d = beta * (chosen log-ratio - rejected log-ratio)` | paper |
|---|---|---|
| `"sigmoid"` | `-(1 - e) log sigmoid(d) - e log sigmoid(-d)`; e = `label_smoothing` > 0 is cDPO | Rafailov et al. 2023; Mitchell 2023 |
| `"robust"` | `(-(1 - e) log sigmoid(d) + e log sigmoid(-d)) / (1 - 2e)`, e in [0, 0.5) | Chowdhury et al. 2024 |
| `"hinge"` | `max(0, 1 - d)` | SLiC, Zhao et al. 2023 |
| `"ipo"` | `(chosen / len - rejected / len - 1 / (2 beta))^2`: log-ratios per token | Azar et al. 2023 |
"""
import collections

import tensorflow as tf

DPO_LOSS_TYPES = ("sigmoid", "robust", "hinge", "ipo")

PreferenceLoss = collections.namedtuple("PreferenceLoss", ["losses", "chosen_rewards", "rejected_rewards"])


def preference_loss(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, beta=0.1,
                    loss_type="sigmoid", label_smoothing=0.0, chosen_lengths=None, rejected_lengths=None):
    """Per-pair preference losses `[pairs]` and the implicit rewards `beta * log-ratio` of both responses.

    Args:
        chosen_logps, rejected_logps: `[pairs]` the policy's log-probs of each response, summed over its tokens.
        ref_chosen_logps, ref_rejected_logps: `[pairs]` the reference's, the same way (no gradient flows there).
        beta: the KL strength (IPO: its regularisation tau).
        loss_type: one of `DPO_LOSS_TYPES`.
        label_smoothing: the chance a preference label is flipped ("sigmoid": cDPO, "robust"); 0 = none.
        chosen_lengths, rejected_lengths: `[pairs]` response tokens; needed by "ipo" (at least 1 is used, so an
            empty response has its summed log-ratio, 0).

    Returns:
        `PreferenceLoss(losses, chosen_rewards, rejected_rewards)`, each `[pairs]`; the rewards are the
        summed log-ratios times beta, for the metrics (`rewards/margins` = chosen - rejected).

    Example:
    >>> loss = preference_loss(tf.constant([-1.0]), tf.constant([-3.0]), tf.constant([-2.0]), tf.constant([-2.0]))
    >>> round(float(loss.losses[0]), 4)  # -log sigmoid(0.1 * (1 - (-1)))
    0.5981
    """
    if loss_type not in DPO_LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {DPO_LOSS_TYPES}, got {loss_type!r}")
    chosen_logratios = chosen_logps - tf.stop_gradient(ref_chosen_logps)  # [pairs]
    rejected_logratios = rejected_logps - tf.stop_gradient(ref_rejected_logps)
    margin = beta * (chosen_logratios - rejected_logratios)  # [pairs]
    if loss_type == "sigmoid":
        losses = -(1.0 - label_smoothing) * tf.math.log_sigmoid(margin) - label_smoothing * tf.math.log_sigmoid(-margin)
    elif loss_type == "robust":
        losses = ((-(1.0 - label_smoothing) * tf.math.log_sigmoid(margin) + label_smoothing * tf.math.log_sigmoid(-margin))
                  / (1.0 - 2.0 * label_smoothing))
    elif loss_type == "hinge":
        losses = tf.nn.relu(1.0 - margin)
    else:  # ipo: log-ratios per token, so the squared loss does not grow with the response length
        if chosen_lengths is None or rejected_lengths is None:
            raise ValueError("loss_type='ipo' needs chosen_lengths and rejected_lengths")
        per_token = (chosen_logratios / _at_least_one(chosen_lengths, chosen_logratios.dtype)
                     - rejected_logratios / _at_least_one(rejected_lengths, rejected_logratios.dtype))
        losses = tf.square(per_token - 1.0 / (2.0 * beta))
    return PreferenceLoss(losses, tf.stop_gradient(beta * chosen_logratios), tf.stop_gradient(beta * rejected_logratios))


def _at_least_one(lengths, dtype):
    return tf.maximum(tf.cast(lengths, dtype), tf.constant(1.0, dtype))
