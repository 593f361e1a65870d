"""The configuration reference, derived from the fields: each `tf-ppo` flag's help, and docs/configuration.md.

`python -m tf_ppo.config` rewrites the page's tables between its two marker
lines (`MARKERS`), and `--check` only says whether they are up to date.
"""

import dataclasses
import pathlib
import sys

from tf_ppo.config.fields import ConfigError, portable, split_optional
from tf_ppo.config.rl import GROUPS, SECTIONS, PPOConfig
from tf_ppo.config.sections import DPOConfig, ModelConfig, RewardConfig, SFTConfig


# --- one field: the CLI help

def type_name(annotation):
    """A field annotation as the reference writes it.

    Example:
    >>> type_name(float | None), type_name(int), type_name(ModelConfig)
    ('float | None', 'int', 'ModelConfig')
    """
    kind, optional = split_optional(annotation)
    return kind.__name__ + (" | None" if optional else "")


def default_text(field):
    """A field's default as the reference writes it: shipped files by their portable name, sections by name.

    Example:
    >>> [default_text(f) for f in dataclasses.fields(PPOConfig) if f.name in ("prompts", "model", "vf_coef")]
    ['shipped:train_data.csv', 'ModelConfig()', '0.1']
    """
    if field.default is dataclasses.MISSING:
        return f"{field.default_factory.__name__}()"
    return portable(field.default) if isinstance(field.default, str) else str(field.default)


def help_text(field):
    """A field's meaning, type and default in one line: the `tf-ppo` flag's help.

    Example:
    >>> help_text(next(f for f in dataclasses.fields(PPOConfig) if f.name == "stop_at_eos"))
    'truncate each response after its first end token [bool, default: True]'
    """
    return f"{field.metadata['help']} [{type_name(field.type)}, default: {default_text(field)}]"


# --- every field: the tables of docs/configuration.md

SECTION_TITLES = {
    PPOConfig: "`PPOConfig`: flags `--FIELD`",
    ModelConfig: "`ModelConfig` (`PPOConfig.model`): flags `--model.FIELD`",
    SFTConfig: "`SFTConfig` (`PPOConfig.sft`): flags `--sft.FIELD`",
    RewardConfig: "`RewardConfig` (`PPOConfig.reward`): flags `--reward.FIELD`",
    DPOConfig: "`DPOConfig` (`PPOConfig.dpo`): flags `--dpo.FIELD`",
}


def reference_markdown():
    """docs/configuration.md's reference: one markdown table per section (field, type, default, meaning).

    A note on the values comes first; each table is under a `##` heading (the page has its own `#` title).

    Example:
    >>> print(reference_markdown().splitlines()[0])
    Generated from the fields of `tf_ppo/config/` by `python -m tf_ppo.config` (a test keeps it in
    >>> [line for line in reference_markdown().splitlines() if line.startswith("#")][:2]
    ['## `PPOConfig`: flags `--FIELD`, model', '## `PPOConfig`: flags `--FIELD`, rollout']
    """
    parts = ["Generated from the fields of `tf_ppo/config/` by `python -m tf_ppo.config` (a test keeps it in\n"
             "sync). On the command line, booleans are `true`/`false` (`1`/`0`), optional fields take `null`;\n"
             "`shipped:NAME` is a file of the shipped `data/`, wherever tf_ppo is installed.\n"]
    for section in SECTIONS:
        by_name = {field.name: field for field in dataclasses.fields(section)}
        groups = GROUPS if section is PPOConfig else {None: by_name}
        for group, names in groups.items():
            title = SECTION_TITLES[section] + (f", {group}" if group else "")
            rows = [f"| `{name}` | `{_cell(type_name(by_name[name].type))}` | `{_cell(default_text(by_name[name]))}` | "
                    f"{_cell(by_name[name].metadata['help']).replace('<', '&lt;')} |"  # <date> would be read as HTML
                    for name in names]
            parts.append("\n".join([f"## {title}\n", "| field | type | default | meaning |", "|---|---|---|---|",
                                    *rows]) + "\n")
        if section.aliases:
            renamed = ", ".join(f"`{alias}` (`{name}`)" for alias, name in section.aliases.items())
            parts.append(f"Deprecated aliases of `{section.__name__}` (keyword, attribute, flag and JSON key; they "
                         f"warn): {renamed}.\n")
    return "\n".join(parts)


def _cell(text):
    return text.replace("|", "\\|")  # a pipe would end the table cell


PAGE = pathlib.Path(__file__).resolve().parents[2] / "docs" / "configuration.md"  # the page of the reference
MARKERS = ("<!-- config-reference:start -->", "<!-- config-reference:end -->")


def with_reference(page):
    """`page` with the text between the config-reference markers replaced by `reference_markdown()`.

    Example:
    >>> page = "intro\\n<!-- config-reference:start -->\\nold\\n<!-- config-reference:end -->\\nmore"
    >>> with_reference(page).count("| `seed` |")  # PPOConfig, SFTConfig, RewardConfig and DPOConfig each have one
    4
    """
    head, start, rest = page.partition(MARKERS[0])
    _, end, tail = rest.partition(MARKERS[1])
    if not (start and end):
        raise ConfigError(f"no {MARKERS[0]} ... {MARKERS[1]} lines to write the configuration reference between")
    return f"{head}{start}\n{reference_markdown()}{end}{tail}"


def main(argv=None):
    """`python -m tf_ppo.config [--check] [FILE]`: rewrite (or, with --check, verify) the reference in FILE.

    FILE defaults to docs/configuration.md of the source checkout.
    """
    args = sys.argv[1:] if argv is None else list(argv)
    check = "--check" in args
    path = pathlib.Path(next((arg for arg in args if arg != "--check"), PAGE))
    text = path.read_text()
    updated = with_reference(text)
    if check:
        print(f"{path}: configuration reference {'up to date' if updated == text else 'out of date'}")
        return int(updated != text)
    path.write_text(updated)
    print(f"{path}: configuration reference written")
    return 0
