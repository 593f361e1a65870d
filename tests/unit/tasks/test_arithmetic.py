"""The arithmetic task: its shipped data, the solver, the verifiable rewards on hand-written edge cases, pass@k."""

import json
import math

import numpy as np
import pandas as pd
import pytest

from tf_ppo import PPOConfig
from tf_ppo.tasks.arithmetic import exact_match_reward, format_reward, parse_answer, solve
from tf_ppo.config import DATA_DIR, ConfigError
from tf_ppo.rl.functional.estimators import pass_at_k
from tf_ppo.tasks import TASKS

PROBLEM = "tom has 23 apples and buys 18 more . how many apples does he have now ?"  # 41


def score(response, prompt=PROBLEM):
    """The arithmetic task's weighted reward of one response."""
    task = TASKS["arithmetic"]
    return sum(w * fn([prompt], [response])[0] for fn, w in zip(task.reward_fns, task.reward_weights))


# --- the shipped data

def test_every_shipped_problem_is_solved_by_its_target_and_none_is_held_out_and_trained():
    train = pd.read_csv(DATA_DIR / "arithmetic_train.csv")
    heldout = pd.read_csv(DATA_DIR / "arithmetic_heldout.csv")
    assert not set(train.input_text) & set(heldout.input_text)
    for frame in (train, heldout):
        answers = [parse_answer(target) for target in frame.target]
        assert answers == [solve(problem) for problem in frame.input_text]
        assert exact_match_reward(frame.input_text.tolist(), frame.target.tolist()) == [1.0] * len(frame)
        assert format_reward(frame.input_text.tolist(), frame.target.tolist()) == [1.0] * len(frame)
    two_step = train.target.str.count(r"[+-] ") == 2
    subtraction = train.target.str.contains(" - ")
    assert two_step.mean() > 0.15 and subtraction.mean() > 0.3 and (~subtraction).mean() > 0.3


def test_the_shipped_vocabulary_loads_in_keras_hub_and_keeps_numbers_whole():
    import keras_hub

    tokenizer = keras_hub.models.GPT2Tokenizer(vocabulary=str(DATA_DIR / "arithmetic-vocab.json"),
                                               merges=str(DATA_DIR / "arithmetic-merges.txt"))
    ids = tokenizer(" 12 + 9 = 21 #### 21")
    assert [tokenizer.id_to_token(int(i)) for i in ids] == ["Ġ12", "Ġ+", "Ġ9", "Ġ=", "Ġ21", "Ġ####", "Ġ21"]
    vocab = json.loads((DATA_DIR / "arithmetic-vocab.json").read_text())
    assert vocab["<|endoftext|>"] == len(vocab) - 1  # never id 0, the padding id


# --- the solver reads the answer off the prompt

@pytest.mark.parametrize("problem,answer", [
    (PROBLEM, 41),
    ("ann has 50 pens and gives away 50 of them . how many pens are left ?", 0),
    ("sam is given 9 cards . he already has 30 . how many cards does he have now ?", 39),
    ("mia owns 12 coins , wins 5 more and then loses 8 . how many coins does she have now ?", 9),
    ("zoe starts with 7 shells . she gives away 3 and then picks up 4 more . how many shells are there now ?", 8),
    ("what is the capital of france ?", None),
    ("tom has 3 apples and ann has 4 . how many ?", None),  # two start counts
])
def test_solve_reads_the_answer_from_the_problem_text(problem, answer):
    assert solve(problem) == answer


# --- the verifiable rewards on hand-written edge cases

@pytest.mark.parametrize("response,correct,well_formed", [
    ("23 + 18 = 41 #### 41", 1.0, 1.0),
    ("#### 41", 1.0, 1.0),
    ("  23 + 18 = 41   ####    41   ", 1.0, 1.0),  # extra spaces
    ("23 + 18 = 41", 0.0, 0.0),  # missing marker
    ("23 + 18 = 41 ## 41", 0.0, 0.0),  # malformed marker
    ("23 + 18 = 42 #### 42", 0.0, 1.0),  # well formed, wrong
    ("#### 41 #### 42", 0.0, 0.0),  # several markers: no answer
    ("#### 41 #### 41", 0.0, 0.0),  # even when both agree
    ("#### -41", 0.0, 1.0),  # a negative number parses, and is wrong here
    ("#### 41 apples", 1.0, 0.0),  # the answer is there, the format is not
    ("#### ٤١", 0.0, 0.0),  # non-ASCII digits are not an answer
    ("quelle réponse ? ✓ #### 41", 1.0, 1.0),  # non-ASCII working is fine
    ("#### 4 1", 0.0, 0.0),  # "4 1" is not 41
    ("#### 41.", 1.0, 0.0),  # a full stop after the answer: right, not well formed
    ("#### 410", 0.0, 1.0),
    ("41 " * 5000 + "#### 41", 1.0, 1.0),  # a very long response
    ("", 0.0, 0.0),
    ("####", 0.0, 0.0),
    ("#### 41.5", 0.0, 0.0),
])
def test_rewards_on_hand_written_edge_cases(response, correct, well_formed):
    assert exact_match_reward([PROBLEM], [response]) == [correct]
    assert format_reward([PROBLEM], [response]) == [well_formed]


