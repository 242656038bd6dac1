"""`--executor slurm`: a sweep's trials as Slurm jobs, submitted with submitit.

Each pack of trials (one trial unless the spec packs them) is one job, and the
packs submitted together are one job array (`map_array`; at most `workers`
of its jobs run at once). A job runs `slurm_pack`, which claims its pack's
trials in the sweep folder with leases (harness.sweep.leases) exactly as
local workers and Ray tasks do, so a job submitted twice, requeued or left
over from an earlier run never trains a trial twice, and Slurm jobs, local
workers and other machines can share one sweep folder on a shared filesystem.

The sweep submits jobs only for the unfinished trials no live worker holds,
waits for them (a job's result file; `squeue` tells a job that ended without
one, since `sacct`, which submitit asks, is missing where accounting is off),
and submits again for those still unfinished: trials whose job was stopped
resume from their checkpoints. Slurm sends a job SIGUSR2 `SIGNAL_DELAY_S`
before its time limit, and SIGTERM on `scancel` (which the sweep runs on its
jobs when it is interrupted): the job checkpoints its trials at their next
evaluation and ends. A failed job ends the sweep with one line naming its
error and its log; finished trials are kept.

`cluster = "local"` runs the same jobs with submitit's LocalExecutor, one
process per job on this machine (all at once, no partition, no array limit).
"""

from __future__ import annotations

import getpass
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from harness.errors import UserError, did_you_mean, os_error_text
from harness.sweep.executors import CPU_XLA_FLAGS, PARENT_POLL_S, apply_cache_options, compilation_cache

SIGNAL_DELAY_S = 90  # how long before its time limit a job is asked to checkpoint and stop
QUEUE_POLL_S = 5.0  # how often squeue is asked which jobs are still queued or running
RESULT_GRACE_S = 30.0  # how long a job's result file may take to appear after it left the queue (NFS)
ON_FAILURE = "finished trials are kept: re-run to resume"
PARTITION = re.compile(r"[\w.-]+(,[\w.-]+)*")


@dataclass(frozen=True)
class SlurmOptions:
    """How each job is submitted: `partition` (None: the cluster's default;
    comma-separated: any of them), `time_limit` in minutes, `gpus_per_job`,
    `cpus_per_job`, `folder` for submitit's files and the jobs' logs (None:
    FOLDER/slurm in the sweep folder), and `cluster`: "slurm", or "local"
    for submitit's LocalExecutor."""

    partition: str | None = None
    time_limit: int = 60
    gpus_per_job: int = 0
    cpus_per_job: int = 1
    folder: str | None = None
    cluster: str = "slurm"


def check_options(options: SlurmOptions) -> None:
    """Refuse bad options in one line, before anything is submitted: the
    numbers' ranges, a partition this cluster lacks (sinfo), Slurm's commands
    missing, submitit missing."""
    if options.cluster not in ("slurm", "local"):
        raise UserError(f"slurm cluster {options.cluster!r}: unknown; allowed: slurm, local")
    if options.time_limit < 1:
        raise UserError(
            f"--time-limit {options.time_limit}: must be at least 1 minute; allowed: integers >= 1 (minutes per job)"
        )
    if options.gpus_per_job < 0:
        raise UserError(f"--gpus-per-job {options.gpus_per_job}: must be >= 0; allowed: integers >= 0")
    if options.cpus_per_job < 1:
        raise UserError(f"--cpus-per-job {options.cpus_per_job}: must be >= 1; allowed: integers >= 1")
    if options.partition is not None and not PARTITION.fullmatch(options.partition):
        raise UserError(
            f"--partition {options.partition!r}: not a partition name; allowed: letters, digits, _ . - "
            "(several comma-separated)"
        )
    _submitit()
    if options.cluster == "slurm":
        known = partitions()
        for name in (options.partition or "").split(",") if options.partition else []:
            if name not in known:
                raise UserError(
                    f"--partition {name}: no such Slurm partition; {did_you_mean(name, known)}"
                    f"allowed: {', '.join(known)} (sinfo)"
                )


def partitions() -> list[str]:
    """The cluster's partitions (sinfo); UserError where Slurm cannot be asked."""
    if not shutil.which("sbatch") or not shutil.which("sinfo"):
        raise UserError(
            "--executor slurm: Slurm's sbatch and sinfo are not on this machine's PATH; allowed: run cbs sweep "
            "where Slurm's commands are (a login node), or --executor local"
        )
    listing = subprocess.run(["sinfo", "-h", "-o", "%R"], capture_output=True, text=True)
    if listing.returncode != 0:
        cause = (listing.stderr.strip().splitlines() or [f"exit status {listing.returncode}"])[-1]
        raise UserError(f"--executor slurm: sinfo failed: {cause}; allowed: a running Slurm controller")
    return list(dict.fromkeys(listing.stdout.split()))


