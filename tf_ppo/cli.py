"""The `tf-ppo` command: `demo`, `train`, `sft`, `reward`, `pipeline`, `dpo`, `export`, `generate`.

Flags are derived from `PPOConfig`'s fields (`tf_ppo.flags`), each command
taking those it reads: a top-level field is `--field_name VALUE`, a section's
`--model.num_layers 4`, and each flag's help is the field's meaning, type and
default (`tf-ppo train --help`).

User errors (a bad value, a missing file, a preset that cannot be
downloaded) are one line on stderr and exit code 2; anything else, such as a
TensorFlow error while tracing, keeps its traceback.

This module parses the command line into a `PPOConfig`; what each command
then does is `tf_ppo.commands` (one function per command).

Example:
    tf-ppo demo
    tf-ppo demo --task arithmetic --algorithm grpo     # word problems: exact-match accuracy and pass@4
    tf-ppo train --config my_config.json --total_updates 200
    tf-ppo train --resume runs/ppo-20261128-120000 --total_updates 200
    tf-ppo train --workers 2 --run_dir runs/mw       # 2 local processes, MultiWorkerMirroredStrategy
    tf-ppo sft --sft.epochs 8
    tf-ppo train --model presets/my_llama --lora_rank 8 --dtype mixed_bfloat16 --prompts tfds:imdb_reviews
    tf-ppo reward --reward.epochs 2 --run_dir runs/rm
    tf-ppo pipeline --run_dir runs/rlhf           # SFT -> reward model -> PPO, proxy and gold scores
    tf-ppo pipeline --method dpo --run_dir runs/dpo-rlhf   # SFT -> DPO, the same gold score and KL
    tf-ppo dpo --dpo.loss_type ipo --run_dir runs/ipo
    tf-ppo export runs/ppo-20261128-120000 exported/sentiment
    tf-ppo generate exported/sentiment "the film was" --top_k 1
"""

import json
import os
import pathlib
import sys
import time

import keras_hub

from tf_ppo.training.checkpoints import CheckpointError
from tf_ppo.training.interrupts import Interrupted
from tf_ppo.commands import (launch_workers, run_demo, run_dpo, run_export, run_generate, run_pipeline, run_reward,
                             run_sft, run_train)
from tf_ppo.config import NESTED, OBJECT_MARK, ConfigError, PPOConfig, did_you_mean, upgrade_saved
from tf_ppo.flags import build_parser, parse_args
from tf_ppo.data import DataError
from tf_ppo.export import ExportError
from tf_ppo.rl.rewards import RewardError

DEMO_RUN_DIR = "runs/demo-{time}"
# The demo holds the KL near 1.5 nats per response (Ziegler et al.'s adaptive beta, fast enough to act within
# 100 updates). With a fixed beta, VADER's reward for stacking positive words pulled the KL to 2-3 nats on
# some seeds, where completions join clauses no corpus sentence joins (fluency 85-92%); flags override these.
DEMO_DEFAULTS = {"target_kl": 1.5, "kl_horizon": 1000}
# The arithmetic demo (`--task arithmetic`): its RL settings per algorithm, under the task's data and SFT.
# 16 problems x 8 samples per update for the group-based algorithms; every held-out problem is evaluated.
# PPO's update (a critic, 4 epochs x 2 minibatches) costs about 3x GRPO's: 200 updates keep it within 10 minutes.
_ARITHMETIC_RUN = {"batch_size": 128, "total_updates": 300, "eval_every": 50, "eval_size": 500}
ARITHMETIC_DEMO = {
    "ppo": {**_ARITHMETIC_RUN, "total_updates": 200},
    "grpo": {**_ARITHMETIC_RUN, "num_generations": 8, "beta": 0.04},
    "rloo": {**_ARITHMETIC_RUN, "num_generations": 8},
}
# The calculator demo (`--task calculator`): episodes of up to 3 turns, 16 problems x 8 samples for GRPO.
_CALCULATOR_RUN = {"batch_size": 128, "total_updates": 60, "eval_every": 20, "eval_size": 500}
CALCULATOR_DEMO = {
    "ppo": {**_CALCULATOR_RUN, "batch_size": 64},
    "grpo": {**_CALCULATOR_RUN, "num_generations": 8, "beta": 0.04},
}
# `pipeline --method dpo` runs cDPO (label smoothing 0.1) with beta 0.5: the shipped pairs are separable (a
# positive continuation against a negative one), so plain DPO pushes the margins without bound; label
# smoothing bounds the margin at log(0.9 / 0.1) = 2.2, i.e. 2.2 / beta nats of log-ratio. Plain DPO at beta
# 0.1 ended at 6-8 nats of KL to the SFT policy, cDPO at beta 0.3 at 1.5-2.8 on two seeds and 11.8 on the
# third (its samples lost their fluency), at beta 0.5 at 1.3-1.9 on all three. Flags win.
PIPELINE_DPO_DEFAULTS = {"dpo": {"label_smoothing": 0.1, "beta": 0.5}}
# What the CLI reports as one line: tf_ppo's own error types and a missing file. Any other exception
# (a ValueError from inside TensorFlow or Keras included) is a bug to see with its traceback.
USER_ERRORS = (ConfigError, DataError, ExportError, RewardError, CheckpointError, FileNotFoundError)


# Parsed arguments that are not PPOConfig fields.
NOT_CONFIG = ("command", "parser", "config", "resume", "workers", "method", "tools")


