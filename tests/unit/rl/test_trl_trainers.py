"""TRL's names for the RL config and trainer: GRPOConfig, RLOOConfig, GRPOTrainer, RLOOTrainer."""

import pytest

import tf_ppo
from tf_ppo import ConfigError, GRPOConfig, GRPOTrainer, PPOConfig, RLConfig, RLOOConfig, RLOOTrainer, RLTrainer


def test_grpo_and_rloo_configs_choose_their_algorithm_with_trls_group_size():
    assert (GRPOConfig().algorithm, GRPOConfig().num_generations) == ("grpo", 8)
    assert (RLOOConfig().algorithm, RLOOConfig().num_generations) == ("rloo", 2)
    assert GRPOConfig(algorithm="dr_grpo", num_generations=4) == PPOConfig(algorithm="dr_grpo", num_generations=4)
    assert isinstance(GRPOConfig(), RLConfig)


def test_a_named_trainer_refuses_another_algorithm_and_trls_arguments_naming_what_to_use(tmp_path):
    with pytest.raises(ConfigError, match=r"GRPOTrainer runs algorithm grpo / dr_grpo / gspo, the config has "
                                          r"algorithm='ppo': use RLTrainer"):
        GRPOTrainer(PPOConfig(run_dir=str(tmp_path)))
    with pytest.raises(ConfigError, match=r"RLOOTrainer takes tf_ppo's arguments .* reward_funcs -> reward_fn"):
        RLOOTrainer(RLOOConfig(), reward_funcs=[len])
    with pytest.raises(ConfigError, match=r"model -> policy .*; args -> config"):
        GRPOTrainer(model="gpt2_base_en", args=GRPOConfig())


def test_a_named_trainer_is_the_rl_trainer_of_its_config(tmp_path, sft_policy_path):
    config = GRPOConfig(batch_size=16, eval_size=16, num_generations=4, beta=0.3, run_dir=str(tmp_path))
    trainer = GRPOTrainer(config, show_progress=False)
    assert isinstance(trainer, RLTrainer) and trainer.algorithm.name == "grpo" and trainer.reference is not None
    assert tf_ppo.RLOOTrainer.make_config().algorithm == "rloo"
