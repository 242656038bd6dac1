#!/usr/bin/env bash
# One GPU, one script, under 8 minutes: the measurements a GPU run of the
# harness owes (engine vs plain loop, packing speed-up, a short Shallue sweep),
# each stage under its own time limit, its output kept in $OUT (default
# runs/gpu). Run from the checkout on a machine with JAX for CUDA:
#
#     PYTHONPATH=. bash benchmarks/gpu.sh            # or, installed: bash benchmarks/gpu.sh
#
# The MNIST training files ship with the package (harness/engine/datasets), so
# no data folder is needed. Stages:
#   1. cbs env: the backend and devices the numbers come from;
#   2. benchmarks/engine.py: examples/s of the engine vs a plain per-step jit
#      loop, FC-1024 and the Simple CNN at B = 8 .. 4096 (~90 s);
#   3. benchmarks/packing.py: P = 1 .. 32 packed trials, FC-1024 at B = 16 and
#      128 and the Simple CNN at B = 16, speed-up against P = 1 (~120 s);
#   4. a short Simple CNN Shallue sweep, B = 16 .. 4096, 3 quasi-random trials
#      per batch size to 0.02 validation error, packed by `pack = "auto"`
#      (~150 s; a sweep resumes, so a stage cut by its limit keeps its trials).
# A stage that fails or runs out of time is reported and the next one runs.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/gpu}
mkdir -p "$OUT"
CBS=(python3 -m harness.cli)
stage() {  # stage NAME SECONDS COMMAND...: run it, tee its output to $OUT/NAME.txt, time it
  local name=$1 limit=$2
  shift 2
  echo "== $name (limit ${limit}s): $*"
  local t0=$SECONDS
  timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.txt"
  local rc=${PIPESTATUS[0]}
  echo "== $name: exit $rc after $((SECONDS - t0)) s" | tee -a "$OUT/times.txt"
}
python3 -c "import jax, flax, optax, orbax.checkpoint, pandas, scipy, matplotlib, rich, tomli_w, pooch" || {
  echo "missing packages: pip install -e . (or carry their wheels)"; exit 1; }
stage env 60 "${CBS[@]}" env
stage engine 150 python3 benchmarks/engine.py --seconds 2 --batch-sizes 8,64,512,4096
stage packing 150 python3 benchmarks/packing.py --seconds 1 --rows fc:16,fc:128,cnn:16 \
  --max-examples fc=1000000,cnn=1000000
stage sweep 170 "${CBS[@]}" sweep experiments/shallue2019/shallue_mnist_simple_cnn.toml --out "$OUT/sweep" \
  --set 'batch_sizes={min = 16, max = 4096}' --set search.trials=3 --set target=0.02 --set max_steps=4000 \
  --set eval_every=100 --set pack='"auto"'
stage sweep_analysis 60 "${CBS[@]}" analyze "$OUT/sweep"
cat "$OUT/times.txt"
