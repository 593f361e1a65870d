"""The throughput benchmark runs on a tiny shape and reports every figure; nothing retraces across updates."""

import json
import pathlib
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import dpo_throughput  # noqa: E402
import einsum_gradients  # noqa: E402
import family_memory  # noqa: E402
import memory_table  # noqa: E402
import multi_turn  # noqa: E402
import padded_vocabulary  # noqa: E402
import ppo_throughput  # noqa: E402
import response_logits_memory  # noqa: E402


TINY = ["--layers", "1", "--hidden", "16", "--heads", "2", "--batch", "8", "--prompt-length", "8"]


def test_the_multi_turn_benchmark_prints_both_times_and_exits_1_when_the_ratio_is_missed(capsys):
    assert multi_turn.main(["--layers", "1", "--hidden", "16", "--heads", "2", "--batch", "4", "--repeats", "1",
                            "--target-ratio", "0.01"]) == 1
    out = capsys.readouterr().out
    result = json.loads(out.strip().splitlines()[-1])
    assert result["single_turn_seconds"] > 0 and result["episode_seconds"] > 0
    assert "2-turn episode, 8 + 16-token reply + 8 tokens" in out and "NOT MET" in out


def test_benchmark_reports_every_figure_and_exits_1_when_a_target_is_missed(capsys):
    # One run serves both checks (each run builds and traces two trainers): no run reaches 150% of peak.
    # It also runs the options of the real-sizes issue: a padded vocabulary, chunked rollouts, checkpointing.
    with pytest.raises(SystemExit) as stopped:
        ppo_throughput.main(TINY + ["--response-length", "4", "--updates", "2", "--ppo-epochs", "1",
                                    "--compare-keras-hub", "--algorithm", "grpo", "--num-generations", "2",
                                    "--beta", "0", "--compare-ppo", "--target-fraction-of-peak", "1.5",
                                    "--vocab", "1500", "--rollout-batch-size", "4", "--gradient-checkpointing"])
    assert stopped.value.code == 1
    out = capsys.readouterr().out
    assert "fraction_of_peak >= 1.5: " in out and "NOT MET" in out
    result = json.loads(out.strip().splitlines()[-1])
    assert result["targets_met"] == {"fraction_of_peak >=": False}
    args = ppo_throughput.parse_args(TINY + ["--target-fraction-of-peak", "0"])
    assert ppo_throughput.target_checks(result, args) == {"fraction_of_peak >=": (result["fraction_of_peak"], 0.0, True)}
    # GRPO with beta 0 holds neither a critic nor a reference; PPO at the same shape holds both.
    assert (result["value_model_parameters"], result["reference_parameters"]) == (0, 0)
    assert result["ppo"]["value_model_parameters"] > 0 and result["ppo"]["reference_parameters"] > 0
    assert "grpo: no value model, no reference model" in out
    assert result["over_own_ppo"] == round(result["seconds_per_update_median"]
                                           / result["ppo"]["seconds_per_update_median"], 3)
    for key in ("seconds_per_update_median", "seconds_per_update_min", "seconds_per_update_max", "rollouts_per_second",
                "generated_tokens_per_second", "seconds_generation", "seconds_scoring_forwards",
                "seconds_optimisation", "achieved_gflops", "matmul_peak_gflops", "fraction_of_peak", "peak_rss_mb",
                "keras_hub_generate_tokens_per_second", "rollout_with_logprobs_tokens_per_second"):
        assert result[key] > 0, key
    for phase in ("generation", "scoring", "reward", "optimisation"):
        assert 0 < result[f"peak_rss_mb_{phase}"] <= result["peak_rss_mb"], phase
        assert 0 <= result[f"added_rss_mb_{phase}"] <= result[f"peak_rss_mb_{phase}"], phase
        assert 0 <= result[f"peak_tensor_mb_{phase}"] < result["peak_rss_mb"], phase  # tensors of 256 KB and more
    # Training holds the gradients and activations on top of what sampling holds.
    assert result["peak_tensor_mb_optimisation"] > result["peak_tensor_mb_generation"]
    assert result["shape"]["response_length"] == 4 and result["shape"]["vocabulary"] == 1500
    assert result["traces"] == {"_generate": 1, "_score": 1, "_advantages": 1, "_train_step": 1}


def test_benchmark_scaling_times_generation_per_response_length_each_in_its_own_process(capsys, tmp_path):
    ppo_throughput.main(TINY + ["--scaling", "4,20", "--plot", str(tmp_path / "growth.png")])
    rows = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["scaling"]
    assert [row["response_length"] for row in rows] == [4, 20]
    assert rows[0]["time_ratio_to_shortest"] == 1.0 and rows[0]["growth_over_linear"] == 1.0
    assert all(row["seconds_generate"] > 0 and row["tokens_per_second"] > 0 and row["peak_rss_mb"] > 0
               and 0 < row["models_rss_mb"] < row["peak_rss_mb"] and 0 < row["added_rss_mb"] < row["peak_rss_mb"]
               for row in rows)
    assert (tmp_path / "growth.png").stat().st_size > 10_000


def test_benchmark_runs_lora_with_a_reward_function_packed_rows_sampler_logprobs_and_early_ends(capsys):
    ppo_throughput.main(TINY + ["--response-length", "4", "--updates", "1", "--ppo-epochs", "1", "--lora-rank", "2",
                                "--reward", "function", "--padding-free", "--old-logprobs", "sampler",
                                "--end-logit-shift", "8"])
    out = capsys.readouterr().out
    result = json.loads(out.strip().splitlines()[-1])
    # LoRA: the reference is the policy with its adapters off, holding no weights of its own.
    assert result["reference_model"] == "AdaptersOff" and result["reference_parameters"] == 0
    assert result["seconds_per_update_median"] > 0 and "peak_tensor_mb_optimisation" in result
    assert result["mean_response_length"] < 4 and result["padding_share"] > 0  # the end token, raised, ends some
    assert f"{result['padding_share']:.1%} of the padded buffer's tokens are padding" in out


