"""Preference learning: preference data, the reward model, the DPO-family losses, prompt sharing and DPO."""
