"""What fits in memory: the largest minibatch of rows for full PPO, PPO with LoRA and GRPO (beta 0).

Measured on this machine, then extrapolated, in float32 (what tf_ppo runs on CPU):

1. **Measured.** The peak tensor memory (TensorFlow's CPU allocator: weights, gradients, Adam,
   activations and XLA's buffers, the figure a GPU would have to hold) and the peak resident memory of
   whole processes, each running one update of `ppo_throughput.py` at S3 with GPT-2's vocabulary
   (12 layers, hidden 768, 12 heads, `--vocab 50257`: GPT-2 small, 124 M parameters), one minibatch
   of `rows` rollouts of 16 prompt tokens, at several rows and response lengths. The three setups:
   - full PPO: policy, reference, value model and a Keras reward model, Adam for policy and value;
   - PPO with LoRA: one base copy (policy, adapters-off reference and value head share it), a Python
     reward function (a Keras reward model would add one more copy of the weights);
   - GRPO with `beta = 0`: the policy alone and its Adam, a Python reward function.
2. **Per parameter and per row.** The persistent tensors are counted per parameter: 4 bytes per
   weight copy and 8 for Adam's two moments (full PPO 32, LoRA 4, GRPO 12). Full PPO's two points at
   128 response tokens (8 and 16 rows) give its fixed part and its cost per row; that fixed part is
   checked against the count. Each other setup's one point, less its count, gives its cost per row.
3. **Extrapolated.** To other response lengths and models, the cost per row is scaled by the
   activation memory of a transformer per sequence (Korthikanti et al. 2022, in fp32): per layer
   T (68 h + 10 heads T) bytes, plus 12 V bytes per response token for the logits, times the trained
   passes. Full PPO's points at 32 and 256 response tokens check that scaling. The 24 GB column adds
   what the process holds besides tensors (TensorFlow, Python, compiled programs, the C heap; the
   largest measured); the 80 GB column is a GPU's memory and counts tensors only. Only the GPT-2 small
   entries at 128 response tokens rest on measured points; every other entry is an estimate.

    python benchmarks/memory_table.py                     # measure (about 15 minutes here), then the table
    python benchmarks/memory_table.py --points docs/memory_points.json  # the table from saved points
"""

import argparse
import json
import pathlib
import sys

from ppo_throughput import json_of_run  # benchmarks/ is on the path: run as a script

HERE = pathlib.Path(__file__).resolve().parent
PROMPT_TOKENS = 16  # the measured runs' prompt length
S3 = ["--layers", "12", "--hidden", "768", "--heads", "12", "--vocab", "50257"]
SETUPS = {  # flags of ppo_throughput.py; trained passes per step; persistent bytes per parameter
    "full PPO (4 models + Adam)": (["--reward", "model"], 2, 4 * 4 + 2 * 8),
    "PPO with LoRA (one base copy)": (["--lora-rank", "8", "--reward", "function"], 2, 4),
    "GRPO, beta = 0 (one model)": (["--algorithm", "grpo", "--num-generations", "4", "--beta", "0",
                                    "--reward", "function"], 1, 4 + 8),
}
FULL_PPO = next(iter(SETUPS))
FIT_POINTS = [(8, 32), (8, 128), (8, 256)]  # (rows, response tokens) of full PPO; 32 and 256 check the scaling
CHECK_POINT = (16, 128)  # with (8, 128): full PPO's fixed part and cost per row
OTHER_SETUPS_POINT = (8, 128)
MEASURED_RESPONSE = 128
MODELS = {  # layers, hidden, heads, vocabulary, parameters
    "GPT-2 small": (12, 768, 12, 50257, 124.4e6),
    "GPT-2 medium (355 M)": (24, 1024, 16, 50257, 354.8e6),
    "1 B (Llama 3.2 1B shape)": (16, 2048, 32, 128256, 1.24e9),
    "8 B (Llama 3.1 8B shape)": (32, 4096, 32, 128256, 8.03e9),
}
BUDGETS_GB = (24, 80)
TABLE_RESPONSES = (128, 512)  # the response lengths the table sizes rows for (16-token prompts)


def measure(setup_flags, rows, response):
    """Peak tensor memory and peak RSS (MB), and policy parameters, of one update in a fresh process."""
    command = [sys.executable, str(HERE / "ppo_throughput.py"), *S3, *setup_flags, "--batch", str(rows),
               "--mini-batches", "1", "--ppo-epochs", "1", "--response-length", str(response),
               "--prompt-length", str(PROMPT_TOKENS), "--warmup", "0", "--updates", "1"]
    result = json_of_run(command, " ".join(command))
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


