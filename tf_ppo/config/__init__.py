"""`PPOConfig`: every knob of a tf_ppo run, validated on creation.

Names follow TRL's `PPOConfig` where they mean the same thing (`kl_coef`,
`cliprange`, `vf_coef`, `gamma`, `lam`, ...). The config is frozen: the trainer
never mutates it, and it round-trips to JSON so a run directory records exactly
what produced it.

Each field is declared once, with its default and its meaning (`_field`); the
`tf-ppo` flags' help and README's configuration reference are both derived
from that (`reference_markdown`; `python -m tf_ppo.config` rewrites README.md).
Every value is checked against its field's annotation, and the shipped data
files are recorded in JSON by a portable name (`shipped:train_data.csv`).

Example:
>>> config = PPOConfig(total_updates=10, seed=1)
>>> PPOConfig.from_json(config.to_json()) == config
True
"""

import dataclasses
import difflib
import importlib.util
import json
import numbers
import pathlib
import sys
import types
import typing


class ConfigError(ValueError):
    """A config value that breaks a constraint; the message names the field (`PPOConfig.cliprange ...`)."""


class UnknownFieldError(ConfigError, TypeError):
    """A field name the config does not have (a TypeError too, as Python's own unexpected-keyword error is)."""


def _shipped_data_dir():
    # An installed tf_ppo ships data/ as the package `tf_ppo_data` (setup.cfg maps it); an editable
    # install made before that mapping existed only has the source checkout's data/ beside tf_ppo/.
    spec = importlib.util.find_spec("tf_ppo_data")
    if spec is not None and spec.submodule_search_locations:
        return pathlib.Path(next(iter(spec.submodule_search_locations))).resolve()
    return pathlib.Path(__file__).resolve().parents[2] / "data"


DATA_DIR = _shipped_data_dir()
SHIPPED = "shipped:"  # config.json spells a shipped data file "shipped:<name>", portable across machines
OBJECT_MARK = "<object "


def _field(default=dataclasses.MISSING, doc="", factory=dataclasses.MISSING):
    """A dataclass field with its meaning in `metadata["help"]`: the one source of the CLI help and README table."""
    return dataclasses.field(default=default, default_factory=factory, metadata={"help": doc})


class _Checked:
    """Base of the config sections: unknown keyword arguments are an error that suggests the near miss."""

    def __new__(cls, *args, **kwargs):
        # Before __init__, so PPOConfig(**kw), replace() and from_json all name the typo the same way.
        _check_names(cls, kwargs)
        return super().__new__(cls)


@dataclasses.dataclass(frozen=True)
class ModelConfig(_Checked):
    """Size of the tiny models built from scratch (no download).

    Example:
    >>> ModelConfig(architecture="bigram").architecture
    'bigram'
    """

    preset: object = _field(None, 'a keras-hub preset to start from: a name ("gpt2_base_en", downloads), a local '
                                  'preset directory, or a `keras_hub.models.CausalLM` object; None = build the tiny '
                                  'model below from scratch')
    architecture: str = _field("gpt2", '"gpt2" (keras-hub GPT2CausalLM) or "bigram" (the article\'s Embedding -> '
                                       'Dense)')
    num_layers: int = _field(2, "transformer blocks of the tiny model")
    num_heads: int = _field(4, "attention heads per block")
    hidden_dim: int = _field(128, "width of the embeddings and of each block's output")
    intermediate_dim: int = _field(512, "width of each block's feed-forward layer")
    max_sequence_length: int = _field(64, "the tiny model's context in tokens (holds max_prompt_length + "
                                              "response_length)")
    dropout: float = _field(0.0, "dropout is off in PPO in any case (models run with training=False)")

    def __post_init__(self):
        _check_fields(self)
        if self.preset is not None and not isinstance(self.preset, str) and not hasattr(self.preset, "backbone"):
            _fail(self, "preset", f"must be a preset name, a preset directory or a keras_hub CausalLM, "
                                  f"got {type(self.preset).__name__}")
        if _is_missing_directory(self.preset):
            _fail(self, "preset", f"is a directory that does not exist: {self.preset!r} "
                                  f"(a value with '/' or a leading '.' is read as a local preset directory)")
        _check_choice(self, "architecture", ("gpt2", "bigram"))
        for name in ("num_layers", "num_heads", "hidden_dim", "intermediate_dim", "max_sequence_length"):
            _check_positive(self, name)
        if self.hidden_dim % self.num_heads:
            _fail(self, "hidden_dim", f"must be divisible by num_heads={self.num_heads}, got {self.hidden_dim}")
        _check_range(self, "dropout", 0.0, 1.0, include_high=False)


