"""The checker of spec files (harness.sweep.spec, harness.sweep.local_cbs):
TOML values against a schema, every error one line `file: field: problem;
allowed: ...`.

A schema maps each key of a table to `(accepted types, allowed values or
None)` or to an Option (harness.engine.trial): a TrialConfig field's type,
choices and range, or a spec key declared the same way.
"""

from __future__ import annotations

import tomllib
import types
import typing
from pathlib import Path

from harness.engine.options import Option
from harness.errors import UserError, did_you_mean

INT, NUMBER, STR, BOOL, LIST, TABLE = "integer", "number", "string", "boolean", "list", "table"
_NAMES = {int: INT, float: NUMBER, str: STR, bool: BOOL, dict: TABLE}


def type_name(value) -> str:
    """The TOML type of a parsed value: integer, number, string, boolean, list or table."""
    if isinstance(value, bool):
        return BOOL
    if isinstance(value, int):
        return INT
    if isinstance(value, float):
        return NUMBER
    return {str: STR, list: LIST, dict: TABLE}.get(type(value), type(value).__name__)


def is_a(value, kind: str) -> bool:
    """Whether `value` is of TOML type `kind` (an integer is a number too)."""
    name = type_name(value)
    return name == kind or (kind == NUMBER and name == INT)


def fits(value, hint) -> bool:
    """Whether a TOML value fits a type annotation (None: any of the others; a tuple: a list)."""
    if isinstance(hint, types.UnionType):
        return any(fits(value, h) for h in typing.get_args(hint) if h is not type(None))
    if typing.get_origin(hint) is tuple:
        return isinstance(value, list) and all(fits(v, typing.get_args(hint)[0]) for v in value)
    return is_a(value, _NAMES[hint])


def hint_name(hint) -> str:
    """A type annotation as TOML types: `integer`, `number or ...`, `list of integers`."""
    if isinstance(hint, types.UnionType):
        return " or ".join(hint_name(h) for h in typing.get_args(hint) if h is not type(None))
    if typing.get_origin(hint) is tuple:
        return f"list of {hint_name(typing.get_args(hint)[0])}s"
    return _NAMES[hint]


def numeric(hint) -> bool:
    return any(h in (int, float) for h in (typing.get_args(hint) or (hint,)))


def read_toml(path: Path) -> tuple[str, dict]:
    """A spec file's text and content; a missing file or bad TOML is a UserError naming the file."""
    try:
        data = path.read_bytes()
        text = data.decode("utf-8")
        return text, tomllib.loads(text)
    except FileNotFoundError:
        raise UserError(f"{path}: spec file not found") from None
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise UserError(
            f"{path}: line {line}: not valid UTF-8 (byte 0x{data[e.start]:02x}); allowed: "
            "a spec file in UTF-8, as TOML requires"
        ) from None
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{path}: not valid TOML: {e}") from None


def with_defaults(table: dict, schema: dict) -> dict:
    """`table` with the default of every Option of `schema` it leaves out."""
    return {**{key: s.default for key, s in schema.items() if isinstance(s, Option)}, **table}


def spec_name(raw: dict, path) -> str:
    """A spec's `name`: as given, else the file's stem."""
    return raw.get("name", path.stem if isinstance(path, Path) else str(path))


class Checker:
    """Raises UserError as `file: field: problem; allowed: ...`."""

    def __init__(self, path):
        self.path = str(path)

    def fail(self, field: str, problem: str, allowed: str):
        raise UserError(f"{self.path}: {field}: {problem}; allowed: {allowed}")

    def unknown(self, field: str, problem: str, name, allowed):
        """`file: field: problem; did you mean X? allowed: ...`, X the one of `allowed` close to `name`."""
        raise UserError(
            f"{self.path}: {field}: {problem}; {did_you_mean(name, allowed)}allowed: {', '.join(map(str, allowed))}"
        )

    def table(self, table: dict, schema: dict, prefix: str = ""):
        """Every key of `table` is in `schema` and its value fits."""
        for key, value in table.items():
            if key not in schema:
                self.unknown(prefix + key, "unknown key", key, schema)
            if isinstance(schema[key], Option):
                self.option(prefix + key, schema[key], value)
                continue
            kinds, allowed = schema[key]
            if not any(is_a(value, k) for k in kinds):
                self.fail(
                    prefix + key, f"expected {' or '.join(kinds)}, got {type_name(value)} {value!r}", " or ".join(kinds)
                )
            if allowed is not None and value not in allowed:
                self.unknown(prefix + key, f"unknown value {value!r}", value, allowed)

    def required(self, table: dict, keys, prefix: str, allowed: str):
        for key in keys:
            if key not in table:
                self.fail(prefix + key, "missing (required)", allowed)

    def option(self, field: str, option: Option, value):
        """`value` fits the Option's type, choices and range."""
        kind = hint_name(option.type)
        if not fits(value, option.type):
            self.fail(field, f"expected {kind}, got {type_name(value)} {value!r}", kind)
        if option.choices is not None and value not in option.choices:
            self.unknown(field, f"unknown value {value!r}", value, option.choices)
        if not option.in_range(value):
            default = "" if option.default is None else f" (default: {option.default!r})"
            self.fail(field, f"must be {option.interval}, got {value!r}", f"{kind}s {option.interval}{default}")

    def trials(self, trials, what: str = "trial"):
        """Validate the config of every (id, TrialConfig) trial, an error naming the trial."""
        for trial in trials:
            try:
                trial.config.validate()
            except UserError as e:
                raise UserError(f"{self.path}: {what} {trial.id}: {e}") from None
