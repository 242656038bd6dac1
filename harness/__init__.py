"""The critical batch size harness: harness.engine (one trial), harness.sweep
(many trials), harness.cli (the `cbs` command); the analysis is in `analysis`."""