@dataclasses.dataclass(frozen=True)
class SFTConfig(_Checked):
    """Supervised fine-tuning (stage 1): the article's loop, made correct.

    Example:
    >>> SFTConfig(epochs=2).clip_mode
    'global_norm'
    """

    train_csv: str = _field(str(DATA_DIR / "train_data.csv"), "training rows: a CSV with columns input_text "
                                                              "(prompt) and target (continuation)")
    epochs: int = _field(6, "passes over train_csv")
    batch_size: int = _field(32, "rows per step")
    learning_rate: float = _field(2e-3, "Adam learning rate")
    clip_mode: str = _field("global_norm", '"global_norm", or "value": clip each gradient entry to [-clip, clip], '
                                           'as the article does')
    max_grad_norm: float = _field(1.0, "the clip threshold for either mode")
    max_length: int = _field(32, "tokens per training sequence (BOS + prompt + target + EOS), longer rows are cut")
    seed: int = _field(0, "seed of initialisation and shuffling")

    def __post_init__(self):
        _check_fields(self)
        for name in ("epochs", "batch_size", "learning_rate", "max_grad_norm", "max_length"):
            _check_positive(self, name)
        _check_choice(self, "clip_mode", ("global_norm", "value"))


@dataclasses.dataclass(frozen=True)
class RewardConfig(_Checked):
    """The learned reward model (`tf_ppo.train_reward_model`, `tf-ppo reward`, `tf-ppo pipeline`).

    Example:
    >>> RewardConfig(epochs=2).batch_size
    32
    """

    preferences_csv: str = _field(str(DATA_DIR / "preferences.csv"), "preference rows: prompt,chosen,rejected or "
                                                                     "prompt,response_0..,best")
    epochs: int = _field(1, "passes over the training rows")
    batch_size: int = _field(32, "preference rows per step")
    learning_rate: float = _field(1e-4, "Adam learning rate")
    max_grad_norm: float = _field(1.0, "global-norm gradient clip threshold")
    max_length: int = _field(32, "tokens per scored text (start + prompt + response); longer texts keep their end")
    heldout_fraction: float = _field(0.15, "rows held out for accuracy when the CSV has no `split` column")
    normalise_samples: int = _field(256, "SFT samples that fit gain and bias (mean 0, std 1); 0 = no normalisation")
    clip: float | None = _field(None, "clip normalised rewards to [-clip, clip]; None = no clipping")
    seed: int = _field(0, "seed of initialisation, shuffling and the held-out split")

    def __post_init__(self):
        _check_fields(self)
        for name in ("epochs", "batch_size", "learning_rate", "max_grad_norm", "max_length"):
            _check_positive(self, name)
        _check_range(self, "heldout_fraction", 0.0, 1.0, include_high=False)
        if self.normalise_samples < 0:
            _fail(self, "normalise_samples", f"must be >= 0, got {self.normalise_samples!r}")
        if self.clip is not None:
            _check_positive(self, "clip")


@dataclasses.dataclass(frozen=True)
class DPOConfig(_Checked):
    """Offline preference optimisation (`tf_ppo.preference.dpo`, `tf-ppo dpo`, `tf-ppo pipeline --method dpo`).

    Trains on the preference file of `RewardConfig.preferences_csv` (its held-out rows too); names as in
    TRL's `DPOConfig`.

    Example:
    >>> DPOConfig(loss_type="ipo").beta
    0.1
    """

    beta: float = _field(0.1, "how far the policy may move from the reference (IPO: its tau)")
    loss_type: str = _field("sigmoid", '"sigmoid" (DPO), "robust", "hinge" (SLiC) or "ipo" (per-token log-ratios)')
    label_smoothing: float = _field(0.0, "chance a preference label is flipped: > 0 with sigmoid is cDPO, "
                                         "with robust the robust DPO loss")
    precompute_ref_log_probs: bool = _field(True, "the reference's log-probs of every pair computed once before "
                                                  "training, in one compiled pass: no reference model is held; "
                                                  "False = a live frozen reference")
    share_prompt: bool = _field(True, "each pair's prompt computed once: prompt, chosen and rejected in one packed "
                                      "row (keras-hub GPT-2 policies; other models run the two sequences apart)")
    epochs: int = _field(1, "passes over the training pairs")
    batch_size: int = _field(32, "preference pairs per step")
    learning_rate: float = _field(5e-4, "Adam learning rate")
    max_grad_norm: float = _field(1.0, "global-norm gradient clip threshold")
    max_length: int = _field(32, "tokens per sequence (start + prompt + response + end); longer ones lose their end")
    checkpoint_every: int = _field(20, "steps between checkpoints (and one after every epoch)")
    seed: int = _field(0, "seed of shuffling and the held-out split")

    def __post_init__(self):
        _check_fields(self)
        for name in ("beta", "epochs", "batch_size", "learning_rate", "max_grad_norm", "max_length",
                     "checkpoint_every"):
            _check_positive(self, name)
        _check_choice(self, "loss_type", ("sigmoid", "robust", "hinge", "ipo"))
        _check_range(self, "label_smoothing", 0.0, 0.5, include_high=False)


