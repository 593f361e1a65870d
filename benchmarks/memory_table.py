"""What fits in memory: the largest minibatch of rows for full PPO, PPO with LoRA and GRPO (beta 0).

Measured on this machine, then extrapolated, in float32 (what tf_ppo runs on CPU):

1. **Measured.** The peak tensor memory (TensorFlow's CPU allocator: weights, gradients, Adam,
   activations and XLA's buffers, the figure a GPU would have to hold) and the peak resident memory of
   whole processes, each running one update of `ppo_throughput.py` at S3 with GPT-2's vocabulary (12 layers, hidden 768, 12 heads, `--vocab 50257`:
   GPT-2 small, 124 M parameters), one minibatch of `rows` rollouts per update, at several rows and
   response lengths. Each of the three setups is one row of the table:
   - full PPO: policy, reference, value model and a Keras reward model, Adam for policy and value;
   - PPO with LoRA: one base copy (policy, adapters-off reference and value head share it), a Python
     reward function (a Keras reward model would add one more copy of the weights);
   - GRPO with `beta = 0`: the policy alone and its Adam, a Python reward function.
2. **Fitted.** For each setup, tensor peak = fixed + rows x (a T + b T^2), T = prompt + response tokens:
   `a` holds what grows with the tokens (activations, logits, the KV cache), `b` the attention scores.
   Full PPO is fitted on three points at 8 rows and checked on a fourth at 16 rows; the other two setups
   take full PPO's per-row curve scaled by their trained passes and their own measured fixed part.
3. **Extrapolated** to GPT-2 medium, a 1 B and an 8 B model: the fixed part by bytes per parameter
   (counted from the setup's variables: fp32 weights 4 B, gradient 4 B, Adam's two moments 8 B), the
   per-row curve by layers x hidden (a) and layers x heads (b) relative to GPT-2 small. These entries
   are estimates; the GPT-2 small entries at 24 GB rest on the measured fit. The 24 GB column adds
   what the process holds besides tensors (TensorFlow, Python, compiled programs, the C heap), measured;
   the 80 GB column is a GPU's memory and counts tensors only.

    python benchmarks/memory_table.py                     # measure (about 15 minutes here), then the table
    python benchmarks/memory_table.py --points runs.json  # the table again from saved measurements
"""

import argparse
import json
import pathlib
import subprocess
import sys

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
PROMPT_TOKENS = 16  # the measured runs' prompt length
S3 = ["--layers", "12", "--hidden", "768", "--heads", "12", "--vocab", "50257"]
SETUPS = {  # flags of ppo_throughput.py; trained forward+backward passes per step; bytes per parameter
    "full PPO (4 models + Adam)": (["--reward", "model"], 2, 4 * 4 + 2 * (4 + 8)),
    "PPO with LoRA (one base copy)": (["--lora-rank", "8", "--reward", "function"], 2, 4),
    "GRPO, beta = 0 (one model)": (["--algorithm", "grpo", "--num-generations", "4", "--beta", "0",
                                    "--reward", "function"], 1, 4 + 4 + 8),
}
FULL_PPO = next(iter(SETUPS))
FIT_POINTS = [(8, 32), (8, 128), (8, 256)]  # (rows, response tokens) of the full-PPO fit
CHECK_POINT = (16, 128)  # predicted from the fit, then measured
OTHER_SETUPS_POINT = (8, 128)
MODELS = {  # layers, hidden, heads, parameters
    "GPT-2 small": (12, 768, 12, 124.4e6),
    "GPT-2 medium (355 M)": (24, 1024, 16, 354.8e6),
    "1 B (Llama 3.2 1B shape)": (16, 2048, 32, 1.24e9),
    "8 B (Llama 3.1 8B shape)": (32, 4096, 32, 8.03e9),
}
BUDGETS_GB = (24, 80)
TABLE_PROMPT, TABLE_RESPONSE = 128, 512  # the sequence the table sizes rows for


def measure(setup_flags, rows, response):
    """Peak tensor memory and peak RSS (MB), and policy parameters, of one update in a fresh process."""
    command = [sys.executable, str(HERE / "ppo_throughput.py"), *S3, *setup_flags, "--batch", str(rows),
               "--mini-batches", "1", "--ppo-epochs", "1", "--response-length", str(response),
               "--prompt-length", str(PROMPT_TOKENS), "--warmup", "0", "--updates", "1"]
    completed = subprocess.run(command, capture_output=True, text=True)
    if completed.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{completed.stderr[-2000:]}")
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    return {"rows": rows, "response": response, "peak_rss_mb": result["peak_rss_mb"],
            "peak_tensor_mb": max(value for key, value in result.items() if key.startswith("peak_tensor_mb_")),
            "policy_parameters": result["shape"]["policy_parameters"]}


def measure_all(save_path):
    """Every point of the table, each saved to `save_path` as soon as it is measured."""
    plan = [(FULL_PPO, point) for point in FIT_POINTS] + [("check", CHECK_POINT)]
    plan += [(name, OTHER_SETUPS_POINT) for name in SETUPS if name != FULL_PPO]
    points = {}
    for group, (rows, response) in plan:
        flags = SETUPS[FULL_PPO if group == "check" else group][0]
        points.setdefault(group, []).append(measure(flags, rows, response))
        save_path.write_text(json.dumps(points, indent=1))
    return points


