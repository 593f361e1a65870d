"""The `tf-ppo` parser: one subcommand per command, each with the config flags of the fields it uses.

Flags are derived from `PPOConfig`'s fields, so the CLI and the config never
disagree: a top-level field is `--field_name VALUE`, a section's field
`--sft.epochs 4`. Values are parsed by the field's type (`--stop_at_eos false`,
`--target_kl 3.0`, `--cliprange_value null`). Each command takes, and its
`--help` lists, only the fields it reads, grouped as `docs/configuration.md`
groups them, under a few examples; a flag of another command is an error that
names the command it belongs to.

Example:
>>> parse_args(build_parser(), ["sft", "--sft.epochs", "2"]).__dict__["sft.epochs"]
2
"""

import argparse
import dataclasses
import sys

import tf_ppo
from tf_ppo.config import GROUPS, NESTED, PPOConfig, did_you_mean, help_text, split_optional

_ALL = [name for names in GROUPS.values() for name in names]
_RL = [name for name in _ALL if name not in ("reward", "dpo")]
# A model as the supervised stages build it: LoRA and the critic's source are RL's (DPO adds LoRA back).
_STAGE_MODEL = [name for name in GROUPS["model"] if name not in ("lora_rank", "value_from_reward_model")]
# What a stage's run needs: its task's data, where it writes, its devices, and the SFT it starts from.
_STAGE_RUN = ["task", "run_dir", "strategy", "collective_timeout", "sft"]
# The fields each command reads: its flags, and its --help. The reward model normalises its scores on the
# policy's samples (the rollout fields); DPO samples the held-out prompts to report KL and the gold score.
COMMAND_FIELDS = {
    "demo": _RL,
    "train": _RL,
    "sft": [*_STAGE_MODEL, "eval_prompts_csv", *_STAGE_RUN],
    "reward": [*_STAGE_MODEL, *GROUPS["rollout"], *_STAGE_RUN, "reward"],
    "pipeline": _ALL,
    "dpo": [*_STAGE_MODEL, "lora_rank", *GROUPS["rollout"], *GROUPS["evaluation"], "max_consecutive_skips",
            "train_jit", *_STAGE_RUN, "dpo"],
}
DESCRIPTIONS = {
    "demo": "SFT a tiny policy on data/, then PPO it toward positive sentiment (--task arithmetic --algorithm "
            "grpo: word problems, exact-match reward)",
    "train": "RL with --algorithm (PPO by default; the policy is SFT-trained first if not cached)",
    "sft": "supervised fine-tuning only",
    "reward": "train a reward model on preference pairs (--reward.* flags)",
    "pipeline": "SFT -> reward model -> PPO (or --method dpo: SFT -> DPO), with a gold score",
    "dpo": "DPO (--dpo.loss_type ipo / hinge / robust) on the preference file of --dpo.preferences_csv",
    "export": "write a run's policy as a SavedModel (strings in, text out)",
    "generate": "complete prompts with an exported SavedModel",
}
EXAMPLES = {
    "demo": ["tf-ppo demo", "tf-ppo demo --task arithmetic --algorithm grpo",
             "tf-ppo demo --task calculator --algorithm grpo", "tf-ppo demo --task calculator --tools none"],
    "train": ["tf-ppo train --total_updates 200 --run_dir runs/mine",
              "tf-ppo train --algorithm grpo --num_generations 4 --beta 0.3",
              "tf-ppo train --resume runs/mine --total_updates 300"],
    "sft": ["tf-ppo sft --sft.epochs 8 --run_dir runs/sft"],
    "reward": ["tf-ppo reward --reward.epochs 2 --run_dir runs/rm"],
    "pipeline": ["tf-ppo pipeline --run_dir runs/rlhf", "tf-ppo pipeline --method dpo --run_dir runs/dpo-rlhf"],
    "dpo": ["tf-ppo dpo --dpo.loss_type ipo --run_dir runs/ipo"],
    "export": ["tf-ppo export runs/mine exported/mine"],
    "generate": ['tf-ppo generate exported/mine "the film was" --top_k 1'],
}
_RESUME_HELP = "continue that run from its latest checkpoint, with its config.json (flags override)"


