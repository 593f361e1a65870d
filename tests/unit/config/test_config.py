"""The config dataclasses: types checked, typos named, one source for help and reference, portable shipped data."""

import dataclasses
import json
import pathlib
import re
import shutil
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from tf_ppo import config as config_module
from tf_ppo.config import (DATA_DIR, ConfigError, ModelConfig, PPOConfig, RewardConfig, RLConfig, SFTConfig,
                           UnknownFieldError, reference_markdown, with_reference)
from tf_ppo.config import fields, reference
from tf_ppo.rl import algorithms

ROOT = pathlib.Path(__file__).resolve().parents[3]
SECTIONS = (PPOConfig, ModelConfig, SFTConfig, RewardConfig)
# A value of the wrong type for each kind of annotation, and the words the error must use.
WRONG = {bool: ("False", "must be a bool (true/false)"), int: ("10", "must be an integer"),
         float: ("0.5", "must be a number"), str: (3, "must be a string")}


def typed_fields():
    """(section, field name, wrong value, expected words) for every field whose annotation is a plain type."""
    for section in SECTIONS:
        for field in dataclasses.fields(section):
            kind, optional = fields.split_optional(field.type)
            if kind in WRONG:
                value, words = WRONG[kind]
                yield pytest.param(section, field.name, value, words + (" or None" if optional else ""),
                                   id=f"{section.__name__}.{field.name}")


@pytest.mark.parametrize("section,name,value,words", typed_fields())
def test_every_field_type_is_checked(section, name, value, words):
    expected = f"{section.__name__}.{name} {words}, got {value!r}"
    with pytest.raises(ConfigError, match=f"^{re.escape(expected)}$"):
        section(**{name: value})


@pytest.mark.parametrize("name", ["stop_at_eos", "whiten_advantages", "train_jit"])
def test_a_string_is_not_a_bool(name):
    with pytest.raises(ConfigError, match=rf"PPOConfig.{name} must be a bool \(true/false\), got 'False'"):
        PPOConfig(**{name: "False"})


def test_a_string_count_says_integer_not_positive():
    with pytest.raises(ConfigError, match="PPOConfig.total_updates must be an integer, got '10'"):
        PPOConfig(total_updates="10")


def test_numbers_of_any_kind_are_accepted_where_they_fit():
    config = PPOConfig(temperature=1, beta=np.float32(0.2), total_updates=np.int64(3), target_kl=2)
    assert config.temperature == 1 and config.total_updates == 3
    with pytest.raises(ConfigError, match="PPOConfig.total_updates must be an integer, got True"):
        PPOConfig(total_updates=True)
    with pytest.raises(ConfigError, match="PPOConfig.batch_size must be an integer, got 64.0"):
        PPOConfig(batch_size=64.0)


def test_nested_sections_are_checked_through_ppoconfig():
    with pytest.raises(ConfigError, match="SFTConfig.epochs must be an integer, got '2'"):
        PPOConfig(sft={"epochs": "2"})
    with pytest.raises(ConfigError, match="PPOConfig.sft must be a SFTConfig, got 3"):
        PPOConfig(sft=3)


@pytest.mark.parametrize("make,message", [
    (lambda: PPOConfig(bta=0.1), "PPOConfig: unknown field 'bta' (did you mean 'beta'?)"),
    (lambda: PPOConfig().replace(bta=0.1), "PPOConfig: unknown field 'bta' (did you mean 'beta'?)"),
    (lambda: PPOConfig.from_json('{"bta": 0.1}'), "PPOConfig: unknown field 'bta' (did you mean 'beta'?)"),
    (lambda: PPOConfig(model={"num_layer": 1}), "ModelConfig: unknown field 'num_layer' (did you mean 'num_layers'?)"),
    (lambda: PPOConfig().replace(sft={"epoch": 1}), "SFTConfig: unknown field 'epoch' (did you mean 'epochs'?)"),
    (lambda: PPOConfig.from_json('{"reward": {"clipp": 1}}'),
     "RewardConfig: unknown field 'clipp' (did you mean 'clip'?)"),
    (lambda: PPOConfig(zzz=1), "PPOConfig: unknown field 'zzz'"),
])
def test_unknown_fields_suggest_the_near_miss(make, message):
    with pytest.raises(UnknownFieldError) as caught:
        make()
    assert str(caught.value) == message
    assert isinstance(caught.value, TypeError) and isinstance(caught.value, ValueError)


