"""`--executor slurm` (harness.sweep.slurm) on real MNIST: with submitit's
local executor, the same records as local workers and every trial trained
once while a duplicate job runs beside the sweep's, a job stopped by a signal
resumed by the next; against a real single-node Slurm (.ci/slurm_up.sh
starts one; skipped with the reason where none runs), a sweep of array jobs;
and bad options refused in one line before anything is submitted."""

import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import DATA_DIR as DATA

from harness.cli import main
from harness.errors import UserError
from harness.sweep.leases import held, try_claim
from harness.sweep.run import run_sweep
from harness.sweep.slurm import SlurmOptions, job_environment, make_executor, run_slurm, slurm_pack, wait_for_jobs
from harness.sweep.spec import load_spec
from harness.sweep.store import Store

submitit = pytest.importorskip("submitit")

SPEC = """
workload = "mnist_fc32x1"
optimizer = "sgd"
batch_sizes = [128]
target = 0.15
prune = false  # trials running at once would prune each other in the order they happen to run
max_steps = {max_steps}
eval_every = 20
checkpoint_every = 20
[search]
kind = "grid"
[search.space]
learning_rate = [0.5, 0.003]
"""
COMPARED = ("step", "examples", "train_loss", "val_loss", "val_metric")
LOCAL = SlurmOptions(cluster="local", time_limit=10)
SLURM_STATUS = Path(os.environ.get("CBS_SLURM_STATUS", "/tmp/cbs-slurm-status"))


def write_spec(folder: Path, max_steps=60) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "spec.toml"
    path.write_text(SPEC.format(max_steps=max_steps))
    return path


def outcomes(folder) -> dict:
    """Each trial's status, steps to the target and measurements."""
    out = {}
    for path in Path(folder).glob("trials/*/record.json"):
        record = json.loads(path.read_text())
        rows = tuple(tuple(row[k] for k in COMPARED) for row in record["measurements"])
        out[path.parent.name] = (record["status"], record["steps_to_target"], rows)
    return out


