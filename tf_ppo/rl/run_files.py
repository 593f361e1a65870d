"""What a run directory keeps: the held-out evaluations, and the trained models.

`evaluation_after.json` is written last, so its presence marks a finished run
(a rerun then changes nothing); both evaluations are written atomically.
"""

import json
import shutil

import keras_hub

from tf_ppo.export import save_preset
from tf_ppo.training.checkpoints import write_atomically
from tf_ppo.training.reporting import plot_curves

EVALUATION_BEFORE = "evaluation_before.json"  # the starting policy's held-out figures, written once
EVALUATION_AFTER = "evaluation_after.json"  # the trained policy's; written last, so it marks a finished run


def read_evaluation(run_dir, name):
    """The evaluation saved as `name` in `run_dir`, or None; samples as `(prompt, completion)` tuples.

    Example:
        read_evaluation(pathlib.Path("runs/grpo-20261206-101500"), EVALUATION_AFTER)["heldout_kl"]
    """
    path = run_dir / name  # every worker reads the chief's copy
    if not path.is_file():
        return None
    evaluation = json.loads(path.read_text())
    evaluation["samples"] = [tuple(sample) for sample in evaluation["samples"]]
    return evaluation


def write_evaluation(output_dir, name, evaluation):
    """Save an evaluation as JSON: complete or absent, never half-written."""
    write_atomically(output_dir / name, json.dumps(evaluation, indent=1))


def save_run_artifacts(output_dir, policy, value_model, tokenizer, lora_rank, history, start_metrics):
    """The final policy and value model (Keras format), a keras-hub preset, LoRA adapters, the curves PNG.

    With LoRA, `policy.keras` and the preset hold the adapters merged into the kernels. `start_metrics`: the
    starting policy's held-out figures, the curves' first points.

    Example:
        save_run_artifacts(run_dir, policy, None, tokenizer, 0, history, {"heldout/score_mean": 0.1})
    """
    policy.save(output_dir / "policy.keras")
    if value_model is not None:
        value_model.save(output_dir / "value_model.keras")
    if lora_rank:
        policy.backbone.save_lora_weights(str(output_dir / "adapters.lora.h5"))
    if isinstance(policy, keras_hub.models.CausalLM):
        shutil.rmtree(output_dir / "preset", ignore_errors=True)  # a resumed run's earlier one
        save_preset(policy, tokenizer, output_dir / "preset")
    if history:
        plot_curves(history, output_dir / "curves.png", start=start_metrics)