@dataclasses.dataclass(frozen=True)
class PPOConfig(_Checked):
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

    # --- the task: its data, rewards and evaluation
    task: str = _field("sentiment", '"sentiment" (VADER on movie-review openings) or "arithmetic" (word '
                                    'problems, exact-match reward, accuracy and pass@k); sets the data fields '
                                    'left at their defaults')
    # --- data and models
    prompts: str = _field(str(DATA_DIR / "train_data.csv"), 'prompts: a CSV (column input_text) or '
                                                            '"tfds:NAME[:SPLIT]" (e.g. "tfds:imdb_reviews", its '
                                                            '`text` feature)')
    eval_prompts_csv: str = _field(str(DATA_DIR / "heldout_data.csv"), "held-out prompts (column input_text) "
                                                                       "scored at each evaluation")
    vocabulary: str = _field(str(DATA_DIR / "vocab.json"), "BPE vocabulary of the tiny model's GPT-2 tokenizer "
                                                           "(a preset brings its own)")
    merges: str = _field(str(DATA_DIR / "merges.txt"), "BPE merges that go with `vocabulary`")
    model: ModelConfig = _field(factory=ModelConfig, doc="the policy: a ModelConfig, or a preset name / directory "
                                                         "/ CausalLM (flags --model and --model.FIELD)")
    dtype: str = _field("float32", '"float32", or "mixed_bfloat16" / "mixed_float16" (loss scaling); the '
                                   'PPO maths stays float32')
    gradient_checkpointing: bool = _field(False, "recompute each transformer block's activations in the backward "
                                                 "pass (PPO, SFT, reward model, every algorithm): less memory, one "
                                                 "more forward pass per step")
    lora_rank: int = _field(0, "> 0: train LoRA adapters only; the reference is the policy with its adapters off")
    value_from_reward_model: bool = _field(False, "start the value model from the RewardModel used as reward "
                                                  "(as TRL)")
    sft: SFTConfig = _field(factory=SFTConfig, doc="stage 1, supervised fine-tuning (flags --sft.FIELD)")
    reward: RewardConfig = _field(factory=RewardConfig, doc="the learned reward model (flags --reward.FIELD)")
    dpo: DPOConfig = _field(factory=DPOConfig, doc="offline preference optimisation (flags --dpo.FIELD)")
    fluency_corpus: str | None = _field(str(DATA_DIR / "corpus.txt"), "word bigrams that count as fluent; None = "
                                                                       "skip the metric")
    run_dir: str | None = _field(None, "where the run's artefacts go; None = runs/ppo-<date>-<time>")
    # --- algorithm
    algorithm: str = _field("ppo", '"ppo" (critic, GAE), "grpo", "dr_grpo", "rloo", "reinforce_pp" or '
                                   '"reinforce_pp_baseline"; each reads only its own fields (README: Algorithms)')
    num_generations: int = _field(1, "samples per prompt, each prompt's in one contiguous block of rows; "
                                     "batch_size counts rollouts, so it must be a multiple of this")
    beta: float | None = _field(None, "KL coefficient of the critic-free algorithms (GRPO: k3 loss term; RLOO, "
                                      "REINFORCE++: in the reward); None = the algorithm's default (grpo 0: no "
                                      "reference model, rloo 0.05, reinforce_pp 0.01)")
    epsilon: float = _field(0.2, "ratio clip of the critic-free algorithms (PPO's is cliprange)")
    epsilon_high: float | None = _field(None, "upper ratio clip, DAPO's clip-higher; None = epsilon")
    num_iterations: int = _field(1, "optimiser passes over each rollout of the critic-free algorithms (PPO's is "
                                    "num_ppo_epochs)")
    loss_type: str = _field("dapo", '"grpo" (token mean per sequence, then mean), "dapo" (token mean over the '
                                    'batch) or "dr_grpo" (token sum / (batch x response_length))')
    scale_rewards: str = _field("group", 'GRPO\'s advantage scale: "group" std, "batch" std or "none" (Dr. GRPO)')
    dual_clip: float | None = _field(None, "c > 1: cap a negative advantage's loss at -c * A (dual-clip PPO), "
                                           "for every algorithm; None = off")
    mask_truncated_completions: bool = _field(False, "leave responses that never produced the end token out of "
                                                     "the loss")
    overlong_buffer: int = _field(0, "DAPO's soft overlong penalty over the last this-many tokens of "
                                     "response_length; 0 = off")
    overlong_penalty: float = _field(1.0, "the overlong penalty at response_length tokens (linear from 0)")
    reward_weights: tuple | None = _field(None, "weights of several reward functions (train(reward_fn=[...])); "
                                                "None = all 1")
    # --- rollout
    total_updates: int = _field(100, "PPO updates (rollout, scoring, optimisation) in the run")
    batch_size: int = _field(64, "rollouts (prompts) per update")
    rollout_batch_size: int = _field(0, "rollouts sampled and scored at once, a divisor of batch_size (TRL's "
                                        "local_rollout_forward_batch_size): only one chunk's KV caches and logits "
                                        "are held; the same samples and update; 0 = batch_size")
    max_prompt_length: int = _field(16, "prompts are right-padded to this many tokens (BOS included)")
    truncate_prompts: bool = _field(False, "longer prompts: False = error naming the row, True = keep their last "
                                           "tokens (warns)")
    prompt_tokens_min: int = _field(0, "> 0: keep only each prompt's first k tokens, k drawn per row from "
                                       "[min, max]")
    prompt_tokens_max: int = _field(0, "the max of k above (TRL's IMDB example: a review's first 2-8 tokens); "
                                       "0 = whole prompts")
    response_length: int = _field(16, "maximum new tokens per response")
    temperature: float = _field(1.0, "sampling temperature")
    top_k: int = _field(0, "0 = off, as in PPO practice: sampling must match the policy being optimised")
    top_p: float = _field(1.0, "nucleus sampling threshold; 1.0 = off")
    stop_at_eos: bool = _field(True, "truncate each response after its first end token")
    missing_eos_penalty: float | None = _field(None, "subtracted from the score of responses that never stop")
    generation_jit: bool = _field(True, "XLA for the sampling loop (about 2.5x faster on CPU)")
    train_jit: bool = _field(True, "XLA for the scoring forwards and the training step (8-11% faster on CPU here)")
    # --- reward shaping
    kl_coef: float = _field(0.1, "beta, the KL penalty's weight; the initial value when adaptive")
    kl_estimator: str = _field("k1", '"k1" (log ratio), "k2" (squared / 2) or "k3" (Schulman\'s unbiased, '
                                     'always >= 0)')
    target_kl: float | None = _field(None, "nats per response; set -> adaptive controller of Ziegler et al. (2019)")
    kl_horizon: int = _field(10000, "rollouts; the adaptive controller's time constant")
    whiten_rewards: bool = _field(False, "scale the shaped rewards of each batch to std 1 (mean kept) before GAE")
    whiten_advantages: bool = _field(True, "normalise the advantages of each batch to mean 0, std 1")
    gamma: float = _field(1.0, "discount factor of GAE")
    lam: float = _field(0.95, "GAE's lambda (bias-variance trade-off of the advantages)")
    # --- optimisation
    num_ppo_epochs: int = _field(4, "passes over each update's rollouts")
    num_mini_batches: int = _field(2, "mini-batches per pass (batch_size must be divisible by it)")
    learning_rate: float = _field(3e-4, "Adam learning rate of the policy and the value model")
    adam_epsilon: float = _field(1e-5, "TF-style epsilon, as in lm-human-preferences")
    cliprange: float = _field(0.2, "PPO's ratio clip epsilon; 1e9 = no ratio clipping")
    cliprange_value: float | None = _field(0.2, "clip of the new values around the old ones; None = no value "
                                                "clipping")
    vf_coef: float = _field(0.1, "weight of the value loss")
    entropy_coef: float = _field(0.0, "weight of the entropy bonus")
    clip_mode: str = _field("global_norm", 'gradient clipping: "global_norm", or "value" (the article\'s '
                                           'clip_by_value)')
    max_grad_norm: float | None = _field(1.0, "the gradient clip threshold for either mode; None = no clipping")
    max_approx_kl: float | None = _field(None, "stop the remaining PPO epochs of an update when approx-KL exceeds "
                                               "this")
    max_consecutive_skips: int = _field(3, "updates in a row skipped for NaN/inf before the run stops with an error")
    # --- devices
    strategy: str = _field("auto", '"auto" (Mirrored if >1 GPU), "default", "mirrored", "multi_worker" (reads '
                                   'TF_CONFIG)')
    collective_timeout: int = _field(300, "seconds a multi-worker collective waits for a dead worker before failing")
    # --- bookkeeping
    seed: int = _field(0, "seed of sampling, prompt order and initialisation")
    checkpoint_every: int = _field(10, "updates between checkpoints")
    eval_every: int = _field(0, "updates between evaluations; 0 = only before and after training")
    eval_size: int = _field(128, "held-out prompts scored at each evaluation")
    eval_pass_k: int = _field(0, "> 0: evaluations also report the task's greedy accuracy and pass@k, "
                                 "estimated from `eval_pass_samples` samples per prompt at `temperature` "
                                 "(a task with a checkable answer)")
    eval_pass_samples: int = _field(0, "samples per prompt behind pass@k, n >= eval_pass_k (more samples, less "
                                       "noise: Chen et al.'s unbiased estimator); 0 = eval_pass_k")
    overoptimisation_window: int = _field(10, "updates; warn when the proxy reward rises while the gold score falls")

    def __post_init__(self):
        _check_type(self, "task", str)  # the task decides other fields' defaults: checked before them
        _check_choice(self, "task", tuple(TASK_DEFAULTS))
        for name, section in NESTED.items():
            if isinstance(getattr(self, name), dict):
                object.__setattr__(self, name, section(**getattr(self, name)))
        _apply_task_defaults(self)
        if isinstance(self.reward_weights, list):  # JSON and Python users write lists
            object.__setattr__(self, "reward_weights", tuple(self.reward_weights))
        if not isinstance(self.model, ModelConfig):  # PPOConfig(model="gpt2_base_en" | "/path" | causal_lm)
            object.__setattr__(self, "model", ModelConfig(preset=self.model))
        _check_fields(self)
        for name in ("total_updates", "batch_size", "max_prompt_length", "response_length",
                     "temperature", "kl_horizon", "num_ppo_epochs", "num_mini_batches",
                     "learning_rate", "adam_epsilon", "cliprange", "checkpoint_every", "eval_size",
                     "max_consecutive_skips", "overoptimisation_window", "collective_timeout"):
            _check_positive(self, name)
        for name in ("cliprange_value", "max_grad_norm", "max_approx_kl", "target_kl"):
            if getattr(self, name) is not None:
                _check_positive(self, name)
        for name in ("kl_coef", "vf_coef", "entropy_coef", "top_k", "eval_every", "eval_pass_k", "eval_pass_samples", "rollout_batch_size",
                     "lora_rank", "prompt_tokens_min", "prompt_tokens_max"):
            if getattr(self, name) < 0:
                _fail(self, name, f"must be >= 0, got {getattr(self, name)!r}")
        _check_range(self, "gamma", 0.0, 1.0)
        _check_range(self, "lam", 0.0, 1.0)
        _check_range(self, "top_p", 0.0, 1.0, include_low=False)
        _check_choice(self, "kl_estimator", ("k1", "k2", "k3"))
        _check_choice(self, "strategy", ("auto", "default", "mirrored", "multi_worker"))
        _check_choice(self, "clip_mode", ("global_norm", "value"))
        _check_choice(self, "dtype", ("float32", "mixed_bfloat16", "mixed_float16"))
        if self.gradient_checkpointing and self.model.architecture == "bigram" and self.model.preset is None:
            _fail(self, "gradient_checkpointing", "needs a transformer policy; the bigram model has no blocks")
        if self.gradient_checkpointing and self.model.dropout:
            _fail(self, "gradient_checkpointing", f"needs model.dropout=0 (a recomputed block would draw other "
                                                  f"dropout masks), got dropout={self.model.dropout}")
        if self.lora_rank and self.model.architecture == "bigram" and self.model.preset is None:
            _fail(self, "lora_rank", "needs a transformer policy; the bigram model has no attention to adapt")
        if self.prompt_tokens_max < self.prompt_tokens_min or (self.prompt_tokens_min == 0) != (self.prompt_tokens_max == 0):
            _fail(self, "prompt_tokens_max", f"must be >= prompt_tokens_min={self.prompt_tokens_min}, both 0 or "
                                             f"both > 0, got {self.prompt_tokens_max!r}")
        if self.eval_pass_samples and self.eval_pass_samples < max(self.eval_pass_k, 1):
            _fail(self, "eval_pass_samples", f"must be >= eval_pass_k={self.eval_pass_k} (pass@k needs k samples) "
                                             f"or 0, got {self.eval_pass_samples!r}")
        if self.clip_mode == "value" and self.max_grad_norm is None:
            _fail(self, "max_grad_norm", "clip_mode='value' needs a clip threshold, got None")
        if self.rollout_batch_size and self.batch_size % self.rollout_batch_size:
            _fail(self, "rollout_batch_size", f"must divide batch_size={self.batch_size} (chunks of equal size), "
                                              f"got {self.rollout_batch_size}")
        if self.batch_size % self.num_mini_batches:
            _fail(self, "batch_size", f"must be divisible by num_mini_batches={self.num_mini_batches}, "
                                      f"got {self.batch_size}")
        self._check_algorithm()
        if self.model.preset is None and self.sequence_length > self.model.max_sequence_length:
            _fail(self, "response_length",
                  f"max_prompt_length + response_length = {self.sequence_length} exceeds the model's "
                  f"context model.max_sequence_length={self.model.max_sequence_length}")

    def _check_algorithm(self):
        """The algorithm's name and fields: a field another algorithm owns must stay at its default."""
        from tf_ppo.rl.algorithms import ALGORITHMS  # imports TensorFlow: only once a config is made
        from tf_ppo.rl.functional.estimators import LOSS_TYPES, SCALE_REWARDS
        _check_choice(self, "algorithm", tuple(sorted(ALGORITHMS)))
        algorithm = ALGORITHMS[self.algorithm]
        defaults = {field.name: field.default for field in dataclasses.fields(self)}
        owned = set().union(*(cls.fields for cls in ALGORITHMS.values()))
        for name in sorted(owned - set(algorithm.fields)):
            if getattr(self, name) != defaults[name]:
                synonym = SYNONYMS.get(name)
                hint = f"; its counterpart is {synonym}" if synonym in algorithm.fields else ""
                _fail(self, name, f"is not used by algorithm={self.algorithm!r}{hint} (its own fields: "
                                  f"{', '.join(algorithm.fields) or 'none'})")
        for name in ("num_generations", "epsilon", "num_iterations", "overlong_penalty"):
            _check_positive(self, name)
        if self.beta is not None and self.beta < 0:
            _fail(self, "beta", f"must be >= 0, got {self.beta!r}")
        if self.epsilon_high is not None and self.epsilon_high < self.epsilon:
            _fail(self, "epsilon_high", f"must be >= epsilon={self.epsilon}, got {self.epsilon_high!r}")
        if self.dual_clip is not None and not self.dual_clip > 1:
            _fail(self, "dual_clip", f"must be > 1 (or None), got {self.dual_clip!r}")
        _check_choice(self, "loss_type", LOSS_TYPES)
        _check_choice(self, "scale_rewards", SCALE_REWARDS)
        if not 0 <= self.overlong_buffer <= self.response_length:
            _fail(self, "overlong_buffer", f"must be in [0, response_length={self.response_length}], "
                                           f"got {self.overlong_buffer!r}")
        if self.batch_size % self.num_generations:
            _fail(self, "batch_size", f"counts rollouts, so it must be a multiple of num_generations="
                                      f"{self.num_generations}, got {self.batch_size}")
        algorithm.validate(self, lambda name, message: _fail(self, name, message))

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
        """JSON of every field; shipped data files as `shipped:<name>`, a CausalLM object by its class name only.

        Example:
        >>> json.loads(PPOConfig().to_json())["prompts"]
        'shipped:train_data.csv'
        """
        return json.dumps(_as_dict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text):
        """Parse a JSON object; an unknown key is an error that names it and suggests the near miss.

        Example:
        >>> PPOConfig.from_json('{"kl_cof": 0.2}')
        Traceback (most recent call last):
        ...
        tf_ppo.config.UnknownFieldError: PPOConfig: unknown field 'kl_cof' (did you mean 'kl_coef'?)
        """
        try:
            values = json.loads(text)
        except json.JSONDecodeError as error:
            raise ConfigError(f"{cls.__name__}: not valid JSON ({error})") from None
        if not isinstance(values, dict):
            raise ConfigError(f"{cls.__name__}: expected a JSON object of fields, got {type(values).__name__}")
        return cls(**values)

    @classmethod
    def from_file(cls, path):
        return cls.from_json(pathlib.Path(path).read_text())


