"""Where local workers run: the GPUs they may use and each worker's placement."""

import pytest

from harness.errors import UserError
from harness.sweep.executors import placement, visible_gpus


def test_every_listed_gpu_without_cuda_visible_devices_or_gpus():
    assert visible_gpus(4, None) == ["0", "1", "2", "3"]


def test_cuda_visible_devices_is_respected_and_gpus_overrides_it():
    assert visible_gpus(4, "2,3") == ["2", "3"]
    assert visible_gpus(4, "GPU-8f2a,GPU-11c0") == ["GPU-8f2a", "GPU-11c0"]
    assert visible_gpus(4, "") == []  # every GPU hidden: the workers run on CPU cores
    assert visible_gpus(4, "2,3", "1, 0") == ["1", "0"]
    assert visible_gpus(4, None, "3") == ["3"]


@pytest.mark.parametrize(
    "requested, problem",
    [
        ("4", "no GPU 4 on this machine"),
        ("1,x", "no GPU x on this machine"),
        ("1,1", "empty or repeated GPUs"),
        (",", "empty or repeated GPUs"),
    ],
)
def test_gpus_naming_no_gpu_of_the_machine_is_refused(requested, problem):
    with pytest.raises(UserError) as e:
        visible_gpus(4, None, requested)
    assert str(e.value) == (
        f"--gpus {requested}: {problem}; allowed: distinct GPU indices 0..3 (nvidia-smi -L) "
        "or GPU-/MIG- UUIDs, comma-separated"
    )


def test_workers_take_the_visible_gpus_in_turn_and_share_their_memory(tmp_path):
    envs = [placement("gpu", ["2", "3"], i, 4, tmp_path)["env"] for i in range(4)]
    assert [e["CUDA_VISIBLE_DEVICES"] for e in envs] == ["2", "3", "2", "3"]
    assert {e["XLA_PYTHON_CLIENT_MEM_FRACTION"] for e in envs} == {"0.45"}  # two workers per GPU
    alone = placement("gpu", ["2", "3"], 1, 2, tmp_path)
    assert alone["env"]["CUDA_VISIBLE_DEVICES"] == "3" and "XLA_PYTHON_CLIENT_MEM_FRACTION" not in alone["env"]
    assert alone["core"] is None


def test_cpu_workers_are_pinned_to_the_cores_in_turn(tmp_path):
    cores = [placement("cpu", [5, 9], i, 3, tmp_path)["core"] for i in range(3)]
    assert cores == [5, 9, 5]
    assert "CUDA_VISIBLE_DEVICES" not in placement("cpu", [5, 9], 0, 3, tmp_path)["env"]


def test_workers_compile_into_the_users_cache_else_the_sweep_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
    assert placement("cpu", [0], 0, 1, tmp_path)["env"]["JAX_COMPILATION_CACHE_DIR"] == str(tmp_path / ".jax_cache")
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "mine"))
    assert placement("gpu", ["0"], 0, 1, tmp_path)["env"]["JAX_COMPILATION_CACHE_DIR"] == str(tmp_path / "mine")