def test_memory_table_recovers_the_costs_it_was_given_and_sizes_the_rows():
    # Points made from known costs: the fit must return them, and the rows must follow from them.
    full, lora, grpo = memory_table.SETUPS
    parameters, fixed, costs = 124e6, 4000.0, {full: 300.0, lora: 170.0, grpo: 280.0}
    small = memory_table.MODELS["GPT-2 small"]

    def point(setup, rows, response):
        fixed_mb = fixed if setup == full else memory_table.parameter_mb(memory_table.SETUPS[setup][2], parameters)
        tensors = fixed_mb + rows * memory_table.per_row_mb(costs[setup], small, response)
        return {"rows": rows, "response": response, "peak_tensor_mb": tensors, "peak_rss_mb": tensors + 2000,
                "policy_parameters": parameters}

    points = {full: [point(full, *p) for p in memory_table.FIT_POINTS],
              "check": [point(full, *memory_table.CHECK_POINT)],
              lora: [point(lora, *memory_table.OTHER_SETUPS_POINT)], grpo: [point(grpo, *memory_table.OTHER_SETUPS_POINT)]}
    got_fixed, got_costs = memory_table.fit(points)
    assert got_fixed == pytest.approx(fixed) and got_costs == pytest.approx(costs)
    text, figures = memory_table.table(points)
    assert figures["host_mb"] == 2000 and "predicted 4" in text and "(+0%)" in text  # the scaling checks agree
    medium = memory_table.MODELS["GPT-2 medium (355 M)"]
    budget_mb = 80 * 1024 - fixed - memory_table.parameter_mb(32, medium[4] - parameters)
    expected = int(budget_mb // memory_table.per_row_mb(costs[full], medium, 512))
    assert figures["rows"][f"{full} | 80 GB | GPT-2 medium (355 M)"][512] == expected > 0
    assert figures["rows"][f"{full} | 80 GB | 8 B (Llama 3.1 8B shape)"] == {128: 0, 512: 0}  # 32 B x 8 B params
    # Longer responses cost more per row: fewer fit.
    cell = figures["rows"][f"{grpo} | 24 GB | GPT-2 small"]
    assert cell[128] > cell[512] > 0


def test_a_padded_vocabulary_has_n_ids_and_tokenises_text_as_the_shipped_one():
    from tf_ppo.config import DATA_DIR
    from tf_ppo.models import load_tokenizer

    shipped = load_tokenizer(str(DATA_DIR / "vocab.json"), str(DATA_DIR / "merges.txt"))
    padded = load_tokenizer(str(padded_vocabulary.padded_vocabulary(5000)), str(DATA_DIR / "merges.txt"))
    assert padded.vocabulary_size() == 5000
    text = ["the film was a long and slow story about the actor"]
    assert np.asarray(padded(text)).tolist() == np.asarray(shipped(text)).tolist()
    with pytest.raises(SystemExit, match="smaller than the shipped vocabulary"):
        padded_vocabulary.padded_vocabulary(10)


def test_logits_memory_benchmark_measures_both_ways_in_their_own_processes(capsys):
    response_logits_memory.main(["--batch=2", "--prompt-length=8", "--response-length=4", "--vocabulary=100"])
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["peak_rss_mb_response_positions"] > 0 and result["peak_rss_mb_every_position"] > 0
    assert result["vocabulary"] == 100


def test_einsum_benchmark_times_both_versions_of_the_gradient_step(capsys):
    einsum_gradients.main(["--layers=1", "--hidden=16", "--heads=2", "--batch=2", "--length=8", "--calls=2"])
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["ms_keras_einsum"] > 0 and result["ms_tensordot"] > 0
    assert result["ratio_tensordot_over_keras_einsum"] > 0


def test_dpo_benchmark_times_both_reference_modes_at_exactly_the_asked_length(capsys):
    dpo_throughput.main(["--layers", "1", "--hidden", "16", "--heads", "2", "--pairs", "4", "--length", "24",
                         "--steps", "2", "--warmup", "1"])
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(result) == {"live", "precomputed"}
    assert result["live"]["reference_parameters"] > 0 and result["precomputed"]["reference_parameters"] == 0
    assert all(row["seconds_per_step_median"] > 0 for row in result.values())
    assert result["precomputed"]["precompute_seconds"] > 0
    with pytest.raises(SystemExit, match="--target-trl-ratio needs --compare-trl"):
        dpo_throughput.main(["--layers", "1", "--hidden", "16", "--heads", "2", "--pairs", "4", "--length", "24",
                             "--steps", "1", "--warmup", "1", "--target-trl-ratio", "0.5"])


def test_family_memory_has_a_row_per_supported_family_at_the_memory_tables_bytes_per_parameter():
    from tf_ppo.models.families.support import SUPPORTED

    rows = {class_name: (preset, parameters, gigabytes) for class_name, preset, parameters, gigabytes
            in family_memory.rows()}
    assert set(rows) == set(SUPPORTED)
    preset, parameters, gigabytes = rows["Gemma3CausalLM"]
    assert preset == "gemma3_1b"  # not the embedding model or the 270 M one
    full_ppo, _, bytes_per_parameter = memory_table.SETUPS[memory_table.FULL_PPO]
    assert gigabytes[memory_table.FULL_PPO] == pytest.approx(bytes_per_parameter * parameters / 2**30)
    assert rows["GPTNeoXCausalLM"][0] is None  # keras-hub lists no GPT-NeoX preset