def test_from_json_that_is_not_a_config_is_a_config_error():
    with pytest.raises(ConfigError, match="not valid JSON"):
        PPOConfig.from_json("{beta: 0.1}")
    with pytest.raises(ConfigError, match="expected a JSON object"):
        PPOConfig.from_json("[1, 2]")


def test_a_missing_preset_directory_is_named(tmp_path):
    for missing in (str(tmp_path / "nowhere"), "./nowhere", "presets/nowhere"):
        with pytest.raises(ConfigError, match=r"ModelConfig.preset is a directory that does not exist"):
            PPOConfig(model=missing)
    assert PPOConfig(model=str(tmp_path)).model.preset == str(tmp_path)
    for name in ("gpt2_base_en", "hf://someone/some_model", "kaggle://keras/gpt2/keras/gpt2_base_en"):
        assert PPOConfig(model=name).model.preset == name  # names and handles are not directories


def test_config_json_names_the_shipped_data_portably():
    config = PPOConfig(sft={"train_csv": PPOConfig().eval_prompts_csv})
    recorded = json.loads(config.to_json())
    assert recorded["prompts"] == "shipped:train_data.csv"
    assert recorded["sft"]["train_csv"] == "shipped:heldout_data.csv"
    assert str(DATA_DIR) not in config.to_json()
    assert not [value for value in _strings(recorded) if pathlib.PurePath(value).is_absolute()]
    assert PPOConfig.from_json(config.to_json()) == config
    assert config.prompts == str(DATA_DIR / "train_data.csv")  # the live config holds real paths


def test_shipped_names_resolve_and_a_wrong_one_is_named():
    assert PPOConfig(prompts="shipped:heldout_data.csv").prompts == str(DATA_DIR / "heldout_data.csv")
    with pytest.raises(ConfigError, match=r"PPOConfig.vocabulary names a shipped file that does not exist: "
                                          r"'shipped:vocab.jsn' \(shipped: .*vocab.json"):
        PPOConfig(vocabulary="shipped:vocab.jsn")


def test_data_dir_is_the_installed_package_when_there_is_one(tmp_path, monkeypatch):
    (tmp_path / "tf_ppo_data").mkdir()
    monkeypatch.syspath_prepend(str(tmp_path))
    assert fields._shipped_data_dir() == (tmp_path / "tf_ppo_data").resolve()


def test_help_and_reference_come_from_the_field_metadata():
    for section in SECTIONS:
        # Every table of the section (PPOConfig has one per group).
        table = "".join(part.split("## ")[0] for part in reference_markdown().split(f"## `{section.__name__}`")[1:])
        for field in dataclasses.fields(section):
            assert field.metadata["help"], f"{section.__name__}.{field.name} has no meaning"
            assert f"| `{field.name}` | `{reference._cell(reference.type_name(field.type))}` |" in table


def test_reference_page_is_in_sync():
    page = (ROOT / "docs" / "configuration.md").read_text()
    assert reference.PAGE == ROOT / "docs" / "configuration.md"  # what `python -m tf_ppo.config` rewrites
    assert page.startswith("# Configuration reference\n")
    assert with_reference(page) == page, "docs/configuration.md is stale: run python -m tf_ppo.config"


def test_python_m_config_rewrites_and_checks_a_page(tmp_path, capsys):
    page = tmp_path / "configuration.md"
    page.write_text("# x\n<!-- config-reference:start -->\nold\n<!-- config-reference:end -->\nend\n")
    assert reference.main(["--check", str(page)]) == 1
    assert reference.main([str(page)]) == 0
    assert reference.main(["--check", str(page)]) == 0
    assert "| `vf_coef` | `float` | `0.1` |" in page.read_text() and page.read_text().endswith("end\n")


def test_the_package_names_every_config_name():
    assert RLConfig is PPOConfig  # one class: error messages keep saying PPOConfig.<field>
    assert config_module.main is reference.main  # `python -m tf_ppo.config`
    for name in config_module.__all__:
        assert getattr(config_module, name) is not None, name
    with pytest.raises(UnknownFieldError) as caught:  # shown where users import it from
        PPOConfig(kl_cof=0.1)
    assert type(caught.value).__module__ == "tf_ppo.config" and ConfigError.__module__ == "tf_ppo.config"


