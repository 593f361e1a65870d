"""Crashes, preemption and corrupt state: a run always resumes to the same weights, or fails clearly."""

import re
import shutil
import signal
import time
import warnings

import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import (assert_resumed_to, assert_same_weights, cli, kill_after, sigterm_after_first_update,
                            tiny_config)
from tf_ppo import CheckpointError, DataError, PPOConfig, PPOTrainer, train
from tf_ppo.cli import main
from tf_ppo.data import encode_prompts
from tf_ppo.models import BigramLM, build_weights, load_tokenizer
from tf_ppo.training.reporting import read_history
from tf_ppo.sft import sft

# The straight run's settings, also spelled as CLI flags for the subprocess runs.
# 16 rollouts and 16 held-out prompts: what is tested is the resume, not the learning.
RUN = {"total_updates": 4, "target_kl": 1.0, "batch_size": 16, "eval_size": 16}
RUN_FLAGS = [arg for key, value in RUN.items() for arg in (f"--{key}", str(value))]


@pytest.fixture(scope="module")
def straight(tmp_path_factory, sft_policy_path):
    """An uninterrupted 4-update run (checkpoints at 2 and 4): what every resumed run must reproduce."""
    return train(tiny_config(tmp_path_factory.mktemp("straight"), checkpoint_every=2, **RUN), show_progress=False)


def test_resume_continues_exactly(tmp_path, straight):
    interrupted = tiny_config(tmp_path, **{**RUN, "total_updates": 2})
    first = train(interrupted, show_progress=False)
    resumed = train(interrupted.replace(total_updates=4), resume=True, show_progress=False)
    assert [row["update"] for row in resumed.history] == [1, 2, 3, 4]
    # "Before" is the starting policy's evaluation, recorded once, not the resumed (trained) policy's.
    assert resumed.evaluation_before == first.evaluation_before == straight.evaluation_before
    assert resumed.history[-1]["kl_coef"] == straight.history[-1]["kl_coef"]  # the KL controller's state
    assert_same_weights(straight.policy, resumed.run_dir)


def test_sigkill_mid_update_then_resume_matches_the_uninterrupted_run(tmp_path, straight):
    run_dir = tmp_path / "killed"
    process = cli("train", "--run_dir", str(run_dir), "--checkpoint_every", "1", *RUN_FLAGS)
    delay = kill_after(process, run_dir / "checkpoints" / "ckpt-2.index", 0.3)  # somewhere in update 3 or 4
    assert not (run_dir / "policy.keras").exists(), f"the run finished before the kill (delay {delay:.2f} s)"

    stdout = assert_resumed_to(cli("train", "--resume", str(run_dir)), run_dir, straight.policy)
    assert re.search(r"resumed from ckpt-(\d) \(update \1/4\)", stdout), stdout[-2000:]


def test_sigterm_saves_a_checkpoint_and_exits_zero(tmp_path, sft_policy_path):
    run_dir = tmp_path / "preempted"
    process = cli("train", "--run_dir", str(run_dir), *RUN_FLAGS, "--total_updates", "100",
                  "--checkpoint_every", "1000")
    stdout, done = sigterm_after_first_update(process, run_dir)
    assert "stopped by SIGTERM" in stdout and 1 <= done < 100


def test_ctrl_c_saves_exits_130_with_one_line_and_its_resume_command_ends_at_the_uninterrupted_weights(tmp_path,
                                                                                                    straight):
    run_dir = tmp_path / "ctrl-c"
    # A test runner started in the background may ignore SIGINT, which the child would inherit; a terminal's does not.
    ignored = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:  # no scheduled checkpoint before the last update: the one Ctrl-C stops at is its own
        process = cli("train", "--run_dir", str(run_dir), *RUN_FLAGS, "--checkpoint_every", "1000")
    finally:
        signal.signal(signal.SIGINT, ignored)
    while len(read_history(run_dir / "metrics.csv")) < 1:  # Ctrl-C just after update 1, or during update 2
        assert process.poll() is None, process.communicate()[1][-3000:]
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 130, stderr[-3000:]
    stopped = re.fullmatch(r"interrupted at update (\d)/4; resume with: tf-ppo (train --resume (\S+))",
                           stderr.splitlines()[-1])
    assert stopped and stopped[3] == str(run_dir) and "Traceback" not in stderr, stderr[-3000:]
    done = int(stopped[1])
    assert len(read_history(run_dir / "metrics.csv")) == done and not (run_dir / "evaluation_after.json").exists()
    assert tf.train.latest_checkpoint(str(run_dir / "checkpoints")).endswith(f"ckpt-{done}")

    assert_resumed_to(cli(*stopped[2].split()), run_dir, straight.policy)  # the command the line printed


