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
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from netwatch.control.leases import LeaseBook
from netwatch.control.protocol import LEASE_ID_PREFIX
from netwatch.runtime.logs import kv
from netwatch.runtime.state_store import StateStore

log = logging.getLogger("netwatch.control")


def lease_path(state_dir: str | Path, daemon: str) -> Path:
    """Where `daemon` ("agent", "controller") keeps its overrides."""
    return Path(state_dir) / f"overrides-{daemon}.json"


@dataclass(frozen=True)
class Loaded:
    book: LeaseBook
    problem: str | None = None  # why the file was set aside and the book is empty


class LeaseStore:
    def __init__(self, state_dir: str | Path, daemon: str):
        self.daemon = daemon
        self.prefix = LEASE_ID_PREFIX[daemon]
        self.path = lease_path(state_dir, daemon)
        self._store = StateStore(self.path)

    def load(self) -> Loaded:
        """The saved book, an empty one when there is none, or an empty one and the problem
        when the file is damaged (set aside, logged). Leases may have expired meanwhile: the
        caller runs `book.expire(now)`."""
        try:
            data = self._store.load()
            if data is None:
                return Loaded(LeaseBook(self.prefix))
            book = LeaseBook.from_json(data)
            if book.prefix != self.prefix:
                raise ValueError(f"prefix: {book.prefix!r} is not the {self.daemon}'s")
            return Loaded(book)
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

    def save(self, book: LeaseBook) -> None:
        """Replace the saved book, atomically and durably. Raises OSError."""
        self._store.save(book.to_json())
