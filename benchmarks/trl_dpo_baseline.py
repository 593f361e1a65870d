"""TRL 1.12's DPOTrainer at the shape of dpo_throughput.py, in its own environment (PyTorch).

    python -m venv .venv-trl && .venv-trl/bin/pip install torch==2.13.0 trl==1.12.0
    .venv-trl/bin/python benchmarks/trl_dpo_baseline.py [--precompute]

GPT-2 architecture (4 layers, hidden 256 by default), the shipped byte-level BPE, `pairs` preference pairs
per step whose prompt + response is cut to exactly `length` tokens (`long_pairs.py`), a live reference
model or precomputed reference log-probs, float32, CPU, `threads` threads. Prints one JSON line: seconds
per optimiser step (median, min, max, after `warmup` steps) and, with --precompute, the precompute pass.
"""

import argparse
import json
import statistics
import tempfile
import time

import torch
from datasets import Dataset
from long_pairs import DATA, long_pairs
from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast
from trl import DPOConfig, DPOTrainer
from trl_timing import StepTimer


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--pairs", type=int, default=32)
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--precompute", action="store_true", help="precompute_ref_log_probs=True")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    tokenizer = GPT2TokenizerFast(vocab=str(DATA / "vocab.json"), merges=str(DATA / "merges.txt"))
    tokenizer.pad_token = tokenizer.eos_token
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=args.length, n_embd=args.hidden, n_layer=args.layers,
                        n_head=args.heads, n_inner=4 * args.hidden, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                        pad_token_id=tokenizer.pad_token_id)
    policy = GPT2LMHeadModel(config)
    reference = None if args.precompute else GPT2LMHeadModel(config)
    steps = args.warmup + args.steps
    rows = long_pairs(args.pairs * steps)
    dataset = Dataset.from_dict({"prompt": [r[0] for r in rows], "chosen": [" " + r[1] for r in rows],
                                 "rejected": [" " + r[2] for r in rows]})
    dpo_args = DPOConfig(
        output_dir=tempfile.mkdtemp(prefix="trl-dpo-bench-"), per_device_train_batch_size=args.pairs,
        gradient_accumulation_steps=1, max_steps=steps, max_length=args.length, truncation_mode="keep_start",
        precompute_ref_log_probs=args.precompute, precompute_ref_batch_size=args.pairs, beta=0.1,
        loss_type=["sigmoid"], report_to="none", save_strategy="no", use_cpu=True, bf16=False, fp16=False,
        disable_tqdm=True, logging_steps=10**6, seed=0, dataloader_drop_last=True)
    timer = StepTimer()
    started = time.perf_counter()
    trainer = DPOTrainer(model=policy, ref_model=reference, args=dpo_args, train_dataset=dataset,
                         processing_class=tokenizer, callbacks=[timer])
    setup_seconds = time.perf_counter() - started  # tokenising, and with --precompute the reference pass
    lengths = {len(p) + len(c) for p, c in zip(trainer.train_dataset["prompt_ids"], trainer.train_dataset["chosen_ids"])}
    trainer.train()
    seconds = [end - start for start, end in zip(timer.ends, timer.ends[1:])][args.warmup:]
    print(json.dumps({
        "trl_seconds_per_step_median": round(statistics.median(seconds), 4),
        "trl_seconds_per_step_min": round(min(seconds), 4), "trl_seconds_per_step_max": round(max(seconds), 4),
        "trl_steps_timed": len(seconds), "trl_setup_seconds": round(setup_seconds, 3),
        "trl_precompute": args.precompute, "trl_untruncated_lengths_min": min(lengths),
        "trl_policy_parameters": sum(p.numel() for p in policy.parameters()), "torch": torch.__version__}))


if __name__ == "__main__":
    main()
