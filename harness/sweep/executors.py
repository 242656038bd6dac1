"""Where a sweep's trials run: local worker processes, or Ray tasks.

Local: one process per GPU when `nvidia-smi` lists GPUs (the GPUs of
`cbs sweep --gpus`, else those of CUDA_VISIBLE_DEVICES when it is set), else
one process per CPU core, each pinned to its core with XLA's CPU thread pools
limited to one thread. Measured on the build machine (benchmarks/RESULTS.md):
one process per core beats one process using both cores by 1.6x, and
vmapping trials of a CNN is 3-5x slower, so on CPU trials run in processes,
one at a time (a spec's `pack` groups them on accelerators: harness.sweep.packing).
Workers are spawned (not forked) so each sets its
environment before JAX starts a backend.

Ray: each pack of trials (one trial unless the spec packs them) is a task
(one GPU per task when the cluster has GPUs) that claims its trials in the
shared store, so Ray workers, local workers and other machines can share one
sweep folder.

Slurm: each pack is a job submitted with submitit, a job array per
submission, claiming its trials in the store in the same way
(harness.sweep.slurm).
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from harness.errors import UserError, os_error_text

CPU_XLA_FLAGS = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
PARENT_POLL_S = 0.5
STOP_GRACE_S = 5.0  # how long stopped workers may take to checkpoint their trials before they are killed


def visible_gpus(listed: int, visible: str | None, requested: str | None = None) -> list[str]:
    """The GPUs local workers may use, as CUDA_VISIBLE_DEVICES entries:
    `requested` (`cbs sweep --gpus 2,3`), else `visible` (the sweep's own
    CUDA_VISIBLE_DEVICES, when set), else all `listed` GPUs (nvidia-smi -L).
    Entries are indices or GPU-/MIG- UUIDs, as CUDA takes them."""
    if requested is None and visible is None:
        return [str(i) for i in range(listed)]
    ids = [g.strip() for g in (visible if requested is None else requested).split(",") if g.strip()]
    if requested is not None:
        bad = [g for g in ids if not (g.startswith(("GPU-", "MIG-")) or g.isdigit() and int(g) < listed)]
        if not ids or bad or len(set(ids)) < len(ids):
            problem = f"no GPU {', '.join(bad)} on this machine" if bad else "empty or repeated GPUs"
            raise UserError(
                f"--gpus {requested}: {problem}; allowed: distinct GPU indices 0..{listed - 1} "
                "(nvidia-smi -L) or GPU-/MIG- UUIDs, comma-separated"
            )
    return ids


def local_devices(gpus: str | None = None) -> tuple[str, list]:
    """('gpu', the GPUs of `visible_gpus`) when nvidia-smi lists GPUs and
    none is hidden, else ('cpu', usable cores)."""
    listed = 0
    if shutil.which("nvidia-smi"):
        listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True).stdout
        listed = sum(line.startswith("GPU ") for line in listing.splitlines())
    if not listed and gpus is not None:
        raise UserError(f"--gpus {gpus}: nvidia-smi lists no GPU on this machine; allowed: leave --gpus out")
    ids = visible_gpus(listed, os.environ.get("CUDA_VISIBLE_DEVICES"), gpus) if listed else []
    return ("gpu", ids) if ids else ("cpu", sorted(os.sched_getaffinity(0)))


CACHE_OPTIONS = {"JAX_COMPILATION_CACHE_DIR": str, "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": float}


def compilation_cache(folder) -> dict:
    """Environment that makes JAX keep compiled programs, so a trial whose
    program another worker already compiled (same batch size and shapes)
    skips compilation, which dominates short trials on CPU: in the user's
    $JAX_COMPILATION_CACHE_DIR when set (shared by every sweep), else in the
    sweep folder."""
    cache = os.environ.get("JAX_COMPILATION_CACHE_DIR") or Path(folder).absolute() / ".jax_cache"
    return {"JAX_COMPILATION_CACHE_DIR": str(cache), "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0.1"}


def apply_cache_options() -> None:
    """JAX reads these options from the environment when it is imported, and
    unpickling a worker's trials (harness.sweep.spec) imports it before
    `worker_main` runs: set them again explicitly."""
    import jax

    for name, kind in CACHE_OPTIONS.items():
        jax.config.update(name.lower(), kind(os.environ[name]))


def placement(kind: str, devices: list, index: int, workers: int, folder) -> dict:
    """The environment (and CPU core) of local worker `index` of `workers`,
    given `local_devices`' kind and devices (GPU ids or CPU cores), which the
    workers take in turn."""
    env = compilation_cache(folder)
    if kind == "gpu":
        env["CUDA_VISIBLE_DEVICES"] = devices[index % len(devices)]
        sharing = math.ceil(workers / len(devices))
        if sharing > 1:
            env["XLA_PYTHON_CLIENT_MEM_FRACTION"] = f"{0.9 / sharing:.2f}"
        return {"env": env, "core": None}
    env["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {CPU_XLA_FLAGS}".strip()
    return {"env": env, "core": devices[index % len(devices)]}


def worker_main(placement: dict, parent: int, work_kwargs: dict, error_pipe) -> None:
    """A local worker process: place itself, then run harness.sweep.worker.work.
    Bad input and OS errors (a full disk, a lost mount) end it with their one
    line sent on `error_pipe`, for the sweep process to report."""
    os.environ.update(placement["env"])
    apply_cache_options()
    if placement["core"] is not None:
        os.sched_setaffinity(0, {placement["core"]})
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    from harness.sweep.worker import work

    try:
        work(**work_kwargs, should_stop=stop.is_set)
    except (UserError, OSError) as e:
        error_pipe.send(os_error_text(e) if isinstance(e, OSError) else str(e))
        _drop_os_errors_at_exit()
        sys.exit(2)


def _drop_os_errors_at_exit() -> None:
    """Once the worker's one line is sent, libraries' clean-ups at exit that
    fail again on the same cause (on a full disk: tensorboardX's final flush
    in an atexit handler, and its writer thread) would print tracebacks; drop
    the OSErrors they report."""
    unraisable, thread = sys.unraisablehook, threading.excepthook
    sys.unraisablehook = lambda report: isinstance(report.exc_value, OSError) or unraisable(report)
    threading.excepthook = lambda report: isinstance(report.exc_value, OSError) or thread(report)


def _exit_with_parent(parent: int) -> None:
    """Die with the sweep process (kill -9 included): orphaned workers would
    keep running trials nobody waits for."""
    while os.getppid() == parent:
        time.sleep(PARENT_POLL_S)
    os._exit(1)


def run_local(
    folder, trials, prune, data_dir, lease_s, progress=None, workers=None, gpus=None, pack=1, track=None
) -> None:
    kind, devices = local_devices(gpus)
    workers = min(workers or len(devices), len(trials))
    context = multiprocessing.get_context("spawn")
    work_kwargs = dict(
        folder=folder, trials=trials, prune=prune, data_dir=data_dir, lease_s=lease_s, pack=pack, track=track
    )
    pipes = [context.Pipe(duplex=False) for _ in range(workers)]  # (receive, send): each worker's error line
    procs = [
        context.Process(
            target=worker_main,
            name=f"cbs-worker-{i}",
            args=(placement(kind, devices, i, workers, folder), os.getpid(), work_kwargs, send),
        )
        for i, (_, send) in enumerate(pipes)
    ]
    if progress:
        progress.plan(trials, workers * _packed(pack), prune)
    with _sigint_ignored():
        for p in procs:
            p.start()
    try:
        wait_for_workers(procs, [receive for receive, _ in pipes], progress)
    finally:
        _stop(procs)
        if progress:
            progress.close()


def wait_for_workers(procs, error_pipes, progress=None) -> None:
    """Wait until the worker processes `procs` have exited, updating `progress`
    every PARENT_POLL_S seconds and whenever one exits. A worker's sentinel
    stays ready once it exits (and from the moment it starts exiting, before
    it is reaped), so exiting workers are joined and only live ones waited on.
    UserError with the cause sent on its pipe of `error_pipes` when one fails."""
    while alive := [p for p in procs if p.is_alive()]:
        ready = multiprocessing.connection.wait([p.sentinel for p in alive], timeout=PARENT_POLL_S)
        for p in alive:
            if p.sentinel in ready:
                p.join()
        if progress:
            progress.update()
        failed = [p for p in procs if p.exitcode not in (None, 0)]
        if failed:
            receive = error_pipes[procs.index(failed[0])]
            cause = (
                receive.recv()
                if receive.poll()
                else f"sweep worker {failed[0].name} exited with status {failed[0].exitcode} "
                "(its error is printed above)"
            )
            raise UserError(f"{cause}; finished trials are kept: re-run to resume")


def _packed(pack) -> int:
    """How many trials a worker runs at once, at least (1 for `pack = "auto"`, which may pick 1)."""
    return pack if isinstance(pack, int) else 1


@contextlib.contextmanager
def _sigint_ignored():
    """Workers started in this block ignore SIGINT (an ignored signal stays
    ignored across exec), so that Ctrl-C, which a terminal sends to the whole
    process group, reaches only the sweep process, which stops them (`_stop`)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    handler = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, handler)


