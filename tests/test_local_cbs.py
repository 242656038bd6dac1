"""The branched local critical batch size (Merrill et al. 2025): the k* rule,
exact branching from a snapshot, the estimate on linear regression against
the closed-form noise scale, and the one-line errors of its spec."""
import dataclasses
import math
from pathlib import Path

import numpy as np
import orbax.checkpoint as ocp
import pytest

from analysis.local_cbs import k_star, load_local_cbs
from harness.engine.train import run_trial
from harness.engine.trial import TrialConfig
from harness.engine.workloads import get_workload
from harness.errors import UserError
from harness.sweep.local_cbs import REFERENCE_ID, parse_local_cbs_spec
from harness.sweep.store import Store
from harness.sweep.worker import work

REFERENCE = {"workload": "linear_regression", "optimizer": "sgd", "batch_size": 2, "learning_rate": 0.1,
             "max_steps": 20, "eval_every": 10}


def _raw(**section):
    return {"local_cbs": {"checkpoint_steps": [10], "multipliers": [1, 2, 4], "delta_examples": 64,
                          "reference": dict(REFERENCE), **section}}


def test_k_star_takes_the_largest_k_within_epsilon_of_every_smaller_one():
    ks = [0.5, 1, 2, 4, 8]
    # k=4 is within 0.01 of min(0.50, 0.505, 0.52) = 0.50; k=2 is not, but the largest qualifying k counts
    assert k_star(ks, [0.50, 0.505, 0.52, 0.509, 0.6], 0.01) == (4, math.sqrt(32), False)
    assert k_star(ks, [0.5, 0.5, 0.5, 0.5, 0.5], 0.0) == (8, 8, True)  # the largest k: a lower bound
    assert k_star(ks, [0.5, 0.7, math.inf, math.inf, math.inf], 0.01) == (0.5, math.sqrt(0.5), False)
    assert k_star(ks, [math.inf] * 5, 0.01) == (None, None, False)


def test_branch_at_k1_reproduces_the_reference_continuation(tmp_path):
    reference = TrialConfig(**{**REFERENCE, "max_steps": 40}, stop_at_target=False, snapshot_steps=(20,),
                            gns=True, microbatches=2)
    ref = run_trial(reference, snapshot_dir=tmp_path)
    branch = dataclasses.replace(reference, snapshot_steps=(), gns=False, init_from=str(tmp_path / "20"),
                                 init_step=20)
    rows = run_trial(branch).measurements
    later = [r for r in ref.measurements if r["step"] >= 20]
    assert [r["step"] for r in rows] == [20, 30, 40]
    assert [r["val_loss"] for r in rows] == [r["val_loss"] for r in later]
    assert [r["train_loss"] for r in rows[1:]] == [r["train_loss"] for r in later[1:]]


def _b_noise(w, x, y):
    """B_noise = tr(H Sigma) / G^T H G (McCandlish et al. 2018, Eq. 2.8) of
    0.5 (x.w - y)^2 over the training set, exactly: per-example gradients
    g_i = x_i (x_i.w - y_i), G their mean, H = X^T X / n."""
    g = x * (x @ w - y)[:, None]
    big_g, h = g.mean(0), x.T @ x / len(x)
    return (np.einsum("ni,ij,nj->", g, h, g) / len(x) - big_g @ h @ big_g) / (big_g @ h @ big_g)


