"""Streamed input (harness.engine.stream, harness.engine.records): a dataset
prepared on disk trains in the order and to the measurements of the same
trial in memory; a streamed trial killed with SIGKILL resumes to the
uninterrupted run; a dataset larger than memory streams with a peak RSS well
below its size; "auto" chooses by size; tfds datasets stream through their
data sources."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import DATA_DIR
from test_data import CbsTrainValidation  # noqa: F401 (registers the tfds builder)

from harness.cli import main
from harness.engine import records, stream
from harness.engine.batch_schedule import make_engine
from harness.engine.data import load_dataset, open_prepared, prepare
from harness.engine.loop import run_trial
from harness.engine.step import Engine
from harness.engine.trial import TrialConfig
from harness.engine.workloads import get_workload
from harness.errors import UserError

BASE = dict(
    workload="mnist_fc128x1",
    batch_size=250,
    learning_rate=0.1,
    optimizer="momentum",
    max_steps=80,
    eval_every=40,
    stop_at_target=False,
)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """A data folder holding MNIST prepared (train and validation as .npy)."""
    folder = tmp_path_factory.mktemp("prepared")
    prepare("mnist", DATA_DIR, folder / "prepared" / "mnist")
    return folder


def measured(record) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "wall_time"} for row in record.measurements]


def assert_same_training(streamed, in_memory):
    """Equal steps and examples; losses and metrics equal within float32 rounding."""
    a, b = measured(streamed), measured(in_memory)
    assert [(r["step"], r["examples"]) for r in a] == [(r["step"], r["examples"]) for r in b]
    for key in ("train_loss", "val_loss", "val_metric"):  # no train loss at step 0
        assert [r[key] for r in a[1:]] == pytest.approx([r[key] for r in b[1:]], rel=1e-5, abs=1e-6), key
    assert a[0]["val_loss"] == pytest.approx(b[0]["val_loss"], rel=1e-6)


def test_prepared_arrays_are_the_loaded_ones_and_are_not_read_when_opened(prepared):
    memory, disk = load_dataset("mnist", DATA_DIR), load_dataset("mnist", prepared)
    assert isinstance(disk.train_x, records.Column) and disk.train_x.shape == memory.train_x.shape
    assert "arrays" not in vars(disk.train_x.split)  # nothing read yet
    for name in ("train_x", "train_y", "val_x", "val_y"):
        assert np.array_equal(np.asarray(getattr(disk, name)), getattr(memory, name)), name
    keys = np.array([54999, 3, 17, 3])
    assert np.array_equal(disk.train_x[keys], memory.train_x[keys])
    assert np.array_equal(np.load(prepared / "prepared" / "mnist" / "train_y.npy"), memory.train_y)  # plain .npy
    with pytest.raises(UserError, match="already holds a prepared dataset"):
        prepare("mnist", DATA_DIR, prepared / "prepared" / "mnist")


def test_the_host_draws_the_device_order_bit_for_bit(prepared):
    """Across an epoch boundary (220 steps of 250 a epoch): the keys the host
    reads are the device's permutation, which is jax.random.permutation of
    (seed, epoch), and the streamed chunk holds exactly those rows."""
    workload, config = get_workload("mnist_fc128x1"), TrialConfig(**{**BASE, "max_steps": 240}, data_placement="stream")
    disk, memory = load_dataset("mnist", prepared), load_dataset("mnist", DATA_DIR)
    streamed = Engine(workload, disk, config)
    in_memory = Engine(workload, memory, dataclasses.replace(config, data_placement="memory"))
    assert streamed.feed is not None and in_memory.feed is None
    for epoch in (0, 1):
        device = np.asarray(in_memory.epoch_order(epoch))
        eager = jax.random.permutation(jax.random.fold_in(jax.random.key(config.seed), epoch), 55000)
        assert np.array_equal(streamed.feed.host_order(epoch), device)
        assert np.array_equal(device, np.asarray(eager))
    [(step, n, (x, y))] = list(streamed.feed.chunks(218, 222))
    assert (step, n, x.shape) == (218, 4, (4, 1, 1, 250, 28, 28, 1))
    assert [in_memory.position(s) for s in (219, 220)] == [(0, 54750), (1, 0)]
    for i, s in enumerate(range(218, 222)):
        epoch, offset = in_memory.position(s)
        keys = np.asarray(in_memory.epoch_order(epoch))[offset : offset + 250]
        assert np.array_equal(streamed.feed.keys(s), keys)
        assert np.array_equal(np.asarray(x[i, 0, 0]), memory.train_x[keys])
        assert np.array_equal(np.asarray(y[i, 0, 0]), memory.train_y[keys])


@pytest.mark.parametrize(
    "fields",
    [
        {},
        dict(microbatches=2, gns=True),
        dict(algorithm="local_sgd", replicas=2, local_steps=4, optimizer="sgd"),
        dict(batch_size=125, batch_schedule=(250,), batch_schedule_examples=(7500,)),
        dict(train_examples=5000),
    ],
    ids=["minibatch", "microbatches and gns", "local sgd", "batch schedule", "subset"],
)
def test_a_streamed_trial_equals_the_in_memory_trial(prepared, fields):
    config = TrialConfig(**{**BASE, **fields})
    in_memory = run_trial(dataclasses.replace(config, data_placement="memory"), data_dir=DATA_DIR)
    streamed = run_trial(dataclasses.replace(config, data_placement="stream"), data_dir=prepared)
    assert streamed.config["data_placement"] == "stream"
    assert_same_training(streamed, in_memory)


def test_chunks_and_validation_groups_split_long_intervals(prepared, monkeypatch):
    """An interval larger than CHUNK_BYTES runs as several chunks of near-equal
    size; a validation set larger than VALIDATION_BYTES is read in groups at
    each evaluation; the measurements are the in-memory ones."""
    row = 784 * 4 + 4  # bytes of one example, image and label
    monkeypatch.setattr(stream, "CHUNK_BYTES", 14 * 250 * row)
    monkeypatch.setattr(stream, "VALIDATION_BYTES", 1500 * row)
    config = TrialConfig(**BASE, data_placement="stream")
    engine = Engine(get_workload(config.workload), load_dataset("mnist", prepared), config)
    assert engine.feed.pieces(0, 40) == [(0, 13), (13, 13), (26, 14)]
    assert isinstance(engine.val, stream.ValidationGroups)
    assert [n for _, n in engine.val] == [1500, 1500, 1500, 500]
    in_memory = run_trial(dataclasses.replace(config, data_placement="memory"), data_dir=DATA_DIR)
    streamed = run_trial(dataclasses.replace(config, data_placement="stream"), data_dir=prepared)
    assert_same_training(streamed, in_memory)


def test_uneven_intervals_compile_one_program_per_power_of_two_of_steps(prepared):
    """A geometric evaluation schedule's intervals of 1, 2, 3, 5, 7, 9 and 13
    steps are chunks padded to 1, 2, 4, 8, 8, 16 and 16 steps: five programs,
    not seven (and not one per interval on a long run)."""
    config = TrialConfig(**BASE, data_placement="stream")
    engine = Engine(get_workload(config.workload), load_dataset("mnist", prepared), config)
    state, at = engine.init(), 0
    for stop in (1, 3, 6, 11, 18, 27, 40):
        state, _, _ = engine.advance(state, at, stop)
        at = stop
    assert engine._steps._cache_size() == 5


def test_auto_places_by_size_and_the_trial_or_workload_overrides_it(prepared):
    data = load_dataset("mnist", prepared)
    size = stream.data_bytes(data)
    assert size == 60000 * (784 * 4 + 4)
    assert stream.placement("auto", "auto", data, budget=4 * size) == "memory"
    assert stream.placement("auto", "auto", data, budget=4 * size - 1) == "stream"
    assert stream.placement("auto", "stream", data, budget=100 * size) == "stream"
    assert stream.placement("memory", "stream", data, budget=1) == "memory"
    assert stream.memory_budget() > 0
    workload = dataclasses.replace(get_workload("mnist_fc128x1"), data_placement="stream")
    assert Engine(workload, data, TrialConfig(**BASE)).feed is not None
    with pytest.raises(UserError, match="unknown data_placement 'disk'; allowed: auto, memory, stream"):
        TrialConfig(**BASE, data_placement="disk").validate()


def test_a_streamed_trial_killed_with_sigkill_resumes_to_the_uninterrupted_run(prepared, tmp_path):
    """As tests/test_faults.py for in-memory trials: `cbs train` is killed once
    its first checkpoint is committed; the re-run resumes there (the
    checkpoint holds the data position of its next step) and ends with the
    measurements of a run never interrupted."""
    train = [
        "train",
        *("--workload", "mnist_fc128x1", "--batch-size", "128", "--learning-rate", "0.1", "--max-steps", "300"),
        *("--eval-every", "20", "--checkpoint-every", "40", "--no-stop-at-target", "--data-placement", "stream"),
        *("--data-dir", str(prepared)),
    ]
    assert main([*train, "--out", str(tmp_path / "uninterrupted")]) == 0
    ckpt = tmp_path / "ckpt"
    command = [sys.executable, "-m", "harness.cli", *train, "--checkpoint-dir", str(ckpt)]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not any(p.name.isdigit() for p in ckpt.glob("*")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the trial ended before its first checkpoint could be killed"
    [step_folder] = [p for p in ckpt.iterdir() if p.name.isdigit()]
    step = int(step_folder.name)
    assert step < 300
    data = json.loads((step_folder / "meta" / "metadata").read_text())["data"]
    assert data["step"] == step and data["examples"] == 128 * step
    assert main([*train, "--checkpoint-dir", str(ckpt), "--out", str(tmp_path / "resumed")]) == 0
    uninterrupted, resumed = (
        [
            {k: v for k, v in r.items() if k != "wall_time"}
            for r in json.loads((tmp_path / out / "record.json").read_text())["measurements"]
        ]
        for out in ("uninterrupted", "resumed")
    )
    assert resumed == uninterrupted


def test_a_checkpoint_of_other_data_is_refused(prepared):
    engine = make_engine(get_workload("mnist_fc128x1"), load_dataset("mnist", prepared), [TrialConfig(**BASE)])
    engine.seek(engine.data_state(40))
    with pytest.raises(UserError, match="data position .* is not this trial's"):
        engine.seek({**engine.data_state(40), "offset": 1})


def test_tfds_datasets_stream_through_their_data_sources(tmp_path):
    """A tfds dataset is opened without reading a row; in memory or streamed,
    a trial on it trains alike. Its model convolves: on XLA:CPU the engine
    dispatches one step at a time (harness.engine.step), each taking its
    batch from the placed chunk."""
    data = load_dataset("tfds:cbs_train_validation", tmp_path)
    assert isinstance(data.train_x, records.Column) and isinstance(data.train_x.split, records.TfdsSplit)
    assert "arrays" not in vars(data.train_x.split)
    assert np.array_equal(data.train_x[np.array([3, 1])], np.asarray(data.train_x)[[3, 1]])
    workload = tmp_path / "tiny.py"
    workload.write_text(
        "import flax.linen as nn\n"
        "from harness.engine.data import load_dataset\n"
        "from harness.engine.workloads import Workload\n"
        "class Conv(nn.Module):\n"
        "    @nn.compact\n"
        "    def __call__(self, x, train=False):\n"
        "        return nn.Dense(3)(nn.relu(nn.Conv(4, (3, 3))(x)).reshape(len(x), -1))\n"
        "workload = Workload('tiny', 'tfds images', lambda d=None: load_dataset('tfds:cbs_train_validation', d),\n"
        "    lambda data, **_: Conv(), 'cross_entropy', 'error_rate', 0.01, 2)\n"
    )
    config = TrialConfig(workload=f"{workload}:workload", batch_size=4, learning_rate=0.1, max_steps=8)
    runs = [run_trial(dataclasses.replace(config, data_placement=p), data_dir=tmp_path) for p in ("memory", "stream")]
    assert jax.default_backend() != "cpu" or not Engine(get_workload(config.workload), data, config).fused
    assert_same_training(runs[1], runs[0])
    folder = prepare("tfds:cbs_train_validation", tmp_path)
    assert folder == tmp_path / "prepared" / "tfds-cbs_train_validation"
    assert np.array_equal(np.asarray(open_prepared(folder).val_x), np.asarray(data.val_x))


def shifted_mnist(rows: int, seed: int = 0):
    """MNIST training images shifted by up to 3 pixels each way, in chunks
    (an augmented training set: Simard et al. 2003)."""
    mnist, rng = load_dataset("mnist", DATA_DIR), np.random.default_rng(seed)
    for start in range(0, rows, 20000):
        n = min(20000, rows - start)
        pick = rng.integers(0, len(mnist.train_x), n)
        x, (dx, dy) = mnist.train_x[pick], rng.integers(-3, 4, (2, n))
        for sx in range(-3, 4):
            for sy in range(-3, 4):
                sel = (dx == sx) & (dy == sy)
                x[sel] = np.roll(x[sel], (sy, sx), axis=(1, 2))
        yield x, mnist.train_y[pick]


@pytest.mark.slow  # ~40 s on 2 cores: 2.2 GB written, then a trial in a fresh process
def test_a_dataset_larger_than_memory_streams_with_a_small_peak_rss(tmp_path):
    rows = 700_000  # x 3,136 bytes: 2.2 GB
    mnist = load_dataset("mnist", DATA_DIR)
    folder = records.write_prepared(
        tmp_path / "big",
        "shifted_mnist",
        10,
        {"train": shifted_mnist(rows), "val": records.chunks_of(mnist.val_x, mnist.val_y)},
    )
    data = open_prepared(folder)
    size = stream.data_bytes(data)
    assert size > 2 << 30
    assert stream.placement("auto", "auto", data, budget=2 * size) == "stream"  # a process allowed 2x: streamed
    workload = tmp_path / "big.py"
    workload.write_text(
        "from harness.engine import models\n"
        "from harness.engine.data import open_prepared\n"
        "from harness.engine.workloads import Workload\n"
        f"workload = Workload('big', 'shifted MNIST', lambda d=None: open_prepared({str(folder)!r}),\n"
        "    lambda data, **_: models.MLP(hidden=(128,), num_classes=10), 'cross_entropy', 'error_rate', 0.05, 100,\n"
        "    data_placement='stream')\n"
    )
    script = (
        "import json, resource, sys\n"
        "from harness.engine.loop import run_trial\n"
        "from harness.engine.trial import TrialConfig\n"
        f"r = run_trial(TrialConfig(workload={str(workload) + ':workload'!r}, batch_size=1024, learning_rate=0.1,"
        " max_steps=300, eval_every=100, stop_at_target=False))\n"
        "print(json.dumps({'rss': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,"
        " 'error': r.final['val_metric']}))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["rss"] < size / 3, result  # 300 steps x 1,024 read 0.96 GB of the 2.2 GB
    assert result["error"] < 0.2, result
