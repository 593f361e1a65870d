"""Conversations in TRL's format, rendered with the model family's chat template.

A conversational prompt is a list of messages, `{"role": "system" | "user" |
"assistant", "content": text}`, as in TRL's datasets. It is rendered as the
family's instruct models were trained to read it, ending with the opening of
the assistant's turn; the policy's reply then ends with the family's
end-of-turn token, at which sampling stops (as keras-hub's `generate` stops).

Each template's markers (`<start_of_turn>`, `<|im_start|>`, ...) are encoded
as the single vocabulary token they are, whatever the tokenizer would make of
their text, as Hugging Face's tokenizers treat added tokens.

    family                                          template   end of turn
    Gemma, Gemma 2, Gemma 3, Gemma 3n               "gemma"    <end_of_turn>
    Gemma 4                                         "gemma4"   <turn|>
    Qwen, Qwen MoE, Qwen 3, Qwen 3 MoE, Qwen 3.5,   "chatml"   <|im_end|>
    Qwen 3.5 MoE, SmolLM 3
    Llama 3                                         "llama3"   <|eot_id|>
    Mistral, Mixtral                                "mistral"  the end token </s>
    Phi-3                                           "phi3"     <|end|>

Other families have no template of their own: pass one as
`ModelConfig.chat_template`, either a Jinja template string (as in a Hugging
Face `tokenizer_config.json`) or the name of a Python function registered with
`register_chat_template`.
"""

import dataclasses
import re
import typing

from tf_ppo.data import DataError, is_conversation


class ChatError(DataError):
    """A chat template is unknown, missing for the family, or unusable with this tokenizer; the message says which."""


@dataclasses.dataclass(frozen=True)
class ChatTemplate:
    """How one family writes a conversation: `render(messages) -> text` and the token that closes a turn.

    `render` ends with the opening of the assistant's turn (the generation
    prompt); `end_of_turn` (None: the tokenizer's end token) closes the reply.
    """

    name: str
    render: typing.Callable
    end_of_turn: str | None = None


def _system_first_user(messages, separator):
    """Gemma and Mistral have no system turn: a system message opens the first user message."""
    if messages[0]["role"] != "system":
        return messages
    system, rest = messages[0]["content"], list(messages[1:])
    if rest and rest[0]["role"] == "user":
        return [{"role": "user", "content": system + separator + rest[0]["content"]}] + rest[1:]
    return [{"role": "user", "content": system}] + rest


def _gemma(messages):
    turns = [f"<start_of_turn>{'model' if m['role'] == 'assistant' else 'user'}\n{m['content']}<end_of_turn>\n"
             for m in _system_first_user(messages, "\n\n")]
    return "".join(turns) + "<start_of_turn>model\n"


def _gemma4(messages):
    roles = {"assistant": "model"}
    return "".join(f"<|turn>{roles.get(m['role'], m['role'])}\n{m['content']}<turn|>\n" for m in messages) + \
        "<|turn>model\n"


def _chatml(messages):
    return "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages) + \
        "<|im_start|>assistant\n"


def _llama3(messages):
    return "".join(f"<|start_header_id|>{m['role']}<|end_header_id|>\n\n{m['content']}<|eot_id|>"
                   for m in messages) + "<|start_header_id|>assistant<|end_header_id|>\n\n"


def _mistral(messages):
    return "".join(f"[INST] {m['content']} [/INST]" if m["role"] == "user" else f"{m['content']}</s>"
                   for m in _system_first_user(messages, "\n\n"))


def _phi3(messages):
    return "".join(f"<|{m['role']}|>\n{m['content']}<|end|>\n" for m in messages) + "<|assistant|>\n"


TEMPLATES = {template.name: template for template in (
    ChatTemplate("gemma", _gemma, "<end_of_turn>"),
    ChatTemplate("gemma4", _gemma4, "<turn|>"),
    ChatTemplate("chatml", _chatml, "<|im_end|>"),
    ChatTemplate("llama3", _llama3, "<|eot_id|>"),
    ChatTemplate("mistral", _mistral, None),
    ChatTemplate("phi3", _phi3, "<|end|>"),
)}
# keras-hub CausalLM class -> its family's template.
FAMILY_TEMPLATES = {
    **dict.fromkeys(("GemmaCausalLM", "Gemma3CausalLM", "Gemma3nCausalLM"), "gemma"),
    "Gemma4CausalLM": "gemma4",
    **dict.fromkeys(("QwenCausalLM", "QwenMoeCausalLM", "Qwen3CausalLM", "Qwen3MoeCausalLM", "Qwen3_5CausalLM",
                     "Qwen3_5MoeCausalLM", "SmolLM3CausalLM"), "chatml"),
    "Llama3CausalLM": "llama3",
    **dict.fromkeys(("MistralCausalLM", "MixtralCausalLM"), "mistral"),
    "Phi3CausalLM": "phi3",
}
# Candidate markers: <...> spans and Mistral's [INST] / [/INST]; each is kept whole only if it is one token.
_MARKER = re.compile(r"<[^<>\s]{1,40}>|\[/?INST\]")
_HOW_TO_PASS = ("pass ModelConfig.chat_template (--model.chat_template): a Jinja template string, as in a Hugging "
                "Face tokenizer_config.json, or the name of a function registered with "
                "tf_ppo.register_chat_template(name, fn)")


