"""`PPOConfig` (also named `RLConfig`): every knob of an RL run, validated on creation.

Names follow TRL where they mean the same thing, one field per meaning for every algorithm (`aliases`:
TRL's other names). Frozen, it round-trips to JSON, so a run directory records what produced it. One
config serves every RL algorithm (`algorithm`); the `task` sets the data fields left at their defaults.
"""

import dataclasses
import json
import pathlib

from tf_ppo.config.fields import (DATA_DIR, Alias, Checked, ConfigError, as_dict, check_choice,
                                  check_fields, check_positive, check_range, check_type, fail, field)
from tf_ppo.config.provenance import run_record
from tf_ppo.config.saved import upgrade_saved
from tf_ppo.config.task_defaults import TASK_DEFAULTS, apply_task_defaults
from tf_ppo.config.sections import DPOConfig, ModelConfig, RewardConfig, SFTConfig
from tf_ppo.config.trl_names import TRL_NAMES_THAT_DIFFER


@dataclasses.dataclass(frozen=True)
class PPOConfig(Checked):
    """Stage 2: PPO with a KL penalty against the frozen reference policy.

    Every trick can be switched off: `whiten_rewards=False` (default),
    `whiten_advantages=False`, `epsilon=1e9` (no ratio clipping),
    `cliprange_value=None` (no value clipping), `target_kl=None` (fixed beta),
    `max_approx_kl=None` (no early stop), `max_grad_norm=None` (no clipping).

    Example:
    >>> config = PPOConfig(batch_size=16, num_mini_batches=2)
    >>> config.mini_batch_size
    8
    """

    # --- the task: its data, rewards and evaluation
    task: str = field("sentiment", '"sentiment" (VADER), "arithmetic" (word problems: exact-match reward, '
                                   'accuracy, pass@k) or "calculator" (the same with a calculator tool); sets '
                                   'the data fields left at their defaults')
    # --- data and models
    prompts: str = field(str(DATA_DIR / "train_data.csv"), 'prompts: a CSV (column input_text, text or a JSON '
                                                           'conversation), a JSON Lines file of {"prompt": ...} or '
                                                           '"tfds:NAME[:SPLIT]" (e.g. "tfds:imdb_reviews", its '
                                                           '`text` feature)')
    eval_prompts_csv: str = field(str(DATA_DIR / "heldout_data.csv"), "held-out prompts (any file form of "
                                                                      "`prompts`) scored at each evaluation")
    vocabulary: str = field(str(DATA_DIR / "vocab.json"), "BPE vocabulary of the tiny model's GPT-2 tokenizer "
                                                          "(a preset brings its own)")
    merges: str = field(str(DATA_DIR / "merges.txt"), "BPE merges that go with `vocabulary`")
    model: ModelConfig = field(factory=ModelConfig, doc="the policy: a ModelConfig, or a preset name / directory "
                                                        "/ CausalLM (flags --model and --model.FIELD)")
    dtype: str = field("float32", '"float32", or "mixed_bfloat16" / "mixed_float16" (loss scaling); the '
                                  'PPO maths stays float32')
    gradient_checkpointing: bool = field(False, "recompute each transformer block's activations in the backward "
                                                "pass (PPO, SFT, reward model, every algorithm): less memory, one "
                                                "more forward pass per step")
    lora_rank: int = field(0, "> 0: train LoRA adapters only; the reference is the policy with its adapters off")
    value_from_reward_model: bool = field(False, "start the value model from the RewardModel used as reward "
                                                 "(as TRL)")
    sft: SFTConfig = field(factory=SFTConfig, doc="stage 1, supervised fine-tuning (flags --sft.FIELD)")
    reward: RewardConfig = field(factory=RewardConfig, doc="the learned reward model (flags --reward.FIELD)")
    dpo: DPOConfig = field(factory=DPOConfig, doc="offline preference optimisation (flags --dpo.FIELD)")
    fluency_corpus: str | None = field(str(DATA_DIR / "corpus.txt"), "word bigrams that count as fluent; None = "
                                                                      "skip the metric")
    run_dir: str | None = field(None, "where the run's artefacts go; None = runs/<algorithm>-<date>-<time>")
    # --- algorithm
    algorithm: str = field("ppo", '"ppo" (critic, GAE), "grpo", "dr_grpo", "rloo", "reinforce_pp" or '
                                  '"reinforce_pp_baseline"; each reads only its own fields (docs/algorithms.md)')
    num_generations: int | None = field(None, "samples per prompt, in contiguous rows (batch_size: a multiple of "
                                             "it); None = the algorithm's: grpo, dr_grpo, gspo, "
                                             "reinforce_pp_baseline 8 (TRL's GRPO), rloo 2 (TRL's), else 1")
    beta: float | None = field(None, "the KL coefficient (TRL's PPO: kl_coef), PPO's initial one when "
                                     "adaptive. PPO, RLOO, REINFORCE++: KL in the reward; GRPO: k3 loss term. "
                                     "None = the algorithm's default (ppo 0.1, grpo 0: no reference model, rloo "
                                     "0.05, reinforce_pp 0.01)")
    epsilon: float = field(0.2, "the ratio clip (TRL's PPO: cliprange); 1e9 = no ratio clipping")
    epsilon_high: float | None = field(None, "upper ratio clip, DAPO's clip-higher; None = epsilon")
    num_iterations: int | None = field(None, "optimiser passes over each rollout (TRL's PPO: num_ppo_epochs); "
                                             "None = the algorithm's default (ppo 4, the others 1)")
    loss_type: str = field("dapo", '"grpo" (token mean per sequence, then mean), "dapo" (token mean over the '
                                   'batch) or "dr_grpo" (token sum / (batch x response_length))')
    scale_rewards: str = field("group", 'GRPO\'s advantage scale: "group" std, "batch" std or "none" (Dr. GRPO)')
    dual_clip: float | None = field(None, "c > 1: cap a negative advantage's loss at -c * A (dual-clip PPO), "
                                          "for every algorithm; None = off")
    mask_truncated_completions: bool = field(False, "leave responses that never produced the end token out of "
                                                    "the loss")
    overlong_buffer: int = field(0, "DAPO's soft overlong penalty over the last this-many tokens of "
                                    "response_length; 0 = off")
    overlong_penalty: float = field(1.0, "the overlong penalty at response_length tokens (linear from 0)")
    reward_weights: tuple | None = field(None, "weights of several reward functions (train(reward_fn=[...])); "
                                               "None = all 1")
    # --- rollout
    total_updates: int = field(100, "updates (rollout, scoring, optimisation) in the run")
    batch_size: int = field(64, "rollouts (prompts) per update")
    rollout_batch_size: int = field(0, "rollouts sampled and scored at once, a divisor of batch_size (TRL's "
                                       "local_rollout_forward_batch_size): only one chunk's KV caches and logits "
                                       "are held; the same samples and update; 0 = batch_size")
    max_prompt_length: int = field(16, "prompts are right-padded to this many tokens (BOS included)")
    truncate_prompts: bool = field(False, "longer prompts: False = error naming the row, True = keep their last "
                                          "tokens (warns)")
    prompt_tokens_min: int = field(0, "> 0: keep only each prompt's first k tokens, k drawn per row from "
                                      "[min, max]")
    prompt_tokens_max: int = field(0, "the max of k above (TRL's IMDB example: a review's first 2-8 tokens); "
                                      "0 = whole prompts")
    response_length: int = field(16, "maximum new tokens per response")
    temperature: float = field(1.0, "sampling temperature")
    top_k: int = field(0, "0 = off, as in PPO practice: sampling must match the policy being optimised")
    top_p: float = field(1.0, "nucleus sampling threshold; 1.0 = off")
    stop_at_eos: bool = field(True, "truncate each response after its first end token")
    missing_eos_penalty: float | None = field(None, "subtracted from the score of responses that never stop")
    generation_jit: bool = field(True, "XLA for the sampling loop (about 2.5x faster on CPU)")
    max_turns: int = field(1, "model turns per episode with an environment or tools; response_length holds all")
    max_tokens_per_turn: int | None = field(None, "tokens a model turn may sample; a turn cut there truncates "
                                                  "its episode; None = response_length")
    tool_timeout: float = field(10.0, "seconds a tool call may run before its answer is a timeout error")
    train_jit: bool = field(True, "XLA for the scoring forwards and the training step (8-11% faster on CPU here)")
    padding_free: bool = field(False, "score and train on packed rows: no padding, each prompt once per group "
                                      "(GPT-2 models on one replica; others run padded, with a warning)")
    old_logprobs: str = field("recompute", '"recompute" (a policy forward pass scores the samples) or "sampler" '
                                           "(the sampler's log-probs; that pass is skipped)")
    vllm_importance_sampling_correction: bool = field(False, "weigh each token's policy loss by its truncated ratio "
                                                             "of recomputed to sampler probability (TRL's name)")
    vllm_importance_sampling_mode: str = field("token_truncate", '"token_"/"sequence_" + "truncate"/"mask"')
    vllm_importance_sampling_cap: float = field(3.0, "the ratio above which a weight is truncated (or masked)")
    # --- reward shaping
    kl_estimator: str = field("k1", '"k1" (log ratio), "k2" (squared / 2) or "k3" (Schulman\'s unbiased, '
                                    'always >= 0)')
    target_kl: float | None = field(None, "nats per response; set -> adaptive controller of Ziegler et al. (2019)")
    kl_horizon: int = field(10000, "rollouts; the adaptive controller's time constant")
    whiten_rewards: bool = field(False, "scale the shaped rewards of each batch to std 1 (mean kept) before GAE")
    whiten_advantages: bool = field(True, "normalise the advantages of each batch to mean 0, std 1")
    gamma: float = field(1.0, "discount factor of GAE")
    lam: float = field(0.95, "GAE's lambda (bias-variance trade-off of the advantages)")
    # --- optimisation
    num_mini_batches: int = field(2, "mini-batches per pass (batch_size must be divisible by it)")
    learning_rate: float = field(3e-4, "Adam learning rate of the policy and the value model")
    adam_epsilon: float = field(1e-5, "TF-style epsilon, as in lm-human-preferences")
    cliprange_value: float | None = field(0.2, "clip of the new values around the old ones; None = no value "
                                               "clipping")
    vf_coef: float = field(0.1, "weight of the value loss")
    entropy_coef: float = field(0.0, "weight of the entropy bonus")
    clip_mode: str = field("global_norm", 'gradient clipping: "global_norm", or "value" (the article\'s '
                                          'clip_by_value)')
    max_grad_norm: float | None = field(1.0, "the gradient clip threshold for either mode; None = no clipping")
    max_approx_kl: float | None = field(None, "stop the remaining PPO epochs of an update when approx-KL exceeds "
                                              "this")
    max_consecutive_skips: int = field(3, "updates in a row skipped for NaN/inf before the run stops with an error")
    # --- devices
    strategy: str = field("auto", '"auto" (Mirrored if >1 GPU), "default", "mirrored", "multi_worker" (TF_CONFIG)')
    collective_timeout: int = field(300, "seconds a multi-worker collective waits for a dead worker before failing")
    # --- bookkeeping
    seed: int = field(0, "seed of sampling, prompt order and initialisation")
    checkpoint_every: int = field(10, "updates between checkpoints")
    eval_every: int = field(0, "updates between evaluations; 0 = only before and after training")
    eval_size: int = field(128, "held-out prompts scored at each evaluation")
    eval_pass_k: int = field(0, "> 0: evaluations also report the task's greedy accuracy and pass@k, "
                                "estimated from `eval_pass_samples` samples per prompt at `temperature` "
                                "(a task with a checkable answer)")
    eval_pass_samples: int = field(0, "samples per prompt behind pass@k, n >= eval_pass_k (more samples, less "
                                      "noise: Chen et al.'s unbiased estimator); 0 = eval_pass_k")
    overoptimisation_window: int = field(10, "updates; warn when the proxy reward rises while the gold score falls")
    kl_warning: float | None = field(10.0, "nats per response: warn once when the KL to the reference stays above "
                                           "this for 5 updates, or fluency halves; None = never")

    # One field per meaning for every algorithm. TRL's PPOConfig names of three fields (fields of their own here
    # before), and TRL's names of two more, still work, and warn.
    aliases = {"kl_coef": "beta", "cliprange": "epsilon", "num_ppo_epochs": "num_iterations",
               "max_completion_length": "response_length", "output_dir": "run_dir"}
    not_fields = TRL_NAMES_THAT_DIFFER
    kl_coef = Alias("beta")
    cliprange = Alias("epsilon")
    num_ppo_epochs = Alias("num_iterations")
    max_completion_length = Alias("response_length")
    output_dir = Alias("run_dir")

    def __post_init__(self):
        check_type(self, "task", str)  # the task decides other fields' defaults: checked before them
        check_choice(self, "task", tuple(TASK_DEFAULTS))
        for name, section in NESTED.items():
            if isinstance(getattr(self, name), dict):
                object.__setattr__(self, name, section(**getattr(self, name)))
        apply_task_defaults(self, NESTED)
        if isinstance(self.reward_weights, list):  # JSON and Python users write lists
            object.__setattr__(self, "reward_weights", tuple(self.reward_weights))
        if not isinstance(self.model, ModelConfig):  # PPOConfig(model="gpt2_base_en" | "/path" | causal_lm)
            object.__setattr__(self, "model", ModelConfig(preset=self.model))
        check_fields(self)
        for name in ("total_updates", "batch_size", "max_prompt_length", "response_length", "temperature",
                     "kl_horizon", "num_mini_batches", "learning_rate", "adam_epsilon", "checkpoint_every",
                     "eval_size", "max_consecutive_skips", "overoptimisation_window", "collective_timeout",
                     "max_turns", "tool_timeout"):
            check_positive(self, name)
        for name in ("cliprange_value", "max_grad_norm", "max_approx_kl", "target_kl", "kl_warning",
                     "max_tokens_per_turn"):
            if getattr(self, name) is not None:
                check_positive(self, name)
        for name in ("vf_coef", "entropy_coef", "top_k", "eval_every", "eval_pass_k", "eval_pass_samples",
                     "rollout_batch_size", "lora_rank", "prompt_tokens_min", "prompt_tokens_max"):
            if getattr(self, name) < 0:
                fail(self, name, f"must be >= 0, got {getattr(self, name)!r}")
        check_range(self, "gamma", 0.0, 1.0)
        check_range(self, "lam", 0.0, 1.0)
        check_range(self, "top_p", 0.0, 1.0, include_low=False)
        check_choice(self, "kl_estimator", ("k1", "k2", "k3"))
        check_choice(self, "strategy", ("auto", "default", "mirrored", "multi_worker"))
        check_choice(self, "clip_mode", ("global_norm", "value"))
        check_choice(self, "dtype", ("float32", "mixed_bfloat16", "mixed_float16"))
        check_choice(self, "old_logprobs", ("recompute", "sampler"))
        check_positive(self, "vllm_importance_sampling_cap")
        if self.vllm_importance_sampling_correction and self.old_logprobs == "sampler":
            fail(self, "vllm_importance_sampling_correction", "corrects the sampler's log-probs toward recomputed "
                                                              "ones, so it needs old_logprobs='recompute'")
        if self.gradient_checkpointing and self.model.architecture == "bigram" and self.model.preset is None:
            fail(self, "gradient_checkpointing", "needs a transformer policy; the bigram model has no blocks")
        if self.gradient_checkpointing and self.model.dropout:
            fail(self, "gradient_checkpointing", f"needs model.dropout=0 (a recomputed block would draw other "
                                                 f"dropout masks), got dropout={self.model.dropout}")
        if self.lora_rank and self.model.architecture == "bigram" and self.model.preset is None:
            fail(self, "lora_rank", "needs a transformer policy; the bigram model has no attention to adapt")
        if (self.prompt_tokens_max < self.prompt_tokens_min
                or (self.prompt_tokens_min == 0) != (self.prompt_tokens_max == 0)):
            fail(self, "prompt_tokens_max", f"must be >= prompt_tokens_min={self.prompt_tokens_min}, both 0 or "
                                            f"both > 0, got {self.prompt_tokens_max!r}")
        if self.eval_pass_samples and self.eval_pass_samples < max(self.eval_pass_k, 1):
            fail(self, "eval_pass_samples", f"must be >= eval_pass_k={self.eval_pass_k} (pass@k needs k samples) "
                                            f"or 0, got {self.eval_pass_samples!r}")
        if self.clip_mode == "value" and self.max_grad_norm is None:
            fail(self, "max_grad_norm", "clip_mode='value' needs a clip threshold, got None")
        if self.rollout_batch_size and self.batch_size % self.rollout_batch_size:
            fail(self, "rollout_batch_size", f"must divide batch_size={self.batch_size} (chunks of equal size), "
                                             f"got {self.rollout_batch_size}")
        if self.batch_size % self.num_mini_batches:
            fail(self, "batch_size", f"must be divisible by num_mini_batches={self.num_mini_batches}, "
                                     f"got {self.batch_size}")
        check_algorithm(self)
        if self.model.preset is None and self.sequence_length > self.model.max_sequence_length:
            fail(self, "response_length",
                 f"max_prompt_length + response_length = {self.sequence_length} exceeds the model's "
                 f"context model.max_sequence_length={self.model.max_sequence_length}")

    def section(self, group):
        """The fields of one group of `GROUPS` (model, rollout, algorithm, optimisation, evaluation, run).

        Example:
        >>> PPOConfig(batch_size=16).section("rollout")["batch_size"]
        16
        """
        if group not in GROUPS:
            raise ConfigError(f"PPOConfig has no group {group!r}; its groups: {', '.join(GROUPS)}")
        return {name: getattr(self, name) for name in GROUPS[group]}

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

    def to_json(self, sections=None):
        """JSON of every field; with `sections`, a run's config.json (`tf_ppo.config.provenance` says what it holds).

        Example: `PPOConfig().to_json(sections=("sft",))` has no "reward" or "dpo" section, and a "provenance" record.
        """
        return json.dumps(as_dict(self) if sections is None else run_record(self, sections), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text):
        """Parse a JSON object; an unknown key is an error that names it and suggests the near miss.

        Example:
        >>> PPOConfig.from_json('{"bta": 0.2}')
        Traceback (most recent call last):
        ...
        tf_ppo.config.UnknownFieldError: PPOConfig: unknown field 'bta' (did you mean 'beta'?)
        """
        try:
            values = json.loads(text)
        except json.JSONDecodeError as error:
            raise ConfigError(f"{cls.__name__}: not valid JSON ({error})") from None
        if not isinstance(values, dict):
            raise ConfigError(f"{cls.__name__}: expected a JSON object of fields, got {type(values).__name__}")
        return cls(**upgrade_saved(values))

    @classmethod
    def from_file(cls, path):
        return cls.from_json(pathlib.Path(path).read_text())


