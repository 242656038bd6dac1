"""The branched local critical batch size (Merrill et al. 2025): the k* rule,
exact branching from a snapshot, the estimate on linear regression against
the closed-form noise scale, `cbs local-cbs` end to end on MNIST (with the
offline noise scale at each checkpoint, and resumed after kill -9 to the same
numbers), and the one-line errors of its spec."""

import dataclasses
import html
import json
import math
import os
import re
import signal
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import orbax.checkpoint as ocp
import pandas as pd
import pytest
from conftest import DATA_DIR as DATA
from test_report import _chromium
from test_sweep_run import outcome_of, records, wait_for

from analysis.local_cbs import k_star, load_local_cbs
from harness.cli import main
from harness.engine.loop import TrialRun, run_trial
from harness.engine.noise_scale_study import windowed_noise_scale
from harness.engine.trial import TrialConfig
from harness.engine.workloads import get_workload
from harness.errors import UserError
from harness.sweep.local_cbs import NOISE_FILE, REFERENCE_ID, load_local_cbs_spec, parse_local_cbs_spec
from harness.sweep.store import Store
from harness.sweep.worker import work

REFERENCE = {
    "workload": "linear_regression",
    "optimizer": "sgd",
    "batch_size": 2,
    "learning_rate": 0.1,
    "max_steps": 20,
    "eval_every": 10,
}


def _raw(**section):
    return {
        "local_cbs": {
            "checkpoint_steps": [10],
            "multipliers": [1, 2, 4],
            "delta_examples": 64,
            "reference": dict(REFERENCE),
            **section,
        }
    }


def test_k_star_takes_the_largest_k_within_epsilon_of_every_smaller_one():
    ks = [0.5, 1, 2, 4, 8]
    # k=4 is within 0.01 of min(0.50, 0.505, 0.52) = 0.50; k=2 is not, but the largest qualifying k counts
    assert k_star(ks, [0.50, 0.505, 0.52, 0.509, 0.6], 0.01) == (4, math.sqrt(32), "exact")
    assert k_star(ks, [0.5, 0.5, 0.5, 0.5, 0.5], 0.0) == (8, 8, "lower")  # the largest k: a lower bound
    assert k_star(ks, [0.5, 0.509, 0.7, math.inf, math.inf], 0.01) == (1, math.sqrt(2), "exact")
    # the smallest k: nothing smaller to compare with, so only "below the next k" is known
    assert k_star(ks, [0.5, 0.7, math.inf, math.inf, math.inf], 0.01) == (0.5, 1, "upper")
    assert k_star(ks, [math.inf] * 5, 0.01) == (None, None, "exact")


def test_branch_at_k1_reproduces_the_reference_continuation(tmp_path):
    reference = TrialConfig(
        **{**REFERENCE, "max_steps": 40}, stop_at_target=False, snapshot_steps=(20,), gns=True, microbatches=2
    )
    ref = run_trial(TrialRun(reference, snapshot_dir=tmp_path))
    branch = dataclasses.replace(reference, snapshot_steps=(), gns=False, init_from=str(tmp_path / "20"), init_step=20)
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
    raw = _raw(
        checkpoint_steps=[1],
        multipliers=[0.5, 1, 2, 4, 8, 16],
        delta_examples=1024,
        loss="val",
        reference={**REFERENCE, "batch_size": batch, "learning_rate": lr, "max_steps": 1, "eval_every": 1},
    )
    spec = parse_local_cbs_spec(raw, tmp_path)
    Store(tmp_path).open(spec, "")
    work(tmp_path, [spec.reference()], prune=None)
    work(tmp_path, spec.branches(), prune=None)
    state = ocp.StandardCheckpointer().restore(Store(tmp_path).snapshot_dir(REFERENCE_ID).absolute() / "1/1/state")
    kernel = np.asarray(state["params"]["Dense_0"]["kernel"], np.float64)  # (model copies = 1, 16, 1)
    truth = _b_noise(kernel[0, :, 0], x, y)
    local = load_local_cbs(tmp_path).table.iloc[0]
    assert local["bound"] == "exact"
    assert truth / 4 <= local["local_cbs"] <= truth * 4, (local["local_cbs"], truth)


