"""SavedModel export: loaded in a fresh process with TensorFlow alone, it matches the library."""

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import tiny_config
from tf_ppo import PPOConfig, train
from tf_ppo.rl.functional import masked
from tf_ppo.cli import main
from tf_ppo.data import encode_prompts
from tf_ppo.export import ExportError, export
from tf_ppo.models import load_tokenizer
from tf_ppo.generation.sampling import generate
from tf_ppo.models.forward import response_logits
from tf_ppo.generation.responses import response_view

PROMPTS = ["i thought the acting was", "the film is", "to be fair, the second half felt"]

FRESH_PROCESS = """
import json, sys
import tensorflow as tf
import tensorflow_text  # the tokenizer ops
model = tf.saved_model.load(sys.argv[1])
prompts = tf.constant(json.loads(sys.argv[2]))
greedy = model.signatures["generate"](prompts=prompts, max_new_tokens=tf.constant(16), temperature=tf.constant(1.0),
                                      top_k=tf.constant(1), seed=tf.constant(0))
sampled = [model.generate(prompts, 16, 1.0, 0, 7)["token_ids"].numpy().tolist() for _ in range(2)]
score = model.signatures["score"](prompts=prompts, completions=greedy["completions"])
print(json.dumps({
    "token_ids": greedy["token_ids"].numpy().tolist(), "lengths": greedy["lengths"].numpy().tolist(),
    "completions": [c.decode() for c in greedy["completions"].numpy()],
    "sampled_twice_equal": sampled[0] == sampled[1],
    "score": score["logprobs"].numpy().tolist(), "score_lengths": score["lengths"].numpy().tolist(),
    "imported": sorted(m for m in ("tf_ppo", "keras_hub", "keras") if m in sys.modules),
}))
"""


@pytest.fixture(scope="module")
def exported(tmp_path_factory, sft_policy_path):
    tmp_path = tmp_path_factory.mktemp("export")
    result = train(tiny_config(tmp_path, total_updates=2), show_progress=False)
    return result, export(result.run_dir, tmp_path / "saved_model")


def test_fresh_tensorflow_process_matches_the_library(exported):
    result, export_dir = exported
    completed = subprocess.run([sys.executable, "-c", FRESH_PROCESS, str(export_dir), json.dumps(PROMPTS)],
                               capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    served = json.loads(completed.stdout.strip().splitlines()[-1])
    assert "tf_ppo" not in served["imported"] and "keras_hub" not in served["imported"]

    # The same greedy decoding in the library.
    tokenizer = result.tokenizer
    prompt_ids, lengths = encode_prompts(tokenizer, PROMPTS, result.config.max_prompt_length)
    sequence = generate(result.policy, prompt_ids, lengths, tf.constant([0, 0]), 16, top_k=1)
    view = response_view(sequence, lengths, 16, (tokenizer.end_token_id,))
    assert served["lengths"] == view.mask.numpy().sum(axis=1).tolist()
    for row, n in enumerate(served["lengths"]):
        assert served["token_ids"][row][:n] == view.token_ids[row, :n].numpy().tolist()
        assert served["token_ids"][row][n:] == [tokenizer.pad_token_id] * (16 - n)  # not tokens sampled after the end
    assert min(served["lengths"]) < 16  # some response ended early, so the padding is checked
    assert served["sampled_twice_equal"]

    # score == the library's log-probs of the same tokens (the end token is not part of the text).
    logprobs = masked.logprobs_from_logits(response_logits(result.policy, sequence, view.positions), view.token_ids)
    for row, text in enumerate(served["completions"]):
        n = served["score_lengths"][row]
        assert tokenizer.detokenize(view.token_ids[row, :n]) == text
        np.testing.assert_allclose(served["score"][row][:n], logprobs[row, :n], atol=1e-5)


def test_saved_model_cli_lists_the_signatures(exported):
    _, export_dir = exported
    saved_model_cli = str(pathlib.Path(sys.executable).parent / "saved_model_cli")  # installed with tensorflow
    shown = subprocess.run([saved_model_cli, "show", "--dir", str(export_dir), "--all"],
                           capture_output=True, text=True, timeout=300)
    assert shown.returncode == 0, shown.stderr[-2000:]
    for signature in ("generate", "score", "serving_default", "value"):
        assert f"signature_def['{signature}']" in shown.stdout


def test_cli_generate_from_the_export(exported, capsys):
    _, export_dir = exported
    assert main(["generate", str(export_dir), "the film is", "--top_k", "1"]) == 0
    assert capsys.readouterr().out.startswith("the film is ")


def test_run_without_a_finished_checkpoint_is_a_clear_error(tmp_path, capsys):
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "config.json").write_text(tiny_config(tmp_path).to_json())
    with pytest.raises(ExportError, match="has no finished checkpoint"):
        export(run_dir, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert main(["export", str(run_dir), str(tmp_path / "out")]) == 2
    assert "has no finished checkpoint" in capsys.readouterr().err


def test_export_of_a_bare_policy_has_no_value_signature(tmp_path, sft_policy):
    config = PPOConfig()
    tokenizer = load_tokenizer(config.vocabulary, config.merges)
    export(sft_policy, tmp_path / "bare", tokenizer=tokenizer, max_new_tokens=4)
    loaded = tf.saved_model.load(str(tmp_path / "bare"))
    assert sorted(loaded.signatures) == ["generate", "score", "serving_default"]
    assert loaded.signatures["serving_default"](prompts=tf.constant(["the film was"]))["token_ids"].shape == (1, 4)