def activation_bytes(model, response):
    """Korthikanti et al.'s activation memory of one sequence in one trained pass, in fp32 (bytes)."""
    layers, hidden, heads, vocabulary, _ = model
    tokens = PROMPT_TOKENS + response
    return layers * tokens * (68 * hidden + 10 * heads * tokens) + 12 * vocabulary * response


def per_row_mb(measured_per_row_mb, model, response, small=MODELS["GPT-2 small"]):
    """A setup's measured cost per row at GPT-2 small and 128 response tokens, scaled to `model`, `response`."""
    return measured_per_row_mb * activation_bytes(model, response) / activation_bytes(small, MEASURED_RESPONSE)


def parameter_mb(bytes_per_parameter, parameters):
    return bytes_per_parameter * parameters / 2**20


def fit(points):
    """`(full PPO's fixed MB, {setup: cost per row in MB at GPT-2 small, 128 response tokens})`."""
    eight = next(p for p in points[FULL_PPO] if (p["rows"], p["response"]) == OTHER_SETUPS_POINT)
    sixteen = points["check"][0]
    full_per_row = (sixteen["peak_tensor_mb"] - eight["peak_tensor_mb"]) / (sixteen["rows"] - eight["rows"])
    fixed = eight["peak_tensor_mb"] - eight["rows"] * full_per_row
    per_row = {FULL_PPO: full_per_row}
    for name, (_, _, bytes_per_parameter) in SETUPS.items():
        if name != FULL_PPO:
            point = points[name][0]
            per_row[name] = (point["peak_tensor_mb"] - parameter_mb(bytes_per_parameter, point["policy_parameters"])
                             ) / point["rows"]
    return fixed, per_row


def table(points):
    fixed, per_row = fit(points)
    small = MODELS["GPT-2 small"]
    parameters = points[FULL_PPO][0]["policy_parameters"]
    every_point = [p for group in points.values() for p in group]
    host_mb = max(p["peak_rss_mb"] - p["peak_tensor_mb"] for p in every_point)  # the process besides tensors
    lines = [f"full PPO at S3 (GPT-2 small, fp32, 128 response tokens): fixed {fixed:.0f} MB (counted: "
             f"{parameter_mb(SETUPS[FULL_PPO][2], parameters):.0f} MB), {per_row[FULL_PPO]:.0f} MB per row"]
    for point in points[FULL_PPO]:
        if point["response"] != MEASURED_RESPONSE:
            predicted = fixed + point["rows"] * per_row_mb(per_row[FULL_PPO], small, point["response"])
            lines.append(f"scaling check, {point['rows']} rows x {point['response']} response tokens: predicted "
                         f"{predicted:.0f} MB, measured {point['peak_tensor_mb']:.0f} MB "
                         f"({(predicted - point['peak_tensor_mb']) / point['peak_tensor_mb']:+.0%})")
    lines += ["per row at 128 response tokens (MB): " + ", ".join(f"{n}: {v:.0f}" for n, v in per_row.items()),
              f"the process besides its tensors (RSS - tensor peak, largest measured): {host_mb:.0f} MB", "",
              "Largest rows per step (16 prompt tokens + 128 / + 512 response tokens), fp32; 0: does not fit:", "",
              "| setup | memory | " + " | ".join(MODELS) + " |", "|---|---|" + "---|" * len(MODELS)]
    cells = {}
    for name, (_, _, bytes_per_parameter) in SETUPS.items():
        for budget in BUDGETS_GB:
            row = []
            for model_name, model in MODELS.items():
                fixed_mb = fixed if name == FULL_PPO else parameter_mb(bytes_per_parameter, parameters)
                fixed_mb += parameter_mb(bytes_per_parameter, model[4] - parameters)
                fixed_mb += host_mb if budget == 24 else 0  # this machine: the process; a GPU: tensors only
                fitting = [max(0, int((budget * 1024 - fixed_mb) // per_row_mb(per_row[name], model, response)))
                           for response in TABLE_RESPONSES]
                cells[f"{name} | {budget} GB | {model_name}"] = dict(zip(TABLE_RESPONSES, fitting))
                row.append(" / ".join(map(str, fitting)))
            lines.append(f"| {name} | {budget} GB{' (this CPU)' if budget == 24 else ' (GPU)'} | "
                         + " | ".join(row) + " |")
    return "\n".join(lines), {"fixed_mb": fixed, "per_row_mb": per_row, "host_mb": host_mb, "rows": cells}


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
