"""The configuration of a tf_ppo run: `PPOConfig` (also named `RLConfig`) and its sections, validated on creation.

Names follow TRL where they mean the same thing (`beta`, `epsilon`,
`num_iterations`, `vf_coef`, `gamma`, `lam`, ...; TRL's PPO names `kl_coef`,
`cliprange`, `num_ppo_epochs` are deprecated aliases). The config is frozen: the trainer
never mutates it, and it round-trips to JSON so a run directory records exactly
what produced it. One module per concept:

- `fields`: the errors, the field declaration and the checks every section shares, the JSON helpers;
- `sections`: `ModelConfig`, `SFTConfig`, `RewardConfig`, `DPOConfig`;
- `rl`: `PPOConfig` (= `RLConfig`), the task defaults and which fields are sections;
- `entry_points`: TRL's `GRPOConfig` / `RLOOConfig`, and a stage's section alone (`run_config`);
- `trl_names`: TRL's names that mean something else here, and what to use instead;
- `provenance`: what a run's config.json records beside the config (the sections it read, versions, commit);
- `reference`: each flag's help and docs/configuration.md (`python -m tf_ppo.config` rewrites it).

Example:
>>> config = PPOConfig(total_updates=10, seed=1)
>>> PPOConfig.from_json(config.to_json()) == config
True
"""

from tf_ppo.config.fields import (DATA_DIR, OBJECT_MARK, SHIPPED, TYPE_WORDS, ConfigError, UnknownFieldError,
                                  did_you_mean, portable, split_optional)
from tf_ppo.config.sections import DPOConfig, ModelConfig, PreferenceDataConfig, RewardConfig, SFTConfig
from tf_ppo.config.rl import GROUPS, NESTED, SECTIONS, TASK_DEFAULTS, PPOConfig, RLConfig, upgrade_saved
from tf_ppo.config.entry_points import ENTRY_POINTS, GRPOConfig, RLOOConfig, run_config
from tf_ppo.config.provenance import PROVENANCE, policy_sections, run_provenance
from tf_ppo.config.reference import (MARKERS, SECTION_TITLES, default_text, help_text, main, reference_markdown,
                                     type_name, with_reference)

__all__ = [
    "ConfigError", "UnknownFieldError", "DATA_DIR", "SHIPPED", "OBJECT_MARK", "TYPE_WORDS",
    "did_you_mean", "portable", "split_optional",
    "ModelConfig", "SFTConfig", "PreferenceDataConfig", "RewardConfig", "DPOConfig",
    "PPOConfig", "RLConfig", "GRPOConfig", "RLOOConfig", "GROUPS", "NESTED", "SECTIONS", "TASK_DEFAULTS",
    "ENTRY_POINTS", "run_config",
    "upgrade_saved", "PROVENANCE", "policy_sections", "run_provenance",
    "MARKERS", "SECTION_TITLES", "default_text", "help_text", "main", "reference_markdown", "type_name",
    "with_reference",
]
