"""docs/coming_from_trl.md: each TRL name maps to a tf_ppo field, an alias that sets it, or an error that says why."""

import dataclasses
import pathlib
import re

import pytest

from tf_ppo.config import DPOConfig, PPOConfig, UnknownFieldError
from tf_ppo.config.trl_names import TRL_NAMES_THAT_DIFFER

PAGE = pathlib.Path(__file__).resolve().parents[3] / "docs" / "coming_from_trl.md"


def table_rows(heading):
    """(TRL name, tf_ppo cell, how it differs) of the table under `## heading`."""
    section = PAGE.read_text().split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    rows = [line.split(" | ") for line in section.splitlines() if line.startswith("| `")]
    return [(re.match(r"\| `(\w+)", cells[0]).group(1), cells[1], cells[2].rstrip(" |")) for cells in rows]


def first_name(cell):
    return re.search(r"`(\w+)", cell).group(1)


FIELDS = {field.name for field in dataclasses.fields(PPOConfig)}


@pytest.mark.parametrize("trl, ours, differs", table_rows("Config fields"), ids=lambda value: str(value)[:30])
def test_each_trl_config_name_is_a_field_an_alias_or_an_error(trl, ours, differs):
    if ours.startswith("alias of"):
        assert PPOConfig.aliases[trl] == first_name(ours)
        with pytest.warns(FutureWarning, match=f"{trl} is read as {first_name(ours)}"):
            PPOConfig(**{trl: getattr(PPOConfig(), first_name(ours))})
    elif ours == "error":
        with pytest.raises(UnknownFieldError, match=re.escape(differs)):
            PPOConfig(**{trl: 1})
    else:
        assert first_name(ours) in FIELDS, ours


@pytest.mark.parametrize("trl, ours, differs", table_rows("DPO (`DPOConfig`)"), ids=lambda value: str(value)[:30])
def test_each_trl_dpo_name_is_a_dpo_field(trl, ours, differs):
    assert first_name(ours) in {field.name for field in dataclasses.fields(DPOConfig)}


def test_every_alias_and_every_rejected_name_is_on_the_page():
    names = {trl for trl, _, _ in table_rows("Config fields")}
    assert set(PPOConfig.aliases) | set(TRL_NAMES_THAT_DIFFER) <= names
