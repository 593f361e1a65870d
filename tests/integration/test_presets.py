"""keras-hub presets of three architectures (GPT-2, Llama 3, OPT): padding, SFT + PPO, save as preset, LoRA."""

import json

import keras_hub
import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import tiny_config
from tests.presets import ARCHITECTURES, save_tiny_preset
from tf_ppo.config import PPOConfig
from tf_ppo.data import encode_prompts
from tf_ppo.export import save_preset
from tf_ppo.models import AdaptersOff, ValueModel, trunk_and_head, weight_bytes
from tf_ppo.rl.functional.masked import logprobs_from_logits
from tf_ppo.generation.sampling import generate
from tf_ppo.models.forward import response_logits
from tf_ppo.generation.responses import response_view
from tf_ppo.preference.reward_training import train_reward_model
from tf_ppo.sft import sft
from tf_ppo.rl.trainer import PPOTrainer, train

SMALL_CSV = PPOConfig().eval_prompts_csv  # 956 rows: one quick SFT epoch


@pytest.fixture(scope="module")
def preset_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("presets")
    return {architecture: save_tiny_preset(architecture, root / architecture) for architecture in ARCHITECTURES}


def response_logprobs(policy, sequence_ids, prompt_lengths, response_length):
    view = response_view(sequence_ids, prompt_lengths, response_length)
    logits = response_logits(policy, sequence_ids, view.positions)
    return view.token_ids, logprobs_from_logits(logits, view.token_ids)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_padded_batch_matches_each_prompt_alone(preset_dirs, architecture):
    """Prompts of 2, 5 and 9 tokens share a right-padded batch; each row must sample and score as if alone."""
    policy = keras_hub.models.CausalLM.from_preset(preset_dirs[architecture])
    prompts = ["i", "the film was", "a long and slow story about the actor"]
    prompt_ids, lengths = encode_prompts(policy.preprocessor.tokenizer, prompts, max_prompt_length=12)
    assert len(set(lengths.tolist())) == 3
    seed, response_length = tf.constant([3, 4]), 6
    batch = generate(policy, tf.constant(prompt_ids), tf.constant(lengths), seed, response_length)
    batch_tokens, batch_logprobs = response_logprobs(policy, batch, tf.constant(lengths), response_length)
    for row, length in enumerate(lengths):
        # The same global row of the sampling noise, but no padding at all: the prompt's own length.
        alone = generate(policy, tf.constant(prompt_ids[row:row + 1, :length]), tf.constant([length]), seed,
                         response_length, row_offset=row)
        tokens, logprobs = response_logprobs(policy, alone, tf.constant([length]), response_length)
        np.testing.assert_array_equal(tokens[0], batch_tokens[row])
        np.testing.assert_allclose(logprobs[0], batch_logprobs[row], atol=1e-5)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_response_logits_apply_the_head_at_response_positions_only_and_match_the_whole_model(preset_dirs,
                                                                                             architecture):
    policy = keras_hub.models.CausalLM.from_preset(preset_dirs[architecture])
    sequence_ids = tf.random.stateless_uniform([3, 10], [1, 2], 3, policy.backbone.vocabulary_size, tf.int32)
    positions = tf.constant([[2, 3, 4, 5], [4, 5, 6, 7], [6, 7, 8, 9]])  # each row's own response start
    inputs = {"token_ids": sequence_ids, "padding_mask": tf.ones_like(sequence_ids, tf.bool)}
    value_model = ValueModel(policy.backbone)
    value_model(inputs)  # builds the head, whose zero initialisation would make any gather look right
    value_model.head.kernel.assign(tf.random.normal(value_model.head.kernel.shape))
    for model, expected_rank in [(policy, 3), (value_model, 2)]:
        assert trunk_and_head(model) is not None
        whole = tf.gather(model(inputs), positions - 1, batch_dims=1)  # every position, then gathered
        split = response_logits(model, sequence_ids, positions)
        assert split.shape.rank == expected_rank
        np.testing.assert_allclose(split, whole, atol=1e-5)

    # Anything after the reversed embedding (here a scale) makes the graph unsplittable: the whole model runs.
    backbone = policy.backbone
    scaled = keras_hub.models.CausalLM(
        inputs=backbone.input, outputs=backbone.token_embedding(backbone(backbone.input), reverse=True) * 2.0)
    assert trunk_and_head(scaled) is None
    np.testing.assert_allclose(response_logits(scaled, sequence_ids, positions),
                               2.0 * response_logits(policy, sequence_ids, positions), rtol=1e-5, atol=1e-5)


# Llama 3's (a tokenizer with special tokens, grouped-query attention, an untied output projection); every
# family trains from its own preset in tests/integration/test_every_family.py.
@pytest.mark.parametrize("architecture", ["llama3"])
def test_sft_then_ppo_from_a_local_preset_and_back_to_a_preset(preset_dirs, architecture, tmp_path):
    config = tiny_config(tmp_path, model=preset_dirs[architecture], total_updates=2, response_length=8,
                         sft={"epochs": 1, "train_csv": SMALL_CSV})
    sft_result = sft(config, show_progress=False)
    assert np.isfinite(sft_result.history[-1]["heldout_loss"])
    sft_dir = save_preset(sft_result.policy, None, tmp_path / "sft-preset")

    result = train(config.replace(model=str(sft_dir)), show_progress=False)
    assert all(np.isfinite(row[key]) for row in result.history for key in ("policy_loss", "value_loss", "kl"))
    assert type(result.policy) is type(sft_result.policy)
    moved = [not np.allclose(a, b) for a, b in zip(result.policy.get_weights(), sft_result.policy.get_weights())]
    assert any(moved)

    reloaded = keras_hub.models.CausalLM.from_preset(str(result.run_dir / "preset"))
    for saved, trained in zip(reloaded.backbone.get_weights(), result.policy.backbone.get_weights()):
        np.testing.assert_array_equal(saved, trained)
    assert reloaded.generate("the film was", max_length=16).startswith("the film was")