@pytest.mark.slow
def test_branched_estimate_is_within_4x_of_the_noise_scale_on_linear_regression(tmp_path):
    """The truth: SGD on a quadratic with H = I at the loss-optimal learning
    rate eta = B / (B + B_noise) (McCandlish et al. 2018, Eq. 2.6 with
    eps_max = 1) scales linearly with the batch until k * eta reaches eps_max,
    i.e. up to k B = B + B_noise; beyond it the steps overshoot and the loss
    after the same examples rises. The branched estimate (paper settings: EMA
    0.5, epsilon 0.01; validation loss, exact on the fixed validation set)
    must land within a factor 4 of B_noise at the checkpoint (the grid of
    powers of two alone allows sqrt 2)."""
    data = get_workload("linear_regression").load_data(None)
    x, y = data.train_x.astype(np.float64), data.train_y.astype(np.float64)
    batch = 2
    lr = batch / (batch + _b_noise(np.zeros(x.shape[1]), x, y))  # the model starts at w = 0
    raw = _raw(checkpoint_steps=[1], multipliers=[0.5, 1, 2, 4, 8, 16], delta_examples=1024, loss="val",
               reference={**REFERENCE, "batch_size": batch, "learning_rate": lr, "max_steps": 1, "eval_every": 1})
    spec = parse_local_cbs_spec(raw, tmp_path)
    Store(tmp_path).open(spec, "")
    work(tmp_path, [spec.reference()], prune=False)
    work(tmp_path, spec.branches(), prune=False)
    state = ocp.StandardCheckpointer().restore(Store(tmp_path).snapshot_dir(REFERENCE_ID).absolute() / "1/1/state")
    truth = _b_noise(np.asarray(state["params"]["Dense_0"]["kernel"], np.float64)[:, 0], x, y)
    local = load_local_cbs(tmp_path).table.iloc[0]
    assert not local["censored"]
    assert truth / 4 <= local["local_cbs"] <= truth * 4, (local["local_cbs"], truth)


@pytest.mark.parametrize("section, message", [
    (dict(checkpoint_steps=[10, 30]), "local_cbs.checkpoint_steps: step 30 is beyond the reference run (max_steps 20)"),
    (dict(multipliers=[]), "local_cbs.multipliers: empty list"),
    (dict(epsilon=-0.1), "local_cbs.epsilon: must be >= 0"),
    (dict(ema=1.0), "local_cbs.ema: must be in [0, 1)"),
    (dict(multipliers=[0.3, 1]), "local_cbs.multipliers: k = 0.3 gives batch size 0.6"),
    (dict(delta_examples=12), "local_cbs.delta_examples: 12 is not a positive multiple of the batch size 8"),
    (dict(lr_scaling="cubic"), "local_cbs.lr_scaling: unknown value 'cubic'; allowed: none, linear, sqrt"),
    (dict(checkpoint_steps={"min": 1, "max": 16}), "local_cbs.checkpoint_steps: a geometric range needs"),
])
def test_bad_input_is_one_line_naming_the_field(section, message):
    with pytest.raises(UserError) as e:
        parse_local_cbs_spec(_raw(**section), "out")
    assert message in str(e.value) and "\n" not in str(e.value)


def test_geometric_checkpoint_steps_and_default_lr_scaling(tmp_path):
    spec = parse_local_cbs_spec(_raw(checkpoint_steps={"min": 1, "max": 16, "count": 5}), tmp_path)
    Store(tmp_path).open(spec, "")
    Store(tmp_path).open(parse_local_cbs_spec(_raw(checkpoint_steps={"min": 1, "max": 16, "count": 5}), tmp_path),
                         "")  # resuming: the same spec is the stored one
    assert spec.normalized["local_cbs"]["checkpoint_steps"] == [1, 2, 4, 8, 16]
    assert spec.normalized["local_cbs"]["lr_scaling"] == "linear"
    adam = parse_local_cbs_spec(_raw(reference={**REFERENCE, "optimizer": "adam"}), tmp_path)
    assert adam.normalized["local_cbs"]["lr_scaling"] == "sqrt"
    branch = adam.branch_config(10, 4)
    assert branch.batch_size == 8 and branch.learning_rate == pytest.approx(0.2)
    assert branch.init_step == 2 and branch.max_steps == 2 + 64 // 8
    assert Path(branch.init_from) == (tmp_path / "trials/reference/snapshots/10").absolute()
