"""Timing hooks shared by the TRL baselines (`trl_*_baseline.py`), run in TRL's own environment.

    timer = StepTimer()                       # a transformers TrainerCallback
    generation = []
    timed(GRPOTrainer, "_generate", generation)
    trainer = GRPOTrainer(..., callbacks=[timer]); trainer.train()
    step_seconds = [b - a for a, b in zip(timer.ends, timer.ends[1:])]
"""

import time

from transformers import TrainerCallback


class StepTimer(TrainerCallback):
    """Wall-clock time at the start of training and after every optimiser step (a PPO update in TRL's PPO)."""

    def __init__(self):
        self.ends = []

    def on_train_begin(self, args, state, control, **kwargs):
        self.ends.append(time.perf_counter())

    def on_step_end(self, args, state, control, **kwargs):
        self.ends.append(time.perf_counter())


def timed(owner, name, seconds):
    """Replace `owner.name` (a class's method or a module's function) by a wrapper that appends the
    wall-clock seconds of each call to `seconds`."""
    original = getattr(owner, name)

    def wrapper(*args, **kwargs):
        started = time.perf_counter()
        result = original(*args, **kwargs)
        seconds.append(time.perf_counter() - started)
        return result

    setattr(owner, name, wrapper)
