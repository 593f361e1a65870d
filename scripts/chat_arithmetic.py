"""GRPO on the arithmetic task from an instruct-style tiny Gemma 3, with chat-formatted prompts (issue 34).

1. A tiny Gemma 3 (text only, `tests/presets.py`'s builder) with a SentencePiece tokenizer trained on the
   shipped problems, its chat markers as single tokens.
2. SFT on the shipped problems in chat format: each problem a one-message conversation, its worked answer the
   assistant's reply, closed by `<end_of_turn>`. The result is saved as the "instruct" preset.
3. GRPO from that preset, prompts as conversations (Gemma's template), replies stopping at `<end_of_turn>`.

Prints held-out greedy exact-match accuracy and pass@4 of the instruct preset (before RL) and after RL, then
one JSON line.

    .venv/bin/python scripts/chat_arithmetic.py --seed 0 [--work DIR]
"""

import argparse
import json
import pathlib
import sys
import tempfile

import pandas as pd

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # tests.presets, from a checkout

import tf_ppo  # noqa: E402
from tests import presets  # noqa: E402
from tf_ppo.cli import ARITHMETIC_DEMO  # noqa: E402
from tf_ppo.config import TASK_DEFAULTS  # noqa: E402


def chat_csv(source, destination):
    """The problems of an `input_text,target` CSV with each prompt as a one-message conversation (JSON)."""
    frame = pd.read_csv(source)
    frame["input_text"] = [json.dumps([{"role": "user", "content": text}]) for text in frame.input_text]
    frame.to_csv(destination, index=False)
    return str(destination)


def instruct_preset(work, args):
    """Build the tiny Gemma 3, SFT it on chat-formatted problems, save it as a preset; its directory."""
    arithmetic = TASK_DEFAULTS["arithmetic"]
    corpus = work / "corpus.txt"
    train = pd.read_csv(arithmetic["prompts"])
    corpus.write_text("\n".join(f"{prompt} {target}" for prompt, target in zip(train.input_text, train.target)))
    base = work / "base"
    presets.causal_lm("gemma3", hidden_dim=args.hidden_dim, num_layers=args.num_layers,
                      corpus=corpus).save_to_preset(str(base))
    config = sft_config(work, base, args)
    result = tf_ppo.sft(config, show_progress=False)
    print(f"SFT: held-out loss {result.history[-1]['heldout_loss']:.3f} after {config.sft.epochs} epochs")
    tf_ppo.save_preset(result.policy, result.policy.preprocessor.tokenizer, work / "instruct")
    return work / "instruct"


def sft_config(work, preset, args):
    arithmetic = TASK_DEFAULTS["arithmetic"]
    return tf_ppo.PPOConfig(
        task="arithmetic", model=str(preset), seed=args.seed,
        prompts=chat_csv(arithmetic["prompts"], work / "train_chat.csv"),
        eval_prompts_csv=chat_csv(arithmetic["eval_prompts_csv"], work / "heldout_chat.csv"),
        max_prompt_length=args.max_prompt_length, response_length=args.response_length,
        sft={"train_csv": str(work / "train_chat.csv"), "epochs": args.sft_epochs, "max_length": 64,
             "seed": args.seed})


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", help="directory for the presets, data and run (default: a new temporary one)")
    parser.add_argument("--updates", type=int, default=ARITHMETIC_DEMO["grpo"]["total_updates"])
    parser.add_argument("--sft_epochs", type=int, default=TASK_DEFAULTS["arithmetic"]["sft"]["epochs"])
    parser.add_argument("--hidden_dim", type=int, default=128)
    parser.add_argument("--num_layers", type=int, default=2)
    parser.add_argument("--max_prompt_length", type=int, default=48)
    # This tokenizer splits digits: a worked answer takes up to 18 tokens and the end of turn, GPT-2's 12.
    parser.add_argument("--response_length", type=int, default=20)
    args = parser.parse_args()
    work = pathlib.Path(args.work or tempfile.mkdtemp(prefix="chat_arithmetic_"))
    work.mkdir(parents=True, exist_ok=True)
    preset = instruct_preset(work, args)
    grpo = {**ARITHMETIC_DEMO["grpo"], "total_updates": args.updates, "eval_every": 0}  # before and after only
    config = sft_config(work, preset, args).replace(algorithm="grpo", run_dir=str(work / "grpo"), **grpo)
    result = tf_ppo.train(config)
    before, after = result.evaluation_before, result.evaluation_after
    for name, figures in (("instruct preset (SFT)", before), ("after GRPO", after)):
        print(f"{name}: accuracy {figures['accuracy']:.1%}, pass@4 {figures['pass@4']:.1%}")
    print("sample:", after["greedy_samples"][0])
    print(json.dumps({"seed": args.seed, "accuracy_before": before["accuracy"], "accuracy_after": after["accuracy"],
                      "pass@4_before": before["pass@4"], "pass@4_after": after["pass@4"],
                      "updates": args.updates, "work": str(work)}))


if __name__ == "__main__":
    main()
