"""A 2-turn episode with a 16-token tool reply against a single-turn rollout of the same total length.

Issue 35's speed bar, at S2 (GPT-2 architecture, 4 layers, hidden 256, 64 rows of 16 prompt tokens):

    python benchmarks/multi_turn.py                      # turns of 8 tokens, a reply of 16: 32 response slots
    python benchmarks/multi_turn.py --target-ratio 1.3   # exit 1 when the episode takes more than 1.3x

The single-turn rollout samples 32 tokens per row (`RolloutEngine.sample`). The episode samples a turn of 8
tokens, the host writes a 16-token reply after each row's turn (`tf_ppo.rl.episodes.run_episodes`, with a
real environment stepped per row), and the next turn appends the reply to the cache and samples 8 more.
An untrained model has no end of turn to stop at, so each turn's last token is made the stop token at the
turn's budget, as a trained model's would be; the sampler and the host path are the ones training runs.

Prints the median of `--repeats` timed runs of each (after an untimed one: tracing and XLA compilation), the
ratio, and one JSON line.
"""

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time

import numpy as np
import tensorflow as tf

from tf_ppo import PPOConfig
from tf_ppo.models import build_policy, load_tokenizer
from tf_ppo.rl.environment import Environment
from tf_ppo.rl.episodes import run_episodes
from tf_ppo.rl.rollout import RolloutEngine

from ppo_throughput import set_threads  # noqa: E402  (benchmarks/ is on the path: run as a script)

REPLY_TOKENS = 16


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--batch", type=int, default=64, help="rows")
    parser.add_argument("--prompt-length", type=int, default=16)
    parser.add_argument("--turn-tokens", type=int, default=8, help="model tokens per turn (two turns)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--target-ratio", type=float, default=None, help="exit 1 if episode / single-turn exceeds it")
    return parser.parse_args(argv)


class FixedReply(Environment):
    """Answers the first turn with `reply` (16 tokens) and ends the episode after the second."""

    def __init__(self, reply):
        self.reply, self.turns = reply, 0

    def step(self, model_text):
        self.turns += 1
        return (self.reply, 0.0, False) if self.turns == 1 else (None, 0.0, True)


def build_engine(args):
    response_length = 2 * args.turn_tokens + REPLY_TOKENS
    config = PPOConfig(model={"num_layers": args.layers, "hidden_dim": args.hidden, "num_heads": args.heads,
                              "intermediate_dim": 4 * args.hidden,
                              "max_sequence_length": args.prompt_length + response_length},
                       batch_size=args.batch, max_prompt_length=args.prompt_length, response_length=response_length,
                       temperature=0.7, stop_at_eos=False, truncate_prompts=True, max_turns=2,
                       max_tokens_per_turn=args.turn_tokens,
                       fluency_corpus=None, run_dir=tempfile.mkdtemp(prefix="tf_ppo-bench-"), strategy="default")
    tokenizer = load_tokenizer(config.vocabulary, config.merges)
    policy = build_policy(config.model, tokenizer.vocabulary_size())
    engine = RolloutEngine(config, policy, tokenizer, tf.distribute.get_strategy(), [], ())
    return config, tokenizer, engine


def reply_of(tokenizer, length):
    """A text of exactly `length` tokens."""
    for words in range(1, length + 1):
        text = " " + " ".join(["ok"] * words)
        if len(tokenizer(text)) == length:
            return text
    raise ValueError(f"no reply of {length} tokens")


def ending_at_budget(one_turn, stop_token):
    """`one_turn` whose turns end with `stop_token` at their budget (their last sampled slot)."""
    def turn_with_stop(buffer, cache, turn, index):
        sampled = one_turn(buffer, cache, turn, index)
        buffer, turn_end = np.array(sampled.buffer), np.asarray(sampled.turn_end)
        wrote = turn_end > turn.forced_until
        buffer[np.flatnonzero(wrote), turn_end[wrote] - 1] = stop_token
        return sampled._replace(buffer=buffer)
    return turn_with_stop


def median_seconds(run, repeats):
    run()  # tracing and XLA compilation
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main(argv=None):
    args = parse_args(argv)
    set_threads(args.threads)
    config, tokenizer, engine = build_engine(args)
    prompts = [f"the film number {i} was one of the best and the worst of the year" for i in range(args.batch)]
    prompt_ids, prompt_lengths = engine.encode(prompts)
    prompt_ids, prompt_lengths = np.asarray(prompt_ids), np.asarray(prompt_lengths)
    seed = tf.constant([0, 1])
    reply = reply_of(tokenizer, REPLY_TOKENS)
    stop_token = engine.stop_token_ids[0]
    prompt_texts = list(engine.prompt_texts(prompt_ids, prompt_lengths))
    tokenize = lambda text: list(np.asarray(tokenizer(text)))  # noqa: E731
    detokenize = lambda token_ids: str(tokenizer.detokenize(np.asarray(token_ids, np.int32)))  # noqa: E731

    def single_turn():
        engine.sample(prompt_ids, prompt_lengths, seed).numpy()

    def episode():
        return run_episodes(ending_at_budget(engine.turn_sampler(seed), stop_token),
                            [FixedReply(reply) for _ in prompts], prompt_ids, prompt_lengths, prompt_texts,
                            config.response_length, tokenize, detokenize, (stop_token,), 2,
                            args.turn_tokens)

    episodes = episode()
    if not (episodes.environment_mask.sum(axis=1) == REPLY_TOKENS).all() or (episodes.turns != 2).any():
        raise SystemExit("the episodes are not 2 turns with a 16-token reply: the benchmark measures nothing")
    single_seconds = median_seconds(single_turn, args.repeats)
    episode_seconds = median_seconds(episode, args.repeats)
    ratio = episode_seconds / single_seconds
    print(f"{args.batch} rows, {args.prompt_length} prompt tokens, {args.layers} layers, hidden {args.hidden}, "
          f"{args.threads} threads ({platform.processor() or platform.machine()})")
    print(f"single-turn rollout, {config.response_length} sampled tokens:        {single_seconds:.3f} s")
    print(f"2-turn episode, {args.turn_tokens} + {REPLY_TOKENS}-token reply + {args.turn_tokens} tokens: "
          f"{episode_seconds:.3f} s  ({ratio:.2f}x)")
    met = args.target_ratio is None or ratio <= args.target_ratio
    if args.target_ratio is not None:
        print(f"target: at most {args.target_ratio}x: {'met' if met else 'NOT MET'}")
    print(json.dumps({"single_turn_seconds": round(single_seconds, 4), "episode_seconds": round(episode_seconds, 4),
                      "ratio": round(ratio, 3), "rows": args.batch, "layers": args.layers, "hidden": args.hidden}))
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
