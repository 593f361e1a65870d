"""The held-out evaluations a run directory keeps: the starting policy's, and the trained policy's last.

`evaluation_after.json` is written last, so its presence marks a finished run
(a rerun then changes nothing); both are written atomically.
"""

import json

from tf_ppo.training.checkpoints import write_atomically

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
