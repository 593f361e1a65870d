"""A run's config.json: the versions and git commit it ran with, only the sections it read; old and new files load."""

import json
import pathlib
import platform
import shutil
import subprocess

import keras
import keras_hub
import pytest
import tensorflow as tf

import tf_ppo
from tf_ppo.cli import config_from_args
from tf_ppo.config import NESTED, PROVENANCE, PPOConfig, UnknownFieldError
from tf_ppo.config.provenance import OPTIONAL_SECTIONS, git_commit
from tf_ppo.flags import build_parser, parse_args

PACKAGE_DIR = pathlib.Path(tf_ppo.__file__).parent
needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


def head(directory):
    """`git rev-parse HEAD` in `directory`, or None."""
    if shutil.which("git") is None:
        return None
    done = subprocess.run(["git", "-C", str(directory), "rev-parse", "HEAD"], capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else None


def git(directory, *args):
    subprocess.run(["git", "-C", str(directory), "-c", "user.name=t", "-c", "user.email=t@t", *args], check=True,
                   capture_output=True)


def test_a_runs_config_json_records_the_versions_and_the_git_commit():
    before = head(PACKAGE_DIR)
    recorded = json.loads(PPOConfig().to_json(sections=("sft",)))[PROVENANCE]
    assert {key: recorded[key] for key in ("tf_ppo", "tensorflow", "keras", "keras_hub", "python")} == {
        "tf_ppo": tf_ppo.__version__, "tensorflow": tf.__version__, "keras": keras.__version__,
        "keras_hub": keras_hub.__version__, "python": platform.python_version()}
    assert recorded["git_commit"] in (before, head(PACKAGE_DIR))  # someone may commit in between
    assert (recorded["git_dirty"] is None) == (recorded["git_commit"] is None)


def test_no_commit_outside_a_checkout_without_git_or_for_an_untracked_copy_inside_one(tmp_path, monkeypatch):
    assert git_commit(tmp_path) == (None, None)  # not a checkout
    if shutil.which("git") is not None:
        git(tmp_path, "init", "-q")
        (tmp_path / "tracked.py").write_text("")
        git(tmp_path, "add", "tracked.py")
        git(tmp_path, "commit", "-q", "-m", "first")
        (tmp_path / ".venv" / "tf_ppo").mkdir(parents=True)  # an installed copy in a venv inside a checkout
        assert git_commit(tmp_path / ".venv" / "tf_ppo") == (None, None)
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))  # no git executable at all
    assert git_commit(PACKAGE_DIR) == (None, None)


@needs_git
def test_dirty_means_a_tracked_file_changed_not_a_new_file(tmp_path):
    git(tmp_path, "init", "-q")
    (tmp_path / "code.py").write_text("a = 1\n")
    git(tmp_path, "add", "code.py")
    git(tmp_path, "commit", "-q", "-m", "first")
    assert git_commit(tmp_path) == (head(tmp_path), False)
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "metrics.csv").write_text("update\n")  # a run's output: untracked
    assert git_commit(tmp_path) == (head(tmp_path), False)
    (tmp_path / "code.py").write_text("a = 2\n")
    assert git_commit(tmp_path) == (head(tmp_path), True)


def test_a_run_writes_only_the_sections_it_read():
    config = PPOConfig(algorithm="grpo", num_generations=4)
    recorded = json.loads(config.to_json(sections=("sft",)))
    assert {"model", "sft", PROVENANCE} <= set(recorded) and not {"reward", "dpo"} & set(recorded)
    everything = json.loads(config.to_json())  # without sections: every field, as before
    assert {"sft", "reward", "dpo"} <= set(everything) and PROVENANCE not in everything
    assert set(OPTIONAL_SECTIONS) == set(NESTED) - {"model"}
    with pytest.raises(ValueError, match="sections must be among sft, reward, dpo, got \\['model'\\]"):
        config.to_json(sections=("model",))


def test_old_and_new_config_json_both_load_to_the_config_that_wrote_them():
    config = PPOConfig(algorithm="grpo", num_generations=4, seed=3, sft={"epochs": 2})
    old = config.to_json()  # what runs wrote before: every section, no provenance
    new = config.to_json(sections=("sft",))
    assert PPOConfig.from_json(old) == PPOConfig.from_json(new) == config


def test_a_section_the_run_did_not_write_reads_as_its_defaults():
    written = PPOConfig(task="arithmetic", dpo={"beta": 0.3}, reward={"epochs": 5}).to_json(sections=())
    read = PPOConfig.from_json(written)
    assert read.dpo == PPOConfig().dpo and read.reward == PPOConfig().reward
    assert read.sft == PPOConfig(task="arithmetic").sft  # the task's SFT defaults, as a fresh config gets


def test_an_unknown_key_beside_the_provenance_is_still_an_error():
    recorded = json.loads(PPOConfig().to_json(sections=("sft",)))
    with pytest.raises(UnknownFieldError, match="unknown field 'bta' \\(did you mean 'beta'\\?\\)"):
        PPOConfig.from_json(json.dumps({**recorded, "bta": 0.1}))


def test_resume_and_config_read_a_new_config_json(tmp_path):
    config = PPOConfig(algorithm="grpo", num_generations=4, seed=5, sft={"epochs": 2})
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text(config.to_json(sections=("sft",)))
    resumed = config_from_args(parse_args(build_parser(), ["train", "--resume", str(tmp_path / "run")]))
    assert resumed == config.replace(run_dir=str(tmp_path / "run"))
    given = config_from_args(parse_args(build_parser(), ["train", "--config", str(tmp_path / "run" / "config.json")]))
    assert given == config
