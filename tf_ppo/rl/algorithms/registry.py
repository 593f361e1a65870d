"""Algorithms by name: `register` a class, `create(config)` the one a config names."""

ALGORITHMS = {}  # name -> Algorithm subclass, filled as the algorithm modules are imported


def register(cls):
    """Class decorator: make `cls` selectable as `PPOConfig(algorithm=cls.name)`.

    Example:
        @register
        class DrGRPO(GRPO):
            name = "dr_grpo"
    """
    if cls.name in ALGORITHMS and ALGORITHMS[cls.name] is not cls:
        raise ValueError(f"algorithm {cls.name!r} is already registered by {ALGORITHMS[cls.name].__qualname__}")
    ALGORITHMS[cls.name] = cls
    return cls


def create(config):
    """The algorithm object `config.algorithm` names.

    Example:
        create(PPOConfig(algorithm="grpo", num_generations=4)).uses_value_model  # False
    """
    return ALGORITHMS[config.algorithm](config)
