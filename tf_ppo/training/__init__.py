"""What every training loop shares: the guarded optimiser step, distribution, checkpoints, compilation, reporting."""
