"""The README's main job: the quickstart sweep on real MNIST, end to end
through the `cbs` command, shows perfect scaling then diminishing returns and
ends with the critical batch size and its plot."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from analysis.text import size

ROOT = Path(__file__).resolve().parents[1]


def test_quickstart_sweep_ends_with_the_critical_batch_size(data_dir, tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "harness.cli",
            "sweep",
            str(ROOT / "experiments/quickstart.toml"),
            "--out",
            str(tmp_path / "qs"),
            "--data-dir",
            str(data_dir),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "CBS_DATA_DIR": str(data_dir)},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    number = r"([\d.]+(?:e[+-]?\d+)?)"
    last = out.stdout.splitlines()[-4:]  # the headline, then the other definitions
    b_crit = re.fullmatch(
        rf"critical batch size: {number} \(90% interval {number} \.\. {number}\): training at "
        rf"B = \1 takes twice the minimal steps and twice the minimal examples; beyond it, larger "
        rf"batches buy few steps \(McCandlish et al. 2018\)",
        last[0],
    )
    assert b_crit, out.stdout[-2000:]
    for line, start in zip(last[1:], ("  20% step-overhead B_crit", "  perfect scaling ends", "  maximal useful")):
        assert line.startswith(start), line
    assert "None" not in out.stdout
    assert f"plot: {tmp_path / 'qs' / 'figures' / 'steps.png'}" in out.stdout.splitlines()
    assert (tmp_path / "qs" / "figures" / "steps.png").stat().st_size > 10_000

    analyze = subprocess.run(
        [sys.executable, "-m", "harness.cli", "analyze", str(tmp_path / "qs"), "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    result = json.loads(analyze.stdout)
    steps = {r["batch_size"]: r["steps"] for r in result["rows"]}
    assert sorted(steps) == [16, 32, 64, 128, 256, 512, 1024]
    # Perfect scaling at small batch sizes: doubling B about halves the steps ...
    assert 0.4 < steps[32] / steps[16] < 0.65 and 0.4 < steps[64] / steps[32] < 0.65
    # ... diminishing returns at large ones.
    assert steps[1024] / steps[512] > 0.75
    lo, b, hi = float(b_crit[2]), float(b_crit[1]), float(b_crit[3])
    assert lo <= b <= hi and 16 < b < 1024
    fit = result["fit"]
    assert b_crit.groups() == (size(fit["b_crit"]), *map(size, fit["b_crit_ci"]))  # the fit's numbers, rounded
