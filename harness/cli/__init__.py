"""The `cbs` command. Each subcommand lives in its own module with
`add_arguments(parser)` and `run(args) -> int`; modules are imported lazily so
`cbs --help` stays fast.

Every error is one line `cbs: error: ...` on stderr with exit status 2 (bad
arguments included); bare `cbs` prints the help with the command list and
exits 0; `cbs --version` prints the version."""

import argparse
import contextlib
import importlib
import shlex
import signal
import sys
import threading

from harness import __version__
from harness.errors import Interrupted, UserError, os_error_text

COMMANDS = {
    "workloads": ("harness.cli.workloads", "list the registered workloads"),
    "train": ("harness.cli.train", "train one trial"),
    "gns": ("harness.cli.gns", "gradient noise scale over training and the critical batch size it predicts"),
    "sweep": ("harness.cli.sweep", "run, resume or extend a batch-size sweep from a spec file"),
    "analyze": ("harness.cli.analyze", "steps-to-result table and critical batch size fits of a sweep"),
    "compare": ("harness.cli.compare", "several sweeps side by side: steps, perfect scaling, B_crit per study"),
    "plot": ("harness.cli.plot", "every figure of one or more sweeps (PNG and PDF)"),
    "report": ("harness.cli.report", "one self-contained HTML report of a sweep"),
    "export": ("harness.cli.export", "write a sweep in another layout (Shallue et al.'s batch_science)"),
    "fit": ("harness.cli.fit", "fit the critical batch size to a steps-vs-batch-size table"),
    "local-cbs": (
        "harness.cli.local_cbs",
        "the branched local critical batch size over training (Merrill et al. 2025)",
    ),
    "schedules": ("harness.cli.schedules", "batch-size schedules compared at one example budget (Merrill et al. 2025)"),
    "nqm": ("harness.cli.nqm", "exact steps vs batch size on the noisy quadratic model"),
    "scaling": ("harness.cli.scaling", "power laws of B_crit, S_min and E_min across groups, or B_crit vs the target"),
    "calibrate": (
        "harness.cli.calibrate",
        "the noise scale calibrated to the swept critical batch size, per optimizer family",
    ),
    "env": ("harness.cli.env", "the JAX backend and devices, package versions, the datasets found, the compile cache"),
    "prepare": ("harness.cli.prepare", "write a dataset once as .npy files that trials stream when it exceeds memory"),
}


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is a UserError (one line `cbs: error:
    [COMMAND: ]...`, exit 2) like every other bad input, and a value outside
    `choices` is named with the allowed values as the engine's checks name them."""

    def error(self, message):
        command = self.prog.removeprefix("cbs").strip()
        raise UserError(f"{command + ': ' if command else ''}{message} (usage: {self.prog} --help)")

    def _check_value(self, action, value):
        if action.choices is not None and value not in action.choices:
            raise argparse.ArgumentError(
                action, f"unknown {action.dest} {value!r}; allowed: {', '.join(map(str, action.choices))}"
            )


def main(argv=None) -> int:
    parser = _Parser(prog="cbs", description="Measure how training speed scales with batch size.")
    parser.add_argument("--version", action="version", version=f"cbs {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    argv = sys.argv[1:] if argv is None else list(argv)
    for command, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(command, help=help_text)
        if argv[:1] == [command]:
            importlib.import_module(module).add_arguments(p)
    try:
        args = parser.parse_args(argv)
    except UserError as e:
        print(f"cbs: error: {e}", file=sys.stderr)
        return 2
    if args.command is None:
        parser.print_help()
        return 0
    module = importlib.import_module(COMMANDS[args.command][0])
    try:
        with _signals_raise_interrupted():
            return module.run(args) or 0
    except UserError as e:
        print(f"cbs: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a path that is not what it should be, a full disk, a lost mount: not a bug
        print(f"cbs: error: {os_error_text(e)}", file=sys.stderr)
        return 2
    except Interrupted as e:
        resume = getattr(module, "ON_INTERRUPT", None)
        print(
            f"cbs: {args.command} interrupted by {e}" + (f"; {resume}: cbs {shlex.join(argv)}" if resume else ""),
            file=sys.stderr,
            flush=True,
        )
        return 128 + e.signum


def _raise_interrupted(signum, frame):
    raise Interrupted(signum)


@contextlib.contextmanager
def _signals_raise_interrupted():
    """SIGINT (Ctrl-C) and SIGTERM (what a scheduler sends before it kills)
    raise Interrupted, so the command unwinds (a sweep stops its workers) and
    ends with one line. Only the main thread can set signal handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, _raise_interrupted) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
