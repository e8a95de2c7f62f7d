"""Operator overrides as leases: who forced what, why, and until when. Pure.

An override is a `Lease`, modelled on Alertmanager silences and commit-confirmed: it always
expires (`DEFAULT_FOR_S` unless asked otherwise, never more than `MAX_FOR_S` after it was
created or last renewed), it carries the operator's uid and name and a reason, and it forces
one thing:

- `FAILOVER`: the agent carries the default routes through `target` ("primary"/"secondary");
- `DRAIN`: the controller drains upstream `target` (graceful shutdown for `graceful_s`, then
  withdraw; `forced` when the operator overrode the announcement interlock);
- `PREPEND`: the controller prepends our ASN `count` times towards upstream `target`.

A `LeaseBook` holds a daemon's leases, immutably: every change returns a new book. It keeps at
most one FAILOVER lease and at most one lease per (kind, upstream); adding a second one
replaces the first and says so. Ids are the book's `prefix` and a sequence number ("a3" from
the agent, "c7" from the controller), unique within the book and stable across restarts.

Time is wall-clock seconds (`now`, injected): a lease must mean the same instant after a
restart. A lease written while the clock was wrong (an RTC in the future before NTP) would
last the size of the clock error: one whose renewal lies more than FUTURE_SLACK_S ahead of
`now` is re-based to `now`, keeping its duration (`LeaseBook.rebase`).
`to_json`/`from_json` are the persisted form; `from_json` checks every field and
raises ValueError naming it (`leases[1].reason: must not be empty`), so a damaged file is
reported, never half-loaded.
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from netwatch.core import validators
from netwatch.core.text import shown
from netwatch.core.vocabulary import UplinkRole

DEFAULT_FOR_S = 3600.0  # an override without --for lasts one hour
MAX_FOR_S = 7 * 86400.0  # and never more than a week past its creation or last renewal
MAX_REASON_CHARS = 300  # a ticket reference and a sentence; the audit log keeps it per request
# A lease created or renewed further than this in the future was written by a wrong clock.
FUTURE_SLACK_S = 300.0
MAX_PREPEND = 10  # beyond that, peers filter the path (and it says nothing more)
MAX_GRACEFUL_S = 3600.0  # how long a drain may announce GRACEFUL_SHUTDOWN before withdrawing
FORMAT_VERSION = 1  # of `LeaseBook.to_json`

_PREFIX = re.compile(r"\A[a-z]{1,3}\Z")
_LEASE_ID = re.compile(r"\A([a-z]{1,3})([1-9][0-9]{0,8})\Z")


class LeaseKind(enum.Enum):
    FAILOVER = "failover"
    DRAIN = "drain"
    PREPEND = "prepend"


class LeaseNotFound(LookupError):
    """No live lease with that id (never existed, deleted, or expired)."""


# --- value rules, shared with the control protocol's request validation ----------------------


def check_reason(value: Any) -> str:
    """A reason: a non-empty single line of at most MAX_REASON_CHARS printable characters,
    returned stripped. Raises ValueError."""
    if not isinstance(value, str):
        raise ValueError("must be a string")
    text = value.strip()
    if not text:
        raise ValueError("must not be empty: say why (a ticket, a sentence)")
    if not text.isprintable():  # a newline would forge a second audit or log line
        raise ValueError("must be one line of printable characters")
    if len(text) > MAX_REASON_CHARS:
        raise ValueError(f"is {len(text)} characters long; at most {MAX_REASON_CHARS}")
    return text


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{shown(value)} is not a number")
    return float(value)


def check_for_s(value: Any) -> float:
    """A lease duration in seconds: more than 0, at most MAX_FOR_S. Raises ValueError."""
    seconds = _number(value)
    if not 0 < seconds <= MAX_FOR_S:
        raise ValueError(f"{shown(value)} s is out of range: more than 0, at most 7 days")
    return seconds


def check_graceful_s(value: Any) -> float | None:
    """How long a drain announces GRACEFUL_SHUTDOWN before withdrawing: 0..MAX_GRACEFUL_S
    seconds, or None for the daemon's default. Raises ValueError."""
    if value is None:
        return None
    seconds = _number(value)
    if not 0 <= seconds <= MAX_GRACEFUL_S:
        raise ValueError(f"{shown(value)} s is out of range 0..{MAX_GRACEFUL_S:g}")
    return seconds


