"""A model split into trunk (hidden states) and head (outputs), so the head runs where it is needed only.

`trunk_and_head` recognises a keras-hub `CausalLM` whose logits are its
backbone's reversed token embedding by reading its functional graph, through
private Keras attributes (`_keras_history`, `_inbound_nodes`). That is kept to
this one module: a Keras upgrade that renames them breaks only this file
(tests: tf_ppo/models doctests, tests/integration/test_presets.py).
"""

import keras_hub
import tensorflow as tf  # noqa: F401  used by the doctests

from tf_ppo.config import ModelConfig  # noqa: F401  used by the doctests
from tf_ppo.models.lora import AdaptersOff, switched_off
from tf_ppo.models.policy import BigramLM, build_policy  # noqa: F401  used by the doctests
from tf_ppo.models.value import ValueModel


def trunk_and_head(model):
    """Split `model` into `(trunk, head)` with `model(inputs) == head(trunk(inputs))`, or None.

    The trunk maps inputs to per-position hidden states `[batch, seq, hidden]`
    and the head maps those, position by position, to the model's outputs
    (logits `[.., vocab]` or values). PPO needs the outputs at the response
    positions only, so gathering the hidden states first skips the output
    projection and the log-softmax over the prompt (tf_ppo.models.forward.response_logits).
    It splits a keras-hub `CausalLM` whose logits are its backbone's reversed
    token embedding (GPT-2, Llama, OPT, Gemma, Mistral, ...: checked on the
    model's functional graph, not by class), a `ValueModel` and `AdaptersOff`
    of those; any other model (e.g. `BigramLM`) returns None and runs whole.

    Example:
    >>> policy = build_policy(ModelConfig(num_layers=1, hidden_dim=16, num_heads=2), 50)
    >>> trunk, head = trunk_and_head(policy)
    >>> inputs = {"token_ids": tf.constant([[1, 2, 3]]), "padding_mask": tf.ones([1, 3], tf.bool)}
    >>> bool(tf.reduce_all(head(trunk(inputs)) == policy(inputs)))
    True
    >>> trunk_and_head(BigramLM(vocabulary_size=5, hidden_dim=2)) is None
    True
    """
    if isinstance(model, AdaptersOff):
        split = trunk_and_head(model.policy)
        return split and tuple(switched_off(model, part) for part in split)
    if isinstance(model, ValueModel):
        return model.backbone, model.values
    if _logits_are_reversed_embedding(model):
        return model.backbone, lambda hidden_states: model.backbone.token_embedding(hidden_states, reverse=True)
    return None


def _logits_are_reversed_embedding(model):
    """True when `model`'s functional graph is `backbone.token_embedding(backbone(inputs), reverse=True)`."""
    backbone = getattr(model, "backbone", None)
    if not isinstance(model, keras_hub.models.CausalLM) or backbone is None or len(model.outputs or ()) != 1:
        return False
    operation, node_index, _ = model.outputs[0]._keras_history
    if operation is not getattr(backbone, "token_embedding", None):
        return False
    node = operation._inbound_nodes[node_index]
    return (node.arguments.kwargs.get("reverse") is True and len(node.input_tensors) == 1
            and node.input_tensors[0]._keras_history.operation is backbone)
