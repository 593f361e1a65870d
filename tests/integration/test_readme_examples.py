"""Every README and docs code block that trains runs as pasted, cut to a few updates (issue 33, item 3).

The blocks are read from the Markdown files, so an example that drifts from the API fails here. Each runs in
its own empty directory with `tf_ppo`'s config classes wrapped to cut the run short (two updates, a small
held-out set, 64 preference pairs, one epoch, no XLA): the code is the README's, only its length is not. Where the
text beside a block claims a KL or fluency, the short run is checked against it: a run already past the
claimed KL after two updates, or already below the claimed fluency, fails.
"""
import json
import pathlib
import re

import pandas as pd
import pytest

import tf_ppo

ROOT = pathlib.Path(__file__).resolve().parents[2]
DOCUMENTS = ["README.md", *sorted(str(path.relative_to(ROOT)) for path in (ROOT / "docs").glob("*.md"))]
TRAINS = re.compile(r"tf_ppo\.(train|dpo|sft|pipeline|train_reward_model)\(")

# Blocks that train but cannot run offline (not collected), with the reason; any other training block runs.
NEEDS_THE_NETWORK = {
    ("docs/models.md", 'prompts="tfds:imdb_reviews"'): "reads tensorflow-datasets' IMDB (a download) and a "
                                                       "user's own preset; tests/integration/test_presets.py runs "
                                                       "the same options on a local preset and CSV",
    ("docs/models.md", 'model="gemma3_instruct_1b"'): "downloads Gemma 3 1B; tests/integration/test_every_family.py "
                                                      "trains tiny local Gemma 3, Gemma 4, Qwen 3.5 and Mixtral "
                                                      "presets on conversations the same way",
}

# What the text beside a block claims (measured at full length), by a line of the block: the short run must not
# break it.
CLAIMS = {
    "beta=0.3, total_updates=100": {"max_heldout_kl": 2.88, "min_fluency": 0.9},  # "+0.604 at 2.88 nats"
    # README: the callback example ends at KL 0.29 and 92% fluent; fluency here is of 16 held-out samples.
    "callbacks=": {"max_heldout_kl": 0.29, "min_fluency": 0.85},
}


def training_blocks():
    """(document, first line, code) of every ```python block that trains, identical blocks once."""
    seen, blocks = set(), []
    for document in DOCUMENTS:
        text = (ROOT / document).read_text()
        for match in re.finditer(r"```python\n(.*?)```", text, re.S):
            code = match.group(1)
            key = tuple(line for line in code.splitlines() if line.strip() and not line.startswith(("import", "#")))
            offline = not any(document == where and marker in code for where, marker in NEEDS_THE_NETWORK)
            if TRAINS.search(code) and offline and key not in seen:
                seen.add(key)
                blocks.append(pytest.param(document, code, id=f"{document}:{text[:match.start()].count(chr(10)) + 2}"))
    return blocks


@pytest.fixture
def few_updates(tmp_path, monkeypatch, sft_policy_path, arithmetic_sft_path):
    """tf_ppo's configs cut to a smoke run, in an empty working directory."""
    pairs = tmp_path / "pairs.csv"
    pd.read_csv(tf_ppo.PPOConfig().dpo.preferences_csv).sample(64, random_state=0).to_csv(pairs, index=False)
    real = tf_ppo.PPOConfig
    # XLA off: compiling takes longer than it saves over 2 updates (the compiled paths run throughout the suite).
    short = {"total_updates": 2, "eval_size": 16, "generation_jit": False, "train_jit": False}
    preference_data = {"epochs": 1, "preferences_csv": str(pairs), "heldout_fraction": 0.25}

    def short_config(**fields):
        fields = {**fields, **short}
        for section in ("dpo", "reward"):
            fields[section] = {**fields.get(section, {}), **preference_data}
        return real(**fields)

    monkeypatch.setattr(tf_ppo, "PPOConfig", short_config)
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    return tmp_path / "work"


@pytest.mark.parametrize("document, code", training_blocks())
def test_the_block_runs_as_pasted(document, code, few_updates):
    namespace = {}
    exec(compile(code, document, "exec"), namespace)  # noqa: S102  the documented code, as a user pastes it
    result = namespace.get("result")
    claims = next((claim for marker, claim in CLAIMS.items() if marker in code), {})
    after = getattr(result, "evaluation_after", None) or {}
    if "max_heldout_kl" in claims:
        assert after["heldout_kl"] <= claims["max_heldout_kl"], after
    if "min_fluency" in claims:
        assert after["fluency"] >= claims["min_fluency"], after
    for config_file in few_updates.glob("runs/*/config.json"):  # each run the block started ran the short config
        assert json.loads(config_file.read_text())["total_updates"] == 2, config_file


def test_every_training_block_is_found():
    found = [param.id for param in training_blocks()]
    assert any(i.startswith("README.md") for i in found) and any(i.startswith("docs/preference.md") for i in found)
    for where, marker in NEEDS_THE_NETWORK:  # an excuse for a block that no longer exists is stale
        assert marker in (ROOT / where).read_text(), (where, marker)
    for marker in CLAIMS:  # so is a claim about a block that changed
        assert any(marker in (ROOT / document).read_text() for document in DOCUMENTS), marker
