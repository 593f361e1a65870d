"""The `tf-ppo` command: the demo's final JSON line, and clear errors."""

import json
import os
import subprocess
import sys

from tf_ppo.cli import main


def test_bad_flag_value_is_one_clear_line(capsys):
    assert main(["train", "--cliprange", "-1"]) == 2
    assert "error: PPOConfig.cliprange must be a positive number, got -1" in capsys.readouterr().err


def test_demo_prints_figures_and_ends_with_json(tmp_path, sft_policy_path):
    completed = subprocess.run(
        [sys.executable, "-m", "tf_ppo.cli", "demo", "--total_updates", "2", "--eval_size", "64",
         "--run_dir", str(tmp_path / "demo")],
        capture_output=True, text=True, timeout=600, env={**os.environ, "TF_PPO_CACHE": sft_policy_path})
    assert completed.returncode == 0, completed.stderr[-3000:]
    summary = json.loads(completed.stdout.strip().splitlines()[-1])
    assert {"sentiment_gain", "heldout_kl", "train_kl", "kl_estimator", "fluency", "seconds"} <= set(summary)
    assert "SFT:" in completed.stdout and "PPO:" in completed.stdout
    assert (tmp_path / "demo" / "curves.png").exists()