SYNONYMS = {"cliprange": "epsilon", "epsilon": "cliprange", "kl_coef": "beta", "beta": "kl_coef",
            "num_ppo_epochs": "num_iterations", "num_iterations": "num_ppo_epochs"}  # PPO's name, GRPO's name
# What each task sets: the fields (and section fields) it gives other values than the sentiment defaults.
TASK_DEFAULTS = {
    "sentiment": {},
    "arithmetic": {
        "prompts": str(DATA_DIR / "arithmetic_train.csv"), "eval_prompts_csv": str(DATA_DIR / "arithmetic_heldout.csv"),
        "vocabulary": str(DATA_DIR / "arithmetic-vocab.json"), "merges": str(DATA_DIR / "arithmetic-merges.txt"),
        "fluency_corpus": None, "max_prompt_length": 28, "response_length": 12, "eval_pass_k": 4,
        "eval_pass_samples": 16,  # pass@4 from 16 samples: at 4, sampling noise alone moved it by +-2 points
        # 2 epochs leave headroom on purpose: 43% greedy accuracy, 63% pass@4 on the 500 held-out problems.
        "sft": {"train_csv": str(DATA_DIR / "arithmetic_train.csv"), "max_length": 40, "epochs": 2},
    },
}
NESTED = {"model": ModelConfig, "sft": SFTConfig, "reward": RewardConfig, "dpo": DPOConfig}  # PPOConfig fields that are sections
SECTIONS = (PPOConfig, ModelConfig, SFTConfig, RewardConfig, DPOConfig)


