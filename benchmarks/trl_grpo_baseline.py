"""The reference point of the algorithms issue: TRL 1.12's GRPOTrainer at the same shape as ppo_throughput.py.

Runs in its own environment (PyTorch, not tf_ppo's TensorFlow):

    python -m venv .venv-trl && .venv-trl/bin/pip install torch==2.13.0 trl==1.12.0 transformers tokenizers \
        accelerate datasets requests
    .venv-trl/bin/python benchmarks/trl_grpo_baseline.py --layers 4 --hidden 256     # S2

`ppo_throughput.py --algorithm grpo --compare-trl .venv-trl/bin/python` runs it
side by side with tf_ppo. The same work as tf_ppo's GRPO: GPT-2 architecture,
the shipped byte-level BPE, a reward model of the same size
(`GPT2ForSequenceClassification`), `batch` completions per update
(`batch / num_generations` prompts of exactly `prompt_length` tokens, the
same sentences, start token + their last tokens), `response_length` sampled
tokens with the end token suppressed (every completion is full length), and
`mini_batches` optimiser steps per generation batch (`steps_per_generation`),
float32, CPU, no vLLM, no gradient checkpointing. Prints one JSON line:
seconds per update (median, min, max) and the generation and scoring seconds.
"""

import argparse
import json
import pathlib
import statistics
import tempfile

import pandas as pd
import torch
from datasets import Dataset
from long_prompts import long_enough
from padded_vocabulary import padded_vocabulary
from transformers import GPT2Config, GPT2ForSequenceClassification, GPT2LMHeadModel, GPT2TokenizerFast
from trl import GRPOConfig, GRPOTrainer
from trl_timing import StepTimer, timed

DATA = pathlib.Path(__file__).resolve().parent.parent / "data"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--batch", type=int, default=64, help="completions per update (generation batch)")
    parser.add_argument("--num-generations", type=int, default=4)
    parser.add_argument("--prompt-length", type=int, default=16)
    parser.add_argument("--response-length", type=int, default=32)
    parser.add_argument("--updates", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--beta", type=float, default=0.04)
    parser.add_argument("--num-iterations", type=int, default=1)
    parser.add_argument("--mini-batches", type=int, default=2, help="optimiser steps per generation batch")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--vocab", type=int, default=0, help="pad the vocabulary to N ids (padded_vocabulary.py)")
    return parser.parse_args(argv)


class TruncatingTokenizer(GPT2TokenizerFast):
    """The reward model's tokenizer: texts cut to the model's context, as tf_ppo's RewardModel cuts them.

    Re-tokenised sampled text can be longer than the ids it was sampled as; TRL passes no truncation.
    """

    def __call__(self, *args, **kwargs):
        return super().__call__(*args, **kwargs, truncation=True, max_length=self.model_max_length)


def prompts(tokenizer, count, length):
    """Training sentences as texts of exactly `length` tokens: start token + their last `length - 1` tokens."""
    frame = pd.read_csv(DATA / "train_data.csv", keep_default_na=False)
    sentences = [f"{p} {t}" for p, t in zip(frame.input_text, frame.target)]
    sentences = long_enough(sentences, [len(row) for row in tokenizer(sentences)["input_ids"]], length - 1)
    ids = tokenizer(sentences)["input_ids"]
    texts = [tokenizer.decode([tokenizer.eos_token_id] + row[-(length - 1):]) for row in ids if len(row) >= length - 1]
    texts = [text for text in texts if len(tokenizer(text)["input_ids"]) == length][:count]  # round trip kept
    if len(texts) < count:
        raise SystemExit(f"only {len(texts)} prompts of exactly {length} tokens; {count} needed")
    return Dataset.from_dict({"prompt": texts})


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    vocabulary = padded_vocabulary(args.vocab) if args.vocab else DATA / "vocab.json"
    tokenizer = GPT2TokenizerFast(vocab=str(vocabulary), merges=str(DATA / "merges.txt"))  # ids as keras-hub
    tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    reward_tokenizer = TruncatingTokenizer(vocab=str(vocabulary), merges=str(DATA / "merges.txt"),
                                           model_max_length=args.prompt_length + args.response_length)
    reward_tokenizer.pad_token = reward_tokenizer.eos_token
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=args.prompt_length + args.response_length,
                        n_embd=args.hidden, n_layer=args.layers, n_head=args.heads, n_inner=4 * args.hidden,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, num_labels=1,
                        pad_token_id=tokenizer.pad_token_id)
    # TRL builds the reference from the policy's path: save the random-init policy and start from there.
    policy_dir = tempfile.mkdtemp(prefix="trl-grpo-policy-")
    GPT2LMHeadModel(config).save_pretrained(policy_dir)
    reward_model = GPT2ForSequenceClassification(config)
    updates = args.warmup + args.updates
    grpo_args = GRPOConfig(
        output_dir=tempfile.mkdtemp(prefix="trl-grpo-bench-"), per_device_train_batch_size=args.batch // args.mini_batches,
        gradient_accumulation_steps=1, steps_per_generation=args.mini_batches, num_generations=args.num_generations,
        num_iterations=args.num_iterations, beta=args.beta, max_completion_length=args.response_length,
        temperature=args.temperature, generation_kwargs={"suppress_tokens": [tokenizer.eos_token_id]},
        max_steps=updates * args.mini_batches * args.num_iterations, report_to="none", save_strategy="no",
        use_cpu=True, bf16=False, fp16=False, disable_tqdm=True, logging_steps=10**6, seed=0)
    timer, generation, scoring = StepTimer(), [], []
    timed(GRPOTrainer, "_generate", generation)
    timed(GRPOTrainer, "_generate_and_score_completions", scoring)
    trainer = GRPOTrainer(model=policy_dir, reward_funcs=reward_model, args=grpo_args,
                          train_dataset=prompts(tokenizer, updates * args.batch // args.num_generations,
                                                args.prompt_length),
                          processing_class=tokenizer, reward_processing_classes=reward_tokenizer, callbacks=[timer])
    trainer.train()
    steps = args.mini_batches * args.num_iterations  # optimiser steps per generation batch
    ends = timer.ends[::steps]
    seconds = [end - start for start, end in zip(ends, ends[1:])][args.warmup:]
    generate = generation[args.warmup:]
    score = [whole - gen for whole, gen in zip(scoring[args.warmup:], generate)]
    print(json.dumps({
        "trl_seconds_per_update_median": round(statistics.median(seconds), 4),
        "trl_seconds_per_update_min": round(min(seconds), 4), "trl_seconds_per_update_max": round(max(seconds), 4),
        "trl_seconds_generation": round(statistics.median(generate), 4),
        "trl_seconds_scoring_forwards": round(statistics.median(score), 4),
        "trl_seconds_optimisation": round(statistics.median(seconds) - statistics.median(scoring[args.warmup:]), 4),
        "trl_updates_timed": len(seconds), "trl_policy_parameters": sum(p.numel() for p in trainer.model.parameters()),
        "trl_reference_model": trainer.ref_model is not None, "torch": torch.__version__}))


if __name__ == "__main__":
    main()
