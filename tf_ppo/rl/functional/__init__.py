"""The RL maths as pure TensorFlow functions, each tested against a float64 NumPy reference."""