def attempts(folder) -> dict:
    store = Store(folder)
    return {p.name: len(store.attempts(p.name)) for p in (Path(folder) / "trials").iterdir()}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The sweep run by one local worker."""
    root = tmp_path_factory.mktemp("reference")
    outcome = run_sweep(write_spec(root), root / "sweep", workers=1, data_dir=DATA)
    assert outcome.trials == 2 and sum(outcome.by_status.values()) == 2
    return outcomes(root / "sweep")


def test_submitit_jobs_give_the_local_records_and_run_every_trial_once(reference, tmp_path):
    """The sweep through submitit's local executor, while a duplicate job of
    its first pack runs beside it (as a job submitted twice, or left over
    from an earlier run, would): each trial is trained once, by one of them."""
    folder, spec_path = tmp_path / "sweep", write_spec(tmp_path)
    spec = load_spec(spec_path)
    Store(folder).open(spec, spec.text)
    env = job_environment(folder, LOCAL)
    duplicate = make_executor(folder, LOCAL).submit(slurm_pack, str(folder), spec.trials()[:1], False, DATA, 60.0, env)
    outcome = run_sweep(spec_path, folder, executor="slurm", slurm_options=LOCAL, data_dir=DATA)
    (result,) = wait_for_jobs([duplicate], "local")
    assert outcome.trials == 2 and result["stopped"] is False and "error" not in result
    assert outcomes(folder) == reference
    assert attempts(folder) == {t: 1 for t in reference}
    assert len(list((folder / "slurm").glob("*_result.pkl"))) >= 2  # the jobs' files are in OUT/slurm
    again = run_sweep(spec_path, folder, executor="slurm", slurm_options=LOCAL, data_dir=DATA)
    assert again.pending_at_start == 0 and attempts(folder) == {t: 1 for t in reference}


@pytest.mark.slow  # ~30 s: an uninterrupted run and two jobs
def test_a_job_stopped_by_its_time_limit_signal_is_resumed_by_the_next(tmp_path):
    """SIGTERM (scancel's signal; SIGUSR2, Slurm's warning before the time
    limit, is handled alike) stops a job at its next evaluation with a
    checkpoint; the sweep submits the trial again, which resumes there and
    ends with the record of an uninterrupted run."""
    spec_path = write_spec(tmp_path, max_steps=200)
    whole = run_sweep(
        spec_path, tmp_path / "whole", workers=1, data_dir=DATA, overrides=["search.space.learning_rate=[0.003]"]
    )
    assert whole.trials == 1
    folder = tmp_path / "sweep"
    spec = load_spec(spec_path, overrides=["search.space.learning_rate=[0.003]"])
    store = Store(folder)
    store.open(spec, spec.text)
    (trial,) = spec.trials()
    jobs = make_executor(folder, LOCAL).map_array(
        slurm_pack,
        [str(folder)],
        [[trial]],
        [False],
        [DATA],
        [60.0],
        [job_environment(folder, LOCAL)],
        [None],
    )
    deadline = time.monotonic() + 180
    while not any(store.checkpoint_dir(trial.id).glob("[0-9]*")) and time.monotonic() < deadline:
        time.sleep(0.2)
    os.kill(int(jobs[0].job_id), signal.SIGTERM)  # a local job's id is its controller's pid: it passes SIGTERM on
    (result,) = wait_for_jobs(jobs, "local")
    assert result == {"claimed": True, "stopped": True} and not store.is_done(trial.id)
    run_slurm(str(folder), [trial], False, DATA, 60.0, options=LOCAL)
    assert outcomes(folder) == outcomes(tmp_path / "whole")
    steps = [a["checkpoint_step"] for a in store.attempts(trial.id)]
    assert len(steps) == 2 and steps[0] is None and steps[1] > 0  # the second job resumed from a checkpoint


def test_a_failed_job_is_one_line_naming_its_error_and_its_log(tmp_path):
    """An OS error in a job (its sweep folder is a file here) and an exception
    it raised each end the wait with one line."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    spec = load_spec(write_spec(tmp_path))
    executor = make_executor(tmp_path / "jobs", LOCAL)
    env = job_environment(tmp_path / "jobs", LOCAL)
    jobs = [
        executor.submit(slurm_pack, str(blocker), spec.trials()[:1], False, DATA, 60.0, env),
        executor.submit(int, "many"),
    ]
    causes = [f"Not a directory: {blocker}/trials/", f"Slurm job {jobs[1].job_id} failed: ValueError: invalid literal"]
    for job, cause in zip(jobs, causes):
        with pytest.raises(UserError) as e:
            wait_for_jobs([job], "local")
        message = str(e.value)
        assert message.startswith(cause) and "\n" not in message, message
        assert message.endswith(f"; its log: {job.paths.stderr}; finished trials are kept: re-run to resume")


def test_held_sees_a_live_claim_and_not_a_released_one(tmp_path):
    assert not held(tmp_path / "t")
    lease = try_claim(tmp_path / "t", "elsewhere:1", lease_s=60)
    assert held(tmp_path / "t")
    with lease:
        assert held(tmp_path / "t")
    assert not held(tmp_path / "t")  # released on exit


# --- bad input ------------------------------------------------------------------


@pytest.mark.parametrize(
    "options, message",
    [
        (
            ["--time-limit", "-5"],
            "--time-limit -5: must be at least 1 minute; allowed: integers >= 1 (minutes per job)",
        ),
        (["--time-limit", "0"], "--time-limit 0: must be at least 1 minute; allowed: integers >= 1 (minutes per job)"),
        (["--gpus-per-job", "-1"], "--gpus-per-job -1: must be >= 0; allowed: integers >= 0"),
        (["--cpus-per-job", "0"], "--cpus-per-job 0: must be >= 1; allowed: integers >= 1"),
        (
            ["--partition", "gpu batch"],
            "--partition 'gpu batch': not a partition name; allowed: letters, digits, _ . - (several comma-separated)",
        ),
    ],
)
def test_bad_slurm_options_are_one_line_before_anything_is_submitted(options, message, tmp_path, capsys):
    argv = ["sweep", str(write_spec(tmp_path)), "--out", str(tmp_path / "sweep"), "--executor", "slurm", *options]
    assert main(argv) == 2
    assert capsys.readouterr().err == f"cbs: error: {message}\n"
    assert not (tmp_path / "sweep").exists()


