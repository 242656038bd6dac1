"""The `cbs` command. Each subcommand lives in its own module with
`add_arguments(parser)` and `run(args) -> int`; modules are imported lazily so
`cbs --help` stays fast."""
import argparse
import importlib
import sys

from harness.errors import UserError

COMMANDS = {
    "workloads": ("harness.commands.workloads", "list the registered workloads"),
    "train": ("harness.commands.train", "train one trial"),
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="cbs", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    name = (argv if argv is not None else sys.argv[1:])[:1]
    for command, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(command, help=help_text)
        if name == [command]:
            importlib.import_module(module).add_arguments(p)
    args, _ = parser.parse_known_args(argv) if not name or name[0] not in COMMANDS else (parser.parse_args(argv), None)
    try:
        return importlib.import_module(COMMANDS[args.command][0]).run(args) or 0
    except UserError as e:
        print(f"cbs: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
