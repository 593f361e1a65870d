"""Parameter counts and weight memory of a run's models: the parameter report."""

import numpy as np

from tf_ppo.models.lora import AdaptersOff
from tf_ppo.models.policy import BigramLM, build_weights  # noqa: F401  used by the doctests


def parameter_report(models):
    """Trainable and frozen parameter counts and weight memory of named models, one line each.

    Weights shared with a model listed earlier are not counted again, so the
    bytes add up to what the process holds (LoRA: one copy of the base weights).
    A string in place of a model is printed as it is: a model not built, and why.
    The encoders a multimodal policy was trained without (`left_out`) get a line each.

    Example:
    >>> print(parameter_report({"policy": build_weights(BigramLM(vocabulary_size=10, hidden_dim=4))}))
    policy: 90 trainable, 0 frozen parameters, 360 B of weights
    """
    lines, seen = [], set()
    for name, model in models.items():
        if isinstance(model, str):  # a model the run does not build, and why
            lines.append(f"{name}: {model}")
            continue
        if isinstance(model, AdaptersOff):
            lines.append(f"{name}: the policy with its LoRA adapters off, no weights of its own")
            continue
        own = [w for w in model.weights if id(w) not in seen]
        trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights if id(w) not in seen)
        frozen = sum(int(np.prod(w.shape)) for w in model.non_trainable_weights if id(w) not in seen)
        shared = f" (+{len(model.weights) - len(own)} weights shared with the above)" \
            if len(own) < len(model.weights) else ""
        lines.append(f"{name}: {trainable:,} trainable, {frozen:,} frozen parameters, "
                     f"{_bytes(weight_bytes(own))} of weights{shared}")
        seen.update(id(w) for w in model.weights)
        lines += [f"{encoder}: {count:,} parameters, frozen: left out of training (text only), not in the policy, "
                  f"the reference or the value model" for encoder, count in getattr(model, "left_out", {}).items()]
    return "\n".join(lines)


def weight_bytes(weights):
    """Bytes held by a list of weights.

    Example:
    >>> weight_bytes(BigramLM(vocabulary_size=10, hidden_dim=4).weights)
    0
    """
    return sum(int(np.prod(w.shape)) * np.dtype(w.dtype).itemsize for w in weights)


def _bytes(count):
    for unit in ("B", "KB", "MB", "GB"):
        if count < 1024 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
