"""`cbs env` on this machine: the backend, devices, package versions and
which datasets a data folder holds, as text and as JSON."""

import json
import platform
import subprocess
import sys

import flax
import jax
import jaxlib
import numpy
import optax
import orbax.checkpoint


def cbs_env(*args):
    return subprocess.run(
        [sys.executable, "-m", "harness.cli", "env", *args], capture_output=True, text=True, check=True
    ).stdout


def test_json_names_the_backend_devices_versions_and_datasets(tmp_path):
    info = json.loads(cbs_env("--json", "--data-dir", str(tmp_path)))
    assert info["backend"] == "cpu" and info["process_count"] == 1
    assert sum(d["count"] for d in info["devices"]) >= 1
    assert info["versions"] == {
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "flax": flax.__version__,
        "optax": optax.__version__,
        "orbax-checkpoint": orbax.checkpoint.__version__,
        "numpy": numpy.__version__,
        "python": platform.python_version(),
    }
    assert info["data_dir"] == str(tmp_path.resolve())
    assert info["datasets"] == {
        "mnist": "shipped",
        "fashion_mnist": "absent",
        "tiny_shakespeare": "absent",
        "cifar10": "absent",
    }


def test_a_dataset_in_the_data_folder_is_found_there(tmp_path):
    (tmp_path / "tiny_shakespeare").mkdir()
    (tmp_path / "tiny_shakespeare" / "input.txt").write_text("to be")
    info = json.loads(cbs_env("--json", "--data-dir", str(tmp_path)))
    assert info["datasets"]["tiny_shakespeare"] == "data folder"


def test_text_output(tmp_path):
    out = cbs_env("--data-dir", str(tmp_path))
    assert out.startswith("backend: cpu (")
    assert f"jax {jax.__version__}" in out and f"data folder: {tmp_path.resolve()}" in out
    assert "mnist shipped, fashion_mnist absent" in out
