"""Train a tiny run of each algorithm and stage for a few steps and save every trained weight (.npz).

Run it on two checkouts to check that a refactor left the numerics unchanged (bit-identical: the
largest difference must be 0):
    git worktree add /tmp/before <commit>
    PYTHONPATH=/tmp/before python scripts/weights_after_updates.py /tmp/before --all
    python scripts/weights_after_updates.py /tmp/after --all
    python scripts/weights_after_updates.py --compare /tmp/before /tmp/after

`--all` writes one `<run>.npz` per entry of RUNS into the directory: PPO, GRPO with and without a
reference, RLOO, REINFORCE++ and REINFORCE++-baseline (4 updates each), SFT, the reward model, and DPO
with a precomputed and with a live reference (one epoch over the first 128 rows of their data, and of its held-out rows). Every run starts from the same
seeded random-init policy and uses only the top-level API (`tf_ppo.train`, `sft`, `train_reward_model`,
`dpo`), so the script runs unchanged against an older checkout.

Or two settings on one checkout: packed rows against padded ones, every RL algorithm (float32 rounding apart):
    python scripts/weights_after_updates.py /tmp/padded --all --runs ppo grpo grpo_reference rloo reinforce_pp \
        reinforce_pp_baseline
    python scripts/weights_after_updates.py /tmp/packed --all --runs ppo grpo ... --changes '{"padding_free": true}'
    python scripts/weights_after_updates.py --compare /tmp/padded /tmp/packed --tolerance 1e-5

Or chunked rollouts at S2 (random-init models of that size):
    python scripts/weights_after_updates.py a.npz --updates 1 --random-init \
        --changes '{"batch_size": 128, "model": {"num_layers": 4, "hidden_dim": 256, "num_heads": 4}}'
    python scripts/weights_after_updates.py b.npz --updates 1 --random-init \
        --changes '{"batch_size": 128, "rollout_batch_size": 16, "model": {"num_layers": 4, "hidden_dim": 256, "num_heads": 4}}'
"""

import argparse
import json
import pathlib
import sys
import tempfile

import numpy as np

RL_SETTINGS = {"batch_size": 32, "eval_size": 32, "checkpoint_every": 2}
RL_RUNS = {
    "ppo": {},
    "grpo": {"algorithm": "grpo", "num_generations": 4, "beta": 0.0},
    "grpo_reference": {"algorithm": "grpo", "num_generations": 4, "beta": 0.04},
    "rloo": {"algorithm": "rloo", "num_generations": 4},
    "reinforce_pp": {"algorithm": "reinforce_pp"},
    "reinforce_pp_baseline": {"algorithm": "reinforce_pp_baseline", "num_generations": 4},
}
# One epoch over the first 128 rows of each stage's data (and of each split's), 32 rows a step.
SUPERVISED_RUNS = ("sft", "reward_model", "dpo_precomputed", "dpo_live")
RUNS = tuple(RL_RUNS) + SUPERVISED_RUNS
ROWS = 128


def random_policy(config):
    """The seeded random-init tiny policy every run starts from (no SFT cache involved)."""
    import keras

    from tf_ppo.models import build_policy, load_tokenizer

    keras.utils.set_random_seed(config.seed)
    return build_policy(config.model, load_tokenizer(config.vocabulary, config.merges).vocabulary_size())


def first_rows(source, directory, rows=ROWS):
    """A CSV of the first `rows` rows of a shipped CSV (of each split, if it has a `split` column)."""
    import pandas as pd

    path = pathlib.Path(directory) / pathlib.Path(source).name
    table = pd.read_csv(source)
    table = table.groupby("split", sort=False).head(rows) if "split" in table else table.head(rows)
    table.to_csv(path, index=False)
    return str(path)


def named(prefix, model):
    return {f"{prefix}/{i}": w for i, w in enumerate(model.get_weights())}


def rl_weights(run, updates, changes=None, random_init=True):
    import tf_ppo

    settings = {**RL_SETTINGS, **RL_RUNS.get(run, {}), **(changes or {})}
    config = tf_ppo.PPOConfig(run_dir=tempfile.mkdtemp(), total_updates=updates, **settings)
    policy = random_policy(config) if random_init else None
    result = tf_ppo.train(config, policy=policy, show_progress=False)
    weights = named("policy", result.policy)
    if result.value_model is not None:
        weights.update(named("value", result.value_model))
    return weights