@pytest.mark.parametrize(
    "section, message",
    [
        (
            dict(checkpoint_steps=[10, 30]),
            "local_cbs.checkpoint_steps: step 30 is beyond the reference run (max_steps 20)",
        ),
        (dict(multipliers=[]), "local_cbs.multipliers: empty list"),
        (dict(epsilon=-0.1), "local_cbs.epsilon: must be >= 0"),
        (dict(ema=1.0), "local_cbs.ema: must be in [0, 1)"),
        (dict(multipliers=[0.3, 1]), "local_cbs.multipliers: k = 0.3 gives batch size 0.6"),
        (dict(delta_examples=12), "local_cbs.delta_examples: 12 is not a positive multiple of the batch size 8"),
        (dict(lr_scaling="cubic"), "local_cbs.lr_scaling: unknown value 'cubic'; allowed: none, linear, sqrt"),
        (dict(checkpoint_steps={"min": 1, "max": 16}), "local_cbs.checkpoint_steps: a geometric range needs"),
    ],
)
def test_bad_input_is_one_line_naming_the_field(section, message):
    with pytest.raises(UserError) as e:
        parse_local_cbs_spec(_raw(**section), "out")
    assert message in str(e.value) and "\n" not in str(e.value)


def test_geometric_checkpoint_steps_and_default_lr_scaling(tmp_path):
    spec = parse_local_cbs_spec(_raw(checkpoint_steps={"min": 1, "max": 16, "count": 5}), tmp_path)
    Store(tmp_path).open(spec, "")
    Store(tmp_path).open(
        parse_local_cbs_spec(_raw(checkpoint_steps={"min": 1, "max": 16, "count": 5}), tmp_path), ""
    )  # resuming: the same spec is the stored one
    assert spec.normalized["local_cbs"]["checkpoint_steps"] == [1, 2, 4, 8, 16]
    assert spec.normalized["local_cbs"]["lr_scaling"] == "linear"
    adam = parse_local_cbs_spec(_raw(reference={**REFERENCE, "optimizer": "adam"}), tmp_path)
    assert adam.normalized["local_cbs"]["lr_scaling"] == "sqrt"
    branch = adam.branch_config(10, 4)
    assert branch.batch_size == 8 and branch.learning_rate == pytest.approx(0.2)
    assert branch.init_step == 2 and branch.max_steps == 2 + 64 // 8
    assert Path(branch.init_from) == (tmp_path / "trials/reference/snapshots/10").absolute()


STUDY = """
name = "tiny"
[local_cbs]
checkpoint_steps = [20, 60]
multipliers = [0.5, 1, 2, 4]
delta_examples = 1024
loss = "val"
evals_per_branch = 4
noise_window = 4
noise_samples = 32
[local_cbs.reference]
workload = "mnist_fc32x1"
optimizer = "momentum"
momentum = 0.9
batch_size = 32
learning_rate = 0.05
max_steps = 60
eval_every = 20
checkpoint_every = 20
gns = true
microbatches = 2
"""


def _cbs_local_cbs(spec, out, *args, **kwargs):
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "harness.cli",
            "local-cbs",
            str(spec),
            "--out",
            str(out),
            "--data-dir",
            DATA,
            "--workers",
            "2",
            *args,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """`cbs local-cbs` on MNIST, run uninterrupted."""
    root = tmp_path_factory.mktemp("study")
    (root / "spec.toml").write_text(STUDY)
    proc = _cbs_local_cbs(root / "spec.toml", root / "out")
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr
    return root / "out", stdout


def test_cli_writes_the_table_the_losses_and_the_figure(study):
    out, stdout = study
    table = pd.read_csv(out / "local_cbs.csv")
    assert list(table["step"]) == [20, 60] and list(table["examples"]) == [640, 1920]
    assert set(pd.read_csv(out / "local_cbs_losses.csv")["k"]) == {0.5, 1, 2, 4}
    for row in table.itertuples():  # the k* rule, recomputed from the losses file
        losses = pd.read_csv(out / "local_cbs_losses.csv").query("step == @row.step")
        k, point, bound = k_star(list(losses["k"]), list(losses["loss"]), 0.01)
        assert (row.k_star, row.local_cbs, row.bound) == (k, point * 32, bound)
    assert (out / "local_cbs.png").stat().st_size > 10_000
    assert "b_noise_offline" in stdout.splitlines()[1] and "over the 4 steps of the reference run" in stdout


