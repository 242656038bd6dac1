"""Faults a long sweep meets: damaged checkpoints (set aside, the trial resumes
from the previous good one or from scratch, results unchanged), Ctrl-C /
SIGTERM (every worker ends, one line, a re-run resumes to the same results)
and a full disk (one line, records intact, a re-run finishes)."""

import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
from conftest import DATA_DIR as DATA
from test_sweep_run import cbs_sweep, outcome_of, records, wait_for, write_spec

from harness.cli import main
from harness.sweep.run import run_sweep

TRAIN = [
    "train",
    "--workload",
    "mnist_fc32x1",
    "--optimizer",
    "sgd",
    "--batch-size",
    "32",
    "--learning-rate",
    "0.05",
    "--max-steps",
    "120",
    "--eval-every",
    "20",
    "--checkpoint-every",
    "40",
    "--no-stop-at-target",
    "--data-dir",
    DATA,
]
SWEEP = """
workload = "mnist_fc32x1"
optimizer = "sgd"
batch_sizes = [32]
target = 0.15
max_steps = 400
eval_every = 20
checkpoint_every = 40
prune = {prune}
[search]
kind = "grid"
[search.space]
learning_rate = [0.003, 0.5]
"""


def damage(step_folder: Path, kind: str) -> None:
    """Break one Orbax checkpoint step behind Orbax's back."""
    state = step_folder / "state"
    if kind == "truncated arrays":
        for f in state.rglob("d/*"):
            os.truncate(f, f.stat().st_size // 2)
    else:  # deleted metadata
        for f in [state / "_METADATA", *state.rglob("manifest.ocdbt")]:
            f.unlink()


def steps_in(folder: Path) -> list[int]:
    return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit())


def measured(out: Path) -> list[dict]:
    rows = json.loads((out / "record.json").read_text())["measurements"]
    return [{k: v for k, v in row.items() if k != "wall_time"} for row in rows]


@pytest.fixture(scope="module")
def undamaged(tmp_path_factory):
    out = tmp_path_factory.mktemp("undamaged")
    assert main(TRAIN + ["--out", str(out)]) == 0
    return measured(out)


@pytest.mark.parametrize("kind", ["truncated arrays", "deleted metadata"])
@pytest.mark.parametrize("good", [None, 80], ids=["from scratch", "from the previous checkpoint"])
def test_train_sets_a_damaged_checkpoint_aside(kind, good, undamaged, tmp_path, capsys):
    ckpt = tmp_path / "ckpt"
    if good:  # a good checkpoint at step 80 beside the damaged one at 120 (max_to_keep=1 keeps one)
        assert main(TRAIN + ["--max-steps", "80", "--checkpoint-dir", str(ckpt)]) == 0
        shutil.copytree(ckpt / "80", tmp_path / "80")
    assert main(TRAIN + ["--checkpoint-dir", str(ckpt)]) == 0
    if good:
        shutil.copytree(tmp_path / "80", ckpt / "80")
    assert steps_in(ckpt)[-1] == 120
    damage(ckpt / "120", kind)
    capsys.readouterr()
    assert main(TRAIN + ["--checkpoint-dir", str(ckpt), "--out", str(tmp_path / "out")]) == 0
    warning = capsys.readouterr().err.strip()
    assert len(warning.splitlines()) == 1, warning
    assert warning.startswith(f"cbs: warning: unreadable checkpoint of {ckpt} at step 120 set aside: ")
    assert warning.endswith(f"resuming from step {good}" if good else "resuming from scratch")
    assert measured(tmp_path / "out") == undamaged
    assert [p.name.split(".")[0] for p in ckpt.glob("*.corrupt-*")] == ["120"]
    assert steps_in(ckpt) == [120]  # rewritten by the resumed run


def rerun_equals(undamaged_sweep: dict, spec, out: Path, workers: str) -> None:
    """Re-running the sweep finishes it with the outcomes of the undisturbed run."""
    proc = cbs_sweep(spec, out, "--workers", workers)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    done = records(out)
    assert done.keys() == undamaged_sweep.keys()
    for trial_id, record in undamaged_sweep.items():
        assert outcome_of(done[trial_id]) == outcome_of(record), trial_id


@pytest.fixture(scope="module")
def undamaged_sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("undamaged_sweep")
    run_sweep(write_spec(root, text=SWEEP), root / "sweep", workers=1, data_dir=DATA)
    return records(root / "sweep")


def unfinished_checkpoints(out: Path) -> list[Path]:
    return [
        p
        for p in out.glob("trials/*/checkpoints/*")
        if p.name.isdigit() and not (p.parent.parent / "record.json").exists()
    ]


