"""Peak memory of scoring response log-probs: the output head at the response positions only vs over every position.

    python benchmarks/response_logits_memory.py            # GPT-2's 50,257-token vocabulary, 256 + 32 tokens

`tf_ppo.models.forward.response_logits` gathers the backbone's hidden states at the
positions that predict a response token and applies the vocabulary projection
there. The alternative runs the whole model (logits at every position) and
gathers after. Each way runs in its own process (peak RSS only grows), on a
randomly initialised 2-layer GPT-2 with the real vocabulary size; it prints
both peaks and, last, one JSON line.
"""

import argparse
import json
import resource
import subprocess
import sys


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--prompt-length", type=int, default=256)
    parser.add_argument("--response-length", type=int, default=32)
    parser.add_argument("--vocabulary", type=int, default=50257)
    parser.add_argument("--way", choices=["response_positions", "every_position"], help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def peak_rss_mb(args):
    """Score once, the chosen way, in this process (XLA-compiled, as the trainer does); peak RSS in MB."""
    import keras_hub
    import tensorflow as tf

    from tf_ppo.rl.functional import masked
    from tf_ppo.models.forward import response_logits

    length = args.prompt_length + args.response_length
    policy = keras_hub.models.GPT2CausalLM(keras_hub.models.GPT2Backbone(
        vocabulary_size=args.vocabulary, num_layers=2, num_heads=2, hidden_dim=64, intermediate_dim=128,
        max_sequence_length=length))
    sequence_ids = tf.random.uniform([args.batch, length], 0, args.vocabulary, tf.int32)
    positions = tf.tile(tf.range(args.prompt_length, length)[None], [args.batch, 1])  # [batch, R]
    tokens = tf.gather(sequence_ids, positions, batch_dims=1)

    def every_position(ids):
        logits = policy({"token_ids": ids, "padding_mask": tf.ones_like(ids, tf.bool)})  # [batch, S, V]
        return masked.logprobs_from_logits(tf.gather(logits, positions - 1, batch_dims=1), tokens)

    def response_positions(ids):
        return masked.logprobs_from_logits(response_logits(policy, ids, positions), tokens)

    score = tf.function(response_positions if args.way == "response_positions" else every_position, jit_compile=True)
    score(sequence_ids).numpy()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024


def main(argv=None):
    args = parse_args(argv)
    if args.way:
        print(peak_rss_mb(args))
        return
    flags = [f"--batch={args.batch}", f"--prompt-length={args.prompt_length}",
             f"--response-length={args.response_length}", f"--vocabulary={args.vocabulary}"]
    result = {}
    for way in ("response_positions", "every_position"):
        completed = subprocess.run([sys.executable, __file__, *flags, f"--way={way}"], capture_output=True, text=True)
        if completed.returncode:
            raise SystemExit(f"{way} failed:\n{completed.stderr[-2000:]}")
        result[f"peak_rss_mb_{way}"] = int(completed.stdout.strip().splitlines()[-1])
        print(f"{way:20s} peak RSS {result[f'peak_rss_mb_{way}']:6d} MB")
    print(json.dumps({"batch": args.batch, "prompt_length": args.prompt_length,
                      "response_length": args.response_length, "vocabulary": args.vocabulary, **result}))


if __name__ == "__main__":
    main()
