"""Parameter types, and the rules a value must pass before it reaches the control API or a
device session. Pure.

A playbook declares typed parameters; the operator gives them as text (`--param k=v`) and
`parse_value` turns the text into a value of that type or raises ValueError with a message
an engineer can act on. Every type refuses control characters, so no value can carry a
newline into a JSON reason, a log line or a device's command line.

A value that lands in a device's command line must also pass `check_device_token`: one word
of letters, digits and `_ . : / @ + , = -`. That leaves out whitespace (a second argument),
`;` `|` `&` `$` and backquotes (a second command on a shell such as netmiko's `linux` device
type), `!` and `#` (comments on IOS-style CLIs), `?` (IOS's inline help, which swallows the
line) and quotes. Addresses, names, interface names, communities and numbers all pass.
"""

from __future__ import annotations

import enum
import functools
import math
import re
from typing import Any

from netwatch.control import leases
from netwatch.control.protocol import parse_duration
from netwatch.core import text as core_text
from netwatch.core import validators

_INTEGER = re.compile(r"\A[+-]?\d{1,18}\Z")
_DEVICE_TOKEN = re.compile(r"\A[A-Za-z0-9_.:/@+,=-]{1,200}\Z")


class ParamType(enum.Enum):
    """What a playbook parameter holds."""

    STRING = "string"  # one line of printable text
    UPSTREAM = "upstream"  # an upstream's name, by the site file's rule for names
    DURATION = "duration"  # 90, 30s, 5m, 1h30m: seconds (a float)
    INTEGER = "integer"
    ADDRESS = "address"  # an IPv4 or IPv6 address (a string, in its canonical form)


def check_line(value: Any, what: str = "value") -> str:
    """`value` if it is one non-empty line of printable characters (no newline, tab, escape
    or other control character, no Unicode line separator). Raises ValueError."""
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a string")
    if not value:
        raise ValueError(f"{what} must not be empty")
    if not value.isprintable():
        raise ValueError(f"{what} {shown(value)} has a control character or line break")
    return value


# A parameter is quoted at more length than a control API value: it is the operator's own text.
shown = functools.partial(core_text.shown, limit=60)


def parse_value(kind: ParamType, raw: Any, choices: tuple[Any, ...] | None = None) -> Any:
    """`raw` (text from the command line, or a default from the playbook) as a value of
    `kind`, checked against `choices` when given. Raises ValueError."""
    value = _parse(kind, raw)
    if choices and value not in choices:
        raise ValueError(f"{shown(value)} is not one of: {', '.join(map(str, choices))}")
    return value


def _parse(kind: ParamType, raw: Any) -> Any:
    if kind is ParamType.STRING:
        text = check_line(raw)
        if len(text) > leases.MAX_REASON_CHARS:  # the longest string passed on is a reason
            raise ValueError(f"is {len(text)} characters long; "
                             f"at most {leases.MAX_REASON_CHARS}")
        return text
    if kind is ParamType.UPSTREAM:
        return validators.check_name(raw)
    if kind is ParamType.DURATION:
        if isinstance(raw, bool):
            raise ValueError(f"{shown(raw)} is not a duration")
        if isinstance(raw, int | float):
            if not math.isfinite(raw) or raw <= 0:
                raise ValueError(f"{shown(raw)}: a duration must be more than 0")
            return float(raw)
        return parse_duration(check_line(raw, "a duration"))
    if kind is ParamType.INTEGER:
        if isinstance(raw, bool):
            raise ValueError(f"{shown(raw)} is not a whole number")
        if isinstance(raw, int):
            return raw
        if isinstance(raw, str) and _INTEGER.match(raw):
            return int(raw)
        raise ValueError(f"{shown(raw)} is not a whole number")
    if kind is ParamType.ADDRESS:
        return str(validators.parse_address(raw))
    raise ValueError(f"unknown parameter type {kind!r}")


def as_text(value: Any) -> str:
    """A parameter value as it reads inside a line of text: a duration as whole seconds when
    it is whole ("300"), every other value as `str()`."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def check_device_token(value: Any, name: str) -> str:
    """`value` as text if it may stand inside a device's command line (see the module doc);
    raises ValueError naming the parameter otherwise."""
    text = as_text(value)
    if not _DEVICE_TOKEN.match(text):
        raise ValueError(
            f"parameter {name} = {shown(text)} cannot go into a device command: one word of "
            "letters, digits and _ . : / @ + , = - (no spaces, ';', '|', quotes or line breaks)"
        )
    return text