def build_parser():
    """The `tf-ppo` parser: one subcommand per command, each with the flags of the fields it reads.

    Example:
    >>> build_parser().parse_args(["train", "--stop_at_eos", "False", "--target_kl", "null"]).stop_at_eos
    False
    """
    # allow_abbrev=False on every parser: a prefix such as --target must not silently set --target_kl.
    parser = argparse.ArgumentParser(prog="tf-ppo", allow_abbrev=False,
                                     description="RL fine-tuning (PPO, GRPO, RLOO, REINFORCE++; DPO) of Keras "
                                                 "language models.")
    parser.add_argument("--version", action="version", version=f"tf-ppo {tf_ppo.__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    command = {name: _add_command(commands, name) for name in DESCRIPTIONS}
    command["pipeline"].add_argument("--method", choices=("ppo", "dpo"), default="ppo",
                                     help="ppo: a reward model, then PPO against it; dpo: DPO on "
                                          "--dpo.preferences_csv (by default the same preference file)")
    command["dpo"].add_argument("--resume", metavar="RUN_DIR", help=_RESUME_HELP)
    command["train"].add_argument("--workers", type=int, default=0,
                                  help="start N local worker processes (MultiWorkerMirroredStrategy over 127.0.0.1)")
    command["train"].add_argument("--resume", metavar="RUN_DIR", help=_RESUME_HELP)
    command["demo"].add_argument("--tools", choices=("task", "none"), default="task",
                                 help="task: the episodes may call the task's tools (--task calculator: the "
                                      "calculator); none: single-turn, the baseline without tools")
    command["export"].add_argument("run_dir")
    command["export"].add_argument("export_dir")
    _add_generate_arguments(command["generate"])
    for name, fields in COMMAND_FIELDS.items():
        command[name].add_argument("--config", metavar="FILE", help="a JSON file of PPOConfig fields; flags override it")
        _add_config_flags(command[name], fields)
        # The generated usage would list every field flag; --help has them with their meaning.
        own = {"train": " [--workers N] [--resume RUN_DIR]", "dpo": " [--resume RUN_DIR]", "demo": " [--tools {task,none}]",
               "pipeline": " [--method {ppo,dpo}]"}.get(name, "")
        command[name].usage = f"%(prog)s [-h]{own} [--config FILE] [--FIELD VALUE ...]  (--help lists the fields)"
    return parser


def _add_command(commands, name):
    examples = "\n".join(f"  {line}" for line in EXAMPLES[name])
    command = commands.add_parser(name, help=DESCRIPTIONS[name], description=f"{DESCRIPTIONS[name]}\n\nexamples:\n"
                                  f"{examples}", allow_abbrev=False, formatter_class=argparse.RawDescriptionHelpFormatter)
    command.set_defaults(parser=command)  # parse_args reports an unknown flag with this command's usage
    return command


def _add_generate_arguments(generate):
    generate.add_argument("export_dir")
    generate.add_argument("prompts", nargs="+")
    generate.add_argument("--max_new_tokens", type=int, default=16, help="tokens per completion (default: 16)")
    generate.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (default: 1.0)")
    generate.add_argument("--top_k", type=int, default=0, help="1 = greedy, 0 = sample from all tokens (default: 0)")
    generate.add_argument("--seed", type=int, default=0, help="sampling seed (default: 0)")


def _add_config_flags(parser, fields):
    """One argument group per group of `GROUPS` and per section the command reads, each flag in it."""
    by_name = _fields(PPOConfig)
    for group, names in GROUPS.items():
        own = [name for name in names if name in fields and (name not in NESTED or name == "model")]
        if own:
            _add_flags(parser.add_argument_group(f"{group} fields"), own, by_name)
    for section in NESTED:
        if section != "model" and section in fields:
            group = parser.add_argument_group(f"{section} fields ({NESTED[section].__name__})")
            for field in dataclasses.fields(NESTED[section]):
                _add_field_flag(group, f"{section}.{field.name}", field)


def _add_flags(group, names, by_name):
    for name in names:
        if name == "model":  # the section's flags, and --model PRESET for its preset
            preset = _fields(NESTED["model"])["preset"]
            group.add_argument("--model", type=_flag_type(preset.type), default=argparse.SUPPRESS, metavar="PRESET",
                               help=_escape(f"the same as --model.preset: {help_text(preset)}"))
            for field in dataclasses.fields(NESTED["model"]):
                _add_field_flag(group, f"model.{field.name}", field)
        else:
            _add_field_flag(group, name, by_name[name])
        for alias in [alias for alias, target in PPOConfig.aliases.items() if target == name]:
            group.add_argument(f"--{alias}", dest=name, type=_flag_type(by_name[name].type),
                               default=argparse.SUPPRESS, action=_AliasFlag, help=f"an alias of --{name}")


class _AliasFlag(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):
        print(f"tf-ppo: {option_string} is read as --{self.dest} (an alias); use --{self.dest}", file=sys.stderr)
        setattr(namespace, self.dest, values)


def _add_field_flag(group, name, field):
    kind, _ = split_optional(field.type)
    group.add_argument(f"--{name}", dest=name, type=_flag_type(field.type), default=argparse.SUPPRESS,
                       metavar="PRESET" if kind is object else kind.__name__.upper(), help=_escape(help_text(field)))


def _fields(section):
    return {field.name: field for field in dataclasses.fields(section)}


def _escape(help):
    return help.replace("%", "%%")  # argparse %-formats help strings ("8-11% faster")


def _flag_type(annotation):
    def parse(text):
        return parse_flag(text, annotation)
    return parse


TRUE, FALSE, NULL = ("true", "True", "1"), ("false", "False", "0"), ("null", "None")


def parse_flag(text, annotation):
    """A flag's text as a value of its field's type (`annotation`); the error says what the type accepts.

    Example:
    >>> parse_flag("False", bool), parse_flag("3", int), parse_flag("null", float | None), parse_flag("2024", str)
    (False, 3, None, '2024')
    >>> parse_flag("maybe", bool)
    Traceback (most recent call last):
    ...
    argparse.ArgumentTypeError: must be a bool (true/false/1/0), got 'maybe'
    """
    kind, optional = split_optional(annotation)
    if (optional or kind is object) and text in NULL:  # object: a preset, whose None means the tiny model
        return None
    or_null = " or null" if optional else ""
    if kind is bool:
        if text in TRUE + FALSE:
            return text in TRUE
        raise argparse.ArgumentTypeError(f"must be a bool (true/false/1/0){or_null}, got {text!r}")
    if kind is tuple:  # "1,0.1"
        try:
            return tuple(float(item) for item in text.split(","))
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be numbers separated by commas{or_null}, got {text!r}") from None
    if kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            word = "an integer" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"must be {word}{or_null}, got {text!r}") from None
    return text  # a string, or a preset name / directory


