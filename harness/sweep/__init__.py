"""The sweep engine: a spec expanded into trials, a result folder, leases,
workers, executors and progress. Builds on harness.engine only."""
