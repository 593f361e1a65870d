"""The sections of a run's config: the model, SFT, the reward model and DPO (`PPOConfig.model` / `sft` / ...).

The reward model and DPO share their preference data and training knobs (`PreferenceDataConfig`).

Each is a frozen dataclass checked on creation, like `PPOConfig`; on the command line their fields are
`--model.FIELD`, `--sft.FIELD`, `--reward.FIELD` and `--dpo.FIELD`.
"""

import dataclasses

from tf_ppo.config.fields import (DATA_DIR, Checked, check_choice, check_fields, check_positive, check_range, fail,
                                  field, is_missing_directory)


@dataclasses.dataclass(frozen=True)
class ModelConfig(Checked):
    """Size of the tiny models built from scratch (no download).

    Example:
    >>> ModelConfig(architecture="bigram").architecture
    'bigram'
    """

    preset: object = field(None, 'a keras-hub preset to start from: a name ("gpt2_base_en", downloads), a local '
                                 'preset directory, or a `keras_hub.models.CausalLM` object; None = build the tiny '
                                 'model below from scratch')
    architecture: str = field("gpt2", '"gpt2" (keras-hub GPT2CausalLM) or "bigram" (the article\'s Embedding -> '
                                      'Dense)')
    num_layers: int = field(2, "transformer blocks of the tiny model")
    num_heads: int = field(4, "attention heads per block")
    hidden_dim: int = field(128, "width of the embeddings and of each block's output")
    intermediate_dim: int = field(512, "width of each block's feed-forward layer")
    max_sequence_length: int = field(64, "the tiny model's context in tokens (>= prompt + response length)")
    dropout: float = field(0.0, "dropout is off in PPO in any case (models run with training=False)")
    chat_template: str | None = field(None, 'how conversation prompts are written: None = the family\'s template '
                                            '(tf_ppo.chat), a template\'s name ("chatml", "gemma", ...) or a Jinja '
                                            'template string, as in a Hugging Face tokenizer_config.json')

    def __post_init__(self):
        check_fields(self)
        if self.chat_template is not None:
            self._check_chat_template()
        if self.preset is not None and not isinstance(self.preset, str) and not hasattr(self.preset, "backbone"):
            fail(self, "preset", f"must be a preset name, a preset directory or a keras_hub CausalLM, "
                                 f"got {type(self.preset).__name__}")
        if is_missing_directory(self.preset):
            fail(self, "preset", f"is a directory that does not exist: {self.preset!r} "
                                 f"(a value with '/' or a leading '.' is read as a local preset directory)")
        from tf_ppo.models.families.support import preset_backbone_class, unsupported_reason  # models import config
        backbone = (preset_backbone_class(self.preset) if isinstance(self.preset, str)
                    else type(getattr(self.preset, "backbone", None)).__name__)
        if unsupported_reason(backbone):
            fail(self, "preset", f"is a model tf_ppo cannot train: {unsupported_reason(backbone)}")
        check_choice(self, "architecture", ("gpt2", "bigram"))
        for name in ("num_layers", "num_heads", "hidden_dim", "intermediate_dim", "max_sequence_length"):
            check_positive(self, name)
        if self.hidden_dim % self.num_heads:
            fail(self, "hidden_dim", f"must be divisible by num_heads={self.num_heads}, got {self.hidden_dim}")
        check_range(self, "dropout", 0.0, 1.0, include_high=False)

    def _check_chat_template(self):
        from tf_ppo.chat import TEMPLATES, is_jinja  # imported here: tf_ppo.chat imports TensorFlow
        if not is_jinja(self.chat_template) and self.chat_template not in TEMPLATES:
            fail(self, "chat_template", f"must be a template's name ({sorted(TEMPLATES)}; more with "
                                        f"tf_ppo.register_chat_template) or a Jinja template string, got "
                                        f"{self.chat_template!r}")


@dataclasses.dataclass(frozen=True)
class SFTConfig(Checked):
    """Supervised fine-tuning (stage 1): the article's loop, made correct.

    Example:
    >>> SFTConfig(epochs=2).clip_mode
    'global_norm'
    """

    train_csv: str = field(str(DATA_DIR / "train_data.csv"), "training rows: a CSV with columns input_text "
                                                             "(prompt) and target (continuation)")
    epochs: int = field(6, "passes over train_csv")
    batch_size: int = field(32, "rows per step")
    learning_rate: float = field(2e-3, "Adam learning rate")
    clip_mode: str = field("global_norm", '"global_norm", or "value": clip each gradient entry to [-clip, clip], '
                                          'as the article does')
    max_grad_norm: float = field(1.0, "the clip threshold for either mode")
    max_length: int = field(32, "tokens per training sequence (BOS + prompt + target + EOS), longer rows are cut")
    seed: int = field(0, "seed of initialisation and shuffling")

    def __post_init__(self):
        check_fields(self)
        for name in ("epochs", "batch_size", "learning_rate", "max_grad_norm", "max_length"):
            check_positive(self, name)
        check_choice(self, "clip_mode", ("global_norm", "value"))


