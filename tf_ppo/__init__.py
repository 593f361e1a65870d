"""tf_ppo: PPO fine-tuning (RLHF) of Keras / keras-hub language models.

Example:
>>> import tf_ppo
>>> result = tf_ppo.train(tf_ppo.PPOConfig(total_updates=10))  # doctest: +SKIP
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's C++ start-up chatter out of notebooks

from tf_ppo import ppo  # noqa: E402
from tf_ppo.config import ModelConfig, PPOConfig, SFTConfig  # noqa: E402
from tf_ppo.data import DataError  # noqa: E402
from tf_ppo.rewards import RewardError, sentiment_reward, word_count_reward  # noqa: E402
from tf_ppo.sft import default_policy, sft  # noqa: E402
from tf_ppo.trainer import Callback, PPOTrainer, TrainResult, train  # noqa: E402

__all__ = ["ppo", "ModelConfig", "PPOConfig", "SFTConfig", "DataError", "RewardError", "sentiment_reward",
           "word_count_reward", "default_policy", "sft", "Callback", "PPOTrainer", "TrainResult", "train"]
__version__ = "0.1.0"