def fit_full_ppo(points):
    """`(fixed_mb, a, b)`: tensor peak = fixed + rows (a T + b T^2), exactly through the three fit points."""
    design = [[1.0, p["rows"] * (PROMPT_TOKENS + p["response"]), p["rows"] * (PROMPT_TOKENS + p["response"]) ** 2]
              for p in points]
    return np.linalg.solve(np.array(design), np.array([p["peak_tensor_mb"] for p in points], float))


def per_row_mb(a, b, tokens, passes, model, reference=MODELS["GPT-2 small"]):
    """MB one row of `tokens` adds, for `passes` trained passes, scaled from GPT-2 small to `model`."""
    layers, hidden, heads, _ = model
    ref_layers, ref_hidden, ref_heads, _ = reference
    linear = a * (layers * hidden) / (ref_layers * ref_hidden)
    quadratic = b * (layers * heads) / (ref_layers * ref_heads)
    return (linear * tokens + quadratic * tokens ** 2) * passes / SETUPS[FULL_PPO][1]


def table(points):
    fixed, a, b = fit_full_ppo(points[FULL_PPO])
    check = points["check"][0]
    small = MODELS["GPT-2 small"]
    predicted = fixed + per_row_mb(a, b, PROMPT_TOKENS + check["response"], 2, small) * check["rows"]
    measured_parameters = points[FULL_PPO][0]["policy_parameters"]
    every_point = [p for group in points.values() for p in group]
    host_mb = max(p["peak_rss_mb"] - p["peak_tensor_mb"] for p in every_point)  # the process besides tensors
    # What each setup holds besides bytes_per_parameter x parameters and its rows (small buffers, the head).
    residual_mb = {}
    for name, (_, passes, bytes_per_parameter) in SETUPS.items():
        if name == FULL_PPO:
            setup_fixed = fixed
        else:
            point = points[name][0]
            setup_fixed = point["peak_tensor_mb"] - point["rows"] * per_row_mb(
                a, b, PROMPT_TOKENS + point["response"], passes, small)
        residual_mb[name] = setup_fixed - bytes_per_parameter * measured_parameters / 2**20
    lines = [f"full PPO fit of the tensor peak at S3 (GPT-2 small, fp32): fixed {fixed:.0f} MB, "
             f"a {a:.3f} MB/token, b {b * 1e3:.4f} MB/1000 token^2, per row",
             f"check at {check['rows']} rows x {check['response']} response tokens: predicted {predicted:.0f} MB, "
             f"measured {check['peak_tensor_mb']} MB ({(predicted - check['peak_tensor_mb']) / check['peak_tensor_mb']:+.1%})",
             "fixed tensors besides bytes/parameter x parameters (MB): "
             + ", ".join(f"{n}: {v:.0f}" for n, v in residual_mb.items()),
             f"the process besides its tensors (RSS - tensor peak, largest measured): {host_mb} MB", "",
             f"Largest rows per step of {TABLE_PROMPT} prompt + {TABLE_RESPONSE} response tokens, fp32 "
             f"(0: the weights alone do not fit):", "",
             "| setup | memory | " + " | ".join(MODELS) + " |", "|---|---|" + "---|" * len(MODELS)]
    cells = {}
    for name, (_, passes, bytes_per_parameter) in SETUPS.items():
        for budget in BUDGETS_GB:
            row = []
            for model_name, model in MODELS.items():
                fixed_mb = residual_mb[name] + bytes_per_parameter * model[3] / 2**20
                fixed_mb += host_mb if budget == 24 else 0  # this machine: the process; a GPU: tensors only
                per_row = per_row_mb(a, b, TABLE_PROMPT + TABLE_RESPONSE, passes, model)
                rows = max(0, int((budget * 1024 - fixed_mb) // per_row))
                cells[f"{name} | {budget} GB | {model_name}"] = rows
                row.append(f"{rows}{'' if model_name == 'GPT-2 small' and budget == 24 else ' (ext.)'}")
            lines.append(f"| {name} | {budget} GB{' (this CPU)' if budget == 24 else ' (GPU)'} | "
                         + " | ".join(row) + " |")
    return "\n".join(lines), {"fit": {"fixed_mb": fixed, "a": a, "b": b}, "check_predicted_mb": predicted,
                               "check_measured_mb": check["peak_tensor_mb"], "residual_mb": residual_mb,
                               "host_mb": host_mb, "rows": cells}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--points", help="JSON of earlier measurements: skip measuring")
    parser.add_argument("--save", default="memory_points.json", help="where the measurements go")
    args = parser.parse_args(argv)
    if args.points:
        points = json.loads(pathlib.Path(args.points).read_text())
    else:
        points = measure_all(pathlib.Path(args.save))
    text, figures = table(points)
    print(text)
    print(json.dumps({"points": points, **figures}))


if __name__ == "__main__":
    main()
