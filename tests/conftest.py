"""Shared fixtures: the folder of real datasets (../shared/data or $CBS_DATA_DIR)."""
import os
from pathlib import Path

import pytest


# The real datasets: $CBS_DATA_DIR, else ../shared/data beside the checkout.
DATA_DIR = os.environ.get("CBS_DATA_DIR") or str(Path(__file__).resolve().parents[2] / "shared" / "data")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """DATA_DIR; a missing folder fails the tests that need it, naming the path."""
    path = Path(DATA_DIR)
    assert path.is_dir(), f"dataset folder {path} not found: set CBS_DATA_DIR or put the data in ../shared/data"
    return path