# PPOConfig's fields by group: `config.section(name)`, the reference's tables and the `tf-ppo` help. The
# fields stay flat (`PPOConfig(batch_size=16)`, `--batch_size`, config.json): `model` and `algorithm` are
# fields already, so the groups cannot be nested arguments of the same names.
GROUPS = {
    "model": ("model", "vocabulary", "merges", "dtype", "gradient_checkpointing", "lora_rank",
              "value_from_reward_model"),
    "rollout": ("prompts", "batch_size", "rollout_batch_size", "max_prompt_length", "truncate_prompts",
                "prompt_tokens_min", "prompt_tokens_max", "response_length", "temperature", "top_k", "top_p",
                "stop_at_eos", "generation_jit", "reward_weights", "missing_eos_penalty", "overlong_buffer",
                "overlong_penalty", "mask_truncated_completions", "max_turns", "max_tokens_per_turn", "tool_timeout"),
    "algorithm": ("algorithm", "num_generations", "beta", "epsilon", "epsilon_high", "num_iterations", "loss_type",
                  "scale_rewards", "dual_clip", "kl_estimator", "target_kl", "kl_horizon",
                  "whiten_rewards", "whiten_advantages", "gamma", "lam", "cliprange_value", "vf_coef",
                  "entropy_coef", "old_logprobs", "vllm_importance_sampling_correction",
                  "vllm_importance_sampling_mode", "vllm_importance_sampling_cap"),
    "optimisation": ("num_mini_batches", "learning_rate", "adam_epsilon", "clip_mode", "max_grad_norm",
                     "max_approx_kl", "max_consecutive_skips", "train_jit", "padding_free"),
    "evaluation": ("eval_prompts_csv", "eval_every", "eval_size", "eval_pass_k", "eval_pass_samples",
                   "fluency_corpus", "overoptimisation_window", "kl_warning"),
    "run": ("task", "total_updates", "run_dir", "seed", "checkpoint_every", "strategy", "collective_timeout", "sft",
            "reward", "dpo"),
}
# PPOConfig fields that are sections
NESTED = {"model": ModelConfig, "sft": SFTConfig, "reward": RewardConfig, "dpo": DPOConfig}
SECTIONS = (PPOConfig, ModelConfig, SFTConfig, RewardConfig, DPOConfig)  # the reference's order


