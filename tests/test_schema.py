"""The one schema of a trial's options (harness.engine.trial.OPTIONS): every
field declared with help and type, and validate(), spec files, `cbs train` and
docs/spec.md all agree with it; every committed spec and record still loads."""

import json
import tomllib
from pathlib import Path

import pytest

from harness.cli import main
from harness.cli import train as train_command
from harness.engine.algorithms import ALGORITHMS
from harness.engine.evaluation import EVAL_SCHEDULES
from harness.engine.optimizers import BATCH_LR_RULES, BETA2_RULES, LR_SCALINGS, OPTIMIZERS, SCHEDULES, WARMUPS
from harness.engine.trial import OPTIONS, PLACEMENTS, TrialConfig
from harness.errors import UserError
from harness.sweep.local_cbs import parse_local_cbs_spec
from harness.sweep.spec import MANAGED, parse_spec, spec_markdown

ROOT = Path(__file__).resolve().parents[1]
BASE = dict(workload="linear_regression", batch_size=8, learning_rate=0.1)
SPEC = dict(workload="linear_regression", batch_sizes=[8], max_steps=10, fixed={"learning_rate": 0.1})
CHOICE_FIELDS = [name for name, option in OPTIONS.items() if option.choices is not None]
RANGE_FIELDS = [name for name, option in OPTIONS.items() if option.interval]
CLI_FIELDS = [
    name for name, option in OPTIONS.items() if option.type is not dict and name not in train_command.SWEEP_ONLY
]


def _outside(option):
    """A value just outside the option's range."""
    if option.gt is not None:
        return option.gt
    if option.ge is not None:
        return option.ge - 1
    return option.lt if option.lt is not None else option.le + 1


def _spec_error(name, value) -> str:
    raw = {**SPEC, name: value} if name in MANAGED else {**SPEC, "fixed": {**SPEC["fixed"], name: value}}
    with pytest.raises(UserError) as e:
        parse_spec(raw, "s.toml")
    return str(e.value)


def test_every_field_has_one_line_help_a_type_and_choices_from_the_engine():
    assert list(OPTIONS) == list(TrialConfig.__dataclass_fields__)
    for name, option in OPTIONS.items():
        assert option.name == name and option.type is not None
        assert option.help and "\n" not in option.help, name
    assert {n: OPTIONS[n].choices for n in CHOICE_FIELDS} == {
        "optimizer": OPTIMIZERS,
        "schedule": SCHEDULES,
        "warmup": WARMUPS,
        "lr_scaling": tuple(LR_SCALINGS),
        "eval_schedule": tuple(EVAL_SCHEDULES),
        "algorithm": ALGORITHMS,
        "batch_lr_rule": BATCH_LR_RULES,
        "batch_beta2_rule": BETA2_RULES,
        "data_placement": PLACEMENTS,
    }
    assert [n for n, o in OPTIONS.items() if o.required] == ["workload", "batch_size", "learning_rate"]
    assert TrialConfig(**BASE) == TrialConfig(**BASE, **{n: o.default for n, o in OPTIONS.items() if not o.required})


@pytest.mark.parametrize("name", CHOICE_FIELDS)
def test_a_bad_choice_is_refused_everywhere_with_the_same_allowed_list(name, capsys):
    allowed = ", ".join(OPTIONS[name].choices)
    with pytest.raises(UserError) as e:
        TrialConfig(**BASE, **{name: "bogus"}).validate()
    assert str(e.value) == f"unknown {name} 'bogus'; allowed: {allowed}"
    field = name if name in MANAGED else f"fixed.{name}"
    assert _spec_error(name, "bogus") == f"s.toml: {field}: unknown value 'bogus'; allowed: {allowed}"
    argv = [
        "train",
        "--workload",
        "linear_regression",
        "--batch-size",
        "8",
        "--learning-rate",
        "0.1",
        "--" + name.replace("_", "-"),
        "bogus",
    ]
    assert main(argv) == 2
    assert f"unknown {name} 'bogus'; allowed: {allowed} (usage:" in capsys.readouterr().err


@pytest.mark.parametrize("name", RANGE_FIELDS)
def test_a_value_outside_the_range_is_refused_by_validate_and_spec_files(name):
    option = OPTIONS[name]
    bad = _outside(option)
    with pytest.raises(UserError) as e:
        TrialConfig(**{**BASE, name: bad}).validate()
    assert str(e.value) == f"{name} must be {option.interval}, got {bad!r}"
    if name != "batch_size":  # a spec gives it as batch_sizes
        field = name if name in MANAGED else f"fixed.{name}"
        kinds = "integers" if option.integer else "numbers"
        default = "" if option.default is None else f" (default: {option.default!r})"
        assert _spec_error(name, bad) == (
            f"s.toml: {field}: must be {option.interval}, got {bad!r}; allowed: {kinds} {option.interval}{default}"
        )


def test_the_messages_of_today():
    def error(**values):
        with pytest.raises(UserError) as e:
            TrialConfig(**{**BASE, **values}).validate()
        return str(e.value)

    assert error(learning_rate=0) == "learning_rate must be > 0, got 0"
    assert error(momentum=1.0) == "momentum must be in [0, 1), got 1.0"
    assert error(sma_alpha=0.0) == "sma_alpha must be in (0, 1], got 0.0"
    assert error(batch_size=2.5) == "batch_size must be an integer >= 1, got 2.5"
    assert error(optimizer="adagrad").startswith("unknown optimizer 'adagrad'; allowed: sgd, momentum, nesterov")
    TrialConfig(**BASE, sma_alpha=None, target=None).validate()  # None: not set


def test_cbs_train_help_lists_every_option_of_the_schema(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    for name in CLI_FIELDS:
        option = OPTIONS[name]
        flag = (
            "--no-" + name.replace("_", "-")
            if option.type is bool and option.default
            else "--" + name.replace("_", "-")
        )
        assert flag in out, flag
        for choice in option.choices or ():
            assert choice in out


def test_docs_spec_md_is_up_to_date():
    assert (ROOT / "docs" / "spec.md").read_text() == spec_markdown(), (
        "regenerate: python -c 'from harness.sweep.spec import spec_markdown; print(spec_markdown(), end=\"\")' "
        "> docs/spec.md"
    )
    assert all(f"| `{name}` |" in spec_markdown() for name in OPTIONS)


def test_every_committed_spec_and_record_loads(tmp_path):
    specs = sorted(ROOT.glob("experiments/**/*.toml"))
    records = sorted(ROOT.glob("experiments/**/record.json"))
    assert specs and records
    for path in specs:
        raw = tomllib.loads(path.read_text())
        if "local_cbs" in raw:
            parse_local_cbs_spec(raw, tmp_path, path)
        else:
            parse_spec(raw, path)
    for path in records:
        TrialConfig.from_dict(json.loads(path.read_text())["config"]).validate()