def config_from_args(args, **defaults):
    """A `PPOConfig` from `--resume`'s config.json, then `--config`, then flags; errors name the bad field.

    Example:
    >>> args = parse_args(build_parser(), ["train", "--model.num_layers", "1", "--sft.epochs", "2"])
    >>> config_from_args(args).model.num_layers, config_from_args(args).sft.epochs
    (1, 2)
    """
    values = dict(defaults)
    if getattr(args, "resume", None):
        _merge(values, {**_read_json(pathlib.Path(args.resume) / "config.json"), "run_dir": args.resume})
    if getattr(args, "config", None):
        _merge(values, _read_json(args.config))
    for key, value in vars(args).items():
        if key not in NOT_CONFIG:
            outer, _, inner = key.partition(".")
            _merge(values, {outer: {inner: value}} if inner else {key: value})
    return PPOConfig().replace(**values)


def _merge(values, changes):
    # Sections merge key by key, so --sft.epochs keeps the other sft fields of --config; a preset given
    # alone (--model NAME, or "model": "NAME" in a file) is the model section's `preset`.
    for key, value in changes.items():
        old = values.get(key, {})
        if key == "model":
            old, value = _model_section(old), _model_section(value)
        section = key in NESTED and isinstance(old, dict) and isinstance(value, dict)
        values[key] = {**old, **value} if section else value


def _model_section(value):
    return value if isinstance(value, dict) else {"preset": value}


def _read_json(path):
    try:
        values = json.loads(_read(path))
    except json.JSONDecodeError as error:
        raise ConfigError(f"{path}: not valid JSON ({error})") from None
    return upgrade_saved(values) if isinstance(values, dict) else values


def _read(path):
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    return path.read_text()


def demo_defaults(task, algorithm):
    """The demo's settings for a task and algorithm (flags override them).

    Example:
    >>> demo_defaults("arithmetic", "grpo")["num_generations"]
    8
    """
    if task == "sentiment":
        return DEMO_DEFAULTS
    demos = CALCULATOR_DEMO if task == "calculator" else ARITHMETIC_DEMO
    return demos.get(algorithm, demos["grpo"])  # the other group-based ones: GRPO's groups


def _config_of(args):
    """The config a command runs with (export: the run's own), or None (generate)."""
    if args.command == "demo":
        return config_from_args(args, run_dir=DEMO_RUN_DIR.format(time=time.strftime("%Y%m%d-%H%M%S")),
                                **demo_defaults(getattr(args, "task", "sentiment"), getattr(args, "algorithm", "ppo")))
    if args.command == "export":
        recorded = pathlib.Path(args.run_dir) / "config.json"
        return PPOConfig.from_file(recorded) if recorded.is_file() else None  # none: export() says why
    if args.command == "generate":
        return None
    if args.command == "pipeline" and args.method == "dpo":
        return config_from_args(args, **PIPELINE_DPO_DEFAULTS)
    return config_from_args(args)


def _remote_preset(config):
    """The preset name a run downloads; None for a local directory, a CausalLM object or the tiny model."""
    preset = None if config is None else config.model.preset
    if isinstance(preset, str) and not preset.startswith(OBJECT_MARK) and not os.path.exists(preset):
        return preset
    return None


def _check_preset(config):
    # Before any download: a misspelt preset name is a user error with the near miss, not keras-hub's
    # ValueError ("Unknown preset identifier") from deep inside the run.
    preset = _remote_preset(config)
    if preset is None or "://" in preset:  # no download, or a Kaggle / Hugging Face handle
        return
    known = keras_hub.models.CausalLM.presets
    if preset not in known:
        raise ConfigError(f"ModelConfig.preset {preset!r} is neither a local preset directory nor a keras-hub "
                          f"preset name{did_you_mean(preset, known)}")


def _run(args, config):
    if args.command == "demo":
        run_demo(config, tools=[] if args.tools == "none" else None)
    elif args.command == "train":
        run_train(args, config)
    elif args.command == "export":
        run_export(args)
    elif args.command == "generate":
        run_generate(args)
    elif args.command == "reward":
        run_reward(config)
    elif args.command == "pipeline":
        run_pipeline(args, config)
    elif args.command == "dpo":
        run_dpo(args, config)
    else:
        run_sft(config)


def main(argv=None):
    """`tf-ppo COMMAND ...`; returns the exit code: 0, 2 for a user error, 130 after Ctrl-C (one line on stderr).

    The first Ctrl-C in a training loop saves a checkpoint after the step in
    flight and prints where the run stopped and how to resume it; a second one,
    or one outside a loop, quits at once. Neither prints a traceback.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(build_parser(), argv)
    if getattr(args, "workers", 0):
        return launch_workers(argv, args.workers)
    config = None
    try:
        config = _config_of(args)
        _check_preset(config)
        _run(args, config)
    except USER_ERRORS as error:  # user mistakes (an offline preset download included): one line, no stack trace
        return _user_error(args, error)
    except Interrupted as stop:  # checkpointed: "interrupted at update 3/10; resume with: ..."
        print(stop, file=sys.stderr)
        return 130 if stop.signal_name == "SIGINT" else 0  # a preempted pipeline exits 0, as `train` does
    except KeyboardInterrupt:
        print(f"tf-ppo {args.command}: interrupted; what was not checkpointed is lost", file=sys.stderr)
        return 130  # the shell's code for a command ended by SIGINT
    return 0


def _user_error(args, message):
    print(f"tf-ppo {args.command}: error: {message}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
