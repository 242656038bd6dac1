"""The `cbs` command as a user meets it: the command list, the version, one-line
errors, the options of `cbs train` and `cbs gns`, and the JSON of `cbs fit`
and `cbs analyze`."""

import argparse
import dataclasses
import json
import tomllib
from pathlib import Path

import pandas as pd
import pytest
from test_plots import make_sweep

from harness import __version__
from harness.cli import COMMANDS, main
from harness.cli import gns as gns_command
from harness.cli import train as train_command
from harness.engine.algorithms import ALGORITHMS
from harness.engine.evaluation import EVAL_SCHEDULES
from harness.engine.optimizers import BATCH_LR_RULES, BETA2_RULES, LR_SCALINGS, OPTIMIZERS, SCHEDULES, WARMUPS
from harness.engine.trial import OPTIONS, PLACEMENTS, TrialConfig
from harness.sweep.tracking import TRACKERS

TRAIN = ["--workload", "linear_regression", "--batch-size", "64", "--learning-rate", "0.1"]


def _parser(add_arguments):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser


def _options(parser) -> dict:
    return {a.option_strings[0]: a for a in parser._actions if a.option_strings and a.dest != "help"}


def test_bare_cbs_lists_the_commands(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: cbs ")
    for command, (_, help_text) in COMMANDS.items():
        assert command in out and help_text.split()[0] in out


def test_version_is_the_packages(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out == f"cbs {__version__}\n"
    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    assert pyproject["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "harness.__version__"}


@pytest.mark.parametrize(
    "argv, message",
    [
        (["bogus"], "cbs: error: argument COMMAND: unknown command 'bogus'; allowed: workloads, train, gns, sweep"),
        (
            ["train", *TRAIN, "--optimizer", "adagrad"],
            "cbs: error: train: argument --optimizer: unknown optimizer 'adagrad'; allowed: sgd, momentum, nesterov",
        ),
        (["train", *TRAIN, "--stop-at-target"], "cbs: error: unrecognized arguments: --stop-at-target"),
        (["train", "--batch-size", "8"], "cbs: error: train: the following arguments are required: --workload, "),
        (["gns", *TRAIN, "--checkpoint-every", "5"], "cbs: error: unrecognized arguments: --checkpoint-every 5"),
        (["gns", *TRAIN, "--no-stop-at-target"], "cbs: error: unrecognized arguments: --no-stop-at-target"),
        (["sweep", "x.toml", "--gpus", "0", "--executor", "ray"], "cbs: error: --gpus: only with --executor local"),
        (["fit", "absent.csv"], "cbs: error: no such file: absent.csv"),
    ],
)
def test_every_error_is_one_line_starting_cbs_error(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1, err


def test_every_train_option_has_a_one_line_description_and_choices_from_the_engine():
    options = _options(_parser(train_command.add_arguments))
    assert all(a.help and "\n" not in a.help for a in options.values())
    fields = {f.name for f in dataclasses.fields(TrialConfig) if f.type != "dict"} - set(train_command.SWEEP_ONLY)
    assert {a.dest for a in options.values()} >= fields
    assert all(options[o].help.startswith(OPTIONS[a.dest].help) for o, a in options.items() if a.dest in fields)
    choices = {a.dest: tuple(a.choices) for a in options.values() if a.choices}
    assert choices == {
        "optimizer": OPTIMIZERS,
        "schedule": SCHEDULES,
        "warmup": WARMUPS,
        "lr_scaling": tuple(LR_SCALINGS),
        "eval_schedule": tuple(EVAL_SCHEDULES),
        "algorithm": ALGORITHMS,
        "track": TRACKERS,
        "batch_lr_rule": BATCH_LR_RULES,
        "batch_beta2_rule": BETA2_RULES,
        "data_placement": PLACEMENTS,
    }
    # a boolean field is one flag that turns its default around
    assert "--stop-at-target" not in options and options["--no-stop-at-target"].const is False
    assert "--no-gns" not in options and options["--gns"].const is True


def test_train_flags_reach_the_config():
    parser = _parser(train_command.add_arguments)
    config = train_command.config_from_args(
        parser.parse_args([*TRAIN, "--no-stop-at-target", "--gns", "--microbatches", "2", "--optimizer", "adam"])
    )
    assert (config.stop_at_target, config.gns, config.microbatches, config.optimizer) == (False, True, 2, "adam")
    assert train_command.config_from_args(parser.parse_args(TRAIN)) == TrialConfig(
        workload="linear_regression", batch_size=64, learning_rate=0.1
    )


def test_gns_offers_no_option_it_fixes_and_fixes_them():
    parser = _parser(gns_command.add_arguments)
    options = _options(parser)
    fixed = {"--gns", "--no-stop-at-target", "--checkpoint-every", "--coordinator", "--num-processes", "--process-id"}
    assert not fixed & set(options) and "--gns-ema" in options and "--microbatches" in options
    assert all(a.help and "\n" not in a.help for a in options.values())
    config = gns_command._config(parser.parse_args([*TRAIN, "--max-steps", "30"]))
    assert (config.gns, config.stop_at_target, config.checkpoint_every, config.microbatches) == (True, False, 30, 2)


def test_fit_and_analyze_json_give_the_fit_with_the_same_keys(tmp_path, capsys):
    folder = make_sweep(tmp_path / "sweep", gns=False, batch_sizes=(4, 8, 16, 32))
    assert main(["analyze", str(folder), "--json"]) == 0
    analyzed = json.loads(capsys.readouterr().out)
    table = tmp_path / "steps.csv"
    pd.DataFrame(analyzed["rows"])[["batch_size", "steps"]].to_csv(table, index=False)
    assert main(["fit", str(table), "--json"]) == 0
    [fitted] = json.loads(capsys.readouterr().out)
    assert fitted.pop("group") is None
    assert set(fitted) == set(analyzed["fit"])
    assert fitted["s_min"] == pytest.approx(analyzed["fit"]["s_min"])  # one point estimate, two intervals
    assert fitted["b_crit"] == pytest.approx(analyzed["fit"]["b_crit"])


def test_plot_axis_choices_are_the_axes_the_figures_draw():
    from analysis.plots import AXES
    from harness.cli import plot as plot_command

    assert tuple(_options(_parser(plot_command.add_arguments))["--axis"].choices) == tuple(AXES)


def test_train_says_when_the_target_is_not_reached(capsys):
    assert main(["train", *TRAIN, "--learning-rate", "1e-6", "--max-steps", "2", "--eval-every", "1"]) == 0
    last = capsys.readouterr().out.splitlines()[-1]
    assert last.startswith(
        "linear_regression B=64: incomplete, target not reached (squared_error < 0.13); final squared_error "
    ), last
    assert last.endswith(" at step 2") and "None" not in last
