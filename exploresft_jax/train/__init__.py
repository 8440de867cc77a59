"""Training: optimiser, the pure sharded train step, checkpoints, metrics logging and the run loop."""
