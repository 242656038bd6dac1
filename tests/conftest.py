"""Shared fixtures: the folder of real datasets (../shared/data or $CBS_DATA_DIR)."""

import os
import shutil
import tempfile
from pathlib import Path

import pytest

CACHE_MADE = pytest.StashKey[str]()


# The real datasets: $CBS_DATA_DIR, else ../shared/data beside the checkout.
DATA_DIR = os.environ.get("CBS_DATA_DIR") or str(Path(__file__).resolve().parents[2] / "shared" / "data")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """DATA_DIR; a missing folder fails the tests that need it, naming the path."""
    path = Path(DATA_DIR)
    assert path.is_dir(), f"dataset folder {path} not found: set CBS_DATA_DIR or put the data in ../shared/data"
    return path


def pytest_configure(config):
    """One JAX compilation cache for the whole run (harness.sweep.executors
    keeps a $JAX_COMPILATION_CACHE_DIR that is set): the many small sweeps of
    the suite compile the same programs in fresh worker processes. The
    controller makes it before the xdist workers start, which inherit it.
    The `cbs` subprocesses that tests start read DATA_DIR too."""
    os.environ.setdefault("CBS_DATA_DIR", DATA_DIR)
    if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
        os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="cbs-tests-jax-cache-")
        config.stash[CACHE_MADE] = os.environ["JAX_COMPILATION_CACHE_DIR"]


def pytest_unconfigure(config):
    if CACHE_MADE in config.stash:
        shutil.rmtree(config.stash[CACHE_MADE], ignore_errors=True)
