"""Strategies, optimiser groups, the feature cache, the training loop and checkpoints."""