@pytest.mark.slow  # ~45 s; test_train_sets_a_damaged_checkpoint_aside covers the same by default
@pytest.mark.parametrize("kind", ["truncated arrays", "deleted metadata"])
def test_sweep_sets_a_damaged_checkpoint_aside(kind, undamaged_sweep, tmp_path):
    spec, out = write_spec(tmp_path, text=SWEEP), tmp_path / "sweep"
    proc = cbs_sweep(spec, out, "--workers", "1", start_new_session=True)
    wait_for(lambda: unfinished_checkpoints(out) or proc.poll() is not None)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    [step_folder] = unfinished_checkpoints(out)
    damage(step_folder, kind)
    trial = step_folder.parent.parent.name
    proc = cbs_sweep(spec, out, "--workers", "1")
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    warnings = [line for line in stderr.splitlines() if "cbs: warning" in line]
    assert len(warnings) == 1 and "Traceback" not in stderr, stderr
    assert (
        f"unreadable checkpoint of {out / 'trials' / trial / 'checkpoints'} at step {step_folder.name} set aside: "
        in warnings[0]
        and warnings[0].endswith("resuming from scratch")
    ), warnings[0]
    done = records(out)
    assert done.keys() == undamaged_sweep.keys()
    for trial_id, record in undamaged_sweep.items():
        assert outcome_of(done[trial_id]) == outcome_of(record), trial_id


def session_alive(sid: int) -> list[int]:
    """Live (not zombie) processes of session `sid`."""
    alive = []
    for p in Path("/proc").iterdir():
        try:
            if (
                p.name.isdigit()
                and os.getsid(int(p.name)) == sid
                and (p / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
            ):
                alive.append(int(p.name))
        except (ProcessLookupError, FileNotFoundError, PermissionError):
            pass
    return alive


@pytest.mark.parametrize(
    "signum,to_group",
    [(signal.SIGINT, True), pytest.param(signal.SIGTERM, False, marks=pytest.mark.slow)],  # ~20 s each
    ids=["SIGINT to the process group", "SIGTERM to the sweep process"],
)
def test_a_signal_stops_the_sweep_cleanly_and_a_rerun_resumes(signum, to_group, undamaged_sweep, tmp_path):
    spec, out = write_spec(tmp_path, text=SWEEP), tmp_path / "sweep"
    proc = cbs_sweep(spec, out, "--workers", "2", start_new_session=True)
    # The signal lands while the long trial (400 steps, never at the target) runs: the
    # short one may finish, and drop its checkpoints, at any moment.
    [long] = [t for t, r in undamaged_sweep.items() if r["status"] != "complete"]
    wait_for(lambda: any(p.parent.parent.name == long for p in unfinished_checkpoints(out)) or proc.poll() is not None)
    before = {p.parent: int(p.name) for p in unfinished_checkpoints(out) if p.parent.parent.name == long}
    (os.killpg if to_group else os.kill)(proc.pid, signum)
    stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 128 + signum, stderr
    assert "Traceback" not in stderr, stderr
    interrupted = [line for line in stderr.splitlines() if "interrupted" in line]
    assert interrupted == [
        f"cbs: sweep interrupted by {signal.Signals(signum).name}; finished trials and "
        "in-flight checkpoints are kept; resume with the same command: cbs sweep "
        f"{spec} --out {out} --data-dir {DATA} --workers 2"
    ], stderr
    assert all(line.startswith("[") for line in stderr.splitlines() if line not in interrupted), stderr
    wait_for(lambda: not session_alive(proc.pid), timeout=5)
    [(folder, step)] = before.items()
    assert not (folder.parent / "record.json").exists()
    assert max(steps_in(folder)) > step, (folder, step)  # checkpointed when it stopped
    rerun_equals(undamaged_sweep, spec, out, workers="2")


@pytest.fixture
def small_disk(tmp_path):
    """An 8 MiB tmpfs, or a skip where this machine cannot mount one."""
    folder = tmp_path / "disk"
    folder.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(folder)], capture_output=True, text=True
    )
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip() or 'mount failed'}")
    yield folder
    subprocess.run(["umount", str(folder)], check=True)


def fill(folder: Path) -> Path:
    """Write zeros into `folder` until its filesystem is full."""
    filler = folder / "filler"
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(bytes(1 << 16))
                f.flush()
        except OSError:
            pass
    return filler


def test_a_full_disk_stops_the_sweep_with_one_line_and_a_rerun_finishes(undamaged_sweep, small_disk, tmp_path):
    spec, out = write_spec(tmp_path, text=SWEEP), small_disk / "sweep"
    proc = cbs_sweep(spec, out, "--workers", "1")
    wait_for(lambda: records(out) or proc.poll() is not None)
    filler = fill(small_disk)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 2, stderr
    assert "Traceback" not in stderr, stderr
    [error] = [line for line in stderr.splitlines() if not line.startswith("[")]
    assert error.startswith(f"cbs: error: No space left on device: {out}/"), stderr
    assert error.endswith("; finished trials are kept: re-run to resume"), stderr
    written = records(out)  # every record.json on the full disk still parses
    assert 1 <= len(written) < len(undamaged_sweep)
    filler.unlink()
    rerun_equals(undamaged_sweep, spec, out, workers="1")
