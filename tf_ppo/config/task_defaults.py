"""What each task sets: the PPOConfig fields (and section fields) it gives other values than the sentiment
defaults, and how a config takes them."""

import dataclasses

from tf_ppo.config.fields import DATA_DIR, default

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
    "calculator": {  # episodes of up to 3 turns: a tool call, its result, the answer (scripts/make_calculator.py)
        "prompts": str(DATA_DIR / "calculator_train.csv"), "eval_prompts_csv": str(DATA_DIR / "calculator_heldout.csv"),
        "vocabulary": str(DATA_DIR / "calculator-vocab.json"), "merges": str(DATA_DIR / "calculator-merges.txt"),
        "fluency_corpus": None, "max_prompt_length": 40, "response_length": 48, "max_turns": 3, "eval_pass_k": 4,
        "eval_pass_samples": 16, "model": {"max_sequence_length": 88},
        "sft": {"train_csv": str(DATA_DIR / "calculator_train.csv"), "max_length": 88, "epochs": 8},
    },
}


def apply_task_defaults(config, nested):
    """Give the fields the task sets its values, where the config left them at their defaults.

    A field given explicitly (any value but the default) is kept, so flags and
    keyword arguments override the task. `nested`: the config's fields that are sections.

    Example:
        apply_task_defaults(config, {"model": ModelConfig, "sft": SFTConfig})
    """
    for name, value in TASK_DEFAULTS[config.task].items():
        if name in nested:
            section = getattr(config, name)
            changes = {key: item for key, item in value.items()
                       if getattr(section, key) == default(type(section), key)}
            object.__setattr__(config, name, dataclasses.replace(section, **changes))
        elif getattr(config, name) == default(type(config), name):
            object.__setattr__(config, name, value)