def check_algorithm(config):
    """Check a PPOConfig's algorithm: its name, and that a field another algorithm owns stays at its default.

    Example:
        check_algorithm(PPOConfig(algorithm="grpo", num_generations=4))
    """
    from tf_ppo.rl.algorithms import ALGORITHMS  # imports TensorFlow: only once a config is made
    from tf_ppo.rl.functional.estimators import LOSS_TYPES, SCALE_REWARDS
    from tf_ppo.rl.functional.importance import IMPORTANCE_SAMPLING_MODES
    check_choice(config, "algorithm", tuple(sorted(ALGORITHMS)))
    algorithm = ALGORITHMS[config.algorithm]
    defaults = {field.name: field.default for field in dataclasses.fields(config)}
    owned = set().union(*(cls.fields for cls in ALGORITHMS.values()))
    for name in sorted(owned - set(algorithm.fields)):
        if getattr(config, name) != defaults[name]:
            fail(config, name, f"is not used by algorithm={config.algorithm!r} (its own fields: "
                             f"{', '.join(algorithm.fields) or 'none'})")
    for name in ("epsilon", "overlong_penalty"):
        check_positive(config, name)
    for name in ("num_iterations", "num_generations"):
        if getattr(config, name) is not None:
            check_positive(config, name)
    if config.beta is not None and config.beta < 0:
        fail(config, "beta", f"must be >= 0, got {config.beta!r}")
    if config.epsilon_high is not None and config.epsilon_high < config.epsilon:
        fail(config, "epsilon_high", f"must be >= epsilon={config.epsilon}, got {config.epsilon_high!r}")
    if config.dual_clip is not None and not config.dual_clip > 1:
        fail(config, "dual_clip", f"must be > 1 (or None), got {config.dual_clip!r}")
    check_choice(config, "loss_type", LOSS_TYPES)
    check_choice(config, "scale_rewards", SCALE_REWARDS)
    check_choice(config, "vllm_importance_sampling_mode", IMPORTANCE_SAMPLING_MODES)
    if not 0 <= config.overlong_buffer <= config.response_length:
        fail(config, "overlong_buffer", f"must be in [0, response_length={config.response_length}], "
                                      f"got {config.overlong_buffer!r}")
    generations = algorithm.generations(config)
    if config.batch_size % generations:
        fail(config, "batch_size", f"counts rollouts, so it must be a multiple of num_generations="
                                 f"{generations}, got {config.batch_size}")
    algorithm.validate(config, lambda name, message: fail(config, name, message))


RLConfig = PPOConfig  # the name that says what it configures: any RL algorithm
