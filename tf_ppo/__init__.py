"""tf_ppo: RL fine-tuning (RLHF: PPO, GRPO, RLOO, REINFORCE++; offline DPO) of Keras / keras-hub language models.

Example:
    import tf_ppo
    result = tf_ppo.train(tf_ppo.PPOConfig(total_updates=10))
"""

from tf_ppo.startup import import_tensorflow

import_tensorflow()  # before any module imports TensorFlow: without its C++ start-up banner

from tf_ppo.rl import algorithms
from tf_ppo.rl.functional import estimators, ppo
from tf_ppo.config import (ConfigError, DPOConfig, GRPOConfig, ModelConfig, PPOConfig, RewardConfig, RLConfig, RLOOConfig,
                           SFTConfig, UnknownFieldError)
from tf_ppo.data import DataError, load_prompts
from tf_ppo.chat import ChatError, register_chat_template
from tf_ppo.preference.dpo import DPOResult, DPOTrainer, dpo
from tf_ppo.export import ExportError, export, save_preset
from tf_ppo.rl.rewards import RewardError, word_count_reward
from tf_ppo.tasks.sentiment import sentiment_reward
from tf_ppo.pipeline import PipelineResult, pipeline
from tf_ppo.preference.reward_model import ClassifierReward, RewardModel
from tf_ppo.preference.reward_training import read_preferences, train_reward_model
from tf_ppo.sft import default_policy, sft
from tf_ppo.training.checkpoints import CheckpointError
from tf_ppo.rl.callbacks import Callback
from tf_ppo.rl.environment import Environment, EpisodeError, Step, ToolEnvironment
from tf_ppo.rl.tools import ToolError
from tf_ppo.rl.evaluator import evaluate
from tf_ppo.rl.logs import DriftWarning, OveroptimisationWarning
from tf_ppo.rl.trainer import PPOTrainer, RLTrainer, TrainResult, train
from tf_ppo.rl.trl_trainers import GRPOTrainer, RLOOTrainer
from tf_ppo.training.guarded_step import NonFiniteError

__all__ = [
    "Environment",
    "EpisodeError",
    "Step",
    "ToolEnvironment",
    "ToolError",
    "algorithms",
    "estimators",
    "ppo",
    "ConfigError",
    "UnknownFieldError",
    "ModelConfig",
    "PPOConfig",
    "RLConfig",
    "GRPOConfig",
    "RLOOConfig",
    "RewardConfig",
    "SFTConfig",
    "DPOConfig",
    "DPOResult",
    "DPOTrainer",
    "dpo",
    "DataError",
    "ExportError",
    "export",
    "save_preset",
    "load_prompts",
    "ChatError",
    "register_chat_template",
    "RewardError",
    "sentiment_reward",
    "word_count_reward",
    "PipelineResult",
    "pipeline",
    "ClassifierReward",
    "RewardModel",
    "read_preferences",
    "train_reward_model",
    "default_policy",
    "sft",
    "CheckpointError",
    "Callback",
    "NonFiniteError",
    "DriftWarning",
    "OveroptimisationWarning",
    "PPOTrainer",
    "RLTrainer",
    "GRPOTrainer",
    "RLOOTrainer",
    "evaluate",
    "TrainResult",
    "train",
]
__version__ = "0.1.0"