def test_lora_keeps_one_copy_of_the_base_weights_and_trains_only_adapters_and_value_head(preset_dirs, tmp_path):
    preset = preset_dirs["llama3"]
    trainer = PPOTrainer(tiny_config(tmp_path, model=preset, lora_rank=2, total_updates=2), show_progress=False)
    assert isinstance(trainer.reference, AdaptersOff)
    held = {id(w): w for model in (trainer.policy, trainer.value_model) for w in model.weights}
    head_bytes = weight_bytes(trainer.value_model.head.weights)
    assert weight_bytes(held.values()) == weight_bytes(trainer.policy.weights) + head_bytes

    base = keras_hub.models.CausalLM.from_preset(preset)
    inputs = {"token_ids": tf.constant([[1, 5, 9, 30, 2]]), "padding_mask": tf.ones([1, 5], tf.bool)}
    before = {id(w): w.numpy() for w in held.values()}
    trainer.train()
    changed = {w.path for w in held.values() if not np.array_equal(before[id(w)], w.numpy())}
    assert any("lora_kernel" in path for path in changed) and any("value_head" in path for path in changed)
    assert all("lora_kernel" in path or "value_head" in path for path in changed), changed

    # The reference is the base preset exactly; the policy is base + adapters, which load on their own.
    np.testing.assert_allclose(trainer.reference(inputs), base(inputs), atol=1e-6)
    assert not np.allclose(trainer.policy(inputs), base(inputs), atol=1e-6)
    positions = tf.constant([[2, 3, 4]])  # the split reference path (trunk, then head) has its adapters off too
    np.testing.assert_allclose(response_logits(trainer.reference, inputs["token_ids"], positions),
                               base(inputs)[:, 1:4], atol=1e-5)
    base.backbone.load_lora_weights(str(trainer.run_dir / "adapters.lora.h5"))
    np.testing.assert_allclose(base(inputs), trainer.policy(inputs), atol=1e-6)
    merged = keras_hub.models.CausalLM.from_preset(str(trainer.run_dir / "preset"))  # adapters merged on save
    np.testing.assert_allclose(merged(inputs), trainer.policy(inputs), atol=1e-5)


def test_cli_sft_writes_a_preset_that_cli_train_starts_from(preset_dirs, tmp_path, capsys):
    from tf_ppo.cli import main

    sizes = ["--batch_size", "32", "--eval_size", "32", "--response_length", "8"]
    assert main(["sft", "--model", preset_dirs["opt"], "--sft.epochs", "1", "--sft.train_csv", SMALL_CSV,
                 "--run_dir", str(tmp_path / "sft")]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["run_dir"] == str(tmp_path / "sft")
    assert main(["train", "--model", str(tmp_path / "sft" / "preset"), "--total_updates", "1",
                 "--run_dir", str(tmp_path / "ppo"), *sizes]) == 0
    config = PPOConfig.from_file(tmp_path / "ppo" / "config.json")
    assert config.model.preset == str(tmp_path / "sft" / "preset")
    assert type(keras_hub.models.CausalLM.from_preset(str(tmp_path / "ppo" / "preset"))).__name__ == "OPTCausalLM"
    # The run exports as a SavedModel with OPT's tokenizer in the graph, and serves text.
    capsys.readouterr()
    assert main(["export", str(tmp_path / "ppo"), str(tmp_path / "saved")]) == 0
    assert main(["generate", str(tmp_path / "saved"), "the film was", "--top_k", "1"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("the film was")


def test_a_causal_lm_object_as_model_is_recorded_by_class_name(preset_dirs, tmp_path):
    policy = keras_hub.models.CausalLM.from_preset(preset_dirs["gpt2"])
    config = PPOConfig(model=policy)
    assert config.model.preset is policy
    recorded = PPOConfig.from_json(config.to_json())
    assert recorded.model.preset == "<object GPT2CausalLM>"
    with pytest.raises(ValueError, match=r"ModelConfig.preset was a Python object \(<object GPT2CausalLM>\)"):
        sft(recorded)


def test_reward_model_from_a_preset_backbone_and_tokenizer(preset_dirs, tmp_path):
    rows = [("the film was", "wonderful.", "boring."), ("i thought the plot was", "great fun!", "awful.")] * 16
    csv = tmp_path / "pairs.csv"
    csv.write_text("prompt,chosen,rejected\n" + "\n".join(",".join(row) for row in rows) + "\n")
    config = tiny_config(tmp_path, model=preset_dirs["llama3"],
                         reward={"preferences_csv": str(csv), "epochs": 1, "batch_size": 8})
    result = train_reward_model(config, directory=tmp_path / "reward", show_progress=False)
    assert type(result.model.backbone).__name__ == "Llama3Backbone"
    assert result.model.tokenizer.start_token_id == keras_hub.models.CausalLM.from_preset(
        preset_dirs["llama3"]).preprocessor.tokenizer.start_token_id
    assert np.all(np.isfinite(result.model.score_texts(["the film was"], ["wonderful."])))
