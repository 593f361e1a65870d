"""The RL loop along the data path: experience, rollout, learner, evaluator; the maths (`functional`) and the algorithms."""
