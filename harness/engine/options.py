"""The schema of one trial option: `Option` (its type, default, help,
allowed values or range, and the paper it comes from) and `option(...)`, which
declares a TrialConfig field with it (harness.engine.trial.OPTIONS collects
them). Validation, spec files, `cbs train` and docs/spec.md derive from it.
"""

from __future__ import annotations

import typing
from dataclasses import MISSING, dataclass, field


@dataclass(frozen=True)
class Option:
    """The schema of one TrialConfig field: its name, type and default (None:
    not set) or `required`, a one-line `help`, the paper it comes from (`cite`), and its
    allowed values: `choices`, or a range whose ends are open (`gt`, `lt`) or
    closed (`ge`, `le`)."""

    help: str
    choices: tuple | None = None
    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None
    cite: str = ""
    name: str = ""
    type: typing.Any = None
    default: typing.Any = None
    required: bool = False

    @property
    def integer(self) -> bool:
        """Whether the field holds an integer (or None)."""
        return self.type in (int, int | None)

    @property
    def interval(self) -> str:
        """The range as text ('> 0', '>= 1', 'in [0, 1)'), or '' for none."""
        low = f"({self.gt:g}" if self.gt is not None else f"[{self.ge:g}" if self.ge is not None else None
        high = f"{self.lt:g})" if self.lt is not None else f"{self.le:g}]" if self.le is not None else None
        if low and high:
            return f"in {low}, {high}"
        if low:
            return f"{'>' if low[0] == '(' else '>='} {low[1:]}"
        if high:
            return f"{'<' if high[-1] == ')' else '<='} {high[:-1]}"
        return ""

    def in_range(self, value) -> bool:
        if not self.interval:
            return True
        kinds = (int,) if self.integer else (int, float)
        return (
            isinstance(value, kinds)
            and not isinstance(value, bool)
            and (self.gt is None or value > self.gt)
            and (self.ge is None or value >= self.ge)
            and (self.lt is None or value < self.lt)
            and (self.le is None or value <= self.le)
        )

    def error(self, value) -> str | None:
        """What is wrong with `value` as this field, as one line naming the field; None if nothing."""
        if value is None and self.default is None and not self.required:
            return None
        if self.choices is not None and value not in self.choices:
            return f"unknown {self.name} {value!r}; allowed: {', '.join(self.choices)}"
        if self.interval and self.integer and (not isinstance(value, int) or isinstance(value, bool)):
            return f"{self.name} must be an integer {self.interval}, got {value!r}"
        if not self.in_range(value):
            return f"{self.name} must be {self.interval}, got {value!r}"
        return None


def option(default=MISSING, *, help: str, choices=None, cite: str = "", **bounds):
    """A TrialConfig field with its schema (Option: `bounds` are gt, ge, lt, le)."""
    meta = {"option": Option(help, None if choices is None else tuple(choices), cite=cite, **bounds)}
    if isinstance(default, dict):
        return field(default_factory=lambda: dict(default), metadata=meta)
    return field(default=default, metadata=meta)