def parse_args(parser, argv):
    """`parser.parse_args(argv)`, an unknown flag reported with its command's usage and the near miss (exit 2).

    Example:
    >>> parse_args(build_parser(), ["train", "--beta", "0.2"]).beta
    0.2
    """
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        command = getattr(args, "parser", parser)
        options = [option for action in command._actions for option in action.option_strings]
        for arg in unknown:
            name = arg.split("=")[0].removeprefix("--")
            if name in PPOConfig.not_fields:
                command.error(f"--{name} is not a flag here: {PPOConfig.not_fields[name]}")
            if args.command in COMMAND_FIELDS and _is_field_flag(name):
                users = [other for other, fields in COMMAND_FIELDS.items() if _is_field_flag(name, fields)]
                command.error(f"--{name} is not read by tf-ppo {args.command} (it is a flag of "
                              f"{', '.join(users)}){did_you_mean('--' + name, options)}")
        described = [arg + (did_you_mean(arg.split("=")[0], options) if arg.startswith("-") else "")
                     for arg in unknown]
        command.error(f"unrecognized arguments: {' '.join(described)}")
    return args


def _is_field_flag(name, fields=_ALL):
    """Whether `--name` is the flag of a field (or section field, or alias) among `fields`."""
    outer = name.partition(".")[0]
    return PPOConfig.aliases.get(outer, outer) in fields and (
        outer == name or outer in NESTED and name.partition(".")[2] in _fields(NESTED[outer]))
