"""Multimodal presets trained as text models: Gemma 3, Gemma 4 and Qwen 3.5 with a vision (or audio) encoder.

RL on text prompts needs none of the encoders, and a multimodal backbone's graph wants image inputs on
every forward pass. `text_only` rebuilds the backbone in keras-hub's own text-only configuration of the
same class (its encoders None) and copies every text layer's weights by layer name. The encoders are left
out: not trained, and not copied into the reference or the value model; the parameter report names them.
`with_encoders` puts trained text layers back into the multimodal model, to save it as a multimodal preset.

Example:
    policy = text_only(keras_hub.models.Gemma3CausalLM.from_preset("gemma3_instruct_4b"))
    policy.left_out  # {"vision encoder": 416_866_032}
"""

ENCODERS = ("vision_encoder", "audio_encoder")  # the keras-hub backbone arguments that hold an encoder


def encoders_of(backbone):
    """`{argument: encoder layer}` of the encoders `backbone` holds; empty for a text model.

    Example:
    >>> from tf_ppo.models import BigramLM
    >>> encoders_of(BigramLM(5, 2))
    {}
    """
    return {name: getattr(backbone, name) for name in ENCODERS if getattr(backbone, name, None) is not None}


def text_only(policy):
    """`policy` without its encoders: the same CausalLM class on a text-only backbone with the same text weights.

    A text model is returned as it is. The copy's `left_out` maps each encoder
    ("vision encoder") to its parameter count, for the parameter report.
    """
    backbone = getattr(policy, "backbone", None)
    encoders = encoders_of(backbone) if backbone is not None else {}
    if not encoders:
        return policy
    text_backbone = type(backbone).from_config({**backbone.get_config(), **dict.fromkeys(encoders)})
    _copy_layers(backbone, text_backbone)
    text = type(policy)(backbone=text_backbone, preprocessor=policy.preprocessor)
    text.left_out = {name.replace("_", " "): encoder.count_params() for name, encoder in encoders.items()}
    return text


def with_encoders(text_policy, multimodal_policy):
    """`multimodal_policy` with the text layers of `text_policy` (trained by tf_ppo) copied in; returned.

    Example:
        trained = with_encoders(result.policy, keras_hub.models.Gemma3CausalLM.from_preset("gemma3_instruct_4b"))
        trained.save_to_preset("presets/gemma3-rl")  # multimodal again
    """
    _copy_layers(text_policy.backbone, multimodal_policy.backbone)
    return multimodal_policy


def _copy_layers(source, target):
    """Every weight of `target`'s layers that `source` has a layer of the same name for."""
    names = {layer.name for layer in source.layers}
    for layer in target.layers:
        if layer.weights and layer.name in names:
            layer.set_weights(source.get_layer(layer.name).get_weights())
