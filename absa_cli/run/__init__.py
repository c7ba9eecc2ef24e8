"""A run's files (no torch at import): run directories, the lock, checkpoints, metrics records and the console,
TensorBoard, plots."""
