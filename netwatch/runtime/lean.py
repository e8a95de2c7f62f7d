"""A daemon in a fresh interpreter that holds only the daemon's modules.

`netwatch agent` and `netwatch controller` start as the CLI: argparse with every command group
and the site file validated by pydantic. That is 24 MB of RSS the daemon never uses again,
and the agent runs on every server. So, once the site file is good, the command calls
`exec_daemon(entry, **kwargs)`: the arguments (the site as a `Frozen` copy, see `freeze`) go
into a memfd, and the process execs `python -P -c ... FD ARGV...`, which loads them and calls
`entry(**kwargs)`. Same PID (systemd, ExaBGP and `kill` see no change), same network
namespace, same stdin/stdout (the controller's pipes to ExaBGP), same environment; only the
Python image is new. The command line keeps the original arguments, so `ps` still shows
`... agent --config FILE`.

When there is no interpreter to exec (`sys.executable` empty, or the exec fails), the daemon
runs in the CLI's process as before, and says so when the exec failed. `NETWATCH_IN_PLACE=1`
asks for that on purpose (tests that call a command in their own process).
"""

from __future__ import annotations

import importlib
import logging
import os
import pickle
import sys
from pathlib import Path
from typing import Any

from netwatch.runtime.logs import kv

log = logging.getLogger("netwatch")

# Run by the new image: argv is [-c, PATH, FD, original arguments...]. PATH, where this
# process found netwatch, goes last on sys.path: an installed netwatch is found where it was
# (the same one), a source tree that was never installed still is.
_BOOT = "import sys; sys.path.append(sys.argv[1]); from netwatch.runtime import lean; lean.main()"


class Frozen:
    """A validated config section without its schema: the fields, and the values of the
    schema's properties (`timeout_s`, `label`...), read-only. Compares and hashes by value,
    as the frozen pydantic model it copies."""

    __slots__ = ("_fields", "_kind")

    def __init__(self, kind: str, fields: dict[str, Any]):
        object.__setattr__(self, "_kind", kind)
        object.__setattr__(self, "_fields", fields)

    def __getattr__(self, name: str) -> Any:
        try:
            return self._fields[name]
        except KeyError:
            raise AttributeError(f"{self._kind} has no attribute {name!r}") from None

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{self._kind} is read-only")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Frozen):
            return NotImplemented
        return (self._kind, self._fields) == (other._kind, other._fields)

    def __hash__(self) -> int:
        return hash((self._kind, tuple(self._fields.items())))

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in self._fields.items())
        return f"{self._kind}({fields})"

    def __reduce__(self):
        return Frozen, (self._kind, self._fields)


def freeze(value: Any) -> Any:
    """`value` with every pydantic model in it (recursively) replaced by a `Frozen` copy.

    Duck-typed on `model_fields`, so that this module never imports pydantic."""
    kind = type(value)
    if hasattr(kind, "model_fields"):
        fields = {name: freeze(getattr(value, name)) for name in kind.model_fields}
        for klass in kind.__mro__:
            if klass.__module__.partition(".")[0] == "pydantic":
                continue  # BaseModel's own properties (model_extra...) are not the site's
            for name, attr in vars(klass).items():
                if isinstance(attr, property) and name not in fields:
                    fields[name] = freeze(getattr(value, name))
        return Frozen(kind.__name__, fields)
    if isinstance(value, (list, tuple)):
        return kind(freeze(v) for v in value)
    if isinstance(value, dict):
        return {k: freeze(v) for k, v in value.items()}
    return value


def exec_daemon(entry: str, **kwargs: Any) -> int:
    """Call `entry` ("package.module:function") with `kwargs` in a fresh image of this process
    (see the module doc). Returns only when it ran in place: `entry`'s exit code."""
    if sys.executable and os.environ.get("NETWATCH_IN_PLACE") != "1":
        payload = pickle.dumps((entry, kwargs), protocol=pickle.HIGHEST_PROTOCOL)
        fd = os.memfd_create("netwatch-handover", 0)  # inherited across the exec
        try:
            os.write(fd, payload)
            os.lseek(fd, 0, os.SEEK_SET)
            where = str(Path(__file__).resolve().parents[2])
            sys.stdout.flush()
            sys.stderr.flush()
            os.execv(sys.executable,
                     [sys.executable, "-P", "-c", _BOOT, where, str(fd), *sys.argv[1:]])
        except OSError as exc:
            log.warning(kv("exec_failed", error=exc, note="the daemon runs in the CLI's process"))
        finally:
            os.close(fd)
    return _call(entry, kwargs)


def main() -> None:
    """The new image's entry (`_BOOT`): load what `exec_daemon` handed over, run it, exit."""
    fd = int(sys.argv[2])
    with os.fdopen(fd, "rb") as handover:
        entry, kwargs = pickle.load(handover)
    del sys.argv[1:3]  # the daemon sees the command line it was started with
    sys.exit(_call(entry, kwargs))


def _call(entry: str, kwargs: dict[str, Any]) -> int:
    module, _, name = entry.partition(":")
    return getattr(importlib.import_module(module), name)(**kwargs)