@pytest.mark.slow
def test_offline_noise_at_each_checkpoint_is_the_windowed_estimate(study):
    """One replay for every window gives what a separate replay per window gives."""
    out, _ = study
    spec = parse_local_cbs_spec(tomllib.loads(STUDY), out)
    saved = json.loads((out / NOISE_FILE).read_text())
    for entry, step in zip(saved, (20, 60)):
        alone = windowed_noise_scale(spec.reference().config, step - 3, step, data_dir=DATA, num_samples=32)
        assert entry["step"] == step and entry["window"]["first"] == step - 3
        for name in ("b_simple", "b_noise"):
            assert entry[name]["value"] == pytest.approx(alone[name]["value"], rel=1e-5)
    table = load_local_cbs(out).table
    assert list(table["b_noise_offline"]) == pytest.approx([e["b_noise"]["value"] for e in saved])


# slow: the sweep's own kill -9 test (tests/test_sweep_run.py) covers the machinery by default
@pytest.mark.slow
def test_kill_9_then_resume_equals_uninterrupted(study, tmp_path):
    expected, _ = study
    (tmp_path / "spec.toml").write_text(STUDY)
    out = tmp_path / "out"
    proc = _cbs_local_cbs(tmp_path / "spec.toml", out, start_new_session=True)
    wait_for(lambda: len(list(out.glob("trials/t*/record.json"))) >= 2 or proc.poll() is not None)
    os.killpg(proc.pid, signal.SIGKILL)  # the study and its workers die at once, as with a power cut
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read()
    assert not (out / "local_cbs.csv").exists()
    proc = _cbs_local_cbs(tmp_path / "spec.toml", out)
    _, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr
    done, uninterrupted = records(out), records(expected)
    assert set(done) == set(uninterrupted)
    assert all(outcome_of(done[t]) == outcome_of(uninterrupted[t]) for t in done)
    assert pd.read_csv(out / "local_cbs.csv").equals(pd.read_csv(expected / "local_cbs.csv"))


@pytest.mark.parametrize(
    "path",
    [p for p in sorted(Path(__file__).parent.parent.glob("experiments/*/*.toml")) if "[local_cbs]" in p.read_text()],
    ids=lambda p: p.name,
)
def test_every_committed_local_cbs_spec_validates(path, tmp_path):
    spec = load_local_cbs_spec(path, tmp_path, DATA)
    assert spec.branches() and spec.normalized["local_cbs"]["noise_window"] >= 0


LOCAL_PROBE = """<script>
window.addEventListener("load", () => {
  const cells = (id) => [...document.querySelectorAll(`#${id} tr`)].map(
    (tr) => [...tr.children].map((c) => c.innerText.trim()));
  const out = document.createElement("pre");
  out.id = "seen";
  out.textContent = JSON.stringify({table: cells("local-cbs-table"), losses: cells("losses-table"),
    images: [...document.images].map((i) => [i.alt, i.complete, i.naturalWidth])});
  document.body.appendChild(out);
});
</script>"""


def test_report_page_as_rendered_by_chromium(study, tmp_path):
    out, _ = study
    assert main(["report", str(out), "--out", str(tmp_path / "report.html")]) == 0
    page = tmp_path / "probed.html"
    page.write_text((tmp_path / "report.html").read_text().replace("</body>", LOCAL_PROBE + "</body>"))
    dom = _chromium(page, tmp_path, "--dump-dom", "--virtual-time-budget=10000")
    seen = json.loads(html.unescape(re.search(r'<pre id="seen">(.*?)</pre>', dom, re.S)[1]))
    table = pd.read_csv(out / "local_cbs.csv")
    header, *rows = seen["table"]
    assert header == list(table.columns)
    assert [float(r[header.index("local_cbs")]) for r in rows] == pytest.approx(table["local_cbs"], rel=1e-3)
    assert [float(r[header.index("b_noise_offline")]) for r in rows] == pytest.approx(
        table["b_noise_offline"], rel=1e-3
    )
    header, *rows = seen["losses"]
    assert header == ["step", "k = 0.5", "k = 1", "k = 2", "k = 4"] and [r[0] for r in rows] == ["20", "60"]
    assert [(alt, complete) for alt, complete, _ in seen["images"]] == [("local_cbs", True)]
    assert seen["images"][0][2] > 400
