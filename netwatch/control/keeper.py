"""A daemon's overrides, kept: loaded at start, changed by requests, expired by time, saved
after every change, and each automatic change written to the audit log.

Both daemons hold their lease book the same way through a `LeaseKeeper`, so an override
behaves alike whichever daemon it forces::

    keeper = LeaseKeeper(LeaseStore(site.state_dir, "agent"), audit)   # loads, drops expired
    ...
    change = keeper.apply(request, peer)                   # in the handler: a write command
    change = keeper.apply(request, peer, upstreams=names, check=interlock)   # the controller
    for lease in keeper.expire():                          # in the daemon's loop, ~1/s
        ...                                                # act: the book no longer has it

`apply` decides with the pure `netwatch.control.overrides.apply`, lets `check(change)` refuse
it (raise `Refused`: nothing is saved or changed), saves the new book, and only then makes it
the current one; a save that fails answers `unavailable` and changes nothing. The request
itself is audited by the control server; the keeper audits what happens without one: a lease
that expires (`lease_expired`) and a damaged file set aside at start (`overrides_damaged`).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Collection

from netwatch.control import overrides
from netwatch.control.audit import AuditLog
from netwatch.control.leases import Lease, LeaseBook
from netwatch.control.overrides import Change
from netwatch.control.protocol import Peer, Request, Unavailable
from netwatch.control.store import LeaseStore
from netwatch.runtime.logs import kv

log = logging.getLogger("netwatch.control")


class LeaseKeeper:
    def __init__(
        self, store: LeaseStore, audit: AuditLog | None = None, *,
        clock: Callable[[], float] = time.time,
    ):
        """Load the saved book (an empty one if it is missing or damaged) and drop the leases
        that expired while the daemon was down (each audited). Never raises for the file."""
        self.store = store
        self.audit = audit
        self.clock = clock
        loaded = store.load()
        self._book = loaded.book
        if loaded.problem is not None and audit is not None:
            audit.record("overrides_damaged", daemon=store.daemon, problem=loaded.problem)
        self.expire()

    @property
    def book(self) -> LeaseBook:
        """The current book. Leases past their expiry stay in it until `expire` runs."""
        return self._book

    def live(self) -> list[dict]:
        """The live leases as JSON (the `overrides` of a status answer)."""
        return overrides.listing(self._book, self.clock())["overrides"]

    def listing(self) -> dict:
        """The answer to `overrides`."""
        return overrides.listing(self._book, self.clock())

    def apply(
        self, request: Request, peer: Peer, *, upstreams: Collection[str] | None = None,
        check: Callable[[Change], None] | None = None,
    ) -> Change:
        """Carry out a write command on the book (see the module doc). Raises NotFound,
        Refused (from `check`) or Unavailable (the book could not be saved)."""
        change = overrides.apply(self._book, request, peer.who, self.clock(), upstreams)
        if check is not None:
            check(change)
        self._save(change.book, request.cmd.value)
        self._book = change.book
        return change

    def expire(self) -> tuple[Lease, ...]:
        """Re-base the leases written while the clock was ahead (`Lease.rebased`), drop the
        ones expired by now, save, audit each; returns the expired (oldest first)."""
        now = self.clock()
        book, moved = self._book.rebase(now)
        for old, new in moved:
            log.warning(kv("lease_rebased", daemon=self.store.daemon, id=new.id,
                           was_renewed_at=old.renewed_at, expires_at=new.expires_at,
                           note="written while the clock was ahead; same duration from now"))
            if self.audit is not None:
                self.audit.record("lease_rebased", daemon=self.store.daemon, id=new.id,
                                  lease=new.to_json())
        book, gone = book.expire(now)
        if not gone and not moved:
            return ()
        if not gone:
            with contextlib.suppress(Unavailable):
                self._save(book, "rebase")
            self._book = book
            return ()
        # Expired all the same if the save fails: the next save, or the next start, drops them.
        with contextlib.suppress(Unavailable):
            self._save(book, "expiry")
        self._book = book
        for lease in gone:
            log.info(kv("lease_expired", daemon=self.store.daemon, id=lease.id,
                        forces=lease.describe(), reason=lease.reason))
            if self.audit is not None:
                self.audit.record("lease_expired", daemon=self.store.daemon, id=lease.id,
                                  forces=lease.describe(), lease=lease.to_json())
        return gone

    def _save(self, book: LeaseBook, why: str) -> None:
        try:
            self.store.save(book)
        except OSError as exc:
            log.error(kv("overrides_save_failed", daemon=self.store.daemon, path=self.store.path,
                         error=exc, after=why))
            raise Unavailable(f"cannot save the overrides ({exc.strerror or exc}): nothing "
                              "changed") from None
