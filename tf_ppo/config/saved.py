"""Reading an older run's config.json: its fields as today's `PPOConfig` names them."""

from tf_ppo.config.provenance import PROVENANCE


def upgrade_saved(values):
    """A config.json's fields as today's: before one field per meaning, it held both names of each pair.

    Of `kl_coef`/`beta`, `cliprange`/`epsilon` and `num_ppo_epochs`/`num_iterations`
    the run read PPO's names under PPO and the others under every other
    algorithm; the one it read is kept (no warning: the user typed neither).
    Before `num_generations` had each algorithm's default, it held 1 for
    algorithms that never read it (PPO); that 1 is left out.

    Example:
    >>> upgrade_saved({"algorithm": "ppo", "kl_coef": 0.2, "beta": None, "num_generations": 1})
    {'algorithm': 'ppo', 'beta': 0.2}
    """
    values = {key: value for key, value in values.items() if key != PROVENANCE}  # a record, not a field
    from tf_ppo.config.rl import PPOConfig  # the module that reads config.json files imports this one
    algorithm = values.get("algorithm", "ppo")
    for alias, name in PPOConfig.aliases.items():
        if alias in values and name in values:
            read = values.pop(alias)
            if algorithm == "ppo":
                values[name] = read
    from tf_ppo.rl.algorithms import ALGORITHMS  # imports TensorFlow: only once a config is read
    owner = ALGORITHMS.get(algorithm)
    if values.get("num_generations") == 1 and owner is not None and "num_generations" not in owner.fields:
        del values["num_generations"]
    return values
