"""Environments for the multi-turn integration tests, importable by their subprocesses (`tests.environments`)."""

import tf_ppo


class Echo(tf_ppo.Environment):
    """Answers each model turn with " ok", rewarded 0.1 per word of the turn; the episode ends after 3 steps.

    The tiny sentiment policy ends its turns with its end token, so its episodes run to 2-3 turns.
    """

    def reset(self, prompt):
        self.steps = 0

    def step(self, model_text):
        self.steps += 1
        return " ok", 0.1 * len(model_text.split()), self.steps >= 3


class NaNOnce(Echo):
    """Echo, but the first episode made gives a NaN reward: a poisoned batch the run must skip."""

    made = 0

    def __init__(self):
        NaNOnce.made += 1
        self.poisoned = NaNOnce.made == 1

    def step(self, model_text):
        observation, reward, done = super().step(model_text)
        return observation, float("nan") if self.poisoned else reward, done
