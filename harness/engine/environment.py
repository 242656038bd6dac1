"""Where a trial ran: package versions, the harness's git commit, the devices
and the host, recorded with every trial and sweep so that a result can be
traced to the software and hardware that produced it."""

from __future__ import annotations

import importlib.metadata
import platform
import subprocess
from pathlib import Path

import jax

PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy")


def run_metadata() -> dict:
    """{packages: {name: version}, git_commit, git_dirty, device_kind,
    device_count, platform, host, python}; git_commit and git_dirty are None
    outside a git checkout."""
    devices = jax.devices()
    return {
        "packages": {name: _version(name) for name in PACKAGES},
        **_git(Path(__file__).resolve().parent),
        "device_kind": devices[0].device_kind,
        "device_count": len(devices),
        "platform": devices[0].platform,
        "host": platform.node(),
        "python": platform.python_version(),
    }


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git(folder: Path) -> dict:
    def git(*args):
        return subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True, timeout=10)

    try:
        head = git("rev-parse", "HEAD")
        status = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.TimeoutExpired):
        return {"git_commit": None, "git_dirty": None}
    if head.returncode:
        return {"git_commit": None, "git_dirty": None}
    return {"git_commit": head.stdout.strip(), "git_dirty": bool(status.stdout.strip())}
