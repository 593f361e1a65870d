"""The weights and Adam memory of each supported family's keras-hub preset nearest 1 B parameters.

The memory table's fixed part (`memory_table.py`: bytes per parameter for full PPO, PPO with LoRA and
GRPO with beta 0, in float32), applied to each family's preset nearest 1 B parameters (on a log scale)
in keras-hub's own preset list, which ships with keras-hub: nothing is downloaded. A multimodal preset's
count includes its encoders, which tf_ppo leaves out of training: its text model needs less. The cost per row of
activations depends on the layer shapes, which keras-hub's list does not hold; for a 1 B model it is the
memory table's "1 B (Llama 3.2 1B shape)" column.

    python benchmarks/family_memory.py            # a Markdown table (docs/models.md holds its output)
"""

import math

import keras_hub

from memory_table import SETUPS, parameter_mb  # benchmarks/ is on the path: run as a script
from tf_ppo.models.families.support import SUPPORTED


NOT_GENERATORS = ("embedding", "assistant", "guard")  # embedders, speculative-decoding drafts, safety classifiers


def nearest_preset(causal_lm_class, target=1e9):
    """(preset name, parameters) of the class's keras-hub preset nearest `target` parameters; None if it has none.

    Example:
    >>> nearest_preset(keras_hub.models.Gemma3CausalLM)
    ('gemma3_1b', 999885952)
    """
    sizes = [(metadata["metadata"]["params"], name) for name, metadata in causal_lm_class.presets.items()
             if metadata.get("metadata", {}).get("params") and not any(word in name for word in NOT_GENERATORS)]
    if not sizes:
        return None
    parameters, name = min(sizes, key=lambda size: (abs(math.log(size[0] / target)), size[1]))
    return name, parameters


def rows():
    """One row per supported family: class name, preset, parameters and GB per setup (None: no preset)."""
    for class_name in sorted(SUPPORTED):
        preset = nearest_preset(getattr(keras_hub.models, class_name))
        if preset is None:
            yield class_name, None, None, {}
            continue
        name, parameters = preset
        yield class_name, name, parameters, {setup: parameter_mb(bytes_per_parameter, parameters) / 1024
                                             for setup, (_, _, bytes_per_parameter) in SETUPS.items()}


def main():
    print("| family | preset nearest 1 B | parameters | " + " | ".join(SETUPS) + " |")
    print("|---|---|---|" + "---|" * len(SETUPS))
    for class_name, name, parameters, gigabytes in rows():
        if name is None:
            print(f"| {class_name} | none in keras-hub | | " + " | ".join("" for _ in SETUPS) + " |")
            continue
        print(f"| {class_name} | `{name}` | {parameters / 1e9:.2f} B | "
              + " | ".join(f"{gigabytes[setup]:.1f} GB" for setup in SETUPS) + " |")


if __name__ == "__main__":
    main()
