"""`PPOConfig`: every knob of a tf_ppo run, validated on creation.

Names follow TRL's `PPOConfig` where they mean the same thing (`kl_coef`,
`cliprange`, `vf_coef`, `gamma`, `lam`, ...). The config is frozen: the trainer
never mutates it, and it round-trips to JSON so a run directory records exactly
what produced it.

Example:
>>> config = PPOConfig(total_updates=10, seed=1)
>>> PPOConfig.from_json(config.to_json()) == config
True
"""

import dataclasses
import json
import pathlib

DATA_DIR = pathlib.Path(__file__).resolve().parent.parent / "data"


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Size of the tiny models built from scratch (no download).

    Example:
    >>> ModelConfig(architecture="bigram").architecture
    'bigram'
    """

    # A keras-hub preset to start from: a name ("gpt2_base_en", downloads), a local preset directory, or a
    # `keras_hub.models.CausalLM` object. None = build the tiny model below from scratch.
    preset: object = None
    architecture: str = "gpt2"  # "gpt2" (keras-hub GPT2CausalLM) or "bigram" (the article's Embedding -> Dense)
    num_layers: int = 2
    num_heads: int = 4
    hidden_dim: int = 128
    intermediate_dim: int = 512
    max_sequence_length: int = 64
    dropout: float = 0.0  # dropout is off in PPO in any case (models run with training=False)

    def __post_init__(self):
        if self.preset is not None and not isinstance(self.preset, str) and not hasattr(self.preset, "backbone"):
            _fail(self, "preset", f"must be a preset name, a preset directory or a keras_hub CausalLM, "
                                  f"got {type(self.preset).__name__}")
        _check_choice(self, "architecture", ("gpt2", "bigram"))
        for name in ("num_layers", "num_heads", "hidden_dim", "intermediate_dim", "max_sequence_length"):
            _check_positive(self, name)
        if self.hidden_dim % self.num_heads:
            _fail(self, "hidden_dim", f"must be divisible by num_heads={self.num_heads}, got {self.hidden_dim}")
        _check_range(self, "dropout", 0.0, 1.0, include_high=False)


@dataclasses.dataclass(frozen=True)
class SFTConfig:
    """Supervised fine-tuning (stage 1): the article's loop, made correct.

    Example:
    >>> SFTConfig(epochs=2).clip_mode
    'global_norm'
    """

    train_csv: str = str(DATA_DIR / "train_data.csv")
    epochs: int = 6
    batch_size: int = 32
    learning_rate: float = 2e-3
    clip_mode: str = "global_norm"  # or "value": clip each gradient entry to [-clip, clip], as the article does
    max_grad_norm: float = 1.0  # the clip threshold for either mode
    max_length: int = 32  # tokens per training sequence (BOS + prompt + target + EOS), longer rows are cut
    seed: int = 0

    def __post_init__(self):
        for name in ("epochs", "batch_size", "learning_rate", "max_grad_norm", "max_length"):
            _check_positive(self, name)
        _check_choice(self, "clip_mode", ("global_norm", "value"))


@dataclasses.dataclass(frozen=True)
class RewardConfig:
    """The learned reward model (`tf_ppo.train_reward_model`, `tf-ppo reward`, `tf-ppo pipeline`).

    Example:
    >>> RewardConfig(epochs=2).batch_size
    32
    """

    preferences_csv: str = str(DATA_DIR / "preferences.csv")  # prompt,chosen,rejected or prompt,response_0..,best
    epochs: int = 1
    batch_size: int = 32  # preference rows per step
    learning_rate: float = 1e-4
    max_grad_norm: float = 1.0
    max_length: int = 32  # tokens per scored text (start + prompt + response); longer texts keep their end
    heldout_fraction: float = 0.15  # rows held out for accuracy when the CSV has no `split` column
    normalise_samples: int = 256  # SFT samples that fit gain and bias (mean 0, std 1); 0 = no normalisation
    clip: float | None = None  # clip normalised rewards to [-clip, clip]
    seed: int = 0

    def __post_init__(self):
        for name in ("epochs", "batch_size", "learning_rate", "max_grad_norm", "max_length"):
            _check_positive(self, name)
        _check_range(self, "heldout_fraction", 0.0, 1.0, include_high=False)
        if self.normalise_samples < 0:
            _fail(self, "normalise_samples", f"must be >= 0, got {self.normalise_samples!r}")
        if self.clip is not None:
            _check_positive(self, "clip")


@dataclasses.dataclass(frozen=True)
class PPOConfig:
    """Stage 2: PPO with a KL penalty against the frozen reference policy.

    Every trick can be switched off: `whiten_rewards=False` (default),
    `whiten_advantages=False`, `cliprange=1e9` (no ratio clipping),
    `cliprange_value=None` (no value clipping), `target_kl=None` (fixed kl_coef),
    `max_approx_kl=None` (no early stop), `max_grad_norm=None` (no clipping).

    Example:
    >>> config = PPOConfig(batch_size=16, num_mini_batches=2)
    >>> config.mini_batch_size
    8
    """

    # --- data and models
    # Prompts: a CSV (column input_text) or "tfds:NAME[:SPLIT]" (e.g. "tfds:imdb_reviews", its `text` feature).
    prompts: str = str(DATA_DIR / "train_data.csv")
    eval_prompts_csv: str = str(DATA_DIR / "heldout_data.csv")
    vocabulary: str = str(DATA_DIR / "vocab.json")
    merges: str = str(DATA_DIR / "merges.txt")
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)  # or a preset name / directory / CausalLM
    dtype: str = "float32"  # or "mixed_bfloat16" / "mixed_float16" (loss scaling); the PPO maths stays float32
    lora_rank: int = 0  # > 0: train LoRA adapters only; the reference is the policy with its adapters off
    value_from_reward_model: bool = False  # start the value model from the RewardModel used as reward (as TRL)
    sft: SFTConfig = dataclasses.field(default_factory=SFTConfig)
    reward: RewardConfig = dataclasses.field(default_factory=RewardConfig)
    fluency_corpus: str | None = str(DATA_DIR / "corpus.txt")  # word bigrams that count as fluent; None = skip the metric
    run_dir: str | None = None  # None = runs/ppo-<date>-<time>
    # --- rollout
    total_updates: int = 100
    batch_size: int = 64  # rollouts (prompts) per update
    max_prompt_length: int = 16  # prompts are right-padded to this many tokens (BOS included)
    truncate_prompts: bool = False  # longer prompts: False = error naming the row, True = keep their last tokens (warns)
    prompt_tokens_min: int = 0  # > 0: keep only each prompt's first k tokens, k drawn per row from [min, max]
    prompt_tokens_max: int = 0  # (TRL's IMDB example: a review's first 2-8 tokens); 0 = whole prompts
    response_length: int = 16  # maximum new tokens per response
    temperature: float = 1.0
    top_k: int = 0  # 0 = off, as in PPO practice: sampling must match the policy being optimised
    top_p: float = 1.0  # 1.0 = off
    stop_at_eos: bool = True  # truncate each response after its first end token
    missing_eos_penalty: float | None = None  # subtracted from the score of responses that never stop
    generation_jit: bool = True  # XLA for the sampling loop (about 2.5x faster on CPU)
    train_jit: bool = True  # XLA for the scoring forwards and the training step (8-11% faster on CPU here)
    # --- reward shaping
    kl_coef: float = 0.1  # beta, the initial value when adaptive
    kl_estimator: str = "k1"  # "k1" (log ratio), "k2" (squared / 2) or "k3" (Schulman's unbiased, always >= 0)
    target_kl: float | None = None  # nats per response; set -> adaptive controller of Ziegler et al. (2019)
    kl_horizon: int = 10000  # rollouts; the adaptive controller's time constant
    whiten_rewards: bool = False
    whiten_advantages: bool = True
    gamma: float = 1.0
    lam: float = 0.95
    # --- optimisation
    num_ppo_epochs: int = 4
    num_mini_batches: int = 2
    learning_rate: float = 3e-4
    adam_epsilon: float = 1e-5  # TF-style epsilon, as in lm-human-preferences
    cliprange: float = 0.2
    cliprange_value: float | None = 0.2
    vf_coef: float = 0.1
    entropy_coef: float = 0.0
    clip_mode: str = "global_norm"  # or "value" (the article's clip_by_value)
    max_grad_norm: float | None = 1.0
    max_approx_kl: float | None = None  # stop the remaining PPO epochs of an update when approx-KL exceeds this
    max_consecutive_skips: int = 3  # updates in a row skipped for NaN/inf before the run stops with an error
    # --- devices
    strategy: str = "auto"  # "auto" (Mirrored if >1 GPU), "default", "mirrored", "multi_worker" (reads TF_CONFIG)
    collective_timeout: int = 300  # seconds a multi-worker collective waits for a dead worker before failing
    # --- bookkeeping
    seed: int = 0
    checkpoint_every: int = 10  # updates
    eval_every: int = 0  # updates; 0 = only before and after training
    eval_size: int = 128  # held-out prompts scored at each evaluation
    overoptimisation_window: int = 10  # updates; warn when the proxy reward rises while the gold score falls

    def __post_init__(self):
        for name, section in NESTED.items():
            if isinstance(getattr(self, name), dict):
                object.__setattr__(self, name, section(**getattr(self, name)))
        if not isinstance(self.model, ModelConfig):  # PPOConfig(model="gpt2_base_en" | "/path" | causal_lm)
            object.__setattr__(self, "model", ModelConfig(preset=self.model))
        for name in ("total_updates", "batch_size", "max_prompt_length", "response_length",
                     "temperature", "kl_horizon", "num_ppo_epochs", "num_mini_batches",
                     "learning_rate", "adam_epsilon", "cliprange", "checkpoint_every", "eval_size",
                     "max_consecutive_skips", "overoptimisation_window", "collective_timeout"):
            _check_positive(self, name)
        for name in ("cliprange_value", "max_grad_norm", "max_approx_kl", "target_kl"):
            if getattr(self, name) is not None:
                _check_positive(self, name)
        for name in ("kl_coef", "vf_coef", "entropy_coef", "top_k", "eval_every"):
            if getattr(self, name) < 0:
                _fail(self, name, f"must be >= 0, got {getattr(self, name)!r}")
        _check_range(self, "gamma", 0.0, 1.0)
        _check_range(self, "lam", 0.0, 1.0)
        _check_range(self, "top_p", 0.0, 1.0, include_low=False)
        _check_choice(self, "kl_estimator", ("k1", "k2", "k3"))
        _check_choice(self, "strategy", ("auto", "default", "mirrored", "multi_worker"))
        _check_choice(self, "clip_mode", ("global_norm", "value"))
        _check_choice(self, "dtype", ("float32", "mixed_bfloat16", "mixed_float16"))
        for name in ("lora_rank", "prompt_tokens_min", "prompt_tokens_max"):
            if isinstance(getattr(self, name), bool) or not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                _fail(self, name, f"must be an integer >= 0, got {getattr(self, name)!r}")
        if self.lora_rank and self.model.architecture == "bigram" and self.model.preset is None:
            _fail(self, "lora_rank", "needs a transformer policy; the bigram model has no attention to adapt")
        if self.prompt_tokens_max < self.prompt_tokens_min or (self.prompt_tokens_min == 0) != (self.prompt_tokens_max == 0):
            _fail(self, "prompt_tokens_max", f"must be >= prompt_tokens_min={self.prompt_tokens_min}, both 0 or "
                                             f"both > 0, got {self.prompt_tokens_max!r}")
        if self.clip_mode == "value" and self.max_grad_norm is None:
            _fail(self, "max_grad_norm", "clip_mode='value' needs a clip threshold, got None")
        if self.batch_size % self.num_mini_batches:
            _fail(self, "batch_size", f"must be divisible by num_mini_batches={self.num_mini_batches}, "
                                      f"got {self.batch_size}")
        if self.model.preset is None and self.sequence_length > self.model.max_sequence_length:
            _fail(self, "response_length",
                  f"max_prompt_length + response_length = {self.sequence_length} exceeds the model's "
                  f"context model.max_sequence_length={self.model.max_sequence_length}")

    @property
    def mini_batch_size(self):
        return self.batch_size // self.num_mini_batches

    @property
    def sequence_length(self):
        """Tokens in a rollout buffer: prompt slots + response slots."""
        return self.max_prompt_length + self.response_length

    def replace(self, **changes):
        """A copy with some fields changed (nested dicts allowed for `model`/`sft`/`reward`).

        Example:
        >>> PPOConfig().replace(seed=3, model={"num_layers": 1}).model.num_layers
        1
        """
        for name in NESTED:
            if isinstance(changes.get(name), dict):
                changes[name] = dataclasses.replace(getattr(self, name), **changes[name])
        return dataclasses.replace(self, **changes)

    def to_json(self):
        """JSON of every field; a CausalLM object as `model` is recorded by its class name only."""
        return json.dumps(_as_dict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text):
        """Parse a JSON object; unknown keys are an error that names them."""
        values = json.loads(text)
        unknown = sorted(set(values) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"PPOConfig: unknown field(s) {', '.join(unknown)}")
        return cls(**values)

    @classmethod
    def from_file(cls, path):
        return cls.from_json(pathlib.Path(path).read_text())


NESTED = {"model": ModelConfig, "sft": SFTConfig, "reward": RewardConfig}  # PPOConfig fields that are sections


OBJECT_MARK = "<object "


def _as_dict(config):
    # Not dataclasses.asdict: it deep-copies every value, a whole Keras model included.
    values = {}
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if dataclasses.is_dataclass(value):
            value = _as_dict(value)
        elif value is not None and not isinstance(value, (str, int, float, bool)):
            value = f"{OBJECT_MARK}{type(value).__name__}>"
        values[field.name] = value
    return values


def _fail(config, name, message):
    raise ValueError(f"{type(config).__name__}.{name} {message}")


def _check_positive(config, name):
    value = getattr(config, name)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        _fail(config, name, f"must be a positive number, got {value!r}")


def _check_range(config, name, low, high, include_low=True, include_high=True):
    value = getattr(config, name)
    above = value >= low if include_low else value > low
    below = value <= high if include_high else value < high
    if not (above and below):
        left, right = "[" if include_low else "(", "]" if include_high else ")"
        _fail(config, name, f"must be in {left}{low}, {high}{right}, got {value!r}")


def _check_choice(config, name, choices):
    if getattr(config, name) not in choices:
        _fail(config, name, f"must be one of {choices}, got {getattr(config, name)!r}")
