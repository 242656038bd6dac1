"""The critical batch size harness: training engine and sweep engine."""