def check_count(value: Any) -> int:
    """How many times to prepend our ASN: an integer 1..MAX_PREPEND. Raises ValueError."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_PREPEND:
        raise ValueError(f"{shown(value)} is not an integer from 1 to {MAX_PREPEND}")
    return value


def check_uplink(value: Any) -> str:
    """An uplink role: "primary" or "secondary". Raises ValueError."""
    roles = [r.value for r in UplinkRole]
    if value not in roles:
        raise ValueError(f"{shown(value)} is not {' or '.join(roles)}")
    return value


def check_upstream(value: Any) -> str:
    """An upstream's name, by the site file's rule for names. Raises ValueError."""
    return validators.check_name(value)


def check_lease_id(value: Any) -> str:
    """A lease id: 1-3 lower-case letters and a number ("a3", "c12"). Raises ValueError."""
    if not isinstance(value, str) or not _LEASE_ID.match(value):
        raise ValueError(f"{shown(value)} is not an override id (like a3 or c12)")
    return value


def _check_prefix(value: Any) -> str:
    if not isinstance(value, str) or not _PREFIX.match(value):
        raise ValueError(f"{shown(value)} is not an id prefix (1-3 lower-case letters)")
    return value


# --- the lease --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Who:
    """The operator behind a lease, from the control socket's peer credentials."""

    uid: int
    user: str  # the account name, or the uid as text when it has none

    def __str__(self) -> str:
        return f"{self.user} (uid {self.uid})"

    def to_json(self) -> dict:
        return {"uid": self.uid, "user": self.user}


@dataclass(frozen=True)
class Lease:
    """One override. `target` is the uplink role (FAILOVER) or the upstream name (DRAIN,
    PREPEND); `count` is set for PREPEND only; `graceful_s` and `forced` mean something for
    DRAIN only (`graceful_s` None: the daemon's default)."""

    id: str
    kind: LeaseKind
    target: str
    who: Who
    reason: str
    created_at: float
    renewed_at: float  # created_at, or the time of the last `extend`
    expires_at: float
    count: int | None = None
    graceful_s: float | None = None
    forced: bool = False

    @property
    def slot(self) -> tuple[LeaseKind, str]:
        """What the lease occupies: at most one lease per slot in a book."""
        return (self.kind, "" if self.kind is LeaseKind.FAILOVER else self.target)

    @property
    def slot_label(self) -> str:
        """The slot in words: "the failover", "drain of t1"."""
        if self.kind is LeaseKind.FAILOVER:
            return "the failover"
        return f"{self.kind.value} of {self.target}"

    def describe(self) -> str:
        """What the lease forces, in words: "failover to secondary", "drain t1 (forced)"."""
        if self.kind is LeaseKind.FAILOVER:
            return f"failover to {self.target}"
        if self.kind is LeaseKind.PREPEND:
            return f"prepend {self.target} x{self.count}"
        graceful = "" if self.graceful_s is None else f", graceful {self.graceful_s:g} s"
        return f"drain {self.target}{graceful}{' (forced)' if self.forced else ''}"

    def rebased(self, now: float, slack_s: float = FUTURE_SLACK_S) -> Lease:
        """The lease as if renewed at `now` with the same duration, when its creation or last
        renewal lies more than `slack_s` after `now` (written while the clock was wrong);
        else itself."""
        if self.renewed_at <= now + slack_s:  # created_at <= renewed_at
            return self
        return replace(self, created_at=min(self.created_at, now), renewed_at=now,
                       expires_at=now + (self.expires_at - self.renewed_at))

    def left_s(self, now: float) -> float:
        """Seconds until it expires (0 once expired)."""
        return max(0.0, self.expires_at - now)

    def expired(self, now: float) -> bool:
        return self.expires_at <= now

    def to_json(self) -> dict:
        return {
            "id": self.id,
            "kind": self.kind.value,
            "target": self.target,
            "who": self.who.to_json(),
            "reason": self.reason,
            "created_at": self.created_at,
            "renewed_at": self.renewed_at,
            "expires_at": self.expires_at,
            "count": self.count,
            "graceful_s": self.graceful_s,
            "forced": self.forced,
        }

    @classmethod
    def from_json(cls, data: Any, where: str = "lease") -> Lease:
        """The lease `to_json` wrote. Raises ValueError naming the field (`where.reason: ...`)."""
        if not isinstance(data, Mapping):
            raise ValueError(f"{where}: expected an object")
        fields = {
            "id", "kind", "target", "who", "reason", "created_at", "renewed_at", "expires_at",
            "count", "graceful_s", "forced",
        }
        unknown = sorted(set(data) - fields)
        if unknown:
            raise ValueError(f"{where}: unknown field(s) {', '.join(map(repr, unknown))}")

        def field(name: str, check, optional: bool = False):
            if name not in data:
                if optional:
                    return None
                raise ValueError(f"{where}.{name}: missing")
            if optional and data[name] is None:
                return None
            try:
                return check(data[name])
            except ValueError as exc:
                raise ValueError(f"{where}.{name}: {exc}") from None

        kind = field("kind", LeaseKind)
        who = field("who", lambda v: _who(v, f"{where}.who"))
        times = {n: field(n, _number) for n in ("created_at", "renewed_at", "expires_at")}
        lease = cls(
            id=field("id", check_lease_id),
            kind=kind,
            target=field("target", check_uplink if kind is LeaseKind.FAILOVER else check_upstream),
            who=who,
            reason=field("reason", check_reason),
            count=field("count", check_count, optional=kind is not LeaseKind.PREPEND),
            graceful_s=field("graceful_s", check_graceful_s, optional=True),
            forced=bool(field("forced", _bool, optional=True)),
            **times,
        )
        if lease.kind is not LeaseKind.PREPEND and lease.count is not None:
            raise ValueError(f"{where}.count: only a prepend has a count")
        if not lease.created_at <= lease.renewed_at < lease.expires_at:
            raise ValueError(f"{where}.expires_at: must come after created_at <= renewed_at")
        if lease.expires_at - lease.renewed_at > MAX_FOR_S:
            raise ValueError(f"{where}.expires_at: more than 7 days after its last renewal")
        return lease


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{shown(value)} is not true or false")
    return value


