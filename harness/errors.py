"""The one exception type for bad user input: the CLI prints it as one line."""


class UserError(Exception):
    """Bad input from the user: printed as `cbs: error: <message>`, exit status 2."""
