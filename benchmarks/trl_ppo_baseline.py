"""The reference point of the performance issue: TRL 1.12's PPOTrainer at the same shape as ppo_throughput.py.

Runs in its own environment (PyTorch, not tf_ppo's TensorFlow):

    python -m venv .venv-trl && .venv-trl/bin/pip install torch==2.13.0 trl==1.12.0
    .venv-trl/bin/python benchmarks/trl_ppo_baseline.py --layers 2 --hidden 128     # S1

`ppo_throughput.py --compare-trl .venv-trl/bin/python` runs it side by side
with tf_ppo. Same work as tf_ppo's benchmark: GPT-2 architecture, the shipped
byte-level BPE, a separate value model and a reward model of the same size
(`GPT2ForSequenceClassification`), `batch` rollouts of prompts of exactly
`prompt_length` tokens (the same sentences, start token + their last tokens),
`response_length` sampled tokens with no stop token, 4 PPO epochs x 2
minibatches of one micro-batch each (8 optimiser steps per update), float32, CPU.
Prints one JSON line: seconds per update (median, min, max) and generation seconds.
"""

import argparse
import json
import pathlib
import statistics
import tempfile

import pandas as pd
import torch
import trl.experimental.ppo.ppo_trainer as ppo_trainer
from datasets import Dataset
from padded_vocabulary import padded_vocabulary
from transformers import GPT2Config, GPT2ForSequenceClassification, GPT2LMHeadModel, GPT2TokenizerFast
from trl.experimental.ppo import PPOConfig, PPOTrainer
from trl_timing import StepTimer, timed

DATA = pathlib.Path(__file__).resolve().parent.parent / "data"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--prompt-length", type=int, default=16)
    parser.add_argument("--response-length", type=int, default=32)
    parser.add_argument("--updates", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--ppo-epochs", type=int, default=4)
    parser.add_argument("--mini-batches", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--vocab", type=int, default=0, help="pad the vocabulary to N ids (padded_vocabulary.py)")
    return parser.parse_args(argv)


def prompts(tokenizer, count, length):
    """Training sentences as exactly `length` token ids: start token + their last `length - 1` tokens."""
    frame = pd.read_csv(DATA / "train_data.csv", keep_default_na=False)
    ids = tokenizer([f"{p} {t}" for p, t in zip(frame.input_text, frame.target)])["input_ids"]
    rows = [[tokenizer.eos_token_id] + row[-(length - 1):] for row in ids if len(row) >= length - 1]
    return Dataset.from_dict({"input_ids": rows[:count]})


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    vocabulary = padded_vocabulary(args.vocab) if args.vocab else DATA / "vocab.json"
    tokenizer = GPT2TokenizerFast(vocab=str(vocabulary), merges=str(DATA / "merges.txt"))  # ids as keras-hub
    tokenizer.pad_token = tokenizer.eos_token
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=args.prompt_length + args.response_length,
                        n_embd=args.hidden, n_layer=args.layers, n_head=args.heads, n_inner=4 * args.hidden,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, num_labels=1,
                        pad_token_id=tokenizer.pad_token_id)
    policy, reference = GPT2LMHeadModel(config), GPT2LMHeadModel(config)
    value_model, reward_model = GPT2ForSequenceClassification(config), GPT2ForSequenceClassification(config)
    updates = args.warmup + args.updates
    ppo_args = PPOConfig(
        output_dir=tempfile.mkdtemp(prefix="trl-bench-"), per_device_train_batch_size=args.batch,
        gradient_accumulation_steps=1, num_mini_batches=args.mini_batches, num_ppo_epochs=args.ppo_epochs,
        response_length=args.response_length, temperature=args.temperature, stop_token=None,
        total_episodes=args.batch * updates, local_rollout_forward_batch_size=args.batch,
        num_sample_generations=0, report_to="none", save_strategy="no", use_cpu=True, bf16=False, fp16=False,
        disable_tqdm=True, logging_steps=10**6, seed=0)
    timer, generation = StepTimer(), []
    timed(ppo_trainer, "batch_generation", generation)
    trainer = PPOTrainer(args=ppo_args, processing_class=tokenizer, model=policy, ref_model=reference,
                         reward_model=reward_model, value_model=value_model,
                         train_dataset=prompts(tokenizer, args.batch * updates, args.prompt_length),
                         callbacks=[timer])
    trainer.train()
    seconds = [end - start for start, end in zip(timer.ends, timer.ends[1:])][args.warmup:]
    print(json.dumps({
        "trl_seconds_per_update_median": round(statistics.median(seconds), 4),
        "trl_seconds_per_update_min": round(min(seconds), 4), "trl_seconds_per_update_max": round(max(seconds), 4),
        "trl_seconds_generation": round(statistics.median(generation[args.warmup:]), 4),
        "trl_updates_timed": len(seconds), "trl_policy_parameters": sum(p.numel() for p in policy.parameters()),
        "torch": torch.__version__}))


if __name__ == "__main__":
    main()