def test_negative_answers_parse_and_an_unreadable_problem_scores_zero():
    assert parse_answer("5 - 9 = -4 #### -4") == -4
    assert exact_match_reward(["what is the capital of france ?"], ["#### 0"]) == [0.0]


def test_a_well_formed_wrong_answer_scores_at_most_the_format_weight():
    format_weight = TASKS["arithmetic"].reward_weights[1]
    wrong = ["23 + 18 = 42 #### 42", "#### 0", "#### -41", "1 + 1 = 2 #### 2", "#### 410"]
    assert max(score(response) for response in wrong) <= format_weight
    assert score("23 + 18 = 41 #### 41") > 1.0  # the right answer in the right format scores most


# --- pass@k against the definition: a draw of k of the n samples without replacement

def test_pass_at_k_matches_the_combinatorial_definition_in_float64():
    rng = np.random.default_rng(0)
    for _ in range(50):
        n = int(rng.integers(1, 20))
        k = int(rng.integers(1, n + 1))
        c = rng.integers(0, n + 1, size=6)
        expected = [1.0 - math.comb(n - ci, k) / math.comb(n, k) for ci in c]
        np.testing.assert_allclose(pass_at_k(n, c, k), expected, rtol=0, atol=1e-12)


def test_pass_at_k_edge_cases():
    assert pass_at_k(4, [0, 4], 4).tolist() == [0.0, 1.0]  # n = k: "any of them right"
    assert pass_at_k(4, [1], 4).tolist() == [1.0]
    assert pass_at_k(1, [1], 1).tolist() == [1.0]
    np.testing.assert_allclose(pass_at_k([2, 8], [1, 1], 1), [0.5, 0.125])  # n per problem
    assert pass_at_k(4, [], 2).shape == (0,)
    with pytest.raises(ValueError, match="samples >= k"):
        pass_at_k(2, [1], 3)
    with pytest.raises(ValueError):
        pass_at_k(4, [5], 2)


# --- the task in the config

def test_the_arithmetic_task_sets_its_data_fields_and_flags_override_them():
    config = PPOConfig(task="arithmetic", response_length=10)
    assert config.prompts.endswith("arithmetic_train.csv") and config.sft.train_csv.endswith("arithmetic_train.csv")
    assert config.vocabulary.endswith("arithmetic-vocab.json") and config.fluency_corpus is None
    assert config.eval_pass_k == 4 and config.eval_pass_samples == 16
    assert config.response_length == 10  # the explicit value is kept
    assert PPOConfig.from_json(config.to_json()) == config
    assert PPOConfig().prompts.endswith("train_data.csv")  # the sentiment task is unchanged


def test_the_tasks_reward_weights_apply_to_its_own_rewards_only():
    from tf_ppo.rl.rewards import reward_functions

    config = PPOConfig(task="arithmetic")
    assert reward_functions(None, config) == ([exact_match_reward, format_reward], (1.0, 0.1))
    assert reward_functions([exact_match_reward], config) == ([exact_match_reward], (1.0,))  # yours: all 1
    assert reward_functions(None, config.replace(reward_weights=(1.0, 0.5)))[1] == (1.0, 0.5)


def test_pass_at_k_without_a_checkable_answer_is_an_error_naming_the_field(tmp_path):
    from tf_ppo.rl.trainer import PPOTrainer

    with pytest.raises(ConfigError, match="eval_pass_k=4 needs answers to check"):
        PPOTrainer(PPOConfig(eval_pass_k=4, run_dir=str(tmp_path)), show_progress=False)
    with pytest.raises(ConfigError, match="PPOConfig.task must be one of"):
        PPOConfig(task="maths")
    with pytest.raises(ConfigError, match=r"PPOConfig.eval_pass_samples must be >= eval_pass_k=4"):
        PPOConfig(task="arithmetic", eval_pass_samples=3)