# --- validation

def _apply_task_defaults(config):
    """Give the fields the task sets its values, where the config left them at their defaults.

    A field given explicitly (any value but the default) is kept, so flags and
    keyword arguments override the task.
    """
    for name, value in TASK_DEFAULTS[config.task].items():
        if name in NESTED:
            section = getattr(config, name)
            changes = {key: item for key, item in value.items()
                       if getattr(section, key) == _default(type(section), key)}
            object.__setattr__(config, name, dataclasses.replace(section, **changes))
        elif getattr(config, name) == _default(type(config), name):
            object.__setattr__(config, name, value)


def _default(cls, name):
    return next(field.default for field in dataclasses.fields(cls) if field.name == name)


def _fail(config, name, message):
    raise ConfigError(f"{type(config).__name__}.{name} {message}")


def did_you_mean(name, choices):
    """" (did you mean 'kl_coef'?)" when `name` is a near miss of one of `choices`, else "".

    Example:
    >>> did_you_mean("kl_cof", ["kl_coef", "gamma"])
    " (did you mean 'kl_coef'?)"
    >>> did_you_mean("--target", ["--target_kl"])
    " (did you mean '--target_kl'?)"
    """
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _check_names(cls, values):
    known = [field.name for field in dataclasses.fields(cls)]
    unknown = [name for name in values if name not in known]
    if unknown:
        described = ", ".join(f"{name!r}{did_you_mean(name, known)}" for name in unknown)
        raise UnknownFieldError(f"{cls.__name__}: unknown field{'s' if len(unknown) > 1 else ''} {described}")


