"""Train the tests' tiny PPO config for a few updates and save every policy and value weight (.npz).

Run it on two checkouts to check a refactor left PPO unchanged:
    git worktree add /tmp/before <commit>
    PYTHONPATH=/tmp/before python scripts/weights_after_updates.py /tmp/before.npz
    python scripts/weights_after_updates.py /tmp/after.npz
    python scripts/weights_after_updates.py --compare /tmp/before.npz /tmp/after.npz

Or two settings on one checkout, e.g. chunked rollouts at S2 (random-init models of that size):
    python scripts/weights_after_updates.py a.npz --updates 1 --random-init \
        --changes '{"batch_size": 128, "model": {"num_layers": 4, "hidden_dim": 256, "num_heads": 4}}'
    python scripts/weights_after_updates.py b.npz --updates 1 --random-init \
        --changes '{"batch_size": 128, "rollout_batch_size": 16, "model": {"num_layers": 4, "hidden_dim": 256, "num_heads": 4}}'
"""

import argparse
import json
import sys
import tempfile

import numpy as np


def train_and_save(path, updates, changes=None, random_init=False):
    import keras

    import tf_ppo
    from tf_ppo.models import build_policy, load_tokenizer

    settings = {"batch_size": 32, "eval_size": 32, "checkpoint_every": 2, **(changes or {})}
    config = tf_ppo.PPOConfig(run_dir=tempfile.mkdtemp(), total_updates=updates, **settings)
    policy = None
    if random_init:  # the same random weights in both runs: no SFT stage at a new model size
        keras.utils.set_random_seed(config.seed)
        policy = build_policy(config.model, load_tokenizer(config.vocabulary, config.merges).vocabulary_size())
    result = tf_ppo.train(config, policy=policy, show_progress=False)
    weights = {f"policy/{i}": w for i, w in enumerate(result.policy.get_weights())}
    weights.update({f"value/{i}": w for i, w in enumerate(result.value_model.get_weights())})
    np.savez(path, **weights)
    print(f"{path}: {len(weights)} arrays after {updates} updates, from {tf_ppo.__file__}")


def compare(before_path, after_path):
    before, after = np.load(before_path), np.load(after_path)
    if sorted(before.files) != sorted(after.files):
        print(f"different weights: {sorted(set(before.files) ^ set(after.files))}")
        return 1
    largest = max(float(np.max(np.abs(before[name] - after[name]))) for name in before.files)
    print(f"{len(before.files)} arrays, largest absolute difference {largest:.3g}")
    return int(largest > 1e-6)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+")
    parser.add_argument("--updates", type=int, default=4)
    parser.add_argument("--compare", action="store_true", help="compare two saved .npz files (exit 1 if > 1e-6)")
    parser.add_argument("--changes", type=json.loads, default=None, help="PPOConfig fields as JSON")
    parser.add_argument("--random-init", action="store_true", help="start from a random-init policy (seeded)")
    args = parser.parse_args(argv)
    if args.compare:
        return compare(*args.paths)
    train_and_save(args.paths[0], args.updates, args.changes, args.random_init)
    return 0


if __name__ == "__main__":
    sys.exit(main())
