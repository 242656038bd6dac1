"""The one exception type for bad user input (the CLI prints it as one line),
the one for SIGINT and SIGTERM, the one line an OSError is shown as, and the
one way to print a warning, and the one "did you mean" of an unknown name."""

import difflib
import signal
import sys


class UserError(Exception):
    """Bad input from the user: printed as `cbs: error: <message>`, exit status 2."""


class Interrupted(BaseException):
    """SIGINT or SIGTERM arrived: the CLI prints one line and exits 128 + the
    signal number. Like KeyboardInterrupt, not an Exception, so that no
    `except Exception` mistakes it for a failure of what it interrupted."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def os_error_text(error: OSError) -> str:
    """An OSError as one line: `No space left on device: /path`."""
    return f"{error.strerror or error}" + (f": {error.filename}" if error.filename else "")


def warn(message: str) -> None:
    """One line on stderr: `cbs: warning: <message>`."""
    print(f"cbs: warning: {message}", file=sys.stderr, flush=True)


def did_you_mean(name, allowed) -> str:
    """`did you mean X? ` when one of `allowed` is close to the unknown `name`
    (difflib), else '': it goes between `; ` and `allowed: ...`."""
    close = difflib.get_close_matches(str(name), [str(a) for a in allowed], n=1)
    return f"did you mean {close[0]}? " if close else ""
