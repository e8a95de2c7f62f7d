"""`{{ name }}` placeholders in playbook strings, substituted as values. Pure.

There is no expression language: a placeholder names one parameter, nothing else. How its
value is put in depends on where the string goes (`Mode`):

- VALUE: a field that is exactly one placeholder takes the parameter's typed value (a
  duration stays seconds, an unset optional parameter is None: the field is left out);
  otherwise as TEXT;
- TEXT: the value's text (`values.as_text`) in place of the placeholder: names, notes, the
  reason sent to the control API as one JSON string;
- DEVICE: the same, but each value must pass `values.check_device_token` (one word: no space,
  `;`, quote or line break can add an argument or a second command to a device session);
- REGEX: the value is `re.escape`d: a parameter is matched literally, never as a pattern.

Every function raises ValueError with a message naming the parameter.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from typing import Any

from netwatch.playbook.values import as_text, check_device_token

_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
_WHOLE = re.compile(r"\A\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}\Z")


class Mode(enum.Enum):
    VALUE = "value"
    TEXT = "text"
    DEVICE = "device"
    REGEX = "regex"


def references(text: str) -> list[str]:
    """The parameter names `text` refers to, in order. Raises ValueError for a `{{` or `}}`
    that is not part of a `{{ name }}` placeholder."""
    names = _PLACEHOLDER.findall(text)
    rest = _PLACEHOLDER.sub("", text)
    if "{{" in rest or "}}" in rest:
        raise ValueError(
            f"{text!r}: a placeholder is {{{{ name }}}} (a parameter's name, nothing else)"
        )
    return names


def render(text: str, values: Mapping[str, Any], mode: Mode = Mode.TEXT) -> Any:
    """`text` with every placeholder replaced by its value from `values`, as `mode` says."""
    if mode is Mode.VALUE:
        whole = _WHOLE.match(text)
        if whole:
            return _value(whole.group(1), values)
        mode = Mode.TEXT
    references(text)  # malformed placeholders raise

    def put(match: re.Match) -> str:
        name = match.group(1)
        value = _value(name, values)
        if value is None:
            raise ValueError(f"parameter {name} has no value (give it with --param {name}=...)")
        if mode is Mode.DEVICE:
            return check_device_token(value, name)
        if mode is Mode.REGEX:
            return re.escape(as_text(value))
        return as_text(value)

    return _PLACEHOLDER.sub(put, text)


def _value(name: str, values: Mapping[str, Any]) -> Any:
    if name not in values:
        raise ValueError(f"{{{{ {name} }}}}: no parameter named {name}")
    return values[name]
