"""What a run's config.json records beside the config: the sections it read, and its provenance.

A run writes `config.to_json(sections=...)`: every field, but of the optional
sections (`sft`, `reward`, `dpo`) only those the run read, and a `provenance`
record (tf_ppo, TensorFlow, Keras, keras-hub and Python versions, and the git
commit of the tf_ppo checkout when it is one). The record is not a field:
reading a config.json skips it (`upgrade_saved`), and a section left out
reads as its defaults.

Example:
>>> import json
>>> from tf_ppo.config import PPOConfig
>>> recorded = json.loads(PPOConfig(algorithm="grpo").to_json(sections=("sft",)))
>>> "dpo" in recorded, "reward" in recorded, sorted(recorded["provenance"])[:3]
(False, False, ['git_commit', 'git_dirty', 'keras'])
"""

import importlib
import pathlib
import platform
import subprocess

from tf_ppo.config.fields import as_dict

PROVENANCE = "provenance"  # the record's key in config.json
# The sections a run may leave out, by whether it read them (`model` it always reads). tf_ppo.config.NESTED
# less `model`: not imported from tf_ppo.config.rl, which imports this module.
OPTIONAL_SECTIONS = ("sft", "reward", "dpo")
PACKAGES = ("tf_ppo", "tensorflow", "keras", "keras_hub")  # the versions recorded, by module name
GIT_TIMEOUT = 5  # seconds per git command: a slow or hung git must not hold up a run's start


def run_record(config, sections):
    """`config`'s JSON fields with only the optional `sections` given, and the `provenance` record.

    Example:
        run_record(PPOConfig(), ("sft",))["provenance"]["tensorflow"]  # "2.21.0"
    """
    unknown = sorted(set(sections) - set(OPTIONAL_SECTIONS))
    if unknown:
        raise ValueError(f"to_json: sections must be among {', '.join(OPTIONAL_SECTIONS)}, got {unknown}")
    values = {name: value for name, value in as_dict(config).items()
              if name not in OPTIONAL_SECTIONS or name in sections}
    return {**values, PROVENANCE: run_provenance()}


def policy_sections(config):
    """The sections a run that builds its own starting policy reads: `sft` unless that policy is a preset.

    Without a preset the run starts from the cached SFT policy (`tf_ppo.default_policy`, trained first if
    missing), which `sft` describes; a resumed run builds it again before it restores its checkpoint.

    Example:
    >>> from tf_ppo.config import PPOConfig
    >>> policy_sections(PPOConfig()), policy_sections(PPOConfig(model="gpt2_base_en"))
    (('sft',), ())
    """
    return ("sft",) if config.model.preset is None else ()


def run_provenance():
    """The versions of tf_ppo, TensorFlow, Keras, keras-hub and Python, and tf_ppo's git commit (or None).

    `git_dirty` says whether tracked files of the checkout differ from that
    commit (None without a commit).

    Example:
        run_provenance()  # {"tf_ppo": "0.1.0", "tensorflow": "2.21.0", ..., "git_commit": "c680acb...", ...}
    """
    record = {name: importlib.import_module(name).__version__ for name in PACKAGES}
    commit, dirty = git_commit(pathlib.Path(importlib.import_module("tf_ppo").__file__).parent)
    return {**record, "python": platform.python_version(), "git_commit": commit, "git_dirty": dirty}


def git_commit(directory):
    """`(commit, dirty)` of the git checkout `directory` is tracked in, or `(None, None)`.

    None when git is missing, fails or times out, or when `directory` holds no tracked file: an installed
    copy inside a virtual environment that sits in some checkout is not that checkout's code.

    Example:
        git_commit(pathlib.Path("tf_ppo"))  # ("c680acb0...", False)
    """
    if not _git(directory, "ls-files", "--", "."):
        return None, None
    commit = _git(directory, "rev-parse", "HEAD")
    if not commit:
        return None, None
    changes = _git(directory, "status", "--porcelain", "--untracked-files=no")  # run outputs are untracked files
    return commit, None if changes is None else bool(changes)


def _git(directory, *args):
    """The stripped output of `git -C directory ARGS`, or None if it cannot run or fails."""
    try:
        done = subprocess.run(["git", "-C", str(directory), *args], capture_output=True, text=True,
                              timeout=GIT_TIMEOUT, check=False)
    except (OSError, subprocess.SubprocessError):  # no git executable, or it hung
        return None
    return done.stdout.strip() if done.returncode == 0 else None
