"""The README's main job: the quickstart sweep on real MNIST, end to end
through the `cbs` command, shows perfect scaling then diminishing returns and
ends with the critical batch size and its plot."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_quickstart_sweep_ends_with_the_critical_batch_size(data_dir, tmp_path):
    out = subprocess.run([sys.executable, "-m", "harness.cli", "sweep", str(ROOT / "experiments/quickstart.toml"),
                          "--out", str(tmp_path / "qs"), "--data-dir", str(data_dir)],
                         capture_output=True, text=True, env={**os.environ, "CBS_DATA_DIR": str(data_dir)})
    assert out.returncode == 0, out.stderr[-2000:]
    number = r"([\d.]+(?:e[+-]?\d+)?)"
    b_crit = re.search(rf"B_crit = E_min / S_min \(McCandlish et al. 2018\): {number} \(90% interval {number} "
                       rf"\.\. {number}\)", out.stdout)
    assert b_crit, out.stdout[-2000:]
    assert (tmp_path / "qs" / "steps_to_result.png").stat().st_size > 10_000

    analyze = subprocess.run([sys.executable, "-m", "harness.cli", "analyze", str(tmp_path / "qs"), "--json"],
                             capture_output=True, text=True, check=True)
    result = json.loads(analyze.stdout)
    steps = {r["batch_size"]: r["steps"] for r in result["rows"]}
    assert sorted(steps) == [16, 32, 64, 128, 256, 512, 1024]
    # Perfect scaling at small batch sizes: doubling B about halves the steps ...
    assert 0.4 < steps[32] / steps[16] < 0.65 and 0.4 < steps[64] / steps[32] < 0.65
    # ... diminishing returns at large ones.
    assert steps[1024] / steps[512] > 0.75
    lo, b, hi = float(b_crit[2]), float(b_crit[1]), float(b_crit[3])
    assert lo <= b <= hi and 16 < b < 1024
    assert b == float(f"{result['fit']['b_crit']:.4g}")
