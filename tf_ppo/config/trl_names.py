"""TRL's config names that mean something else in tf_ppo (those that mean the same are `PPOConfig.aliases`).

Example:
>>> "total_updates" in TRL_NAMES_THAT_DIFFER["max_steps"]
True
"""

# TRL's names whose meaning differs here: PPOConfig(max_steps=...) is an error that says what to use.
TRL_NAMES_THAT_DIFFER = {
    "max_steps": "total_updates counts updates (one rollout of batch_size responses, then its num_iterations x "
                 "num_mini_batches optimiser steps); TRL's max_steps counts optimiser steps",
    "per_device_train_batch_size": "batch_size counts the rollouts of one update over all devices, split into "
                                   "num_mini_batches minibatches; TRL's counts completions per device and step",
    "reward_funcs": "the reward is an argument: train(config, reward_fn=f or [f, g]), weighted by "
                    "reward_weights (CLI: the task's reward)",
    "save_steps": "checkpoint_every counts updates (TRL's save_steps counts optimiser steps)",
    "logging_steps": "every update is logged (metrics.csv, TensorBoard, the progress bar); there is no interval",
    "num_train_epochs": "an RL run makes total_updates updates, cycling through the prompts; SFT, the reward "
                        "model and DPO have sft.epochs, reward.epochs and dpo.epochs",
}
