"""A GPT-2 gradient step with and without `tf_ppo.models.einsum.einsum_as_tensordot`, interleaved in one process.

    python benchmarks/einsum_gradients.py                       # S2: 4 layers, hidden 256, 32 rows x 48 tokens
    python benchmarks/einsum_gradients.py --layers 2 --hidden 128   # S1

Both versions are the same XLA-compiled step (next-token loss, gradients of
every weight) on the same randomly initialised model; only the tracing of
the forward pass inside the `GradientTape` differs. Calls alternate between
the two, so the machine's drift hits both alike. Prints each version's
median, the per-pair median ratio and, last, one JSON line. If a Keras
release stops running dense einsums as broadcast matmuls, the ratio goes to
1 and the block can go.
"""

import argparse
import contextlib
import json
import statistics
import time


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--batch", type=int, default=32, help="rows per optimiser step (a PPO minibatch)")
    parser.add_argument("--length", type=int, default=48, help="tokens per row (prompt + response)")
    parser.add_argument("--vocabulary", type=int, default=763)
    parser.add_argument("--calls", type=int, default=15, help="timed calls of each version")
    parser.add_argument("--threads", type=int, default=2)
    return parser.parse_args(argv)


def gradient_step(policy, block):
    """XLA-compiled next-token loss and its gradients, with the forward pass traced inside `block()`."""
    import tensorflow as tf

    from tf_ppo.sft import next_token_loss

    def step(token_ids):
        with tf.GradientTape() as tape, block():
            loss = next_token_loss(policy, token_ids, tf.ones_like(token_ids, tf.bool))
        return tape.gradient(loss, policy.trainable_variables)

    return tf.function(step, jit_compile=True)


def main(argv=None):
    args = parse_args(argv)
    import keras_hub
    import tensorflow as tf

    from ppo_throughput import set_threads
    from tf_ppo.models.einsum import einsum_as_tensordot

    set_threads(args.threads)
    policy = keras_hub.models.GPT2CausalLM(keras_hub.models.GPT2Backbone(
        vocabulary_size=args.vocabulary, num_layers=args.layers, num_heads=args.heads, hidden_dim=args.hidden,
        intermediate_dim=4 * args.hidden, max_sequence_length=args.length))
    token_ids = tf.random.stateless_uniform([args.batch, args.length], [0, 0], 0, args.vocabulary, tf.int32)
    steps = {"keras_einsum": gradient_step(policy, contextlib.nullcontext),
             "tensordot": gradient_step(policy, einsum_as_tensordot)}
    for step in steps.values():  # compile, then one warm call
        for _ in range(2):
            step(token_ids)[0].numpy()
    seconds = {name: [] for name in steps}
    for _ in range(args.calls):
        for name, step in steps.items():
            started = time.perf_counter()
            step(token_ids)[0].numpy()
            seconds[name].append(time.perf_counter() - started)
    medians = {name: statistics.median(times) for name, times in seconds.items()}
    ratio = statistics.median(a / b for a, b in zip(seconds["tensordot"], seconds["keras_einsum"]))
    for name, median in medians.items():
        print(f"{name:14s} {median * 1e3:8.1f} ms per gradient step (median of {args.calls})")
    print(f"tensordot / keras_einsum, per-pair median: {ratio:.3f}")
    print(json.dumps({"layers": args.layers, "hidden": args.hidden, "batch": args.batch, "length": args.length,
                      **{f"ms_{name}": round(median * 1e3, 2) for name, median in medians.items()},
                      "ratio_tensordot_over_keras_einsum": round(ratio, 3)}))


if __name__ == "__main__":
    main()