def test_resume_skips_a_corrupt_newest_checkpoint_with_a_warning(tmp_path, straight):
    run_dir = tmp_path / "copy"
    shutil.copytree(straight.run_dir, run_dir)
    data_file = run_dir / "checkpoints" / "ckpt-4.data-00000-of-00001"
    data_file.write_bytes(b"\0" * data_file.stat().st_size)  # same size, every byte wrong
    with pytest.warns(UserWarning, match="ckpt-4 cannot be restored"):
        resumed = train(straight.config.replace(run_dir=str(run_dir)), resume=True, show_progress=False)
    assert [row["update"] for row in resumed.history] == [1, 2, 3, 4]  # updates 3 and 4 redone from ckpt-2
    assert [row["update"] for row in read_history(run_dir / "metrics.csv")] == [1, 2, 3, 4]
    assert_same_weights(straight.policy, run_dir)


def test_checkpoint_of_another_model_fails_loudly(straight):
    tokenizer = load_tokenizer(straight.config.vocabulary, straight.config.merges)
    other = BigramLM(tokenizer.vocabulary_size(), 16)
    config = straight.config.replace(model={"architecture": "bigram", "hidden_dim": 16})
    with warnings.catch_warnings(), pytest.raises(CheckpointError, match="none of the checkpoints .* can be restored"):
        warnings.simplefilter("ignore")
        PPOTrainer(config, policy=other, resume=True, show_progress=False)


def test_a_used_run_dir_is_not_overwritten_by_a_fresh_run(straight, sft_policy):
    with pytest.raises(CheckpointError, match="already holds checkpoints.*--resume"):
        PPOTrainer(straight.config, policy=sft_policy, show_progress=False)


def test_cli_resume_errors_are_one_line(tmp_path, capsys):
    assert main(["train", "--resume", str(tmp_path / "nowhere")]) == 2
    assert f"error: {tmp_path / 'nowhere' / 'config.json'}: file not found" in capsys.readouterr().err


def test_truncated_prompts_keep_their_last_tokens_with_a_warning():
    tokenizer = load_tokenizer(PPOConfig().vocabulary, PPOConfig().merges)
    long_prompt = "i thought the film was really quite"
    with pytest.warns(UserWarning, match="1 of 2 prompts cut to their last 5 tokens"):
        ids, lengths = encode_prompts(tokenizer, ["the film", long_prompt], 6, truncate=True)
    tail = tokenizer(long_prompt)[-5:]
    assert lengths.tolist() == [3, 6]
    assert ids[1].tolist() == [tokenizer.start_token_id, *tail]


def test_empty_prompt_list_is_refused(tmp_path, sft_policy):
    with pytest.raises(DataError, match="prompts: no rows"):
        PPOTrainer(tiny_config(tmp_path), prompts=[], policy=sft_policy, show_progress=False)


@pytest.mark.parametrize("end_bias", [100.0, 6.6], ids=["all-empty", "half-empty"])
def test_empty_responses_one_token_prompts_and_a_constant_reward(tmp_path, end_bias):
    """The article's model, biased to stop at once, on one-word prompts with a reward of 1 for everything."""
    config = tiny_config(tmp_path, total_updates=2, model={"architecture": "bigram", "hidden_dim": 16},
                         response_length=4)
    tokenizer = load_tokenizer(config.vocabulary, config.merges)
    policy = build_weights(BigramLM(tokenizer.vocabulary_size(), 16))
    bias = np.zeros(tokenizer.vocabulary_size(), np.float32)
    bias[tokenizer.end_token_id] = end_bias  # 6.6 = log(762 other tokens): P(end) about 1/2 per step
    policy.head.bias.assign(bias)
    prompts = ["the", "a", "it", "this", "i", "my", "I", "the"] * 4
    trainer = PPOTrainer(config, reward_fn=lambda texts: [1.0] * len(texts), prompts=prompts, policy=policy,
                         show_progress=False)
    assert set(trainer.prompt_lengths.tolist()) == {2}  # start token + one word token
    batch = trainer.rollout(trainer.prompt_ids[:32], trainer.prompt_lengths[:32], tf.constant([1, 2]))
    lengths = batch.experience.responses.mask.numpy().sum(axis=1)  # an empty response is its end token alone
    assert lengths.min() == 1 and (lengths.max() == 1) == (end_bias == 100.0), lengths
    result = trainer.train()
    assert all(row["skipped_steps"] == 0 for row in result.history)
    assert all(np.isfinite(value) for row in result.history for value in row.values())
    assert all(np.all(np.isfinite(w)) for w in result.policy.get_weights())


def test_sft_resumes_from_its_epoch_checkpoint_to_the_same_weights(tmp_path):
    """SFT and reward-model training share the epoch loop; resuming it matches an uninterrupted run."""
    config = tiny_config(tmp_path, model={"num_layers": 1, "hidden_dim": 16, "num_heads": 2, "intermediate_dim": 32},
                         sft={"epochs": 2, "train_csv": PPOConfig().eval_prompts_csv})  # the small file: fast
    straight = sft(config, show_progress=False)
    sft(config.replace(sft={"epochs": 1}), show_progress=False, checkpoint_dir=tmp_path / "ckpt")
    resumed = sft(config, show_progress=False, checkpoint_dir=tmp_path / "ckpt")
    assert [row["epoch"] for row in resumed.history] == [1, 2]
    for expected, got in zip(straight.policy.get_weights(), resumed.policy.get_weights()):
        np.testing.assert_allclose(got, expected, atol=1e-6)
