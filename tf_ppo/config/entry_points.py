"""The ways into a `PPOConfig` besides its own fields: TRL's config names, and one stage's section alone.

Example:
>>> GRPOConfig(beta=0.04).algorithm
'grpo'
"""

from tf_ppo.config.fields import ConfigError
from tf_ppo.config.rl import NESTED, PPOConfig
from tf_ppo.config.sections import DPOConfig  # noqa: F401  used by the doctests


def GRPOConfig(**fields):  # noqa: N802  TRL's name
    """TRL's entry point: a `PPOConfig` (`RLConfig`) with algorithm "grpo" and TRL's `num_generations=8`.

    Any field may be given; `algorithm` too (e.g. "dr_grpo", "gspo").

    Example:
    >>> config = GRPOConfig(beta=0.04)
    >>> config.algorithm, config.num_generations, config.beta
    ('grpo', 8, 0.04)
    """
    return PPOConfig(**{"algorithm": "grpo", "num_generations": 8, **fields})


def RLOOConfig(**fields):  # noqa: N802  TRL's name
    """TRL's entry point: a `PPOConfig` (`RLConfig`) with algorithm "rloo" and TRL's `num_generations=2`.

    Example:
    >>> RLOOConfig(num_generations=4).algorithm
    'rloo'
    """
    return PPOConfig(**{"algorithm": "rloo", "num_generations": 2, **fields})


# The entry point each section configures on its own: `dpo(DPOConfig(beta=0.2))`, the other fields at defaults.
ENTRY_POINTS = {"sft": "tf_ppo.sft", "reward": "tf_ppo.train_reward_model", "dpo": "tf_ppo.dpo"}


def run_config(config, stage=None):
    """The `PPOConfig` a stage runs with: `config`, the default one, or one around the stage's own section.

    `stage` is "sft", "reward" or "dpo" for those entry points (None: RL and
    evaluation). A section of another stage is an error that names its entry point.

    Example:
    >>> run_config(DPOConfig(beta=0.2), "dpo").dpo.beta
    0.2
    >>> run_config(DPOConfig())
    Traceback (most recent call last):
    ...
    tf_ppo.config.ConfigError: a DPOConfig configures tf_ppo.dpo(config); this call takes a PPOConfig (RLConfig)
    """
    if config is None:
        return PPOConfig()
    if isinstance(config, PPOConfig):
        return config
    for name, entry in ENTRY_POINTS.items():
        if isinstance(config, NESTED[name]):
            if name == stage:
                return PPOConfig(**{name: config})
            raise ConfigError(f"a {type(config).__name__} configures {entry}(config); this call takes a "
                              f"{f'{NESTED[stage].__name__} or ' if stage else ''}PPOConfig (RLConfig)")
    raise ConfigError(f"expected a PPOConfig (RLConfig), got {type(config).__name__}")
