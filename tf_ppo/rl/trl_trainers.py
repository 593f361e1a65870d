"""TRL's trainer names: `GRPOTrainer` and `RLOOTrainer` are the one RL trainer, for a config of their algorithm.

They take tf_ppo's arguments (`config, reward_fn, prompts, policy, ...`);
TRL's keyword arguments are an error that says which tf_ppo argument to use.
"""

from tf_ppo.config import ConfigError, GRPOConfig, RLOOConfig
from tf_ppo.rl.trainer import RLTrainer

# TRL's trainer arguments and tf_ppo's for the same thing.
TRL_ARGUMENTS = {"model": "policy (a keras-hub CausalLM; a preset name goes in config.model)",
                 "reward_funcs": "reward_fn (a function, a RewardModel or a list)", "args": "config",
                 "train_dataset": "prompts (a list of strings, a tf.data.Dataset, a CSV path or 'tfds:NAME')",
                 "processing_class": "nothing: the policy's own tokenizer is used"}


class _NamedTrainer(RLTrainer):
    algorithms = ()  # the config algorithms this name runs
    make_config = None  # the config of its default run

    def __init__(self, config=None, *args, **kwargs):
        trl = [name for name in kwargs if name in TRL_ARGUMENTS]
        if trl:
            use = "; ".join(f"{name} -> {TRL_ARGUMENTS[name]}" for name in trl)
            raise ConfigError(f"{type(self).__name__} takes tf_ppo's arguments (config, reward_fn, prompts, policy, "
                              f"...), not TRL's: {use}")
        config = type(self).make_config() if config is None else config
        if getattr(config, "algorithm", None) not in self.algorithms:
            raise ConfigError(f"{type(self).__name__} runs algorithm {' / '.join(self.algorithms)}, the config has "
                              f"algorithm={getattr(config, 'algorithm', None)!r}: use RLTrainer (or PPOTrainer) for "
                              f"any algorithm, or {type(self).make_config.__name__}(...)")
        super().__init__(config, *args, **kwargs)


class GRPOTrainer(_NamedTrainer):
    """`RLTrainer` for GRPO and its variants (TRL's name); default config `GRPOConfig()`.

    Example:
        GRPOTrainer(GRPOConfig(beta=0.3, total_updates=2), reward_fn=my_reward).train()
    """

    algorithms = ("grpo", "dr_grpo", "gspo")
    make_config = staticmethod(GRPOConfig)


class RLOOTrainer(_NamedTrainer):
    """`RLTrainer` for RLOO (TRL's name); default config `RLOOConfig()`.

    Example:
        RLOOTrainer(RLOOConfig(num_generations=4, total_updates=2), reward_fn=my_reward).train()
    """

    algorithms = ("rloo",)
    make_config = staticmethod(RLOOConfig)
