"""Subcommands of `cbs`."""