def _stop(procs) -> None:
    """SIGTERM the live workers (each checkpoints its trial at its next
    evaluation and exits), and kill those still running after STOP_GRACE_S:
    their trials resume from their last periodic checkpoint."""
    for p in procs:
        if p.is_alive():
            p.terminate()
    deadline = time.monotonic() + STOP_GRACE_S
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
        if p.is_alive():
            p.kill()
            p.join()


def _ray_pack(folder, trials, prune, data_dir, lease_s, track=None) -> bool:
    """One Ray task: run one pack of trials, those no other worker holds."""
    from harness.sweep.store import Store
    from harness.sweep.worker import try_pack

    return try_pack(Store(folder), trials, prune, data_dir, lease_s, track=track)


def run_ray(folder, trials, prune, data_dir, lease_s, progress=None, address=None, pack=1, track=None) -> None:
    """Run the trials as Ray tasks on the cluster at `address` (a local
    instance when None, or the one this process already joined), a task per
    pack (`pack = "auto"` is chosen for the devices of this process)."""
    from harness.sweep.packing import PackSize, packs

    try:
        import ray
    except ImportError:
        raise UserError(
            "--executor ray needs Ray; allowed: pip install 'critical-batch-size[ray]', or --executor local"
        ) from None
    from harness.sweep.store import Store

    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=True)
    gpus = ray.cluster_resources().get("GPU", 0)
    env = compilation_cache(folder)
    if not gpus:
        env["XLA_FLAGS"] = CPU_XLA_FLAGS
    options = {"num_cpus": 1, "num_gpus": 1 if gpus else 0, "max_retries": 2, "runtime_env": {"env_vars": env}}
    task = ray.remote(**options)(_ray_pack)
    store = Store(folder)
    pending, size = list(trials), PackSize(pack, data_dir)
    if progress:
        progress.plan(trials, int(gpus or ray.cluster_resources().get("CPU", 1)) * _packed(pack), prune)
    try:
        while pending:
            refs = [task.remote(folder, group, prune, data_dir, lease_s, track) for group in packs(pending, size)]
            while refs:
                done, refs = ray.wait(refs, timeout=PARENT_POLL_S)
                ray.get(done)
                if progress:
                    progress.update()
            pending = [t for t in pending if not store.is_done(t.id)]
            if pending:  # held by live workers elsewhere: wait for them to finish or for their leases to lapse
                time.sleep(min(lease_s / 8, 1.0))
    finally:
        if progress:
            progress.close()
