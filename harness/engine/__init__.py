"""The trial engine: one trial from a TrialConfig to a TrialRecord (config,
optimizers, models, workloads, data, training loop, checkpoints, noise scale).
Imports nothing of harness.sweep, harness.cli or analysis."""
