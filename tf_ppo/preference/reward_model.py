"""Learned rewards: a Keras reward model, and any keras-hub classifier as a reward.

The reward model is a transformer backbone with a scalar head on the last real
token (InstructGPT, lm-human-preferences). Its raw score is mapped by a gain
and a bias, fitted after training so the SFT policy's own samples score mean 0
and std 1 (`fit_normalisation`) and saved with the model. Training it from
preferences is `tf_ppo.preference.reward_training`.

Text layout: `start token + prompt + response`, joined with a space unless
one side already has it, cut to `max_length` tokens keeping the end (the
response is what is judged).
"""

import os

import keras
import keras_hub
import numpy as np
import tensorflow as tf

from tf_ppo.training.compiled import compiled
from tf_ppo.config import PPOConfig  # noqa: F401  used by the doctests
from tf_ppo.data import DataError, prepend_start_token
from tf_ppo.models import load_tokenizer  # noqa: F401  used by the doctests
from tf_ppo.models.inputs import model_inputs


def join_texts(prompts, responses):
    """`prompt + response`, with a space between unless either side already has one.

    Example:
    >>> join_texts(tf.constant(["the film was", "it was "]), tf.constant(["great.", "fine."])).numpy().tolist()
    [b'the film was great.', b'it was fine.']
    """
    needs_space = ~(tf.strings.regex_full_match(responses, r"\s.*") | tf.strings.regex_full_match(prompts, r".*\s"))
    return tf.strings.join([prompts, tf.where(needs_space, " ", ""), responses])


def encode_texts(tokenizer, prompts, responses, max_length):
    """Token ids of `start + prompt + response`, right-padded; longer texts keep their last tokens.

    Works eagerly and inside `tf.function` (the tokenizer is TensorFlow ops).

    Returns:
        `(token_ids, padding_mask)`: int32 `[N, max_length]`, bool `[N, max_length]`.

    Example:
    >>> tokenizer = load_tokenizer(PPOConfig().vocabulary, PPOConfig().merges)
    >>> ids, mask = encode_texts(tokenizer, tf.constant(["the film was"]), tf.constant(["great."]), 8)
    >>> mask.numpy().sum(axis=1).tolist()
    [6]
    """
    token_ids = tokenizer(join_texts(prompts, responses))
    if not isinstance(token_ids, tf.RaggedTensor):  # eager keras-hub tokenizers return Python lists
        token_ids = tf.ragged.constant(token_ids, dtype=tf.int32, ragged_rank=1)
    token_ids = token_ids[:, -(max_length - 1):]  # ragged [N, <= L-1]: keep the end, the response
    token_ids = prepend_start_token(tokenizer, token_ids)
    padded = token_ids.to_tensor(default_value=tokenizer.pad_token_id, shape=[None, max_length])
    return tf.cast(padded, tf.int32), tf.sequence_mask(token_ids.row_lengths(), max_length)


