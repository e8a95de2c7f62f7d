"""Atomic JSON persistence for daemon state. I/O only.

`save` writes a temporary file in the same directory, fsyncs it, renames it over the old one
and fsyncs the directory, so a crash leaves either the old or the new state, never half of
one, and a power cut after `save` returned does not bring the old one back. `load` returns
None when there is no state yet and raises ValueError, and nothing else, for a file that
cannot be read, is larger than MAX_BYTES, nests too deeply or is not a JSON object (what is
inside is the caller's to check), so a damaged file can never stop a daemon from starting.
A file that is there but cannot be read (permissions, an I/O error) raises `StateUnreadable`,
a ValueError: its content may be intact, so a caller may keep it rather than set it aside.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path

MAX_BYTES = 16 * 1024 * 1024  # the controller's state is a few kB; leases and holds as well


class StateUnreadable(ValueError):
    """The file is there but reading it failed (EACCES, EIO, a directory): nothing is known
    about its content. `errno` is the OSError's."""

    def __init__(self, message: str, errno: int | None = None):
        super().__init__(message)
        self.errno = errno


class StateStore:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    def load(self) -> dict | None:
        """The stored object, or None when there is none. Raises StateUnreadable (a
        ValueError) when the file cannot be read (permissions, an I/O error, a directory), and
        ValueError (with the reason) for damaged content (bad UTF-8, too large, not a JSON
        object)."""
        with contextlib.suppress(OSError):  # the read below reports a missing file
            if self.path.stat().st_size > MAX_BYTES:
                raise ValueError(f"{self.path}: larger than {MAX_BYTES} bytes")
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StateUnreadable(f"{self.path}: unreadable: {exc}", exc.errno) from None
        except UnicodeDecodeError as exc:
            raise ValueError(f"{self.path}: unreadable: not UTF-8: {exc}") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{self.path}: not valid JSON: {exc}") from None
        except RecursionError:  # 100,000 nested brackets
            raise ValueError(f"{self.path}: nested too deeply to be ours") from None
        if not isinstance(data, dict):
            raise ValueError(f"{self.path}: expected a JSON object")
        return data

    def save(self, data: dict) -> None:
        """Replace the stored state atomically and durably. Raises OSError (disk full,
        permissions)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(data, handle, sort_keys=True)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        # The rename lives in the directory: without this, a power cut can undo it.
        dir_fd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def boot_id() -> str | None:
    """This boot's id (the kernel's random boot_id): times on CLOCK_MONOTONIC saved under
    another id belong to an earlier boot. None where the kernel does not say."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip() or None
    except OSError:
        return None