def _check_fields(config):
    """Shipped names resolved to their files, then each value checked against its field's annotation."""
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if isinstance(value, str) and value.startswith(SHIPPED):
            object.__setattr__(config, field.name, _shipped_path(config, field.name, value))
        _check_type(config, field.name, field.type)


def _shipped_path(config, name, value):
    path = DATA_DIR / value[len(SHIPPED):]
    if not path.is_file():
        shipped = ", ".join(sorted(p.name for p in DATA_DIR.iterdir() if p.is_file()))
        _fail(config, name, f"names a shipped file that does not exist: {value!r} (shipped: {shipped})")
    return str(path)


def split_optional(annotation):
    """`(type, optional)` of a field annotation: `float | None` -> `(float, True)`.

    Example:
    >>> split_optional(float | None), split_optional(bool)
    ((<class 'float'>, True), (<class 'bool'>, False))
    """
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        kinds = [kind for kind in typing.get_args(annotation) if kind is not type(None)]
        return kinds[0], len(kinds) < len(typing.get_args(annotation))
    return annotation, False


TYPE_WORDS = {bool: "a bool (true/false)", int: "an integer", float: "a number", str: "a string",
              tuple: "a list of numbers"}


def _check_type(config, name, annotation):
    value = getattr(config, name)
    kind, optional = split_optional(annotation)
    if (value is None and optional) or _is_a(value, kind):
        return
    word = TYPE_WORDS.get(kind, f"a {kind.__name__}")
    _fail(config, name, f"must be {word}{' or None' if optional else ''}, got {value!r}")


