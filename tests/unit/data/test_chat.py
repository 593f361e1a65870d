"""Chat-formatted prompts: conversations in, each family's template out, stop at the end of a turn."""

import json

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from tests import presets

from tf_ppo.chat import (FAMILY_TEMPLATES, TEMPLATES, ChatError, ChatFormat, chat_format, check_chat_template,
                         register_chat_template, resolve_template, stop_token_ids)
from tf_ppo.config import ConfigError, ModelConfig, PPOConfig
from tf_ppo.data import DataError, encode_prompts, encode_sft_examples, load_prompts
from tf_ppo.generation.responses import response_tokens, response_view
from tf_ppo.preference.pairs import encode_responses
from tf_ppo.preference.reward_training import read_preferences
from tf_ppo.rl.rewards import compute_scores

CONVERSATION = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "hello"}, {"role": "user", "content": "2 + 2 ?"}]
# Each family's published chat format, written out by hand for CONVERSATION.
EXPECTED = {
    "gemma": "<start_of_turn>user\nbe brief\n\nhi<end_of_turn>\n<start_of_turn>model\nhello<end_of_turn>\n"
             "<start_of_turn>user\n2 + 2 ?<end_of_turn>\n<start_of_turn>model\n",
    "gemma4": "<|turn>system\nbe brief<turn|>\n<|turn>user\nhi<turn|>\n<|turn>model\nhello<turn|>\n"
              "<|turn>user\n2 + 2 ?<turn|>\n<|turn>model\n",
    "chatml": "<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
              "hello<|im_end|>\n<|im_start|>user\n2 + 2 ?<|im_end|>\n<|im_start|>assistant\n",
    "llama3": "<|start_header_id|>system<|end_header_id|>\n\nbe brief<|eot_id|><|start_header_id|>user"
              "<|end_header_id|>\n\nhi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nhello<|eot_id|>"
              "<|start_header_id|>user<|end_header_id|>\n\n2 + 2 ?<|eot_id|><|start_header_id|>assistant"
              "<|end_header_id|>\n\n",
    "mistral": "[INST] be brief\n\nhi [/INST]hello</s>[INST] 2 + 2 ? [/INST]",
    "phi3": "<|system|>\nbe brief<|end|>\n<|user|>\nhi<|end|>\n<|assistant|>\nhello<|end|>\n<|user|>\n2 + 2 ?<|end|>\n"
            "<|assistant|>\n",
}
# Qwen 2.5's Hugging Face template (tokenizer_config.json), tools branch left out.
CHATML_JINJA = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
                "'<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
                "{% endif %}")
# One tiny preset family per template, and the CausalLM class that picks it.
FAMILY_OF_TEMPLATE = {"gemma": ("gemma3", "Gemma3CausalLM"), "gemma4": ("gemma4", "Gemma4CausalLM"),
                      "chatml": ("qwen3_5", "Qwen3_5CausalLM"), "llama3": ("llama3", "Llama3CausalLM"),
                      "mistral": ("mistral", "MistralCausalLM"), "phi3": ("phi3", "Phi3CausalLM")}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_template_writes_its_familys_published_format(name):
    assert TEMPLATES[name].render(CONVERSATION) == EXPECTED[name]


def test_a_hugging_face_jinja_template_renders_as_the_built_in_one():
    template = resolve_template(CHATML_JINJA, "GPT2CausalLM")
    assert template.render(CONVERSATION) == EXPECTED["chatml"]
    assert resolve_template(CHATML_JINJA, "Qwen3CausalLM").end_of_turn == "<|im_end|>"  # the family's end of turn


def test_every_family_with_a_template_is_a_supported_keras_hub_class():
    from tf_ppo.models.families.support import SUPPORTED
    assert set(FAMILY_TEMPLATES) - {"Gemma3nCausalLM"} <= set(SUPPORTED)
    assert set(FAMILY_TEMPLATES.values()) == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(FAMILY_OF_TEMPLATE))
