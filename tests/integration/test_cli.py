"""The `tf-ppo` command: the demo's final JSON line, flags parsed by type, clear errors (and only for user errors)."""

import dataclasses
import importlib
import json
import os
import subprocess
import sys
from types import SimpleNamespace

import keras_hub
import pytest
import requests
import tensorflow as tf

import tf_ppo
from tf_ppo import commands
from tf_ppo.cli import build_parser, config_from_args, main, parse_args
from tf_ppo.config import NESTED, PPOConfig, help_text, split_optional
from tf_ppo.sft import SFTResult

PIPELINE = importlib.import_module("tf_ppo.pipeline")  # the module, which `tf_ppo.pipeline` (the function) hides


def config_of(*argv):
    return config_from_args(parse_args(build_parser(), ["train", *argv]))


def exit_code_and_stderr(capsys, argv):
    with pytest.raises(SystemExit) as caught:
        main(argv)
    return caught.value.code, capsys.readouterr().err


def test_bad_flag_value_is_one_clear_line(capsys):
    assert main(["train", "--epsilon", "-1"]) == 2
    assert "error: PPOConfig.epsilon must be a positive number, got -1" in capsys.readouterr().err


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


@pytest.mark.parametrize("text,value", [("true", True), ("false", False), ("True", True), ("False", False),
                                        ("1", True), ("0", False)])
def test_bool_flags_take_the_usual_spellings(text, value):
    assert config_of("--stop_at_eos", text).stop_at_eos is value


def test_flag_values_are_parsed_by_the_field_type(tmp_path):
    config = config_of("--run_dir", "2024", "--target_kl", "null", "--cliprange_value", "None", "--beta", "1",
                       "--total_updates", "7", "--model.preset", "null", "--sft.epochs", "2")
    assert (config.run_dir, config.target_kl, config.cliprange_value) == ("2024", None, None)
    assert (config.beta, config.total_updates, config.model.preset, config.sft.epochs) == (1.0, 7, None, 2)
    with_preset = config_of("--model", str(tmp_path), "--model.num_layers", "1")  # both: one model section
    assert (with_preset.model.preset, with_preset.model.num_layers) == (str(tmp_path), 1)


@pytest.mark.parametrize("argv,message", [
    (["--stop_at_eos", "maybe"], "argument --stop_at_eos: must be a bool (true/false/1/0), got 'maybe'"),
    (["--total_updates", "1.5"], "argument --total_updates: must be an integer, got '1.5'"),
    (["--target_kl", "high"], "argument --target_kl: must be a number or null, got 'high'"),
    (["--bta", "0.1"], "unrecognized arguments: --bta (did you mean '--beta'?) 0.1"),
    (["--target", "3"], "unrecognized arguments: --target (did you mean '--target_kl'?) 3"),  # no abbreviations
    (["--sft.epoch", "3"], "unrecognized arguments: --sft.epoch (did you mean '--sft.epochs'?) 3"),
])
def test_bad_flags_show_the_subcommand_usage(capsys, argv, message):
    code, err = exit_code_and_stderr(capsys, ["train", *argv])
    assert code == 2
    assert err.startswith("usage: tf-ppo train ") and f"tf-ppo train: error: {message}\n" in err


def help_of(capsys, monkeypatch, command):
    monkeypatch.setenv("COLUMNS", "200")
    with pytest.raises(SystemExit) as caught:
        main([command, "--help"])
    assert caught.value.code == 0
    return capsys.readouterr().out


def test_help_shows_each_fields_meaning_type_and_default(capsys, monkeypatch):
    shown = "".join(help_of(capsys, monkeypatch, "pipeline").split())  # argparse wraps lines: compare unspaced
    for field in dataclasses.fields(PPOConfig):
        flags = [(f"{field.name}.{sub.name}", sub) for sub in dataclasses.fields(NESTED[field.name])] \
            if field.name in NESTED else [(field.name, field)]
        for flag, described in flags:
            kind, _ = split_optional(described.type)
            metavar = "PRESET" if kind is object else kind.__name__.upper()
            assert f"--{flag}{metavar}" + "".join(help_text(described).split()) in shown, flag
    assert "--stop_at_eosBOOLtruncateeachresponseafteritsfirstendtoken[bool,default:True]" in shown
    assert "8-11%fasteronCPUhere" in shown  # a % in a help string survives argparse's formatting


