"""A daemon's overrides on disk: the lease book in its state_dir, atomic and durable.

`LeaseStore(state_dir, daemon)` keeps `overrides-<daemon>.json` (the agent and the controller
may share one state_dir) through `netwatch.runtime.state_store.StateStore`: written to a
temporary file, fsynced, renamed, directory fsynced.

`load()` never raises for a damaged file: a daemon must start, and an unreadable override is
no reason to leave a server without its failover. It sets the file aside as
`overrides-<daemon>.json.damaged` (for a human to read; the next save would overwrite it),
logs why, and starts from an empty book; `Loaded.problem` says what happened, for the audit
log. `save()` raises OSError (disk full, permissions): the caller answers the request with an
error and keeps its old book.

A file that is there but cannot be read (EACCES, EIO) is not damaged: its leases may all be
intact. It is read again a few times (a transient I/O error), then left in place, logged
(`overrides_unreadable`) and the daemon starts with an empty book that it serves without
taking new leases: `save()` refuses (OSError, so the request is answered `unavailable`),
because saving would replace the leases on disk with what this book holds. A restart reads
the file again.
"""

from __future__ import annotations

import errno
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from netwatch.control.leases import LeaseBook
from netwatch.control.protocol import LEASE_ID_PREFIX
from netwatch.runtime.logs import kv
from netwatch.runtime.state_store import StateStore, StateUnreadable

log = logging.getLogger("netwatch.control")

READ_TRIES = 3  # an unreadable lease file is read this many times ...
READ_RETRY_S = 0.1  # ... this far apart before the daemon starts without its leases


def lease_path(state_dir: str | Path, daemon: str) -> Path:
    """Where `daemon` ("agent", "controller") keeps its overrides."""
    return Path(state_dir) / f"overrides-{daemon}.json"


@dataclass(frozen=True)
class Loaded:
    book: LeaseBook
    problem: str | None = None  # why the file was set aside (or left unread) and the book is empty


class LeaseStore:
    def __init__(self, state_dir: str | Path, daemon: str, *,
                 clock: Callable[[], float] | None = None):
        """`clock`: the wall clock the leases are written in, the daemon's (the keeper's):
        leases from its future are re-based at load (`LeaseBook.rebase`). None: none are."""
        self.daemon = daemon
        self.clock = clock
        self.prefix = LEASE_ID_PREFIX[daemon]
        self.path = lease_path(state_dir, daemon)
        self._store = StateStore(self.path)
        self.unreadable: str | None = None  # why the file could not be read at load: no saves

    def _read(self) -> dict | None:
        """The file's object; an unreadable file is read READ_TRIES times first."""
        for attempt in range(READ_TRIES):
            try:
                return self._store.load()
            except StateUnreadable:
                if attempt == READ_TRIES - 1:
                    raise
                time.sleep(READ_RETRY_S)
        return None  # not reached

    def load(self) -> Loaded:
        """The saved book, an empty one when there is none, or an empty one and the problem
        when the file is damaged (set aside, logged) or cannot be read (left in place, logged,
        saves refused: see the module doc). Leases may have expired meanwhile: the caller
        runs `book.expire(now)`."""
        try:
            data = self._read()
            if data is None:
                return Loaded(LeaseBook(self.prefix))
            book = LeaseBook.from_json(data)
            if book.prefix != self.prefix:
                raise ValueError(f"prefix: {book.prefix!r} is not the {self.daemon}'s")
            return Loaded(self._rebased(book))
        except StateUnreadable as exc:
            self.unreadable = str(exc)
            log.error(kv("overrides_unreadable", daemon=self.daemon, path=self.path, error=exc,
                         action="left in place; serving with no overrides and refusing new "
                         "ones until a restart reads it"))
            return Loaded(LeaseBook(self.prefix), f"{exc} (left in place; new overrides "
                          "refused until a restart reads it)")
        except ValueError as exc:
            problem = str(exc)
            if not problem.startswith(str(self.path)):
                problem = f"{self.path}: {problem}"
        aside = self.path.with_name(self.path.name + ".damaged")
        try:
            os.replace(self.path, aside)
            problem += f" (set aside as {aside.name})"
        except OSError as exc:
            problem += f" (could not set it aside: {exc.strerror})"
        log.error(kv("overrides_damaged", daemon=self.daemon, problem=problem,
                     action="starting with no overrides"))
        return Loaded(LeaseBook(self.prefix), problem)

    def _rebased(self, book: LeaseBook) -> LeaseBook:
        """`book` with its leases from the clock's future re-based to now, each logged."""
        if self.clock is None:
            return book
        now = self.clock()
        book, changed = book.rebase(now)
        for old, new in changed:
            log.warning(kv("lease_rebased", daemon=self.daemon, id=old.id,
                           forces=old.describe(), renewed_at=old.renewed_at,
                           ahead_s=round(old.renewed_at - now, 1),
                           expires_at=new.expires_at,
                           note="written while the clock was ahead; same duration from now"))
        return book

    def save(self, book: LeaseBook) -> None:
        """Replace the saved book, atomically and durably. Raises OSError, also when the file
        could not be read at load (it would lose the leases in it)."""
        if self.unreadable is not None:
            raise OSError(errno.EIO, f"the saved overrides could not be read at start "
                          f"({self.unreadable}); not overwriting them")
        self._store.save(book.to_json())
