"""DPO optimiser steps of the real trainer: seconds per step with a live reference and with precomputed ones.

The issue's shape: GPT-2 architecture with 4 layers, hidden 256, the shipped byte-level BPE, 32 pairs
per step, every sequence cut to exactly 64 tokens (`long_pairs.py`), float32, 2 threads:

    python benchmarks/dpo_throughput.py
    python benchmarks/dpo_throughput.py --compare-trl .venv-trl/bin/python --target-trl-ratio 0.5

It times `DPOTrainer.loop.train_step` on the run's own batches after `--warmup` steps (tracing and XLA
compilation excluded), for both reference modes, and the precompute pass; with `--compare-trl` it first
runs `trl_dpo_baseline.py` (TRL 1.12's `DPOTrainer`) in that interpreter, in both modes, one process
after the other. Prints a table and, last, one JSON line; `--target-trl-ratio R` exits 1 unless
tf_ppo's seconds per step are at most R x TRL's in both modes.
"""

import argparse
import json
import pathlib
import statistics
import sys
import tempfile
import time

import tensorflow as tf

from tf_ppo import DPOTrainer, PPOConfig
from tf_ppo.models import policy_from_config, tokenizer_for

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from long_pairs import long_pairs, write_pairs_csv  # noqa: E402
from ppo_throughput import PhasePeaks, json_of_run, set_threads  # noqa: E402

# name -> precompute_ref_log_probs. Precomputed first: TensorFlow keeps the memory a run used, so the
# second mode's peak RSS includes the first's; the precomputed mode's is then its own.
MODES = {"precomputed": True, "live": False}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--pairs", type=int, default=32, help="preference pairs per step")
    parser.add_argument("--length", type=int, default=64, help="tokens per sequence (prompt + response)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per mode")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2, help="TensorFlow intra-op threads")
    parser.add_argument("--share-prompt", action=argparse.BooleanOptionalAction, default=True,
                        help="tf_ppo computes each pair's prompt once (DPOConfig.share_prompt)")
    parser.add_argument("--compare-trl", metavar="PYTHON", help="run trl_dpo_baseline.py with this interpreter")
    parser.add_argument("--target-trl-ratio", type=float, help="assert seconds per step <= R x TRL's, both modes")
    return parser.parse_args(argv)


def trl_baseline(args, precompute):
    """TRL's DPOTrainer at the same shape, in its own process; its JSON figures."""
    flags = ["--layers", args.layers, "--hidden", args.hidden, "--heads", args.heads, "--pairs", args.pairs,
             "--length", args.length, "--steps", args.steps, "--warmup", args.warmup, "--threads", args.threads]
    script = pathlib.Path(__file__).with_name("trl_dpo_baseline.py")
    command = [args.compare_trl, str(script), *map(str, flags)] + (["--precompute"] if precompute else [])
    return json_of_run(command, script.name)


def build_trainer(args, precompute, pairs_csv):
    config = PPOConfig(
        run_dir=tempfile.mkdtemp(prefix="dpo-bench-") + "/run", reward={"preferences_csv": str(pairs_csv)},
        model={"num_layers": args.layers, "hidden_dim": args.hidden, "num_heads": args.heads,
               "intermediate_dim": 4 * args.hidden,
               "max_sequence_length": max(args.length, 32)},  # PPO's default prompt + response fit too
        dpo={"batch_size": args.pairs, "max_length": args.length, "precompute_ref_log_probs": precompute,
             "share_prompt": args.share_prompt})
    # A fresh model of the shape (no SFT): the step's cost does not depend on the weights.
    policy = policy_from_config(config, tokenizer_for(config))
    return DPOTrainer(config, policy=policy, show_progress=False)


def sequence_lengths(pairs):
    """The set of tokens per sequence (prompt + response) of encoded pairs, packed or not."""
    if "member_ids" in pairs:  # a row per pair: members 0 (the prompt), 1 (chosen), 2 (rejected)
        members, real = pairs["member_ids"], pairs["group_ids"] > 0
        shared = ((members == 0) & real).sum(1)
        return {int(n) for n in (shared + (members == 1).sum(1))} | {int(n) for n in (shared + (members == 2).sum(1))}
    return {int(n) for n in pairs["chosen_padding"].sum(1)} | {int(n) for n in pairs["rejected_padding"].sum(1)}


