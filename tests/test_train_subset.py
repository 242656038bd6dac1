"""train_examples: a trial trains on a fixed, seeded subset of the training split
(Shallue et al. 2019's MNIST subsets); the validation split stays whole."""

import json

import numpy as np
import pytest

from harness.cli import main
from harness.engine.data import SUBSET_SEED, train_subset
from harness.engine.loop import run_trial
from harness.engine.step import Engine
from harness.engine.trial import TrialConfig
from harness.engine.workloads import get_workload
from harness.errors import UserError
from harness.sweep.run import run_sweep
from harness.sweep.spec import load_spec

TINY = dict(
    workload="mnist_fc32x1", optimizer="nesterov", learning_rate=0.05, max_steps=10, eval_every=5, stop_at_target=False
)


def test_the_subset_is_fixed_nested_and_leaves_validation_alone(data_dir):
    data = get_workload("mnist_fc32x1").load_data(data_dir)
    small, large = train_subset(data, 6875), train_subset(data, 13750)
    again = train_subset(data, 6875)
    assert len(small.train_x) == 6875 and len(small.train_y) == 6875
    assert np.array_equal(small.train_x, again.train_x) and np.array_equal(small.train_y, again.train_y)
    assert small.val_x is data.val_x and small.val_y is data.val_y
    keep = np.sort(np.random.default_rng(SUBSET_SEED).permutation(len(data.train_x))[:6875])
    assert np.array_equal(small.train_x, data.train_x[keep])
    flat = {row.tobytes() for row in large.train_x.reshape(len(large.train_x), -1)}
    assert all(row.tobytes() in flat for row in small.train_x.reshape(len(small.train_x), -1))  # nested
    assert train_subset(data, None) is data
    with pytest.raises(UserError, match="train_examples 55001 exceeds the 55000 training examples"):
        train_subset(data, 55001)


def test_an_epoch_sees_exactly_the_subset(data_dir):
    data = train_subset(get_workload("mnist_fc32x1").load_data(data_dir), 1000)
    engine = Engine(get_workload("mnist_fc32x1"), data, TrialConfig(batch_size=100, train_examples=1000, **TINY))
    assert engine.steps_per_epoch == 10
    order = np.asarray(engine.epoch_order(0))
    assert sorted(order.tolist()) == list(range(1000))  # N distinct examples in N // B steps of B


def test_none_and_the_whole_split_give_todays_data(data_dir):
    """The engine reads only the arrays (and their length): equal arrays, equal training."""
    data = get_workload("mnist_fc32x1").load_data(data_dir)
    assert train_subset(data, None) is data
    whole = train_subset(data, len(data.train_x))
    assert np.array_equal(whole.train_x, data.train_x) and np.array_equal(whole.train_y, data.train_y)
    assert (
        TrialConfig.from_dict({"workload": "mnist_fc32x1", "batch_size": 8, "learning_rate": 0.1}).train_examples
        is None
    )  # a record written before the option reads back as the whole split


def test_a_batch_larger_than_the_subset_is_refused(data_dir):
    with pytest.raises(UserError, match="batch"):
        run_trial(TrialConfig(batch_size=128, train_examples=100, **TINY), data_dir=data_dir)


def test_a_sweep_records_and_exports_its_subset(data_dir, tmp_path):
    (tmp_path / "spec.toml").write_text(
        'workload = "mnist_fc32x1"\noptimizer = "sgd"\nbatch_sizes = [32]\n'
        "target = 0.5\nmax_steps = 10\neval_every = 5\n"
        "[fixed]\nlearning_rate = 0.1\ntrain_examples = 320\n"
    )
    run_sweep(tmp_path / "spec.toml", tmp_path / "sweep", workers=1, data_dir=data_dir)
    (record,) = [json.loads(p.read_text()) for p in (tmp_path / "sweep").glob("trials/*/record.json")]
    assert record["config"]["train_examples"] == 320
    assert main(["export", str(tmp_path / "sweep"), "--format", "batch_science", "--out", str(tmp_path / "bs")]) == 0
    study = json.loads((tmp_path / "bs" / "mnist" / "fc32x1" / "sgd" / "32" / "study.json").read_text())
    assert study["train_examples"] == 320
    (tmp_path / "big.toml").write_text((tmp_path / "spec.toml").read_text().replace("320", "16"))
    with pytest.raises(UserError, match="batch"):
        load_spec(tmp_path / "big.toml", data_dir=data_dir)
