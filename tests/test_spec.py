"""Sweep spec files: validation messages and deterministic trial expansion."""

import math
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import DATA_DIR as DATA
from scipy import stats

from harness.errors import UserError
from harness.sweep.spec import load_spec, parse_spec

BASE = """
workload = "linear_regression"
optimizer = "momentum"
batch_sizes = [8, 32]
max_steps = 100
"""
GRID = (
    BASE
    + """
[search]
kind = "grid"
[search.space]
learning_rate = [0.01, 0.1]
momentum = [0.0, 0.5, 0.9]
"""
)
QUASI = (
    BASE
    + """
[search]
kind = "quasi_random"
trials = 64
[search.space]
learning_rate = {min = 1e-4, max = 10.0, scale = "log"}
momentum = {min = 0.9, max = 0.9999, scale = "log1m"}
warmup_steps = {min = 0, max = 50}
label_smoothing = [0.0, 0.1]
"""
)


def spec_file(tmp_path, text, name="spec.toml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def error_of(tmp_path, text):
    path = spec_file(tmp_path, text)
    with pytest.raises(UserError) as e:
        load_spec(path, DATA)
    message = str(e.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    return message[len(str(path)) + 2 :]


@pytest.mark.parametrize(
    "text, expected",
    [
        (GRID + "colour = 1\n", "search.space.colour: unknown metaparameter; allowed: "),
        ("bogus = 1\n" + GRID, "bogus: unknown key; allowed: name, description, workload"),
        (GRID.replace("max_steps = 100", 'max_steps = "many"'), "max_steps: expected integer, got string 'many'"),
        (GRID.replace("[0.01, 0.1]", "[]"), "search.space.learning_rate: empty grid; allowed: a non-empty list"),
        (GRID.replace("[8, 32]", "[0, 32]"), "batch_sizes: 0 is not a positive integer; allowed: integers >= 1"),
        (GRID.replace("[8, 32]", "[-8]"), "batch_sizes: -8 is not a positive integer"),
        (
            GRID.replace("[8, 32]", "[8, 32768]"),
            "batch_sizes: 32768 is above the training set size 16384; allowed: 1 .. 16384",
        ),
        (GRID.replace("[8, 32]", "{min = 8, max = 48}"), "batch_sizes.max: 48 is not a positive power of two"),
        (GRID + "", None),
        ("target = -1.0\n" + GRID, "target: -1.0 can never be reached: squared_error must get strictly below it"),
        (
            GRID.replace("linear_regression", "mnist_simple_cnn").replace("max_steps", "target = 1.5\nmax_steps"),
            "target: 1.5 is outside the range of error_rate (0 to 1): every error_rate is below it; "
            "allowed: (0.0, 1.0]",
        ),
        (GRID.replace("linear_regression", "nope"), "workload: unknown workload 'nope'; allowed: "),
        (
            GRID.replace("linear_regression", "linear_regresion"),
            "workload: unknown workload 'linear_regresion'; did you mean linear_regression? allowed: mnist_",
        ),
        (GRID.replace("max_steps", "max_step"), "max_step: unknown key; did you mean max_steps? allowed: name, "),
        (
            GRID.replace("learning_rate =", "learning_rat ="),
            "search.space.learning_rat: unknown metaparameter; did you mean learning_rate? allowed: algorithm, b1",
        ),
        (
            GRID.replace('"momentum"', '"nesterv"'),
            "optimizer: unknown value 'nesterv'; did you mean nesterov? allowed: sgd, momentum",
        ),
        (GRID.replace('"momentum"', '"adagrad"'), "optimizer: unknown value 'adagrad'; allowed: sgd, momentum"),
        (GRID.replace("max_steps = 100", ""), "max_steps: missing: a trial needs a budget; allowed: max_steps and/or"),
        (
            GRID.replace('"grid"', '"random"'),
            "search.kind: unknown value 'random'; did you mean quasi_random? allowed: grid, quasi_random",
        ),
        (
            QUASI.replace('"log1m"', '"log2"'),
            "search.space.momentum.scale: unknown value 'log2'; did you mean log? allowed: linear, log, log1m",
        ),
        (QUASI.replace("1e-4", "0.0"), "search.space.learning_rate: log scale needs min > 0, got 0.0"),
        (QUASI.replace("max = 0.9999", "max = 1.0"), "search.space.momentum: log1m scale (log(1 - x)) needs max < 1"),
        (QUASI.replace("trials = 64", ""), "search.trials: missing or < 1"),
        (
            GRID.replace("[0.01, 0.1]", "{min = 0.01, max = 0.1}"),
            "search.space.learning_rate: a range needs kind = quasi_random",
        ),
        (GRID.replace("[0.01, 0.1]", '["fast"]'), "search.space.learning_rate: expected number, got string 'fast'"),
        (
            GRID + '[fixed]\nschedule = "wavy"\n',
            "fixed.schedule: unknown value 'wavy'; allowed: constant, linear_decay",
        ),
        (GRID + "[fixed]\nlearning_rate = 0.1\n", "search.space.learning_rate: also in [fixed]"),
        (BASE, "fixed.learning_rate: missing: every trial needs a learning rate"),
        (GRID + '[fixed]\nschedule = "linear_decay"\n', "trial b000008-"),
        (GRID.replace("max_steps = 100", 'max_steps = 100\nlr_scaling = "linear"'), "reference_batch_size: missing"),
        (GRID.replace("[8, 32]", "[8, 8]"), "batch_sizes: repeated batch size"),
    ],
)
def test_bad_specs_fail_with_file_field_and_allowed_values(tmp_path, text, expected):
    if expected is None:
        load_spec(spec_file(tmp_path, text), DATA)
        return
    assert error_of(tmp_path, text).startswith(expected)


def test_invalid_toml_and_missing_file(tmp_path):
    assert "not valid TOML" in error_of(tmp_path, "workload = ")
    with pytest.raises(UserError, match="spec file not found"):
        load_spec(tmp_path / "absent.toml")


def test_grid_expands_to_the_product_per_batch_size_and_seed(tmp_path):
    spec = load_spec(spec_file(tmp_path, GRID.replace("max_steps", "seeds = [3, 7]\nmax_steps")), DATA)
    trials = spec.trials()
    assert len(trials) == 2 * 2 * 3 * 2
    points = {(t.config.batch_size, t.config.learning_rate, t.config.momentum, t.config.seed) for t in trials}
    assert points == {(b, lr, m, s) for b in (8, 32) for lr in (0.01, 0.1) for m in (0.0, 0.5, 0.9) for s in (3, 7)}
    for t in trials:
        assert t.id.startswith(f"b{t.config.batch_size:06d}-") and t.id.endswith(f"-s{t.config.seed}")
        assert t.config.optimizer == "momentum" and t.config.max_steps == 100
    # the same metaparameters share their hash across batch sizes and seeds
    same = [t.id.split("-")[1] for t in trials if t.config.learning_rate == 0.1 and t.config.momentum == 0.5]
    assert len(set(same)) == 1 and len(same) == 4


def test_quasi_random_is_deterministic_across_processes_and_extends_by_prefix(tmp_path):
    path = spec_file(tmp_path, QUASI)
    ids = [t.id for t in load_spec(path, DATA).trials()]
    code = f"from harness.sweep.spec import load_spec; print(' '.join(t.id for t in load_spec({str(path)!r}).trials()))"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert other == ids and len(set(ids)) == len(ids) == 128
    fewer = load_spec(spec_file(tmp_path, QUASI.replace("trials = 64", "trials = 10"), "few.toml"), DATA)
    assert [t.id for t in fewer.trials() if t.config.batch_size == 8] == ids[:10]
    reseeded = load_spec(spec_file(tmp_path, QUASI.replace("trials = 64", "trials = 64\nseed = 1"), "r.toml"), DATA)
    assert not set(t.id for t in reseeded.trials()) & set(ids)


@pytest.mark.parametrize("sequence", ["halton", "sobol"])
def test_quasi_random_scales_are_uniform_in_their_transformed_space(tmp_path, sequence):
    text = QUASI.replace("trials = 64", f'trials = 256\nsequence = "{sequence}"')
    configs = [t.config for t in load_spec(spec_file(tmp_path, text), DATA).trials() if t.config.batch_size == 8]
    lr = np.array([c.learning_rate for c in configs])
    one_minus_m = 1 - np.array([c.momentum for c in configs])
    warmup = np.array([c.warmup_steps for c in configs])
    smoothing = np.array([c.label_smoothing for c in configs])
    assert lr.min() >= 1e-4 and lr.max() <= 10 and one_minus_m.min() >= 1e-4 and one_minus_m.max() <= 0.1
    # log(lr) uniform on [log 1e-4, log 10]; log(1 - momentum) uniform on [log 1e-4, log 0.1]
    u_lr = (np.log(lr) - math.log(1e-4)) / (math.log(10) - math.log(1e-4))
    u_m = (np.log(one_minus_m) - math.log(0.1)) / (math.log(1e-4) - math.log(0.1))
    for u in (u_lr, u_m):
        assert stats.kstest(u, "uniform").statistic < 0.03  # a quasi-random sequence: far below iid noise (~0.08)
    assert set(warmup) == set(range(51)) and warmup.dtype.kind == "i"
    assert set(smoothing) == {0.0, 0.1} and abs((smoothing == 0.1).mean() - 0.5) < 0.02


def test_budgets_and_decay_fraction_per_batch_size(tmp_path):
    text = (
        GRID.replace("max_steps = 100", "max_steps = 1000\nmax_examples = 10000").replace("[8, 32]", "[8, 32, 64]")
        + '[fixed]\nschedule = "linear_decay"\ndecay_fraction = 0.5\n'
    )
    configs = {t.config.batch_size: t.config for t in load_spec(spec_file(tmp_path, text), DATA).trials()}
    assert {b: c.max_steps for b, c in configs.items()} == {8: 1000, 32: 313, 64: 157}
    assert {b: c.decay_steps for b, c in configs.items()} == {8: 500, 32: 156, 64: 78}


def test_power_of_two_range_and_lr_scaling_without_search(tmp_path):
    text = (
        BASE.replace("[8, 32]", "{min = 4, max = 64}")
        + 'lr_scaling = "sqrt"\nreference_batch_size = 16\n[fixed]\nlearning_rate = 0.1\n'
    )
    trials = load_spec(spec_file(tmp_path, text), DATA).trials()
    assert [t.config.batch_size for t in trials] == [4, 8, 16, 32, 64]
    assert [t.config.effective_learning_rate() for t in trials] == pytest.approx(
        [0.1 * math.sqrt(b / 16) for b in (4, 8, 16, 32, 64)]
    )


def test_default_search_space_comes_from_the_workload(tmp_path):
    spec = parse_spec(
        {"workload": "mnist_fc1024", "optimizer": "sgd", "batch_sizes": [64], "max_steps": 10, "search": {"trials": 4}},
        "inline",
    )
    assert spec.search["space"] == {"learning_rate": {"min": 1e-3, "max": 10.0, "scale": "log", "integer": False}}
    assert len(spec.trials()) == 4 and spec.target == 0.03 and spec.metric == "error_rate"


EXPERIMENTS = Path(__file__).parent.parent / "experiments"


@pytest.mark.parametrize(
    "name",
    sorted(
        p.stem
        for p in (*EXPERIMENTS.glob("*.toml"), *EXPERIMENTS.glob("*/*.toml"))
        if "[local_cbs]" not in p.read_text()
    ),
)  # local-cbs specs: test_local_cbs
def test_the_experiments_are_valid_specs(name):
    spec = load_spec(next(EXPERIMENTS.glob(f"*/{name}.toml"), EXPERIMENTS / f"{name}.toml"), DATA)
    trials = spec.trials()
    assert len({t.id for t in trials}) == len(trials) >= len(spec.batch_sizes)
    if name.startswith("shallue"):
        # the CPU Simple CNN affords 6 trials per batch size in an hour of 2 cores (its spec says so)
        fewest = 6 if name == "shallue_cpu_mnist_simple_cnn_nesterov" else 16
        if spec.search["kind"] == "adaptive":  # learns from its rounds (Shallue et al. 2019, Sec. 4.7): fewer trials
            assert spec.search["initial_trials"] >= 4 and spec.search["rounds"] >= 4
        else:
            assert spec.search["kind"] == "quasi_random" and spec.search["trials"] >= fewest
        assert spec.search["space"]["learning_rate"]["scale"] == "log"
        assert all(
            t.config.schedule == "linear_decay" and 1 <= t.config.decay_steps <= t.config.max_steps for t in trials
        )
    if "simple_cnn" in name:
        assert spec.optimizer == "nesterov" and spec.search["space"]["momentum"]["scale"] == "log1m"
        assert spec.target == (0.1 if "fashion_mnist" in name else 0.01)


def test_overrides_set_toml_values_at_dotted_keys_and_the_text_records_them(tmp_path):
    import tomllib

    path = spec_file(tmp_path, QUASI)
    overrides = [
        "search.trials=16",
        "target = 0.04",
        "optimizer=nesterov",
        "fixed.weight_decay=0.001",
        "search.space.learning_rate={min = 0.01, max = 1.0, scale = 'log'}",
        "seeds=[3, 7]",
    ]
    spec = load_spec(path, DATA, overrides)
    assert (spec.search["trials"], spec.target, spec.optimizer, spec.seeds) == (16, 0.04, "nesterov", [3, 7])
    assert spec.fixed == {"weight_decay": 0.001}
    assert spec.search["space"]["learning_rate"] == {"min": 0.01, "max": 1.0, "scale": "log", "integer": False}
    assert len(spec.trials()) == 2 * 16 * 2
    assert spec.text.startswith(f"# {path} with --set search.trials=16 target = 0.04 ")
    assert tomllib.loads(spec.text)["search"]["trials"] == 16
    assert load_spec(spec_file(tmp_path, spec.text, "stored.toml"), DATA).normalized == {
        **spec.normalized,
        "name": "stored",
    }
    # without overrides the text is the file as written, comments included
    assert load_spec(spec_file(tmp_path, "# mine\n" + GRID), DATA).text == textwrap.dedent("# mine\n" + GRID)


def test_a_spec_as_a_dict_equals_the_file(tmp_path):
    import tomllib

    raw = tomllib.loads(GRID)
    from_dict, from_file = load_spec(raw, DATA), load_spec(spec_file(tmp_path, GRID), DATA)
    assert from_dict.normalized == {**from_file.normalized, "name": "spec"}
    assert tomllib.loads(from_dict.text) == raw
    assert load_spec(raw, DATA, ["batch_sizes=[8]"]).batch_sizes == [8] and raw["batch_sizes"] == [8, 32]


@pytest.mark.parametrize(
    "override, expected",
    [
        ("search.trials", "--set search.trials: expected KEY=VALUE; allowed: a spec key, dotted for tables"),
        ("search..trials=3", "--set search..trials=3: expected KEY=VALUE"),
        ("optimizer.kind=grid", "--set optimizer.kind=grid: optimizer is not a table; allowed: dotted keys"),
        ("search.trials=many", "search.trials: expected integer, got string 'many'; allowed: integer"),
        ("max_steps=1.5", "max_steps: expected integer, got number 1.5"),
    ],
)
def test_bad_overrides_are_one_line_naming_the_key(tmp_path, override, expected):
    with pytest.raises(UserError) as e:
        load_spec(spec_file(tmp_path, QUASI), DATA, [override])
    assert expected in str(e.value) and "\n" not in str(e.value)
