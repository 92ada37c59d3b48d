"""L3: the optimiser factory, THE training loop, checkpoints, runs and export."""
