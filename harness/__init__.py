"""The critical batch size harness: harness.engine (one trial), harness.sweep
(many trials), harness.cli (the `cbs` command); the analysis is in `analysis`."""

__version__ = "0.1.0"  # the package version (pyproject.toml reads it from here)