def test_slurm_options_need_the_slurm_executor(tmp_path, capsys):
    assert main(["sweep", str(write_spec(tmp_path)), "--partition", "debug"]) == 2
    assert capsys.readouterr().err == (
        "cbs: error: --partition: only with --executor slurm; allowed: leave it out, or --executor slurm\n"
    )


def test_missing_submitit_is_one_line_naming_the_extra(tmp_path):
    code = (
        "import sys; sys.modules['submitit'] = None; from harness.cli import main; "
        f"sys.exit(main(['sweep', {str(write_spec(tmp_path))!r}, '--out', {str(tmp_path / 'sweep')!r}, "
        "'--executor', 'slurm']))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and not (tmp_path / "sweep").exists()
    assert proc.stderr == (
        "cbs: error: --executor slurm needs submitit; allowed: pip install 'critical-batch-size[slurm]', "
        "or --executor local\n"
    )


# --- a real single-node Slurm ---------------------------------------------------------


@functools.cache
def slurm_running() -> str | None:
    """None when a Slurm controller answers with a usable node, else why not (asked once)."""
    started = f" (.ci/slurm_up.sh: {SLURM_STATUS.read_text().strip()})" if SLURM_STATUS.exists() else ""
    if not shutil.which("sbatch") or not shutil.which("sinfo"):
        return f"no Slurm here: sbatch and sinfo not found{started or '; .ci/slurm_up.sh installs and starts one'}"
    try:
        states = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return f"Slurm not running: sinfo did not answer in 30 s{started}"
    if states.returncode != 0 or not {"idle", "mix", "alloc"} & set(states.stdout.split()):
        return f"Slurm not running: sinfo says {(states.stdout + states.stderr).strip()[:200]!r}{started}"
    return None


@pytest.fixture
def slurm():
    reason = slurm_running()
    if reason:
        pytest.skip(reason)


def test_a_sweep_on_a_real_slurm_runs_each_pack_as_a_job_of_one_array(slurm, reference, tmp_path):
    spec = write_spec(tmp_path)
    argv = ["sweep", str(spec), "--out", str(tmp_path / "sweep"), "--executor", "slurm", "--data-dir", DATA]
    proc = subprocess.run(
        [sys.executable, "-m", "harness.cli", *argv, "--time-limit", "5", "--workers", "2"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert outcomes(tmp_path / "sweep") == reference
    assert attempts(tmp_path / "sweep") == {t: 1 for t in reference}
    results = sorted(p.name for p in (tmp_path / "sweep" / "slurm").glob("*_result.pkl"))
    arrays = {name.split("_")[0] for name in results}
    assert len(results) == 2 and len(arrays) == 1, results  # <array id>_<task>_0_result.pkl: one array of two


def test_a_partition_the_cluster_lacks_is_one_line(slurm, tmp_path, capsys):
    argv = ["sweep", str(write_spec(tmp_path)), "--out", str(tmp_path / "sweep"), "--executor", "slurm"]
    assert main([*argv, "--partition", "no_such_partition"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cbs: error: --partition no_such_partition: no such Slurm partition; ") and "(sinfo)" in err
    assert err.count("\n") == 1 and not (tmp_path / "sweep").exists()


def test_a_job_that_ends_without_a_result_is_one_line(slurm, tmp_path, monkeypatch):
    """A job killed before it wrote its result (here it exits at once) is
    seen gone from squeue: no sacct needed, where accounting is off."""
    from harness.sweep import slurm as executor_module

    monkeypatch.setattr(executor_module, "QUEUE_POLL_S", 0.5)
    monkeypatch.setattr(executor_module, "RESULT_GRACE_S", 2.0)
    job = make_executor(tmp_path, SlurmOptions(time_limit=2)).submit(os._exit, 3)
    with pytest.raises(UserError) as e:
        wait_for_jobs([job], "slurm")
    assert str(e.value).startswith(f"Slurm job {job.job_id} ended without a result") and "\n" not in str(e.value)