def test_wheel_ships_the_data_and_every_module(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    for name in ("setup.cfg", "pyproject.toml", "README.md", "MANIFEST.in"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "data", source / "data")
    shutil.copytree(ROOT / "tf_ppo", source / "tf_ppo", ignore=shutil.ignore_patterns("__pycache__"))
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(tmp_path / "wheels"), str(source)], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-3000:]
    names = set(zipfile.ZipFile(next((tmp_path / "wheels").glob("tf_ppo-*.whl"))).namelist())
    shipped = {f"tf_ppo_data/{path.name}" for path in (ROOT / "data").iterdir()
               if path.suffix in (".csv", ".txt", ".json")}
    modules = {path.relative_to(ROOT).as_posix() for path in (ROOT / "tf_ppo").rglob("*.py")}
    assert {"tf_ppo_data/vocab.json", "tf_ppo_data/train_data.csv"} <= shipped
    assert shipped <= names, sorted(shipped - names)
    assert modules <= names, sorted(modules - names)


def _strings(values):
    for value in values.values():
        if isinstance(value, dict):
            yield from _strings(value)
        elif isinstance(value, str):
            yield value


def test_the_groups_partition_the_rl_fields_and_section_reads_them():
    from tf_ppo.config import GROUPS
    grouped = [name for names in GROUPS.values() for name in names]
    assert sorted(grouped) == sorted(field.name for field in dataclasses.fields(PPOConfig))  # each field once
    config = PPOConfig(batch_size=16, algorithm="grpo", num_generations=4)
    assert config.section("rollout")["batch_size"] == 16 and config.section("algorithm")["num_generations"] == 4
    with pytest.raises(ConfigError, match="no group 'rollouts'"):
        config.section("rollouts")


# --- one field per meaning: TRL's PPO names of three fields, and two more of TRL's, are aliases that warn

ALIASES = [("kl_coef", "beta", 0.3), ("cliprange", "epsilon", 0.3), ("num_ppo_epochs", "num_iterations", 2),
           ("max_completion_length", "response_length", 12), ("output_dir", "run_dir", "runs/x")]


@pytest.mark.parametrize("alias, name, value", ALIASES)
def test_an_alias_as_keyword_or_attribute_warns_and_is_its_field(alias, name, value):
    with pytest.warns(FutureWarning, match=f"PPOConfig.{alias} is read as {name} .an alias.; use {name}"):
        config = PPOConfig(**{alias: value})
    assert getattr(config, name) == value and config == PPOConfig(**{name: value})
    with pytest.warns(FutureWarning, match=f"use {name}"):
        assert getattr(config, alias) == value
    with pytest.warns(FutureWarning):
        assert getattr(PPOConfig().replace(**{alias: value}), name) == value
    with pytest.warns(FutureWarning):
        assert getattr(PPOConfig.from_json(json.dumps({alias: value})), name) == value
    assert alias not in json.loads(config.to_json())  # a run records the field's name only


def test_an_alias_and_its_field_with_other_values_is_an_error():
    with pytest.raises(ConfigError, match=r"kl_coef=0.2 and beta=0.3 are one field .* give only beta"):
        PPOConfig(beta=0.3, kl_coef=0.2)


def test_beta_and_num_iterations_left_none_are_each_algorithms_default():
    from tf_ppo.rl import algorithms

    defaults = {name: (algorithms.create(PPOConfig(algorithm=name, num_generations=4)).beta,
                       algorithms.create(PPOConfig(algorithm=name, num_generations=4)).num_epochs)
                for name in ("grpo", "rloo", "reinforce_pp")}
    assert defaults == {"grpo": (0.0, 1), "rloo": (0.05, 1), "reinforce_pp": (0.01, 1)}
    ppo = algorithms.create(PPOConfig())
    assert (ppo.beta, ppo.num_epochs, float(ppo.kl_controller.value.numpy())) == (0.1, 4, 0.1)
    assert algorithms.create(PPOConfig(beta=0.0, num_iterations=1)).num_epochs == 1


