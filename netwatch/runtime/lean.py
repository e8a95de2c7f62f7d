"""A daemon in a fresh interpreter that holds only the daemon's modules.

`netwatch agent` and `netwatch controller` start as the CLI: argparse with every command group
and the site file validated by pydantic. That is 24 MB of RSS the daemon never uses again,
and the agent runs on every server. So, once the site file is good, the command calls
`exec_daemon(entry, **kwargs)`: the arguments (the site as a `Frozen` copy, see `freeze`) go
into a memfd, and the process execs `python [its flags] -c ... FD ARGV...`, which loads
them and calls `entry(**kwargs)`. Same PID (systemd, ExaBGP and `kill` see no change), same
network namespace, same stdin/stdout (the controller's pipes to ExaBGP), same environment,
interpreter flags and sys.path (the same netwatch, from a source tree too); only the Python
image is new. The CLI's whole command line, as the kernel has it, follows FD, so `ps` and
`pgrep -f` still find `.../netwatch agent --config FILE` or `-m netwatch.cli controller ...`,
and the process name (`comm`, what `pgrep netwatch` matches) is set back to the CLI's.

When there is no interpreter to exec (`sys.executable` empty, or the exec fails), the daemon
runs in the CLI's process as before, and says so when the exec failed. `NETWATCH_IN_PLACE=1`
asks for that on purpose (tests that call a command in their own process).
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any, BinaryIO

from netwatch import exitcodes
from netwatch.runtime.logs import kv

log = logging.getLogger("netwatch")

# Run by the new image, argv [-c, FD, the CLI's argv...]: sys.path first (see exec_daemon).
_BOOT = ("import os, pickle, sys; handover = os.fdopen(int(sys.argv[1]), 'rb'); "
         "sys.path[:] = pickle.load(handover); from netwatch.runtime import lean; "
         "lean.main(handover)")


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
        fd = os.memfd_create("netwatch-handover", 0)  # inherited across the exec
        try:
            with os.fdopen(os.dup(fd), "wb") as handover:
                # sys.path first, alone: the new image must find this very netwatch (a
                # source tree's, not an installed one) before it can load the rest.
                pickle.dump(sys.path, handover)
                pickle.dump((entry, kwargs, sys.argv, _comm()), handover,
                            pickle.HIGHEST_PROTOCOL)
            os.lseek(fd, 0, os.SEEK_SET)
            sys.stdout.flush()
            sys.stderr.flush()
            # The interpreter's own flags (-I, -s, -O, -W, -X...) as this process has them.
            flags = subprocess._args_from_interpreter_flags()
            os.execv(sys.executable,
                     [sys.executable, *flags, "-c", _BOOT, str(fd), *_command_line()])
        except OSError as exc:
            log.warning(kv("exec_failed", error=exc, note="the daemon runs in the CLI's process"))
        finally:
            os.close(fd)
    return _call(entry, kwargs)


def main(handover: BinaryIO) -> None:
    """The new image's entry (`_BOOT`, which has read sys.path from `handover`): load the
    rest, take the CLI's command line and process name back, run the daemon, exit with its
    code (130 on Ctrl-C, as the CLI; 70 when the handover cannot be loaded)."""
    try:
        with handover:
            entry, kwargs, argv, comm = pickle.load(handover)
    except Exception as exc:  # a netwatch changed on disk under a starting daemon
        print(f"netwatch: the daemon's handover cannot be loaded: {exc!r}", file=sys.stderr)
        sys.exit(exitcodes.SOFTWARE)
    sys.argv[:] = argv
    if comm:
        with contextlib.suppress(OSError):
            Path("/proc/self/comm").write_text(comm)
    try:
        code = _call(entry, kwargs)
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)


def _command_line() -> list[str]:
    """This process's command line as the kernel has it (`python -m netwatch.cli agent ...`,
    `/usr/bin/python3 /usr/local/bin/netwatch agent ...`), for `ps` and `pgrep -f` to find
    after the exec: sys.argv lost `-m netwatch.cli` and the interpreter."""
    try:
        words = Path("/proc/self/cmdline").read_bytes().split(b"\0")[:-1]
        return [os.fsdecode(w) for w in words] or sys.argv
    except OSError:
        return sys.argv


def _comm() -> str | None:
    """This process's name (`/proc/self/comm`: `netwatch` when run as the installed script):
    the exec would make it `python`, and `pgrep netwatch` looks for it."""
    try:
        return Path("/proc/self/comm").read_text().strip() or None
    except OSError:
        return None


def _call(entry: str, kwargs: dict[str, Any]) -> int:
    module, _, name = entry.partition(":")
    return getattr(importlib.import_module(module), name)(**kwargs)