def register_chat_template(name, render, end_of_turn=None):
    """Make `render(messages) -> text` the template `ModelConfig(chat_template=name)` names.

    `render` gets the checked messages and must end with the opening of the
    assistant's turn; `end_of_turn` is the token that closes a reply (None:
    the tokenizer's end token).

    Example:
    >>> register_chat_template("plain", lambda messages: "".join(f"{m['role']}: {m['content']}\\n"
    ...                                                           for m in messages) + "assistant:")
    >>> TEMPLATES["plain"].render([{"role": "user", "content": "hi"}])
    'user: hi\\nassistant:'
    """
    TEMPLATES[name] = ChatTemplate(name, render, end_of_turn)


def is_jinja(template):
    """True for a Jinja template string (it holds `{{` or `{%`), False for a template's name.

    Example:
    >>> is_jinja("{% for m in messages %}{{ m.content }}{% endfor %}"), is_jinja("chatml")
    (True, False)
    """
    return "{{" in template or "{%" in template


def resolve_template(chat_template, family, eos_token=""):
    """The `ChatTemplate` to render with: `chat_template` if given (a name or Jinja), else the family's.

    Args:
        chat_template: None, a template's name, or a Jinja template string.
        family: the policy's keras-hub CausalLM class name (`"Gemma3CausalLM"`).
        eos_token: the end token's text, for Jinja templates that write it.

    Raises:
        ChatError: an unknown name, or a family without a template when none is given.

    Example:
    >>> resolve_template(None, "Qwen3CausalLM").name, resolve_template("phi3", "GPT2CausalLM").end_of_turn
    ('chatml', '<|end|>')
    """
    if chat_template is None:
        if family not in FAMILY_TEMPLATES:
            raise no_template_error(family)
        return TEMPLATES[FAMILY_TEMPLATES[family]]
    if is_jinja(chat_template):
        family_template = TEMPLATES.get(FAMILY_TEMPLATES.get(family))
        return ChatTemplate("jinja", _jinja_render(chat_template, eos_token),
                            family_template.end_of_turn if family_template else None)
    if chat_template not in TEMPLATES:
        raise ChatError(f"chat_template={chat_template!r} is no template tf_ppo knows ({sorted(TEMPLATES)}); "
                        f"{_HOW_TO_PASS}")
    return TEMPLATES[chat_template]


def no_template_error(family):
    """The `ChatError` for conversations given to a family without a template, saying how to pass one."""
    return ChatError(f"the prompts are conversations, and {family or 'this model'} has no chat template tf_ppo "
                     f"knows: {_HOW_TO_PASS}")


def _jinja_render(source, eos_token):
    # Hugging Face renders its chat templates this way: a sandbox, trimmed blocks, `raise_exception`.
    import jinja2.sandbox  # imported here: only Jinja templates need it

    def raise_exception(message):
        raise ChatError(f"the chat template refused the conversation: {message}")

    environment = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    environment.globals["raise_exception"] = raise_exception
    template = environment.from_string(source)
    # The start token is added as a token (`tf_ppo.data.start_token_ids`), so `bos_token` renders empty.
    return lambda messages: template.render(messages=messages, add_generation_prompt=True, bos_token="",
                                            eos_token=eos_token)


def tokenize_with_markers(tokenizer, text):
    """Token ids of `text`, with each marker that is a single vocabulary token encoded as that token.

    Example:
        tokenize_with_markers(tokenizer, "<|im_start|>user\\nhi<|im_end|>")  # [im_start, ..., im_end]
    """
    ids, start = [], 0
    for match in _MARKER.finditer(text):
        marker_id = single_token_id(tokenizer, match.group())
        if marker_id is None:
            continue
        ids += _tokenize(tokenizer, text[start: match.start()]) + [marker_id]
        start = match.end()
    return ids + _tokenize(tokenizer, text[start:])


def _tokenize(tokenizer, text):
    return list(tokenizer(text)) if text else []


def single_token_id(tokenizer, token):
    """The id of `token` when it is one vocabulary entry, else None.

    Example:
        single_token_id(gemma_tokenizer, "<end_of_turn>")  # 107 in Gemma's real vocabulary
    """
    try:
        token_id = tokenizer.token_to_id(token)
    except (KeyError, ValueError):
        return None
    if token_id is None or tokenizer.id_to_token(int(token_id)) != token:  # SentencePiece maps unknowns to <unk>
        return None
    return int(token_id)