@pytest.mark.parametrize("algorithm", ["ppo", "grpo"])
def test_a_config_json_with_both_names_of_a_pair_keeps_the_one_its_algorithm_read(algorithm, recwarn):
    # What config.json held before one field per meaning: every field of both names, at the run's values.
    saved = {**json.loads(PPOConfig().to_json()), "algorithm": algorithm, "num_generations": 4,
             "kl_coef": 0.05, "cliprange": 0.1, "num_ppo_epochs": 2, "beta": 0.3, "epsilon": 0.25,
             "num_iterations": 3}
    if algorithm == "ppo":  # a PPO run left GRPO's names at their defaults, and the other way round
        saved.update(num_generations=1, beta=None, epsilon=0.2, num_iterations=1)
    else:
        saved.update(kl_coef=0.1, cliprange=0.2, num_ppo_epochs=4)
    config = PPOConfig.from_json(json.dumps(saved))
    read = (0.05, 0.1, 2) if algorithm == "ppo" else (0.3, 0.25, 3)
    assert (config.beta, config.epsilon, config.num_iterations) == read
    assert not [w for w in recwarn if issubclass(w.category, FutureWarning)]  # the user typed neither name


def test_each_stage_takes_its_own_section_alone_and_names_the_entry_point_of_another():
    from tf_ppo.config import DPOConfig, run_config

    assert run_config(SFTConfig(epochs=2), "sft") == PPOConfig(sft={"epochs": 2})
    assert run_config(RewardConfig(epochs=3), "reward").reward.epochs == 3
    assert run_config(DPOConfig(beta=0.2), "dpo").dpo == DPOConfig(beta=0.2)
    assert run_config(None) == PPOConfig() and run_config(PPOConfig(seed=3), "dpo").seed == 3
    with pytest.raises(ConfigError, match=r"a DPOConfig configures tf_ppo.dpo\(config\); this call takes a "
                                          r"PPOConfig \(RLConfig\)"):
        run_config(DPOConfig())
    with pytest.raises(ConfigError, match=r"a RewardConfig configures tf_ppo.train_reward_model\(config\); this "
                                          r"call takes a SFTConfig or PPOConfig"):
        run_config(RewardConfig(), "sft")
    with pytest.raises(ConfigError, match="expected a PPOConfig .RLConfig., got dict"):
        run_config({"beta": 0.1})


@pytest.mark.parametrize("name, words", [
    ("max_steps", "total_updates counts updates"), ("per_device_train_batch_size", "batch_size counts the rollouts"),
    ("reward_funcs", "train(config, reward_fn="), ("save_steps", "checkpoint_every counts updates"),
    ("logging_steps", "every update is logged"), ("num_train_epochs", "total_updates updates"),
])
def test_a_trl_name_that_means_something_else_here_says_what_to_use(name, words):
    for make in (lambda: PPOConfig(**{name: 1}), lambda: PPOConfig.from_json(json.dumps({name: 1}))):
        with pytest.raises(UnknownFieldError, match=rf"PPOConfig: {name} is not a field here: .*{re.escape(words)}"):
            make()


def test_a_group_algorithm_without_num_generations_gets_a_usable_default():
    # Before, --algorithm grpo alone failed: num_generations defaulted to 1 for every algorithm.
    assert algorithms.create(PPOConfig(algorithm="grpo")).num_generations == 8  # TRL's GRPOConfig
    assert algorithms.create(PPOConfig(algorithm="rloo")).num_generations == 2  # TRL's RLOOConfig
    assert algorithms.create(PPOConfig()).num_generations == 1
    with pytest.raises(ConfigError, match="batch_size counts rollouts, so it must be a multiple of "
                                          "num_generations=8, got 12"):
        PPOConfig(algorithm="grpo", batch_size=12)
    with pytest.raises(ConfigError, match="num_generations must be >= 2 for algorithm='grpo'"):
        PPOConfig(algorithm="grpo", num_generations=1)
    # A config.json of before, with PPO's recorded num_generations 1, still loads.
    assert PPOConfig.from_json('{"algorithm": "ppo", "num_generations": 1}').num_generations is None


@pytest.mark.parametrize("changes, message", [
    ({"old_logprobs": "vllm"}, "PPOConfig.old_logprobs must be one of"),
    ({"vllm_importance_sampling_mode": "token"}, "PPOConfig.vllm_importance_sampling_mode must be one of"),
    ({"vllm_importance_sampling_cap": 0.0},
     "PPOConfig.vllm_importance_sampling_cap must be a positive number, got 0.0"),
    ({"vllm_importance_sampling_correction": True, "old_logprobs": "sampler"},
     "PPOConfig.vllm_importance_sampling_correction corrects the sampler's log-probs toward recomputed ones"),
])
def test_old_logprobs_and_importance_sampling_fields_are_checked(changes, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        PPOConfig(**changes)