def _is_a(value, kind):
    if kind is bool:
        return isinstance(value, bool)
    if kind is tuple:  # a list of numbers (reward_weights)
        return isinstance(value, tuple) and all(_is_a(item, float) for item in value)
    if kind in (int, float):  # numpy scalars count; bools do not, an int counts as a float
        number = numbers.Integral if kind is int else numbers.Real
        return isinstance(value, number) and not isinstance(value, bool)
    return isinstance(value, kind)


def _is_missing_directory(preset):
    # keras-hub reads a value with a path separator or a leading '.' as a directory, not a preset
    # name; "kaggle://..." and "hf://..." are handles.
    if not isinstance(preset, str) or "://" in preset or preset.startswith(OBJECT_MARK):
        return False
    return ("/" in preset or preset.startswith(".")) and not pathlib.Path(preset).exists()


def _check_positive(config, name):
    value = getattr(config, name)
    if not value > 0:
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


# --- JSON

def _as_dict(config):
    # Not dataclasses.asdict: it deep-copies every value, a whole Keras model included.
    values = {}
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if dataclasses.is_dataclass(value):
            value = _as_dict(value)
        elif isinstance(value, str):
            value = portable(value)
        elif isinstance(value, tuple):
            value = list(value)
        elif value is not None and not isinstance(value, (int, float, bool)):
            value = f"{OBJECT_MARK}{type(value).__name__}>"
        values[field.name] = value
    return values


