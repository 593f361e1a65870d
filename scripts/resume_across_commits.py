"""A run directory written by one checkout resumes, finishes and exports under another.

    git worktree add /tmp/before <commit>
    PYTHONPATH=/tmp/before python scripts/resume_across_commits.py old /tmp/run   # 2 of 4 updates, checkpointed
    python scripts/resume_across_commits.py new /tmp/run                          # resumes to 4, exports, serves

Both stages start from the same seeded random-init tiny policy (`weights_after_updates.random_policy`).
"""

import pathlib
import sys
import tempfile

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from weights_after_updates import random_policy  # noqa: E402


def main(stage, run_dir):
    import tf_ppo

    if stage == "old":
        config = tf_ppo.PPOConfig(run_dir=run_dir, batch_size=32, eval_size=32, checkpoint_every=1, total_updates=2)
        result = tf_ppo.train(config, policy=random_policy(config), show_progress=False)
        print(f"old: {len(result.history)} updates, from {tf_ppo.__file__}")
        return 0
    config = tf_ppo.PPOConfig.from_file(pathlib.Path(run_dir) / "config.json").replace(total_updates=4)
    result = tf_ppo.train(config, policy=random_policy(config), resume=True, show_progress=False)
    print(f"new: updates {[int(row['update']) for row in result.history]}, from {tf_ppo.__file__}")
    exported = tf_ppo.export(run_dir, pathlib.Path(tempfile.mkdtemp()) / "exported")
    import tensorflow as tf
    import tensorflow_text  # noqa: F401  (the SavedModel's tokenizer ops)

    served = tf.saved_model.load(str(exported)).signatures["serving_default"]
    print(f"served: {served(prompts=tf.constant(['the film was']))['completions'].numpy()[0]!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
