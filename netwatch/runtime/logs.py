"""One logging setup for every daemon: stdlib logging, one key=value line per event.

A line reads `ts=2026-11-28T15:04:49.123 level=WARNING logger=netwatch.agent event=failover
uplink=secondary reason="gateway 100.64.1.1 silent"`: `kv()` builds the part after the
logger, with the uplink or upstream the event is about as a field; `setup_logging()` installs
the formatter on the `netwatch` logger (stderr: systemd's journal, or ExaBGP's log for the
controller, whose stdout belongs to ExaBGP).
"""

from __future__ import annotations

import enum
import logging
import sys
from typing import TextIO

FORMAT = "ts=%(asctime)s.%(msecs)03d level=%(levelname)s logger=%(name)s %(message)s"
DATEFMT = "%Y-%m-%dT%H:%M:%S"


def kv(event: str, **fields: object) -> str:
    """`event=failover uplink=primary reason="gateway 100.64.1.1 silent"`: one log message.

    Enums print their value; None fields are left out; a value with a space, quote, `=`, a
    control character or nothing at all is quoted (with `\\` and `"` escaped), so one field
    can never pass for two and a line never breaks in two.
    """
    parts = [f"event={event}"]
    for key, value in fields.items():
        if value is None:
            continue
        text = str(value.value if isinstance(value, enum.Enum) else value)
        if not text.isprintable():  # a newline must not start a second log line
            text = text.encode("unicode_escape").decode("ascii")
        if not text or any(c in text for c in ' "='):
            text = '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
        parts.append(f"{key}={text}")
    return " ".join(parts)


def setup_logging(verbose: bool = False, stream: TextIO | None = None) -> None:
    """Send the `netwatch` loggers to `stream` (default stderr) as key=value lines, at INFO
    (DEBUG with `verbose`). Safe to call again: it replaces its own handler."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT, datefmt=DATEFMT))
    root = logging.getLogger("netwatch")
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    root.propagate = False