def test_markers_are_single_tokens_and_the_text_between_them_is_tokenised_as_text(name):
    family, class_name = FAMILY_OF_TEMPLATE[name]
    tokenizer = presets.tokenizer(family)
    chat = ChatFormat(tokenizer, None, class_name)
    ids = chat.prompt_ids(CONVERSATION)
    end_token = tokenizer.id_to_token(tokenizer.end_token_id)  # Mistral closes an assistant turn with </s>
    markers = [marker for marker in presets.SPECIAL_TOKENS[family] + [end_token] if marker in EXPECTED[name]]
    marker_ids = {int(tokenizer.token_to_id(marker)) for marker in markers}
    assert markers and marker_ids <= set(ids)
    # Split at the markers, the ids between them are the tokenizer's own ids of the text between them.
    pieces, current = [], []
    for token in ids:
        if token in marker_ids:
            pieces.append(current)
            current = []
        else:
            current.append(token)
    pieces.append(current)
    texts = _split_at(EXPECTED[name], markers)
    assert [np.asarray(tokenizer(text)).tolist() if text else [] for text in texts] == \
        [np.asarray(piece).tolist() for piece in pieces]
    assert chat.reply_end_id == (tokenizer.end_token_id if TEMPLATES[name].end_of_turn is None
                                 else int(tokenizer.token_to_id(TEMPLATES[name].end_of_turn)))
    assert chat.reply_end_id in stop_token_ids(tokenizer, chat)


def _split_at(text, markers):
    import re
    return re.split("|".join(map(re.escape, sorted(markers, key=len, reverse=True))), text)


def test_conversations_are_encoded_after_the_start_token_and_their_replies_end_with_the_end_of_turn():
    tokenizer = presets.tokenizer("gemma3")
    chat = chat_format(tokenizer, None, "Gemma3CausalLM")
    prompt = [{"role": "user", "content": "2 + 2 ?"}]
    ids, lengths = encode_prompts(tokenizer, [prompt], 32, chat=chat)
    expected = [tokenizer.start_token_id] + chat.prompt_ids(prompt)
    assert ids[0, : lengths[0]].tolist() == expected
    end_of_turn = int(tokenizer.token_to_id("<end_of_turn>"))
    sft_ids, mask = encode_sft_examples(tokenizer, [prompt], ["4"], 40, chat)
    assert sft_ids[0, : mask[0].sum()].tolist() == expected + list(np.asarray(tokenizer("4"))) + [end_of_turn]
    dpo_ids, padding, response = encode_responses(tokenizer, [prompt], ["4"], 40, chat)
    assert dpo_ids[0, : padding[0].sum()].tolist() == sft_ids[0, : mask[0].sum()].tolist()
    assert int(response.sum()) == len(np.asarray(tokenizer("4"))) + 1  # the reply and its end of turn


def test_a_response_stops_at_the_first_stop_token_of_any_kind():
    stops = (7, 9)
    sequence = tf.constant([[1, 2, 5, 9, 7, 5], [1, 2, 5, 5, 7, 9], [1, 2, 5, 5, 5, 5]])
    view = response_view(sequence, tf.constant([2, 2, 2]), 4, stops)
    assert view.mask.numpy().tolist() == [[True, True, False, False], [True, True, True, False], [True] * 4]
    assert response_tokens(view, stops).to_list() == [[5], [5, 5], [5, 5, 5, 5]]


def test_conversations_load_from_a_list_jsonl_and_a_csv_json_column(tmp_path):
    conversations = [[{"role": "user", "content": f"question {row}"}] for row in range(3)]
    jsonl = tmp_path / "prompts.jsonl"
    jsonl.write_text("".join(json.dumps({"prompt": messages}) + "\n" for messages in conversations))
    csv = tmp_path / "prompts.csv"
    pd.DataFrame({"input_text": [json.dumps(messages) for messages in conversations]}).to_csv(csv, index=False)
    assert load_prompts(conversations) == load_prompts(str(jsonl)) == load_prompts(str(csv)) == conversations


@pytest.mark.parametrize("prompts, message", [
    ([[{"role": "robot", "content": "hi"}]], r"row 0, message 0: unknown role 'robot'"),
    ([[]], r"row 0: an empty conversation"),
    ([[{"role": "user", "content": "hi"}], "text"], r"row 0 is a conversation, row 1 is text"),
    ([[{"role": "user", "content": "hi"}], []], r"row 1: an empty conversation"),
    ([[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]], "ends with an assistant message"),
    ([[{"role": "user", "content": 3}]], "message 0: content must be text"),
    (["text", [{"role": "user", "content": "hi"}]], "row 1 is a conversation, row 0 is text"),
])
def test_bad_conversations_are_named_by_row_and_message(prompts, message):
    with pytest.raises(DataError, match=message):
        load_prompts(prompts)


def test_a_jsonl_line_without_a_prompt_is_named(tmp_path):
    jsonl = tmp_path / "prompts.jsonl"
    jsonl.write_text('{"prompt": [{"role": "user", "content": "hi"}]}\n{"question": "hi"}\n')
    with pytest.raises(DataError, match=r"prompts.jsonl, line 2: expected an object with a 'prompt' key"):
        load_prompts(str(jsonl))