def portable(value):
    """A path inside the shipped data as `shipped:<name>` (what config.json records), anything else unchanged.

    Example:
    >>> portable(str(DATA_DIR / "vocab.json")), portable("tfds:imdb_reviews")
    ('shipped:vocab.json', 'tfds:imdb_reviews')
    """
    path = pathlib.PurePath(value)
    if path.is_absolute() and path.is_relative_to(DATA_DIR) and path != DATA_DIR:
        return SHIPPED + path.relative_to(DATA_DIR).as_posix()
    return value


# --- reference: CLI help and README tables

def type_name(annotation):
    """A field annotation as the reference writes it.

    Example:
    >>> type_name(float | None), type_name(int), type_name(ModelConfig)
    ('float | None', 'int', 'ModelConfig')
    """
    kind, optional = split_optional(annotation)
    return kind.__name__ + (" | None" if optional else "")


def default_text(field):
    """A field's default as the reference writes it: shipped files by their portable name, sections by name.

    Example:
    >>> [default_text(f) for f in dataclasses.fields(PPOConfig) if f.name in ("prompts", "model", "kl_coef")]
    ['shipped:train_data.csv', 'ModelConfig()', '0.1']
    """
    if field.default is dataclasses.MISSING:
        return f"{field.default_factory.__name__}()"
    return portable(field.default) if isinstance(field.default, str) else str(field.default)


def help_text(field):
    """A field's meaning, type and default in one line: the `tf-ppo` flag's help.

    Example:
    >>> help_text(next(f for f in dataclasses.fields(PPOConfig) if f.name == "stop_at_eos"))
    'truncate each response after its first end token [bool, default: True]'
    """
    return f"{field.metadata['help']} [{type_name(field.type)}, default: {default_text(field)}]"


SECTION_TITLES = {
    PPOConfig: "`PPOConfig`: flags `--FIELD`",
    ModelConfig: "`ModelConfig` (`PPOConfig.model`): flags `--model.FIELD`",
    SFTConfig: "`SFTConfig` (`PPOConfig.sft`): flags `--sft.FIELD`",
    RewardConfig: "`RewardConfig` (`PPOConfig.reward`): flags `--reward.FIELD`",
    DPOConfig: "`DPOConfig` (`PPOConfig.dpo`): flags `--dpo.FIELD`",
}


def reference_markdown():
    """README's configuration reference: one markdown table per section (field, type, default, meaning).

    Example:
    >>> print(reference_markdown().splitlines()[0])
    ## Configuration reference
    """
    parts = ["## Configuration reference\n",
             "Generated from the fields of `tf_ppo/config.py` by `python -m tf_ppo.config` (a test keeps it in\n"
             "sync). On the command line, booleans are `true`/`false` (`1`/`0`), optional fields take `null`;\n"
             "`shipped:NAME` is a file of the shipped `data/`, wherever tf_ppo is installed.\n"]
    for section in SECTIONS:
        rows = [f"| `{field.name}` | `{_cell(type_name(field.type))}` | `{_cell(default_text(field))}` | "
                f"{_cell(field.metadata['help']).replace('<', '&lt;')} |"  # <date> would be read as HTML
                for field in dataclasses.fields(section)]
        parts.append("\n".join([f"### {SECTION_TITLES[section]}\n", "| field | type | default | meaning |",
                                "|---|---|---|---|", *rows]) + "\n")
    return "\n".join(parts)


def _cell(text):
    return text.replace("|", "\\|")  # a pipe would end the table cell


README = pathlib.Path(__file__).resolve().parents[2] / "README.md"
MARKERS = ("<!-- config-reference:start -->", "<!-- config-reference:end -->")


def with_reference(readme):
    """`readme` with the text between the config-reference markers replaced by `reference_markdown()`.

    Example:
    >>> readme = "intro\\n<!-- config-reference:start -->\\nold\\n<!-- config-reference:end -->\\nmore"
    >>> with_reference(readme).count("| `seed` |")  # PPOConfig, SFTConfig, RewardConfig and DPOConfig each have one
    4
    """
    head, start, rest = readme.partition(MARKERS[0])
    _, end, tail = rest.partition(MARKERS[1])
    if not (start and end):
        raise ConfigError(f"no {MARKERS[0]} ... {MARKERS[1]} lines to write the configuration reference between")
    return f"{head}{start}\n{reference_markdown()}{end}{tail}"


def main(argv=None):
    """`python -m tf_ppo.config [--check] [README.md]`: rewrite (or, with --check, verify) the reference."""
    args = sys.argv[1:] if argv is None else list(argv)
    check = "--check" in args
    path = pathlib.Path(next((arg for arg in args if arg != "--check"), README))
    text = path.read_text()
    updated = with_reference(text)
    if check:
        print(f"{path}: configuration reference {'up to date' if updated == text else 'out of date'}")
        return int(updated != text)
    path.write_text(updated)
    print(f"{path}: configuration reference written")
    return 0