def _submitit():
    try:
        import submitit
    except ImportError:
        raise UserError(
            "--executor slurm needs submitit; allowed: pip install 'critical-batch-size[slurm]', or --executor local"
        ) from None
    return submitit


def slurm_pack(folder, trials, prune, data_dir, lease_s, env, track=None) -> dict:
    """One job: set the environment `env`, then claim and run the trials of
    `trials` (one pack) that no live worker holds, stopping at the next
    evaluation on SIGUSR2 (the time limit is near) or SIGTERM (scancel).
    Returns {"claimed", "stopped"}, or {"error": one line} for bad input and
    OS errors (a full disk, a lost mount)."""
    os.environ.update(env)
    apply_cache_options()
    stop = threading.Event()
    for signum in (signal.SIGUSR2, signal.SIGTERM):
        signal.signal(signum, lambda signum, frame: stop.set())
    from harness.sweep.store import Store
    from harness.sweep.worker import try_pack

    try:
        claimed = try_pack(Store(folder), trials, prune, data_dir, lease_s, should_stop=stop.is_set, track=track)
    except (UserError, OSError) as e:
        return {"error": os_error_text(e) if isinstance(e, OSError) else str(e)}
    return {"claimed": claimed, "stopped": stop.is_set()}


def job_environment(folder, options: SlurmOptions) -> dict:
    """What a job adds to the environment it inherits from the sweep: the
    shared compilation cache; on one CPU core without GPUs, XLA's CPU thread
    pools limited to one thread (as local workers are)."""
    env = compilation_cache(folder)
    if options.gpus_per_job == 0 and options.cpus_per_job == 1:
        env["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {CPU_XLA_FLAGS}".strip()
    return env


def make_executor(folder, options: SlurmOptions, workers: int | None = None):
    """The submitit executor of the jobs, writing its files in `options.folder` (else FOLDER/slurm)."""
    submitit = _submitit()
    executor = submitit.AutoExecutor(folder=options.folder or Path(folder) / "slurm", cluster=options.cluster)
    parameters = dict(
        name=f"cbs-{Path(folder).name}",
        timeout_min=options.time_limit,
        cpus_per_task=options.cpus_per_job,
        nodes=1,
        tasks_per_node=1,
    )
    if options.gpus_per_job:
        parameters["gpus_per_node"] = options.gpus_per_job
    if options.cluster == "slurm":
        parameters.update(slurm_signal_delay_s=min(SIGNAL_DELAY_S, 30 * options.time_limit))
        parameters.update(slurm_array_parallelism=workers or 256)
        if options.partition:
            parameters["slurm_partition"] = options.partition
    executor.update_parameters(**parameters)
    return executor


def run_slurm(
    folder, trials, prune, data_dir, lease_s, progress=None, options=SlurmOptions(), workers=None, pack=1, track=None
) -> None:
    """Run the trials as jobs (see the module), `workers` of them at once at
    most (None: Slurm's scheduler decides), until every trial has a record."""
    from harness.sweep.packing import PackSize, packs
    from harness.sweep.store import Store

    executor = make_executor(folder, options, workers)
    env, store, size = job_environment(folder, options), Store(folder), PackSize(pack, data_dir)
    pending = list(trials)
    if progress:
        progress.plan(trials, min(workers or len(trials), len(trials)) * (pack if isinstance(pack, int) else 1), prune)
    jobs: list = []
    try:
        while pending:
            free = [t for t in pending if not store.is_held(t.id)]
            if free:
                mark = _progress_mark(store, pending)
                groups = packs(free, size)
                n = len(groups)
                args = ([folder] * n, groups, [prune] * n, [data_dir] * n, [lease_s] * n, [env] * n, [track] * n)
                jobs = _submit(executor, args)
                outcomes = wait_for_jobs(jobs, options.cluster, progress)
                if all(o["stopped"] for o in outcomes) and _progress_mark(store, pending) == mark:
                    raise UserError(
                        f"--time-limit {options.time_limit}: the jobs reached their time limit before any trial "
                        f"got to its next evaluation; allowed: a longer --time-limit; {ON_FAILURE}"
                    )
            else:  # held by live workers elsewhere: wait for them to finish or for their leases to lapse
                time.sleep(min(lease_s / 8, 1.0))
                if progress:
                    progress.update()
            pending = [t for t in pending if not store.is_done(t.id)]
    finally:
        _cancel(jobs, options.cluster)
        if progress:
            progress.close()


def _progress_mark(store, trials) -> tuple:
    """What grows while trials make progress: finished trials, and the evaluations they logged."""
    sizes = 0
    for t in trials:
        with_size = store.measurements_path(t.id)
        sizes += with_size.stat().st_size if with_size.exists() else 0
    return sum(store.is_done(t.id) for t in trials), sizes


def _submit(executor, args) -> list:
    """Submit one job per pack, as one job array; sbatch's refusal as one line."""
    from submitit.core.utils import UncompletedJobError

    try:
        return executor.map_array(slurm_pack, *args)
    except UncompletedJobError as e:
        cause = (str(e).strip().splitlines() or ["no reason given"])[-1]
        raise UserError(f"sbatch refused the jobs: {cause}; allowed: options this cluster accepts") from None


def wait_for_jobs(jobs, cluster: str, progress=None) -> list[dict]:
    """The outcomes of `jobs` (slurm_pack's results) once all have ended,
    updating `progress` every PARENT_POLL_S seconds; UserError (one line) as
    soon as one failed."""
    outcomes: dict[int, dict] = {}
    left_queue: dict[int, float] = {}
    asked = float("-inf")
    while len(outcomes) < len(jobs):
        now = time.monotonic()
        if cluster == "slurm" and now - asked >= QUEUE_POLL_S:
            asked, queued = now, _queued()
            for i, job in enumerate(jobs):
                if queued is not None and job.job_id not in queued:
                    left_queue.setdefault(i, now)
        for i, job in enumerate(jobs):
            if i in outcomes:
                continue
            if job.paths.result_pickle.exists() or (cluster == "local" and job.done()):
                outcomes[i] = _outcome(job)
            elif now - left_queue.get(i, now) > RESULT_GRACE_S:
                outcomes[i] = {"error": f"Slurm job {job.job_id} ended without a result{_last_log_line(job)}"}
            if "error" in outcomes.get(i, {}):
                raise UserError(f"{outcomes[i]['error']}; its log: {job.paths.stderr}; {ON_FAILURE}")
        if progress:
            progress.update()
        if len(outcomes) < len(jobs):
            time.sleep(PARENT_POLL_S)
    return [outcomes[i] for i in range(len(jobs))]


def _outcome(job) -> dict:
    """slurm_pack's result, or {"error": one line} when the job raised or was killed."""
    from submitit.core.utils import UncompletedJobError

    try:
        return job.result()
    except UncompletedJobError as e:
        return {"error": f"Slurm job {job.job_id} failed: {_error_line(str(e))}"}


def _error_line(message: str) -> str:
    """The exception line of a failed job's trace (submitit puts the trace between two lines of dashes)."""
    parts = re.split(r"\n-{10,}\n", message)
    lines = [line.strip() for line in (parts[1] if len(parts) > 2 else message).splitlines() if line.strip()]
    return lines[-1] if lines else "no error message"


def _last_log_line(job) -> str:
    """`: ` and the last line of the job's stderr (Slurm's reason, e.g. the time limit), if any."""
    try:
        lines = [line.strip() for line in job.paths.stderr.read_text().splitlines() if line.strip()]
    except OSError:
        return ""
    return f": {lines[-1]}" if lines else ""


def _queued() -> set[str] | None:
    """The ids of this user's queued and running jobs, array tasks one by one; None when squeue fails."""
    listing = subprocess.run(
        ["squeue", "-h", "-r", "-u", getpass.getuser(), "-o", "%i"], capture_output=True, text=True
    )
    return set(listing.stdout.split()) if listing.returncode == 0 else None


def _cancel(jobs, cluster: str) -> None:
    """Cancel the jobs still running (each checkpoints at its next evaluation, on SIGTERM)."""
    live = [job for job in jobs if not job.paths.result_pickle.exists()]
    if not live:
        return
    if cluster == "slurm":
        subprocess.run(["scancel", *(job.job_id for job in live)], capture_output=True)
        return
    for job in live:  # a local job's id is its controller's pid, which passes SIGTERM on to the job
        try:
            os.kill(int(job.job_id), signal.SIGTERM)
        except ProcessLookupError:
            pass