def supervised_weights(run):
    import tf_ppo

    scratch = tempfile.mkdtemp()
    config = tf_ppo.PPOConfig()
    preferences = first_rows(config.reward.preferences_csv, scratch)
    config = config.replace(
        run_dir=tempfile.mkdtemp(),
        sft={"train_csv": first_rows(config.sft.train_csv, scratch), "epochs": 1},
        reward={"preferences_csv": preferences, "epochs": 1, "normalise_samples": 0},
        dpo={"epochs": 1, "precompute_ref_log_probs": run != "dpo_live",
             **({"preferences_csv": preferences} if hasattr(config.dpo, "preferences_csv") else {})})
    if run == "sft":
        return named("policy", tf_ppo.sft(config, policy=random_policy(config), show_progress=False).policy)
    if run == "reward_model":
        result = tf_ppo.train_reward_model(config, backbone=random_policy(config).backbone, show_progress=False)
        return named("reward_model", result.model)
    return named("policy", tf_ppo.dpo(config, policy=random_policy(config), show_progress=False).policy)


def weights_of(run, updates, changes=None):
    return supervised_weights(run) if run in SUPERVISED_RUNS else rl_weights(run, updates, changes)


def compare_files(before_path, after_path):
    """The largest absolute difference between two saved runs, or None when their weights differ in kind."""
    if not before_path.exists():
        print(f"{before_path}: missing")
        return None
    before, after = np.load(before_path), np.load(after_path)
    if sorted(before.files) != sorted(after.files):
        print(f"{after_path}: different weights: {sorted(set(before.files) ^ set(after.files))}")
        return None
    return max(float(np.max(np.abs(before[name] - after[name]))) for name in before.files)


def compare(before, after, tolerance):
    """Compare two .npz files, or two directories of them run by run; exit status 1 above `tolerance`."""
    before, after = pathlib.Path(before), pathlib.Path(after)
    pairs = ([(before / f"{run}.npz", after / f"{run}.npz") for run in RUNS if (after / f"{run}.npz").exists()]
             if before.is_dir() else [(before, after)])
    worst = 0.0
    for before_path, after_path in pairs:
        largest = compare_files(before_path, after_path)
        print(f"{after_path.stem}: {len(np.load(after_path).files)} arrays, largest absolute difference "
              f"{largest if largest is None else f'{largest:.3g}'}")
        worst = float("inf") if largest is None else max(worst, largest)
    return int(worst > tolerance)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+")
    parser.add_argument("--all", action="store_true", help="every run of RUNS, one .npz each in the directory")
    parser.add_argument("--runs", nargs="+", choices=RUNS, help="with --all: only these runs")
    parser.add_argument("--updates", type=int, default=4)
    parser.add_argument("--compare", action="store_true", help="compare two .npz files or two --all directories")
    parser.add_argument("--tolerance", type=float, default=0.0, help="largest difference that passes --compare")
    parser.add_argument("--changes", type=json.loads, default=None,
                        help="PPOConfig fields as JSON (with --all: of every RL run)")
    parser.add_argument("--random-init", action="store_true", help="start from a random-init policy (seeded)")
    args = parser.parse_args(argv)
    if args.compare:
        return compare(*args.paths, args.tolerance)
    import tf_ppo

    if args.all:
        directory = pathlib.Path(args.paths[0])
        directory.mkdir(parents=True, exist_ok=True)
        for run in args.runs or RUNS:
            weights = weights_of(run, args.updates, args.changes)
            np.savez(directory / f"{run}.npz", **weights)
            print(f"{directory / run}.npz: {len(weights)} arrays, from {tf_ppo.__file__}", flush=True)
        return 0
    weights = rl_weights("ppo", args.updates, args.changes, args.random_init)
    np.savez(args.paths[0], **weights)
    print(f"{args.paths[0]}: {len(weights)} arrays after {args.updates} updates, from {tf_ppo.__file__}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
