"""`cbs env`: what this machine gives the harness: the JAX backend, its devices
and processes, the versions of the packages a result depends on, where
datasets are looked for and which are there, and the JAX compilation cache.
`--json` for a machine-readable answer."""

from __future__ import annotations

import json
import platform
from pathlib import Path

PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax.checkpoint", "numpy")
NAMES = {"orbax.checkpoint": "orbax-checkpoint"}  # distribution names where they differ from the module's


def add_arguments(parser):
    parser.add_argument("--data-dir", help="the data folder to look in (default: $CBS_DATA_DIR or a cache folder)")
    parser.add_argument("--json", action="store_true", help="print the answer as JSON")


def environment(data_dir=None) -> dict:
    """{backend, devices: [{kind, count}], process_count, versions, data_dir,
    shipped_dir, datasets: {name: "shipped" | "data folder" | "absent"},
    compilation_cache_dir}."""
    import importlib

    import jax

    from harness.engine.data import SHIPPED, resolve_data_dir

    kinds = {}
    for device in jax.devices():
        kinds[device.device_kind] = kinds.get(device.device_kind, 0) + 1
    folder = resolve_data_dir(data_dir)
    versions = {NAMES.get(m, m): importlib.import_module(m).__version__ for m in PACKAGES}
    return {
        "backend": jax.default_backend(),
        "devices": [{"kind": k, "count": n} for k, n in kinds.items()],
        "process_count": jax.process_count(),
        "versions": {**versions, "python": platform.python_version()},
        "data_dir": str(folder),
        "shipped_dir": str(SHIPPED),
        "datasets": datasets(folder),
        "compilation_cache_dir": jax.config.jax_compilation_cache_dir,
    }


def datasets(folder: Path) -> dict:
    """Per dataset of harness.engine.data.FILES, where its files are: "data
    folder" (all of them in `folder`), "shipped" (all of them in the data
    folder or the package's copies, some shipped), or "absent" (downloaded
    on first use)."""
    from harness.engine.data import FILES, SHIPPED, local_copy

    files = {}
    for relpath in FILES:
        files.setdefault(relpath.split("/")[0], []).append(relpath)
    where = {}
    for name, paths in files.items():
        copies = [local_copy(p, folder) for p in paths]
        if not all(c.exists() for c in copies):
            where[name] = "absent"
        elif any(c.is_relative_to(SHIPPED) for c in copies):
            where[name] = "shipped"
        else:
            where[name] = "data folder"
    return where


def run(args) -> int:
    info = environment(args.data_dir)
    if args.json:
        print(json.dumps(info, indent=1))
        return 0
    devices = ", ".join(f"{d['count']} x {d['kind']}" for d in info["devices"])
    print(f"backend: {info['backend']} ({devices}); processes: {info['process_count']}")
    print("versions: " + ", ".join(f"{name} {version}" for name, version in info["versions"].items()))
    print(
        f"data folder: {info['data_dir']} (--data-dir, else $CBS_DATA_DIR, else the cache); "
        f"shipped copies: {info['shipped_dir']}"
    )
    print("datasets: " + ", ".join(f"{name} {where}" for name, where in info["datasets"].items()))
    print(f"compilation cache: {info['compilation_cache_dir'] or 'not set (JAX_COMPILATION_CACHE_DIR)'}")
    return 0