def test_a_family_without_a_template_is_refused_before_any_model_is_built(monkeypatch):
    import tf_ppo.rl.trainer as trainer_module

    def no_model(*args, **kwargs):
        raise AssertionError("a model was built before the template was checked")

    monkeypatch.setattr(trainer_module, "starting_policy", no_model)
    with pytest.raises(ChatError, match=r"GPT2CausalLM has no chat template .* ModelConfig.chat_template"):
        trainer_module.RLTrainer(PPOConfig(total_updates=1), prompts=[[{"role": "user", "content": "hi"}]])
    check_chat_template([[{"role": "user", "content": "hi"}]], "chatml", "GPT2CausalLM")  # one given: fine


def test_an_unknown_template_name_is_a_config_error_and_a_registered_function_is_known():
    with pytest.raises(ConfigError, match=r"ModelConfig.chat_template must be a template's name"):
        ModelConfig(chat_template="chatlm")
    register_chat_template("plain_test", lambda messages: "".join(m["content"] for m in messages) + " =")
    assert ModelConfig(chat_template="plain_test").chat_template == "plain_test"
    assert ModelConfig(chat_template=CHATML_JINJA).chat_template == CHATML_JINJA


def test_trl_style_rewards_get_the_conversation_and_the_reply_as_an_assistant_message():
    seen = {}

    def reward(prompts, completions, **kwargs):
        seen.update(prompts=prompts, completions=completions)
        return [len(completion[0]["content"]) for completion in completions]

    conversation = [{"role": "user", "content": "2 + 2 ?"}]
    scores = compute_scores(reward, ["4", "five"], ["rendered", "rendered"], [conversation, conversation])
    assert scores.tolist() == [1.0, 4.0]
    assert seen == {"prompts": [conversation] * 2, "completions": [[{"role": "assistant", "content": "4"}],
                                                                   [{"role": "assistant", "content": "five"}]]}
    assert compute_scores(lambda prompts, texts: [len(p) for p in prompts], ["4"], ["abc"], [conversation]) == [3.0]


def test_preference_files_take_conversations_and_trl_style_replies(tmp_path):
    rows = [{"prompt": [{"role": "user", "content": f"q{row}"}], "chosen": [{"role": "assistant", "content": "yes"}],
             "rejected": "no"} for row in range(3)]
    jsonl = tmp_path / "preferences.jsonl"
    jsonl.write_text("".join(json.dumps(row) + "\n" for row in rows))
    csv = tmp_path / "preferences.csv"
    pd.DataFrame({key: [json.dumps(row[key]) if not isinstance(row[key], str) else row[key] for row in rows]
                  for key in rows[0]}).to_csv(csv, index=False)
    for path in (jsonl, csv):
        prompts, responses, best, _ = read_preferences(path)
        assert prompts == [row["prompt"] for row in rows] and responses == [["yes", "no"]] * 3
    rows[1]["chosen"] = [{"role": "user", "content": "yes"}]
    jsonl.write_text("".join(json.dumps(row) + "\n" for row in rows))
    with pytest.raises(DataError, match=r"column 'chosen', row 1: a conversational response must be one assistant"):
        read_preferences(jsonl)


def test_a_vocabulary_without_the_end_of_turn_token_fails_only_when_a_conversation_is_encoded():
    from tf_ppo.models import load_tokenizer
    tokenizer = load_tokenizer(PPOConfig().vocabulary, PPOConfig().merges)  # GPT-2's: no <end_of_turn>
    chat = chat_format(tokenizer, "gemma", "GPT2CausalLM")
    assert stop_token_ids(tokenizer, chat) == (tokenizer.end_token_id,)  # text prompts still stop at the end token
    with pytest.raises(ChatError, match=r"gemma chat template ends a turn with <end_of_turn>, which is not a token"):
        chat.prompt_ids([{"role": "user", "content": "hi"}])


@pytest.mark.parametrize("name", sorted(FAMILY_OF_TEMPLATE))
def test_an_environments_reply_is_appended_as_the_users_next_message(name):
    # In an episode the observation's tokens follow the model's end of turn: together they must be how the
    # template renders the conversation with the observation as the next user message.
    family, class_name = FAMILY_OF_TEMPLATE[name]
    tokenizer = presets.tokenizer(family)
    chat = ChatFormat(tokenizer, None, class_name)
    observation = chat.observation_ids("<result>408</result>")
    conversation = CONVERSATION[:2] + [{"role": "assistant", "content": "hello"},
                                       {"role": "user", "content": "<result>408</result>"}]
    rendered = chat.prompt_ids(conversation)
    assert rendered[-len(observation):] == observation
    assert rendered[-len(observation) - 1] == chat.reply_end_id
