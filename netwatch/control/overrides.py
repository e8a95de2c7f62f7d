"""The override commands applied to a lease book: a request in, a new book and an answer out.
Pure.

`apply(book, request, who, now)` decides what `failover`, `drain`, `prepend`, `restore`,
`override_extend` and `override_delete` do to a daemon's `LeaseBook`, and returns a `Change`:
the new book and what was created, replaced and removed. It commits nothing: the daemon checks
its own safety rules on `change.book` (the controller's announcement interlock, say), raises
`Refused` if one says no, and only then saves the book and acts on it. `listing(book, now)` is
the answer to `overrides`.

- `failover to=primary|secondary` opens a FAILOVER lease (replacing the current one);
  `to=auto` ends it (a no-op, said so, when there is none).
- `drain` and `prepend` open a lease on the upstream (replacing the same kind on it).
- `restore` ends every DRAIN and PREPEND lease on the upstream (none is fine: the controller
  also skips the upstream's recovery hold, so it is announced again at once).
- `override_extend` renews a live lease from `now`; `override_delete` ends it.

`drain` stores `forced` as `args["force"]` says, and `override_extend` of a drain sets it when
`args` has a `force` (not a client's argument: the controller settles it, storing a drain
forced only when its interlock refused it).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, replace

from netwatch.control.leases import Lease, LeaseBook, LeaseKind, LeaseNotFound, Who
from netwatch.control.protocol import FAILOVER_AUTO, Command, NotFound, Request


@dataclass(frozen=True)
class Change:
    """What a command does to a book (not committed yet)."""

    book: LeaseBook
    lease: Lease | None = None  # created or extended
    replaced: tuple[Lease, ...] = ()  # ended because `lease` took their slot
    removed: tuple[Lease, ...] = ()  # ended by the command
    message: str = ""

    def to_json(self) -> dict:
        """The `Change` answer (see netwatch.control.protocol)."""
        return {
            "lease": None if self.lease is None else self.lease.to_json(),
            "replaced": [x.to_json() for x in self.replaced],
            "removed": [x.to_json() for x in self.removed],
            "message": self.message,
        }


def apply(
    book: LeaseBook, request: Request, who: Who, now: float,
    upstreams: Collection[str] | None = None,
) -> Change:
    """`request` (a validated write: failover, drain, prepend, restore, override_extend or
    override_delete) applied to `book` at wall-clock `now`
    on behalf of `who`. `upstreams`: the daemon's upstream names, when it has some (drain,
    prepend and restore of another name are NotFound).

    Raises NotFound (no such live override, no such upstream); ValueError for a request that
    is not a lease command (a caller's bug)."""
    args = request.args
    cmd = request.cmd
    if cmd in (Command.DRAIN, Command.PREPEND, Command.RESTORE):
        _known_upstream(args["upstream"], upstreams)
    if cmd is Command.FAILOVER:
        if args["to"] == FAILOVER_AUTO:
            return _end(book, book.find(LeaseKind.FAILOVER), "forced failover",
                        "automatic failover again", "no forced failover: automatic already")
        return _added(book.add(
            LeaseKind.FAILOVER, args["to"], who, args["reason"], now, args["for_s"],
        ))
    if cmd is Command.DRAIN:
        return _added(book.add(
            LeaseKind.DRAIN, args["upstream"], who, args["reason"], now, args["for_s"],
            graceful_s=args["graceful_s"], forced=args["force"],
        ))
    if cmd is Command.PREPEND:
        return _added(book.add(
            LeaseKind.PREPEND, args["upstream"], who, args["reason"], now, args["for_s"],
            count=args["count"],
        ))
    if cmd is Command.RESTORE:
        name = args["upstream"]
        ended = book.of_upstream(name)
        if not ended:
            return Change(book, message=f"no override on {name}: restored to normal")
        ids = ", ".join(f"{x.id} ({x.describe()})" for x in ended)
        return Change(book.remove_all(ended), removed=ended, message=f"ended {ids}")
    try:
        if cmd is Command.OVERRIDE_EXTEND:
            changed = book.extend(args["id"], args["for_s"], now, args["reason"])
            book, lease = changed.book, changed.lease
            if "force" in args and lease.kind is LeaseKind.DRAIN and lease.forced != args["force"]:
                lease = replace(lease, forced=args["force"])
                book = replace(book, leases=tuple(lease if x is changed.lease else x
                                                  for x in book.leases))
            return Change(book, lease=lease, message=f"{lease.id} ({lease.describe()}) renewed")
        if cmd is Command.OVERRIDE_DELETE:
            changed = book.remove(args["id"], now)
            return Change(changed.book, removed=(changed.lease,),
                          message=f"ended {changed.lease.id} ({changed.lease.describe()})")
    except LeaseNotFound as exc:
        raise NotFound(str(exc), request_id=request.id) from None
    raise ValueError(f"{cmd.value} is not an override command")


def listing(book: LeaseBook, now: float) -> dict:
    """The `overrides` answer: the live leases, oldest first, and the daemon's clock."""
    return {"now": now, "overrides": [x.to_json() for x in book.leases if not x.expired(now)]}


def _added(added) -> Change:
    lease = added.lease
    message = f"{lease.id}: {lease.describe()}"
    if added.replaced is not None:
        message += f" (replaces {added.replaced.id}: {added.replaced.describe()})"
    replaced = () if added.replaced is None else (added.replaced,)
    return Change(added.book, lease=lease, replaced=replaced, message=message)


def _end(book: LeaseBook, lease: Lease | None, what: str, after: str, none: str) -> Change:
    if lease is None:
        return Change(book, message=none)
    return Change(book.remove_all((lease,)), removed=(lease,),
                  message=f"ended {what} {lease.id} ({lease.describe()}): {after}")


def _known_upstream(name: str, upstreams: Collection[str] | None) -> None:
    if upstreams is not None and name not in upstreams:
        known = ", ".join(sorted(upstreams)) or "none"
        raise NotFound(f"no upstream {name} (known: {known})")