def timed_mode(args, precompute, pairs_csv):
    """Seconds per step (median, min, max) of one reference mode, the precompute pass's seconds, peak RSS."""
    resettable = PhasePeaks.reset_peak()
    trainer = build_trainer(args, precompute, pairs_csv)
    pairs = dict(trainer.train_pairs)
    started = time.perf_counter()
    if precompute:
        pairs["ref_chosen"], pairs["ref_rejected"], _, _ = trainer.pair_logps(pairs, batch_size=args.pairs)
    precompute_seconds = time.perf_counter() - started
    rows = len(next(iter(trainer.train_pairs.values())))
    batches = [{key: tf.constant(value[start: start + args.pairs]) for key, value in pairs.items()}
               for start in range(0, rows - args.pairs + 1, args.pairs)]
    lengths = sequence_lengths(trainer.train_pairs)
    if lengths != {args.length}:
        raise SystemExit(f"sequences are {sorted(lengths)} tokens, not exactly {args.length}")
    seconds = []
    for index in range(args.warmup + args.steps):
        step_started = time.perf_counter()
        metrics = trainer.loop.train_step(batches[index % len(batches)])
        float(metrics["loss"])  # waits for the step
        seconds.append(time.perf_counter() - step_started)
    timed = seconds[args.warmup:]
    return {"seconds_per_step_median": round(statistics.median(timed), 4), "seconds_per_step_min": round(min(timed), 4),
            "seconds_per_step_max": round(max(timed), 4), "precompute_seconds": round(precompute_seconds, 3),
            "share_prompt": trainer.packed,
            "reference_parameters": 0 if trainer.reference is None else trainer.reference.count_params(),
            "parameter_report": trainer.parameter_report,
            "peak_rss_mb": PhasePeaks.status_mb("VmHWM:") if resettable else None}


def main(argv=None):
    args = parse_args(argv)
    if args.target_trl_ratio is not None and not args.compare_trl:
        raise SystemExit("--target-trl-ratio needs --compare-trl")
    trl = {name: trl_baseline(args, precompute) for name, precompute in MODES.items()} if args.compare_trl else {}
    set_threads(args.threads)
    pairs_csv = write_pairs_csv(long_pairs(args.pairs * (args.warmup + args.steps)))
    result = {name: timed_mode(args, precompute, pairs_csv) for name, precompute in MODES.items()}
    for name in MODES:
        if trl:
            result[name]["trl"] = trl[name]
            result[name]["tf_ppo_over_trl"] = round(result[name]["seconds_per_step_median"]
                                                    / trl[name]["trl_seconds_per_step_median"], 3)
    print(f"{'reference':14s}{'tf_ppo s/step':>15s}" + (f"{'TRL s/step':>13s}{'ratio':>8s}" if trl else ""))
    for name, row in result.items():
        print(f"{name:14s}{row['seconds_per_step_median']:>15.4f}" + (
            f"{row['trl']['trl_seconds_per_step_median']:>13.4f}{row['tf_ppo_over_trl']:>8.3f}" if trl else ""))
    for name, row in result.items():
        print(f"{name}: peak RSS {row['peak_rss_mb']} MB; " + row["parameter_report"].replace("\n", "; "))
    print(f"precompute pass over {args.pairs * (args.warmup + args.steps)} pairs: "
          f"{result['precomputed']['precompute_seconds']:.2f} s")
    failed = False
    if args.target_trl_ratio is not None:
        for name, row in result.items():
            met = row["tf_ppo_over_trl"] <= args.target_trl_ratio
            failed |= not met
            print(f"target {name}: tf_ppo_over_trl {row['tf_ppo_over_trl']} <= {args.target_trl_ratio}: "
                  f"{'met' if met else 'NOT MET'}")
    print(json.dumps(result))
    if failed:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
