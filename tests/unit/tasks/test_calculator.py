"""The calculator task: its shipped data agrees with its solver and its tool, and its demo runs episodes.

Whether RL learns to call the tool is measured at full length (docs/tools.md), not here.
"""

import json
import os
import subprocess
import sys

import pandas as pd
import pytest

from tf_ppo import PPOConfig
from tf_ppo.models import load_tokenizer
from tf_ppo.rl.environment import ToolEnvironment, environment_for
from tf_ppo.rl.tools import calculator
from tf_ppo.tasks.arithmetic import parse_answer
from tf_ppo.tasks.calculator import exact_match_reward, solve

CONFIG = PPOConfig(task="calculator")
END = "<|endoftext|>"


@pytest.fixture(scope="module")
def data():
    return pd.read_csv(CONFIG.prompts), pd.read_csv(CONFIG.eval_prompts_csv)


def test_every_demonstration_answers_its_problem_and_held_out_problems_are_new(data):
    train, heldout = data
    for frame in (train, heldout):
        assert [parse_answer(target.split(END)[-1]) for target in frame.target] == [solve(p) for p in frame.input_text]
    assert not set(train.input_text) & set(heldout.input_text)
    assert len(train) == 8000 and len(heldout) == 500


def test_the_numbers_are_too_large_to_work_out_in_the_head(data):
    answers = [solve(problem) for problem in data[1].input_text]
    assert min(answers) >= 100 and sum(answer >= 1000 for answer in answers) > 0.9 * len(answers)


def test_some_demonstrations_call_the_tool_and_the_environment_answers_them_as_the_demonstration_says(data):
    train, _ = data
    calls = train[train.target.str.contains("<call>")]
    assert 0.25 < len(calls) / len(train) < 0.35  # only some: RL learns when to call it
    for target in calls.target[:200]:
        model_turn, rest = target.split(END)
        step = ToolEnvironment([calculator]).step(model_turn)
        assert rest.startswith(step.observation) and not step.done


def test_one_token_per_digit_wherever_the_digit_stands():
    tokenizer = load_tokenizer(CONFIG.vocabulary, CONFIG.merges)
    for text in ("ann has 347 pens", 'calculator("347 * 28")', "<result>9716</result> #### 9716"):
        pieces = [tokenizer.id_to_token(int(i)) for i in tokenizer(text)]
        assert all(len(piece) == 1 for piece in pieces if any(c.isdigit() for c in piece)), pieces


def test_the_reward_reads_the_episodes_answer():
    problem = "tom packs 347 pens in each of 28 boxes . how many pens does he pack ?"
    episode = '<call>calculator("347 * 28")</call><result>9716</result> #### 9716'
    assert exact_match_reward([problem] * 3, [episode, "#### 9716", "#### 9715"]) == [1.0, 1.0, 0.0]


def test_the_task_brings_its_calculator_and_tools_none_switches_it_off():
    assert isinstance(environment_for(CONFIG)(), ToolEnvironment)
    assert environment_for(CONFIG, tools=[]) is None
    assert environment_for(PPOConfig()) is None  # sentiment: single-turn


def test_the_demo_runs_episodes_and_reports_the_tool_call_rate(tmp_path):
    sft_rows = tmp_path / "sft.csv"
    pd.read_csv(CONFIG.prompts).head(256).to_csv(sft_rows, index=False)  # a quick SFT: the format, not the skill
    completed = subprocess.run(
        [sys.executable, "-m", "tf_ppo.cli", "demo", "--task", "calculator", "--algorithm", "grpo",
         "--total_updates", "2", "--eval_every", "1", "--eval_size", "16", "--batch_size", "32",
         "--num_generations", "4", "--eval_pass_samples", "4", "--sft.train_csv", str(sft_rows), "--sft.epochs", "1",
         "--generation_jit", "False", "--train_jit", "False", "--run_dir", str(tmp_path / "demo")],
        capture_output=True, text=True, timeout=900, env={**os.environ, "TF_PPO_CACHE": str(tmp_path / "cache")})
    assert completed.returncode == 0, completed.stderr[-3000:]
    summary = json.loads(completed.stdout.strip().splitlines()[-1])
    assert {"accuracy_before", "accuracy_after", "pass_at_k_before", "tool_call_rate_before",
            "tool_call_rate_after"} <= set(summary)
    assert "turn by turn" in completed.stdout and "model:" in completed.stdout
    history = pd.read_csv(tmp_path / "demo" / "metrics.csv")
    assert {"episodes/turns", "episodes/tool_calls", "episodes/tool_errors", "episodes/finished",
            "heldout_tool_call_rate"} <= set(history.columns)
    assert history["episodes/turns"].between(1, 3).all()