@pytest.mark.parametrize("command,not_listed", [
    ("train", ["--dpo.beta", "--reward.epochs", "--reward.preferences_csv"]),
    ("demo", ["--dpo.loss_type", "--reward.epochs"]),
    ("sft", ["--beta", "--batch_size", "--total_updates", "--dpo.beta", "--reward.epochs", "--lora_rank"]),
    ("reward", ["--beta", "--total_updates", "--dpo.beta", "--learning_rate"]),
    ("dpo", ["--epsilon", "--total_updates", "--reward.epochs", "--num_generations"]),
])
def test_each_commands_help_lists_its_own_fields_by_group_under_examples(capsys, monkeypatch, command, not_listed):
    shown = help_of(capsys, monkeypatch, command)
    flags = {word.rstrip(",") for word in shown.split() if word.startswith("--")}
    assert not flags & set(not_listed)
    assert f"--{command if command in ('sft', 'dpo', 'reward') else 'sft'}.epochs" in flags
    assert "model fields:" in shown and "run fields:" in shown
    examples = shown.split("examples:\n")[1].split("\n\n")[0].splitlines()
    assert examples and all(line.strip().startswith(f"tf-ppo {command}") for line in examples)
    for line in examples:  # every example parses
        words = [word.strip('"') for word in line.split()[1:]]
        assert parse_args(build_parser(), words).command == command


def test_a_flag_of_another_command_names_the_commands_it_belongs_to(capsys):
    code, err = exit_code_and_stderr(capsys, ["sft", "--batch_size", "8"])
    assert code == 2
    assert ("tf-ppo sft: error: --batch_size is not read by tf-ppo sft (it is a flag of demo, train, reward, "
            "pipeline, dpo) (did you mean '--sft.batch_size'?)") in err
    code, err = exit_code_and_stderr(capsys, ["train", "--dpo.beta", "0.2"])
    assert code == 2 and "--dpo.beta is not read by tf-ppo train (it is a flag of pipeline, dpo)" in err


def test_generate_help_shows_its_defaults(capsys, monkeypatch):
    shown = " ".join(help_of(capsys, monkeypatch, "generate").split())
    for default in ("(default: 16)", "(default: 1.0)", "(default: 0)"):
        assert default in shown


def test_config_file_errors_name_the_field(tmp_path, capsys):
    path = tmp_path / "config.json"
    path.write_text('{"kl_cof": 0.1}')
    assert main(["train", "--config", str(path)]) == 2
    assert "error: PPOConfig: unknown field 'kl_cof' (did you mean 'beta'?)" in capsys.readouterr().err
    path.write_text('{"kl_coef": 0.1,}')
    assert main(["train", "--config", str(path)]) == 2
    assert f"error: {path}: not valid JSON" in capsys.readouterr().err


