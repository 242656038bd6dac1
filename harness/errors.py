"""The one exception type for bad user input (the CLI prints it as one line),
and the one way to print a warning."""
import sys


class UserError(Exception):
    """Bad input from the user: printed as `cbs: error: <message>`, exit status 2."""


def warn(message: str) -> None:
    """One line on stderr: `cbs: warning: <message>`."""
    print(f"cbs: warning: {message}", file=sys.stderr, flush=True)