def test_pass_at_k_is_estimated_from_eval_pass_samples_completions_per_problem(tmp_path, arithmetic_sft_path):
    from tf_ppo.rl.trainer import PPOTrainer

    calls = []  # (problems, responses) of each call: the greedy answers, then the samples

    def parity_check(problems, responses):  # a stand-in correctness check, right on about half the samples
        calls.append((list(problems), list(responses)))
        return [float(len(response) % 2 == 0) for response in responses]

    config = PPOConfig(task="arithmetic", eval_pass_k=2, eval_pass_samples=6, eval_size=8, batch_size=8,
                       generation_jit=False, train_jit=False, run_dir=str(tmp_path))
    trainer = PPOTrainer(config, accuracy_fn=parity_check, show_progress=False)
    evaluation = trainer.evaluate()
    (greedy_problems, greedy), (sampled_problems, sampled) = calls
    assert len(greedy) == 8 and len(sampled) == 8 * 6  # 6 samples per problem, in one block each
    assert sampled_problems == [problem for problem in greedy_problems for _ in range(6)]
    correct = np.array(parity_check(sampled_problems, sampled)).reshape(8, 6).sum(axis=1)
    assert evaluation["pass@2"] == pytest.approx(np.mean(pass_at_k(6, correct, 2)), abs=1e-12)
    assert evaluation["accuracy"] == pytest.approx(np.mean(parity_check(greedy_problems, greedy)), abs=1e-12)


# --- the task from one command (the accuracy rising over a short GRPO run is asserted by tutorial 09)

@pytest.fixture(scope="module")
def demo_run(tmp_path_factory, arithmetic_sft_path):
    import os
    import subprocess
    import sys

    run_dir = tmp_path_factory.mktemp("arithmetic") / "demo"
    completed = subprocess.run(
        [sys.executable, "-m", "tf_ppo.cli", "demo", "--task", "arithmetic", "--algorithm", "grpo",
         "--total_updates", "2", "--eval_every", "1", "--eval_size", "32", "--batch_size", "64",
         "--generation_jit", "False", "--train_jit", "False",  # 2 updates: compiling would cost more than it saves
         "--run_dir", str(run_dir)],
        capture_output=True, text=True, timeout=900, env={**os.environ, "TF_PPO_CACHE": arithmetic_sft_path})
    assert completed.returncode == 0, completed.stderr[-3000:]
    return completed.stdout, run_dir


def test_the_demo_prints_accuracy_before_and_after_answers_and_a_json_line(demo_run):
    out, _ = demo_run
    summary = json.loads(out.strip().splitlines()[-1])
    assert {"accuracy_before", "accuracy_after", "pass_at_k_before", "pass_at_k_after", "kl", "seconds"} <= set(summary)
    assert summary["k"] == 4 and summary["algorithm"] == "grpo" and summary["kl"] >= 0
    assert 0.2 <= summary["accuracy_before"] <= 0.7  # the short SFT leaves headroom
    assert summary["pass_at_k_before"] >= summary["accuracy_before"]
    assert "SFT:" in out and "GRPO:" in out and "####" in out and "pass@4" in out


def test_heldout_accuracy_and_pass_at_k_are_in_the_history_and_the_curves(demo_run):
    _, run_dir = demo_run
    history = pd.read_csv(run_dir / "metrics.csv")
    assert history["update"].tolist() == [1, 2]
    assert history["heldout_pass@4"].between(0, 1).all() and history["heldout_accuracy"].between(0, 1).all()
    assert {"rewards/exact_match_reward/mean", "rewards/format_reward/mean"} <= set(history.columns)
    assert (run_dir / "curves.png").stat().st_size > 0


def test_the_demo_settings_per_algorithm_are_valid_configs():
    from tf_ppo.cli import demo_defaults

    for algorithm in ("ppo", "grpo", "rloo", "reinforce_pp"):
        config = PPOConfig(task="arithmetic", algorithm=algorithm, **demo_defaults("arithmetic", algorithm))
        assert config.total_updates == (200 if algorithm == "ppo" else 300) and config.eval_size == 500