def _who(value: Any, where: str) -> Who:
    if not isinstance(value, Mapping) or set(value) != {"uid", "user"}:
        raise ValueError("expected {uid, user}")
    uid, user = value["uid"], value["user"]
    if isinstance(uid, bool) or not isinstance(uid, int) or uid < 0:
        raise ValueError(f"uid {shown(uid)} is not a user id")
    if not isinstance(user, str) or not user or not user.isprintable() or len(user) > 64:
        raise ValueError(f"user {shown(user)} is not a user name")
    return Who(uid, user)


# --- the book ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Added:
    book: LeaseBook
    lease: Lease
    replaced: Lease | None  # the lease of the same slot that the new one ended


@dataclass(frozen=True)
class Changed:
    book: LeaseBook
    lease: Lease  # the lease extended (its new form) or removed


@dataclass(frozen=True)
class LeaseBook:
    """A daemon's live leases, oldest first. Immutable: every change returns a new book.

    `prefix` starts every id this book hands out; `next_seq` is the next id's number.
    """

    prefix: str
    next_seq: int = 1
    leases: tuple[Lease, ...] = ()

    def __post_init__(self) -> None:
        _check_prefix(self.prefix)

    def get(self, lease_id: str) -> Lease | None:
        return next((lease for lease in self.leases if lease.id == lease_id), None)

    def find(self, kind: LeaseKind, target: str | None = None) -> Lease | None:
        """The lease of `kind` (on upstream `target`, for DRAIN and PREPEND), or None."""
        slot = (kind, "" if kind is LeaseKind.FAILOVER else target)
        return next((lease for lease in self.leases if lease.slot == slot), None)

    def of_upstream(self, name: str) -> tuple[Lease, ...]:
        """Every DRAIN and PREPEND lease on upstream `name`."""
        return tuple(
            lease for lease in self.leases
            if lease.kind is not LeaseKind.FAILOVER and lease.target == name
        )

    def add(
        self, kind: LeaseKind, target: str, who: Who, reason: str, now: float,
        for_s: float = DEFAULT_FOR_S, *, count: int | None = None,
        graceful_s: float | None = None, forced: bool = False,
    ) -> Added:
        """A new lease from `now` for `for_s` seconds, replacing the one in its slot (if any).

        Raises ValueError for a value out of its rule (reason, for_s, target, count)."""
        lease = Lease(
            id=f"{self.prefix}{self.next_seq}",
            kind=kind,
            target=check_uplink(target) if kind is LeaseKind.FAILOVER else check_upstream(target),
            who=who,
            reason=check_reason(reason),
            created_at=now,
            renewed_at=now,
            expires_at=now + check_for_s(for_s),
            count=check_count(count) if kind is LeaseKind.PREPEND else None,
            graceful_s=check_graceful_s(graceful_s) if kind is LeaseKind.DRAIN else None,
            forced=forced if kind is LeaseKind.DRAIN else False,
        )
        replaced = self.find(kind, target)
        kept = tuple(x for x in self.leases if x is not replaced)
        book = replace(self, next_seq=self.next_seq + 1, leases=(*kept, lease))
        return Added(book, lease, replaced)

    def extend(self, lease_id: str, for_s: float, now: float, reason: str) -> Changed:
        """Renew lease `lease_id`: it now expires `for_s` seconds after `now` (sooner or later
        than before). `reason` is checked like a lease's (the audit log keeps it). Raises
        LeaseNotFound (no such live lease) or ValueError."""
        check_reason(reason)
        lease = self._live(lease_id, now)
        renewed = replace(lease, renewed_at=now, expires_at=now + check_for_s(for_s))
        leases = tuple(renewed if x is lease else x for x in self.leases)
        return Changed(replace(self, leases=leases), renewed)

    def remove(self, lease_id: str, now: float) -> Changed:
        """End lease `lease_id` now. Raises LeaseNotFound."""
        lease = self._live(lease_id, now)
        return Changed(replace(self, leases=tuple(x for x in self.leases if x is not lease)), lease)

    def remove_all(self, leases: tuple[Lease, ...]) -> LeaseBook:
        """The book without `leases` (ones it does not hold are ignored)."""
        return replace(self, leases=tuple(x for x in self.leases if x not in leases))

    def expire(self, now: float) -> tuple[LeaseBook, tuple[Lease, ...]]:
        """(the book without the leases expired at `now`, those leases)."""
        gone = tuple(x for x in self.leases if x.expired(now))
        if not gone:
            return self, ()
        return self.remove_all(gone), gone

    def rebase(self, now: float, slack_s: float = FUTURE_SLACK_S
               ) -> tuple[LeaseBook, tuple[tuple[Lease, Lease], ...]]:
        """(the book with every lease from the future re-based to `now` (`Lease.rebased`),
        the (old, new) pairs re-based)."""
        pairs = tuple((x, x.rebased(now, slack_s)) for x in self.leases)
        changed = tuple((old, new) for old, new in pairs if new is not old)
        if not changed:
            return self, ()
        return replace(self, leases=tuple(new for _, new in pairs)), changed

    def _live(self, lease_id: str, now: float) -> Lease:
        lease = self.get(lease_id)
        if lease is None:
            raise LeaseNotFound(f"no override {lease_id}")
        if lease.expired(now):
            raise LeaseNotFound(f"override {lease_id} has expired")
        return lease

    # --- persistence ---

    def to_json(self) -> dict:
        return {
            "version": FORMAT_VERSION,
            "prefix": self.prefix,
            "next_seq": self.next_seq,
            "leases": [lease.to_json() for lease in self.leases],
        }

    @classmethod
    def from_json(cls, data: Any) -> LeaseBook:
        """The book `to_json` wrote. Raises ValueError naming the field for anything else:
        wrong types, an unknown kind, a duplicate id, two leases in one slot."""
        if not isinstance(data, Mapping):
            raise ValueError("expected an object")
        unknown = sorted(set(data) - {"version", "prefix", "next_seq", "leases"})
        if unknown:
            raise ValueError(f"unknown field(s) {', '.join(map(repr, unknown))}")
        if data.get("version") != FORMAT_VERSION:
            raise ValueError(f"version: {shown(data.get('version'))} is not {FORMAT_VERSION}")
        try:
            prefix = _check_prefix(data.get("prefix"))
        except ValueError as exc:
            raise ValueError(f"prefix: {exc}") from None
        seq = data.get("next_seq")
        if isinstance(seq, bool) or not isinstance(seq, int) or seq < 1:
            raise ValueError(f"next_seq: {shown(seq)} is not a positive integer")
        raw = data.get("leases")
        if not isinstance(raw, list):
            raise ValueError("leases: expected a list")
        leases, ids, slots = [], set(), set()
        for i, item in enumerate(raw):
            lease = Lease.from_json(item, f"leases[{i}]")
            if lease.id in ids:
                raise ValueError(f"leases[{i}].id: {lease.id} appears twice")
            if lease.slot in slots:
                raise ValueError(f"leases[{i}]: a second lease for {lease.slot_label}")
            ids.add(lease.id)
            slots.add(lease.slot)
            leases.append(lease)
            # Never hand out a live id again, whatever next_seq says.
            id_prefix, number = _LEASE_ID.match(lease.id).groups()
            if id_prefix == prefix:
                seq = max(seq, int(number) + 1)
        return cls(prefix, seq, tuple(leases))