@dataclasses.dataclass(frozen=True)
class PreferenceDataConfig(Checked):
    """The preference data and the training knobs the reward model and DPO share (each extends it).

    Example:
    >>> PreferenceDataConfig(heldout_fraction=0.2).batch_size
    32
    """

    preferences_csv: str = field(str(DATA_DIR / "preferences.csv"), "preference rows: prompt,chosen,rejected, or "
                                                                    "prompt,response_0..,best (best against each "
                                                                    "other)")
    heldout_fraction: float = field(0.15, "rows held out for accuracy when the CSV has no `split` column")
    epochs: int = field(1, "passes over the training rows")
    batch_size: int = field(32, "examples per step (the reward model: preference rows; DPO: pairs)")
    learning_rate: float = field(1e-4, "Adam learning rate")
    max_grad_norm: float = field(1.0, "global-norm gradient clip threshold")
    max_length: int = field(32, "tokens per sequence (start + prompt + response, DPO's + end); longer ones keep "
                                "their end for the reward model, their start for DPO")
    seed: int = field(0, "seed of shuffling and the held-out split (and of the reward head's initialisation)")

    def __post_init__(self):
        check_fields(self)
        for name in ("epochs", "batch_size", "learning_rate", "max_grad_norm", "max_length"):
            check_positive(self, name)
        check_range(self, "heldout_fraction", 0.0, 1.0, include_high=False)


@dataclasses.dataclass(frozen=True)
class RewardConfig(PreferenceDataConfig):
    """The learned reward model (`tf_ppo.train_reward_model`, `tf-ppo reward`, `tf-ppo pipeline`).

    Example:
    >>> RewardConfig(epochs=2).batch_size
    32
    """

    normalise_samples: int = field(256, "SFT samples that fit gain and bias (mean 0, std 1); 0 = no normalisation")
    clip: float | None = field(None, "clip normalised rewards to [-clip, clip]; None = no clipping")

    def __post_init__(self):
        super().__post_init__()
        if self.normalise_samples < 0:
            fail(self, "normalise_samples", f"must be >= 0, got {self.normalise_samples!r}")
        if self.clip is not None:
            check_positive(self, "clip")


@dataclasses.dataclass(frozen=True)
class DPOConfig(PreferenceDataConfig):
    """Offline preference optimisation (`tf_ppo.preference.dpo`, `tf-ppo dpo`, `tf-ppo pipeline --method dpo`).

    Trains on its own preference file, `preferences_csv` (its held-out rows too); names as in TRL's
    `DPOConfig`. Stands on its own: `tf_ppo.dpo(DPOConfig(beta=0.2))`.

    Example:
    >>> DPOConfig(loss_type="ipo").beta
    0.1
    """

    learning_rate: float = field(5e-4, "Adam learning rate")
    beta: float = field(0.1, "how far the policy may move from the reference (IPO: its tau)")
    loss_type: str = field("sigmoid", '"sigmoid" (DPO), "robust", "hinge" (SLiC) or "ipo" (per-token log-ratios)')
    label_smoothing: float = field(0.0, "chance a preference label is flipped: > 0 with sigmoid is cDPO, "
                                        "with robust the robust DPO loss")
    precompute_ref_log_probs: bool = field(True, "the reference's log-probs of every pair computed once before "
                                                 "training, in one compiled pass: no reference model is held; "
                                                 "False = a live frozen reference")
    share_prompt: bool = field(True, "each pair's prompt computed once: prompt, chosen and rejected in one packed "
                                     "row (keras-hub GPT-2 policies; other models run the two sequences apart)")
    checkpoint_every: int = field(20, "steps between checkpoints (and one after every epoch)")

    def __post_init__(self):
        super().__post_init__()
        for name in ("beta", "checkpoint_every"):
            check_positive(self, name)
        check_choice(self, "loss_type", ("sigmoid", "robust", "hinge", "ipo"))
        check_range(self, "label_smoothing", 0.0, 0.5, include_high=False)