def test_resume_then_config_then_flags_merge_section_by_section(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text(PPOConfig(sft={"epochs": 2, "batch_size": 16}).to_json())
    (tmp_path / "more.json").write_text('{"sft": {"epochs": 3}}')
    args = parse_args(build_parser(), ["train", "--resume", str(tmp_path / "run"), "--config",
                                       str(tmp_path / "more.json"), "--sft.max_length", "20"])
    sft = config_from_args(args).sft
    assert (sft.epochs, sft.batch_size, sft.max_length) == (3, 16, 20)


def test_an_internal_value_error_keeps_its_traceback(monkeypatch):
    def shape_error_while_tracing(*args, **kwargs):
        return tf.function(lambda: tf.zeros([2]) + tf.zeros([3]))()

    monkeypatch.setattr(commands, "train", shape_error_while_tracing)
    with pytest.raises(ValueError, match="Dimensions must be equal"):
        main(["train", "--total_updates", "1"])


def test_an_offline_preset_name_is_one_line(monkeypatch, tmp_path, capsys):
    def offline(*args, **kwargs):
        raise requests.exceptions.ConnectionError("Max retries exceeded (NameResolutionError)")

    for model in (keras_hub.models.CausalLM, keras_hub.models.Tokenizer):
        monkeypatch.setattr(model, "from_preset", classmethod(offline))
    assert main(["train", "--model", "gpt2_base_en", "--run_dir", str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err == ("tf-ppo train: error: could not download preset 'gpt2_base_en' (no network?); "
                                       "pass a local preset directory\n")
    monkeypatch.setattr(commands, "train", offline)  # a connection error that is not a preset download: a traceback
    with pytest.raises(requests.exceptions.ConnectionError):
        main(["train", "--run_dir", str(tmp_path / "run")])


@pytest.mark.parametrize("preset,message", [
    ("gpt2_bse_en", "ModelConfig.preset 'gpt2_bse_en' is neither a local preset directory nor a keras-hub preset "
                    "name (did you mean 'gpt2_base_en'?)"),
    ("./nowhere", "ModelConfig.preset is a directory that does not exist: './nowhere'"),
])
def test_a_bad_preset_is_one_line(capsys, preset, message):
    assert main(["train", "--model", preset]) == 2
    assert f"tf-ppo train: error: {message}" in capsys.readouterr().err


def test_generate_without_an_export_is_one_line(tmp_path, capsys):
    assert main(["generate", str(tmp_path / "missing"), "the film was"]) == 2
    assert f"error: {tmp_path / 'missing'}: export directory not found" in capsys.readouterr().err
    assert main(["generate", str(tmp_path), "the film was"]) == 2
    assert f"error: {tmp_path} is not a SavedModel directory (no saved_model.pb)" in capsys.readouterr().err


def test_train_ends_with_the_run_dir_and_figures_before_and_after(monkeypatch, tmp_path, capsys):
    result = SimpleNamespace(run_dir=tmp_path / "run", preempted=False, interrupted=False, history=[],
                             updates_done=2, config=PPOConfig(total_updates=2),
                             evaluation_before={"score_mean": 0.123456, "heldout_kl": 0.0, "samples": [("a", "b")]},
                             evaluation_after={"score_mean": 0.5, "heldout_kl": 1.234567, "fluency": 0.75,
                                               "samples": [("a", "c")], "updates": 3})
    monkeypatch.setattr(commands, "train", lambda config, resume, strategy: result)
    assert main(["train", "--run_dir", str(tmp_path / "run")]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert list(summary.items()) == [("run_dir", str(tmp_path / "run")), ("score_mean_before", 0.1235),
                                     ("score_mean_after", 0.5), ("heldout_kl_before", 0.0),
                                     ("heldout_kl_after", 1.2346), ("fluency_after", 0.75)]


def test_ctrl_c_in_sft_exits_130_with_one_line_saying_how_to_continue(monkeypatch, tmp_path, capsys):
    stopped = SFTResult(policy=None, history=[], interrupted=True, steps_done=3, total_steps=40)
    monkeypatch.setattr(commands, "sft", lambda config, checkpoint_dir: stopped)
    assert main(["sft", "--run_dir", str(tmp_path)]) == 130
    assert capsys.readouterr().err.splitlines() == [
        f"interrupted at step 3/40; resume with: tf-ppo sft --run_dir {tmp_path} and the same flags "
        f"(it continues from its checkpoints)"]
    assert not (tmp_path / "policy.keras").exists()


def test_a_pipeline_stops_at_an_interrupted_stage_and_says_how_to_continue(monkeypatch, tmp_path, capsys):
    stopped = SFTResult(policy=None, history=[], interrupted=True, steps_done=5, total_steps=40)
    monkeypatch.setattr(PIPELINE, "sft", lambda config, show_progress, checkpoint_dir: stopped)
    monkeypatch.setattr(PIPELINE, "cached_policy", lambda config: None)  # else the session's cached SFT is taken
    assert main(["pipeline", "--run_dir", str(tmp_path)]) == 130
    assert capsys.readouterr().err.splitlines() == [f"interrupted in the SFT stage at step 5/40; resume with: "
                                                    f"tf-ppo pipeline --run_dir {tmp_path} and the same flags"]
    assert not (tmp_path / "sft" / "policy.keras").exists()  # a rerun must not take a half-trained policy as SFT's


def test_ctrl_c_outside_a_training_loop_is_one_line_and_exit_130(monkeypatch, capsys):
    def loading(*args, **kwargs):  # Ctrl-C while the models load: nothing to checkpoint yet
        raise KeyboardInterrupt

    monkeypatch.setattr(commands, "train", loading)
    try:
        code = main(["train"])
    except KeyboardInterrupt:  # pytest would take it for the user's and stop the session
        pytest.fail("the Ctrl-C left main() as a KeyboardInterrupt: a traceback")
    assert code == 130
    assert capsys.readouterr().err.splitlines() == ["tf-ppo train: interrupted; what was not checkpointed is lost"]


def test_a_deprecated_alias_flag_sets_its_field_and_says_so(capsys):
    config = config_of("--kl_coef", "0.3", "--cliprange", "0.1", "--num_ppo_epochs", "2")
    assert (config.beta, config.epsilon, config.num_iterations) == (0.3, 0.1, 2)
    err = capsys.readouterr().err
    assert "tf-ppo: --kl_coef is read as --beta (an alias); use --beta" in err
    assert "--cliprange is read as --epsilon" in err and "--num_ppo_epochs" in err
    assert "--kl_coef" in build_parser()._subparsers._group_actions[0].choices["train"].format_help()


def test_a_trl_flag_that_means_something_else_here_says_what_to_use(capsys):
    code, err = exit_code_and_stderr(capsys, ["train", "--max_steps", "10"])
    assert code == 2 and "--max_steps is not a flag here: total_updates counts updates" in err
    config = config_of("--max_completion_length", "12", "--output_dir", "runs/x")  # same meaning: aliases
    assert (config.response_length, config.run_dir) == (12, "runs/x")
    assert "--max_completion_length is read as --response_length" in capsys.readouterr().err


def test_version_prints_the_package_version(capsys):
    with pytest.raises(SystemExit) as caught:
        main(["--version"])
    assert caught.value.code == 0 and capsys.readouterr().out.strip() == f"tf-ppo {tf_ppo.__version__}"