class ChatFormat:
    """A tokenizer and a chat template: conversations to token ids, and the token that ends a reply.

    Args:
        tokenizer: the policy's keras-hub tokenizer.
        chat_template: None (the family's), a template's name, or a Jinja template string.
        family: the policy's keras-hub CausalLM class name.

    Encoding a conversation, or asking for `reply_end_id`, raises `ChatError`
    when the template's end-of-turn marker is not one token of this tokenizer.

    Example:
        chat = ChatFormat(tokenizer, None, "Gemma3CausalLM")
        chat.prompt_ids([{"role": "user", "content": "2 + 2 ?"}])  # <start_of_turn>user ... model\n
        chat.reply_end_id  # <end_of_turn>
    """

    def __init__(self, tokenizer, chat_template, family):
        self.tokenizer = tokenizer
        self.template = resolve_template(chat_template, family, tokenizer.id_to_token(tokenizer.end_token_id))
        # None when this vocabulary lacks the template's end-of-turn token: an error once a conversation is used.
        self.end_of_turn_id = (tokenizer.end_token_id if self.template.end_of_turn is None
                               else single_token_id(tokenizer, self.template.end_of_turn))

    @property
    def reply_end_id(self):
        """The token id that closes a reply: the template's end of turn, or the end token."""
        self._check_end_of_turn()
        return self.end_of_turn_id

    def prompt_ids(self, messages):
        """The rendered conversation's token ids, up to the opening of the assistant's reply (no start token)."""
        self._check_end_of_turn()  # a reply that could never end is refused before any prompt is encoded
        return tokenize_with_markers(self.tokenizer, self.template.render(messages))

    def turn_ids(self, messages, reply_ids, start_ids=()):
        """`(start + rendered conversation, reply + end of turn)` token ids: one training example's two parts.

        SFT trains on both concatenated; DPO scores the second after the first.
        """
        return list(start_ids) + self.prompt_ids(messages), list(reply_ids) + [self.reply_end_id]

    def observation_ids(self, text):
        """The token ids that follow a reply's end of turn when `text` answers it as the user's next message.

        They close nothing the model wrote (its end-of-turn token is already in place) and end with the
        opening of the model's next reply, as the template writes a conversation.

        Example:
            chat.observation_ids("<result>408</result>")  # "\n<start_of_turn>user\n<result>...model\n"
        """
        self._check_end_of_turn()
        user, reply = {"role": "user", "content": "?"}, {"role": "assistant", "content": "REPLY"}
        before = self.template.render([user]) + "REPLY" + self.tokenizer.id_to_token(self.end_of_turn_id)
        after = self.template.render([user, reply, {"role": "user", "content": text}])
        if not after.startswith(before):
            raise ChatError(f"the {self.template.name} chat template does not write a reply then a user message "
                            f"as the reply's end of turn followed by the message, so an environment's answer "
                            f"cannot be appended to an episode; {_HOW_TO_PASS}")
        return tokenize_with_markers(self.tokenizer, after[len(before):])

    def _check_end_of_turn(self):
        if self.end_of_turn_id is None:
            raise ChatError(f"the {self.template.name} chat template ends a turn with {self.template.end_of_turn}, "
                            f"which is not a token of this tokenizer; {_HOW_TO_PASS}")


def check_chat_template(prompts, chat_template, family):
    """Raise `ChatError` now, before any model is built, when conversation prompts have no template to render them.

    `family` None (a preset name, its class known once downloaded) defers the check to the rollout engine.

    Example:
    >>> check_chat_template([[{"role": "user", "content": "hi"}]], None, "GPT2CausalLM")
    Traceback (most recent call last):
    ...
    tf_ppo.chat.ChatError: the prompts are conversations, and GPT2CausalLM has no chat template tf_ppo knows: pass ModelConfig.chat_template (--model.chat_template): a Jinja template string, as in a Hugging Face tokenizer_config.json, or the name of a function registered with tf_ppo.register_chat_template(name, fn)
    """
    if not (prompts and is_conversation(prompts[0])):
        return
    if chat_template is None and family is not None and family not in FAMILY_TEMPLATES:
        raise no_template_error(family)


def chat_format(tokenizer, chat_template, family, prompts=None):
    """The `ChatFormat` of `chat_template`, else of the family's template; None when there is neither.

    Given `prompts` that are conversations, "neither" raises the `ChatError` that says how to pass a template.

    Example:
    >>> from tf_ppo.config import PPOConfig
    >>> from tf_ppo.models import load_tokenizer
    >>> chat_format(load_tokenizer(PPOConfig().vocabulary, PPOConfig().merges), None, "GPT2CausalLM") is None
    True
    """
    if chat_template is None and family not in FAMILY_TEMPLATES:
        check_chat_template(prompts or [], None, family or "this model")
        return None
    return ChatFormat(tokenizer, chat_template, family)


def stop_token_ids(tokenizer, chat=None):
    """The tokens a response stops at: the end token(s), and the end of a chat reply, as keras-hub's `generate`.

    Example:
    >>> from tf_ppo.config import PPOConfig
    >>> from tf_ppo.models import load_tokenizer
    >>> stop_token_ids(load_tokenizer(PPOConfig().vocabulary, PPOConfig().merges))
    (762,)
    """
    stops = [tokenizer.end_token_id]
    if getattr(tokenizer, "end_token2_id", None) is not None:  # Llama 3: <|eot_id|> beside <|end_of_text|>
        stops.append(tokenizer.end_token2_id)
    if chat is not None and chat.end_of_turn_id is not None:
        stops.append(chat.end_of_turn_id)
    return tuple(dict.fromkeys(stops))