@keras.saving.register_keras_serializable(package="tf_ppo")
class RewardModel(keras.Model):
    """Scores `(prompt, response)` texts: a keras-hub backbone, a scalar head on the last real token.

    `model(inputs)` gives raw scores `[batch]` from `{"token_ids", "padding_mask"}`
    (what training differentiates); `score_texts(prompts, responses)` gives the
    normalised, optionally clipped rewards PPO uses.

    Example:
    >>> config = PPOConfig(model={"num_layers": 1, "hidden_dim": 16, "num_heads": 2})
    >>> tokenizer = load_tokenizer(config.vocabulary, config.merges)
    >>> from tf_ppo.models import build_backbone
    >>> model = RewardModel(build_backbone(config.model, tokenizer.vocabulary_size()), tokenizer)
    >>> model.score_texts(["the film was", "it was"], ["great.", "awful."]).shape
    TensorShape([2])
    """

    def __init__(self, backbone, tokenizer, max_length=32, clip=None, **kwargs):
        super().__init__(**kwargs)
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.clip = clip
        self.head = keras.layers.Dense(1, name="reward_head")
        self.gain = self.add_weight(shape=(), initializer="ones", trainable=False, name="gain")
        self.offset = self.add_weight(shape=(), initializer="zeros", trainable=False, name="offset")
        # Tokenising is string ops, which XLA cannot compile; the forward pass is compiled apart (XLA: about
        # 1.3x faster on CPU at the performance issue's S2 shape).
        self._encode_texts = compiled(self._encode_texts_fn, input_signature=[tf.TensorSpec([None], tf.string)] * 2)
        self._normalised_scores = compiled(self._normalised_scores_fn, jit_compile=True)
        self.build(None)

    def build(self, input_shape):
        self.head.build([None, self.backbone.hidden_dim])

    def call(self, inputs):
        hidden_states = self.backbone(model_inputs(self.backbone, inputs["token_ids"], inputs["padding_mask"]))
        if isinstance(hidden_states, dict):  # encoder backbones (BERT, ...) return several outputs
            hidden_states = hidden_states["sequence_output"]
        last = tf.reduce_sum(tf.cast(inputs["padding_mask"], tf.int32), axis=1) - 1  # [batch] last real token
        return tf.squeeze(self.head(tf.gather(hidden_states, last, batch_dims=1)), axis=-1)  # [batch]

    def normalise(self, raw_scores):
        """`gain * raw + offset`, clipped to `[-clip, clip]` when `clip` is set."""
        scores = self.gain * raw_scores + self.offset
        return scores if self.clip is None else tf.clip_by_value(scores, -self.clip, self.clip)

    def score_texts(self, prompts, responses):
        """Normalised rewards of `prompt + response` texts, float32 `[N]` (compiled, traced once).

        Also the PPO reward interface: `tf_ppo.train(config, reward_fn=reward_model)`.
        """
        token_ids, padding_mask = self._encode_texts(tf.constant(prompts, tf.string), tf.constant(responses, tf.string))
        return self._normalised_scores(token_ids, padding_mask)

    def _encode_texts_fn(self, prompts, responses):
        return encode_texts(self.tokenizer, prompts, responses, self.max_length)

    def _normalised_scores_fn(self, token_ids, padding_mask):
        return self.normalise(self({"token_ids": token_ids, "padding_mask": padding_mask}))

    def fit_normalisation(self, prompts, responses):
        """Set gain and offset so these texts' rewards have mean 0 and std 1; returns (mean, std) before."""
        raw = self._raw_scores(prompts, responses)
        mean, std = float(np.mean(raw)), float(np.std(raw))
        self.gain.assign(1.0 / max(std, 1e-6))
        self.offset.assign(-mean / max(std, 1e-6))
        return mean, std

    def _raw_scores(self, prompts, responses):
        token_ids, padding_mask = encode_texts(self.tokenizer, tf.constant(prompts), tf.constant(responses),
                                               self.max_length)
        return self({"token_ids": token_ids, "padding_mask": padding_mask}).numpy()

    def get_config(self):
        return {**super().get_config(), "backbone": keras.saving.serialize_keras_object(self.backbone),
                "tokenizer": keras.saving.serialize_keras_object(self.tokenizer),
                "max_length": self.max_length, "clip": self.clip}

    @classmethod
    def from_config(cls, config):
        config["backbone"] = keras.saving.deserialize_keras_object(config["backbone"])
        config["tokenizer"] = keras.saving.deserialize_keras_object(config["tokenizer"])
        return cls(**config)

    @classmethod
    def load(cls, path):
        """Load a reward model saved with `model.save("reward_model.keras")`.

        Example:
            reward_model = RewardModel.load("runs/pipeline/reward/reward_model.keras")
        """
        model = keras.saving.load_model(path, compile=False)
        if not isinstance(model, cls):
            raise DataError(f"{path}: a {type(model).__name__}, not a tf_ppo RewardModel")
        return model


class ClassifierReward:
    """A keras-hub text classifier (BERT, DistilBERT, ... with its preprocessor) as a PPO reward.

    Args:
        classifier: a `keras_hub.models.TextClassifier`, a preset name
            (`"distil_bert_base_en_uncased"`, needs the internet once) or a local
            preset directory.
        label: the class whose score is the reward (e.g. 1 = positive).
        output: `"probability"` (softmax of the logits) or `"logit"`.
        include_prompt: classify `prompt + response` (True) or the response alone.

    Example:
        reward = ClassifierReward("./my_sentiment_preset", label=1)
        tf_ppo.train(config, reward_fn=reward)
    """

    def __init__(self, classifier, label=1, output="probability", include_prompt=True):
        if isinstance(classifier, (str, os.PathLike)):
            classifier = keras_hub.models.TextClassifier.from_preset(str(classifier))
        if classifier.preprocessor is None:
            raise ValueError("ClassifierReward: the classifier has no preprocessor to turn text into token ids")
        if output not in ("probability", "logit"):
            raise ValueError(f"ClassifierReward.output must be 'probability' or 'logit', got {output!r}")
        self.classifier, self.label, self.output, self.include_prompt = classifier, label, output, include_prompt
        self._score = compiled(self._score_fn, input_signature=[tf.TensorSpec([None], tf.string)])

    def __call__(self, prompts, responses):
        texts = join_texts(tf.constant(prompts), tf.constant(responses)) if self.include_prompt else responses
        return self._score(tf.constant(texts, tf.string)).numpy()

    def _score_fn(self, texts):
        logits = self.classifier(self.classifier.preprocessor(texts))  # [batch, classes]
        scores = tf.nn.softmax(logits) if self.output == "probability" else logits
        return scores[:, self.label]
