"""ExaBGP 5 text API: desired announcements -> command lines; JSON events -> typed events. Pure.

Commands (one line each, written to ExaBGP's stdin by the API process):

    neighbor 192.0.2.1 announce attributes next-hop self [as-path [...]] [community [...]]
        [large-community [...]] nlri P1 P2 ...
    neighbor 192.0.2.1 withdraw attributes next-hop self nlri P1 P2 ...
    neighbor 192.0.2.1 announce eor ipv4 unicast
    neighbor 192.0.2.1 , neighbor 192.0.2.5 announce attributes ... nlri P1 P2 ...

The bulk `attributes ... nlri` form is used because it is about twice as fast as one line per
prefix (measured with ExaBGP 5.0.15: 1,000 prefixes announced in 0.2 s vs 0.4 s, withdrawn in
0.4 s vs 0.75 s). The same announcement to several neighbors is one command with one selector
per neighbor (ExaBGP's `extract_neighbors`; the comma is a token of its own): ExaBGP parses it
once and puts each route in every named neighbor's RIB in the same pass, so 10,000 prefixes
reached all four lab transits in 4.7 s instead of 6.2 s (docs/controller.md). ExaBGP answers
`done` for it if at least one selector names a configured neighbor and skips the others
silently; every neighbor netwatch names comes from the site file the ExaBGP config is
rendered from, and make-before-break counts only sessions ExaBGP reports up, so a neighbor
ExaBGP does not know is never counted as announcing. Withdrawals stay one neighbor per line
(`safe_withdrawals` lets each through on its own).

ExaBGP does not add our ASN to an explicit as-path, so a prepend of N is sent as N+1 copies
of our ASN. Every token is validated before it is formatted: an address or a
prefix must parse *and* its text must match a strict pattern (`ipaddress` accepts an IPv6
scope ID, `fe80::1%<anything>`: a scope is allowed only when it is an interface name), a
community must be numbers in range. The finished line is checked again: printable ASCII
tokens separated by single spaces, so no newline, control character or stray space can turn
one command into two or change what a token means.

Events (what ExaBGP writes to us with `encoder json`, `neighbor-changes`, api ack on):
JSON objects of `"type": "state"` (neighbor up / down / connected), `notification: shutdown`,
the JSON list that answers `show neighbor json`, and the plain-text acknowledgements
`done` / `error`, one per command, in command order (ExaBGP 5.0.15 runs the API commands'
callbacks one after the other from one FIFO).
"""

from __future__ import annotations

import enum
import functools
import ipaddress
import json
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from netwatch.controller.plan import Announcement
from netwatch.core import validators
from netwatch.core.vocabulary import Family

MAX_NLRI_PER_LINE = 1000  # one ack per 1,000 prefixes; keeps each line ~20 kB
_ADDRESS = re.compile(r"\A[0-9a-f.:]+(?:%[A-Za-z0-9_.-]+)?\Z")  # scope checked on its own
_PREFIX = re.compile(r"\A[0-9a-f.:]+/\d{1,3}\Z")
_LINE = re.compile(r"\A[!-~]+(?: [!-~]+)*\Z")  # printable ASCII tokens, single spaces

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class UnsafeValue(ValueError):
    """A value that must not reach ExaBGP's line protocol."""


def _address(value) -> str:
    try:
        text = str(validators.parse_address(str(value), scope_ok=True))
    except ValueError as exc:
        raise UnsafeValue(f"not a plain IP address: {exc}") from None
    if not _ADDRESS.match(text):
        raise UnsafeValue(f"not a plain IP address (scope must be an interface): {value!r}")
    return text


def _network(value) -> Network:
    try:
        net = ipaddress.ip_network(str(value), strict=True)
    except ValueError:
        raise UnsafeValue(f"not a prefix: {value!r}") from None
    if not _PREFIX.match(str(net)):
        raise UnsafeValue(f"not a plain prefix: {value!r}")
    return net


# The site's prefixes reach every plan change 3 times (expand, the diff's sort, the line):
# parsing 10,000 of them each time cost ~0.35 s between a decision and its withdrawal. A
# prefix text is checked once; the check is pure, so its result is kept.
PREFIX_CACHE_SIZE = 1 << 17


@functools.lru_cache(maxsize=PREFIX_CACHE_SIZE)
def _checked_prefix(value) -> tuple[int, Network, str]:
    """(version, network, canonical text) of a prefix (a text or an ipaddress network: the
    two are never equal, so they are kept apart). Raises UnsafeValue."""
    net = _network(value)
    return net.version, net, str(net)


def _prefix(value) -> str:
    """The canonical text of a checked prefix. Raises UnsafeValue."""
    try:
        return _checked_prefix(value)[2]
    except TypeError:  # unhashable: never a prefix
        raise UnsafeValue(f"not a prefix: {value!r}") from None


def _asn(value) -> str:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 0xFFFFFFFF:
        raise UnsafeValue(f"not an ASN: {value!r}")
    return str(value)


def _community(value) -> str:
    """A standard (16-bit:16-bit) or large (32-bit:32-bit:32-bit) community."""
    try:
        return validators.parse_community(value)
    except ValueError as exc:
        raise UnsafeValue(str(exc)) from None


def _checked(line: str) -> str:
    if not _LINE.match(line):
        raise UnsafeValue(f"not one line of plain tokens: {line!r}")
    return line


def announce_line(neighbors, announcement: Announcement, prefixes: Sequence) -> str:
    """One bulk announce command, to one neighbor (an address) or to several (a sequence of
    addresses: `neighbor A , neighbor B announce ...`, parsed once by ExaBGP). Raises
    UnsafeValue for any value that is not what it claims."""
    if not prefixes:
        raise UnsafeValue("no prefix to announce")
    if isinstance(neighbors, str) or not isinstance(neighbors, Sequence):
        neighbors = [neighbors]
    if not neighbors:
        raise UnsafeValue("no neighbor to announce to")
    nets = [_prefix(p) for p in prefixes]
    selector = " , ".join(f"neighbor {_address(n)}" for n in neighbors)
    parts = [f"{selector} announce attributes next-hop self"]
    if announcement.as_path:
        parts.append(f"as-path [ {' '.join(_asn(a) for a in announcement.as_path)} ]")
    communities = [_community(c) for c in announcement.communities]  # none dropped unchecked
    standard = [c for c in communities if c.count(":") == 1]
    large = [c for c in communities if c.count(":") == 2]
    if standard:
        parts.append(f"community [ {' '.join(standard)} ]")
    if large:
        parts.append(f"large-community [ {' '.join(large)} ]")
    parts.append("nlri " + " ".join(nets))
    return _checked(" ".join(parts))


def withdraw_line(neighbor, prefixes: Sequence) -> str:
    """One bulk withdraw command. Raises UnsafeValue."""
    if not prefixes:
        raise UnsafeValue("no prefix to withdraw")
    nets = " ".join(_prefix(p) for p in prefixes)
    return _checked(f"neighbor {_address(neighbor)} withdraw attributes next-hop self nlri {nets}")


def eor_line(neighbor, family) -> str:
    """The End-of-RIB command for one session: `neighbor N announce eor ipv4 unicast`.

    `family` is a Family, 4 or 6, and must match the neighbor's address: the configuration
    gives each session one family, named after the neighbor's own (netwatch.exabgp.config).
    ExaBGP (configured with `manual-eor true`) queues it behind the routes sent before it and
    accepts it only for an established session. Raises UnsafeValue."""
    address = _address(neighbor)
    try:
        version = Family(int(family))
    except (TypeError, ValueError):
        raise UnsafeValue(f"not an address family: {family!r}") from None
    if ipaddress.ip_address(address.split("%")[0]).version != version:
        raise UnsafeValue(f"{address} has no {version.label} session")
    return _checked(f"neighbor {address} announce eor {version.label} unicast")


# --- plans as diffs -------------------------------------------------------------------------

Key = tuple[str, str]  # (neighbor address, prefix) as strings
Desired = Mapping[Key, Announcement | None]


@dataclass(frozen=True)
class Command:
    """One line for ExaBGP and what it makes true once acknowledged."""

    line: str
    effect: Mapping[Key, Announcement | None]

    @property
    def withdraws(self) -> bool:
        """A withdrawal (diff never mixes announcements and withdrawals in one command)."""
        return bool(self.effect) and next(iter(self.effect.values())) is None


@dataclass(frozen=True)
class EndOfRib(Command):
    """The End-of-RIB of `neighbor`'s session (`eor_line`): it changes no key (`effect` is
    empty), and tells the peer that what we announced since the session came up is all we
    announce: a peer in graceful-restart helper mode then drops the stale routes we did not
    announce again, and keeps them until then (or until the restart time runs out)."""

    neighbor: str = ""


def end_of_rib(neighbor) -> EndOfRib:
    """The End-of-RIB command for `neighbor`, whose session carries the family of its own
    address (netwatch.exabgp.config). Raises UnsafeValue."""
    address = _address(neighbor)
    version = ipaddress.ip_address(address.split("%")[0]).version
    return EndOfRib(eor_line(address, version), {}, address)


def diff(desired: Desired, known: Mapping[Key, Announcement | None]) -> list[Command]:
    """Commands that take ExaBGP from `known` (acknowledged, plus in flight) to `desired`.

    A key missing from `known` is unknown and is always sent (after a restart, a withdrawal
    of something that may still be announced). Equal prefixes with equal attributes for one
    neighbor share one bulk line (at most MAX_NLRI_PER_LINE prefixes), and an announcement
    line with the same prefixes and attributes for several neighbors is one command naming
    them all (module docstring; its acknowledgement is every key's). Every announcement, to
    any neighbor, comes before every withdrawal (make-before-break): ExaBGP runs the commands
    in order, and a withdrawal first would leave fewer upstreams announcing for as long as
    ExaBGP takes over it (seconds at 10,000 prefixes), below `min_announcing_upstreams` when
    the interlock releases a hold because another upstream recovered. The order is not
    enough (a rejected announcement would leave its withdrawal unbacked): the controller
    sends a withdrawal only when `safe_withdrawals` lets it through. Output order is
    deterministic.
    """
    groups: dict[tuple[str, bool, Announcement | None], list[str]] = {}
    # Only the keys that differ are sorted: with 10,000 prefixes x 4 neighbors, parsing every
    # key for the sort cost ~0.2 s per plan change.
    changed = [k for k, want in desired.items() if k not in known or known[k] != want]
    for key in sorted(changed, key=_key_order):
        want = desired[key]
        neighbor, prefix = key
        groups.setdefault((neighbor, want is not None, want), []).append(prefix)
    # The same chunk with the same attributes to several neighbors: one command for all of
    # them, in the order each chunk first appears.
    shared: dict[tuple[Announcement, tuple[str, ...]], list[str]] = {}
    withdrawals = []
    for (neighbor, announced, ann), prefixes in sorted(groups.items(), key=_group_order):
        for i in range(0, len(prefixes), MAX_NLRI_PER_LINE):
            chunk = tuple(prefixes[i : i + MAX_NLRI_PER_LINE])
            if announced:
                shared.setdefault((ann, chunk), []).append(neighbor)
            else:
                withdrawals.append(
                    Command(withdraw_line(neighbor, chunk), {(neighbor, p): None for p in chunk}))
    announcements = [
        Command(announce_line(neighbors, ann, chunk),
                {(n, p): ann for n in neighbors for p in chunk})
        for (ann, chunk), neighbors in shared.items()
    ]
    return [*announcements, *withdrawals]


def safe_withdrawals(
    withdrawals: Iterable[Command],
    acked: Mapping[Key, Announcement | None],
    in_flight: Iterable[Command],
    up: Collection[str],
    minimum: int,
    forced: Collection[str] = (),
) -> list[Command]:
    """The withdrawals that may be sent now, in their order: make-before-break as a wait.

    A withdrawal to a neighbor in `up` (session up) goes only if every prefix it withdraws
    stays announced through at least `minimum` other neighbors in `up`, counting only the
    announcements ExaBGP acknowledged (`acked`), minus the withdrawals `in_flight` and those
    let through before it. A prefix the neighbor may announce counts as taken away whether
    it was acknowledged or is unknown (after a restart). A withdrawal to a neighbor whose
    session is not up takes nothing away and always goes. The others wait: the plan's own
    announcements, once acknowledged, make them safe (the interlock counts the same
    sessions); an announcement ExaBGP keeps rejecting holds back only the withdrawals that
    needed it.

    A withdrawal to a neighbor in `forced` (an operator's drain forced past the interlock)
    always goes: the operator chose to go below `minimum`, and holding it would leave the
    prefix announced while status and audit say withdrawn. It still goes after the
    announcements of its diff (the caller sends those first), and what it takes away is
    counted before any other withdrawal is judged.
    """
    up = set(up)
    forced = set(forced)
    withdrawing = {key for c in in_flight if c.withdraws for key in c.effect}
    withdrawing |= {key for c in withdrawals if c.withdraws for key in c.effect
                    if key[0] in forced}
    carriers: dict[str, set[str]] = {}  # prefix -> neighbors up that announce it, acknowledged
    for key, ann in acked.items():
        if ann is not None and key[0] in up and key not in withdrawing:
            carriers.setdefault(key[1], set()).add(key[0])

    def others(neighbor: str, prefix: str) -> int:
        have = carriers.get(prefix, set())
        return len(have) - (neighbor in have)

    ready = []
    for command in withdrawals:
        if all(n in forced for n, _ in command.effect):
            ready.append(command)
            continue
        taken = [(n, p) for n, p in command.effect if n in up]
        if all(others(n, p) >= minimum for n, p in taken):
            for n, p in taken:
                carriers.get(p, set()).discard(n)
            ready.append(command)
    return ready


def _key_order(key: Key):
    version, net, _ = _checked_prefix(key[1])
    return (key[0], version, net)


def _group_order(item):
    (neighbor, announced, ann), _ = item
    return (not announced, neighbor, ann or Announcement())  # announcements first


def expand(
    plan_desired: Mapping[tuple[str, int], Announcement | None],
    sessions: Mapping[tuple[str, int], str],
    prefixes: Iterable,
) -> dict[Key, Announcement | None]:
    """Per (upstream, family) desires -> per (neighbor address, prefix).

    `sessions` maps (upstream, family) to the neighbor address of that session.
    """
    checked = [_checked_prefix(_prefix(p)) for p in prefixes]
    by_family = {v: [text for version, _, text in checked if version == v] for v in (4, 6)}
    out: dict[Key, Announcement | None] = {}
    for (upstream, family), ann in plan_desired.items():
        neighbor = sessions.get((upstream, int(family)))
        if neighbor is None:
            continue
        neighbor = str(neighbor)
        out.update(((neighbor, text), ann) for text in by_family.get(int(family), ()))
    return out


SHOW_NEIGHBORS = "show neighbor json"


def show_neighbors() -> Command:
    """Ask ExaBGP for every session's state (answered by one JSON list line, then `done`).

    Sent first at start: a respawned controller gets no `neighbor-changes` event for sessions
    that are already up, and the interlock must not count them as down.
    """
    return Command(SHOW_NEIGHBORS, {})


# --- events ---------------------------------------------------------------------------------


class AckKind(enum.Enum):
    DONE = "done"
    ERROR = "error"


@dataclass(frozen=True)
class Ack:
    kind: AckKind


class PeerState(enum.Enum):
    """A neighbor's state in ExaBGP's `neighbor-changes` messages."""

    UP = "up"
    DOWN = "down"
    CONNECTED = "connected"  # TCP up, BGP not yet: neither up nor down for us
    OTHER = "other"  # anything else ExaBGP may add: ignored, never guessed


@dataclass(frozen=True)
class NeighborState:
    peer: str
    local: str
    state: PeerState
    reason: str = ""


@dataclass(frozen=True)
class Shutdown:
    pass


@dataclass(frozen=True)
class Other:
    """A well-formed message we do not act on (updates, notifications, unknown types)."""

    kind: str


@dataclass(frozen=True)
class NeighborSummary:
    """The answer to `show neighbor json`: {peer address: up} for every configured session,
    and {peer address: UPDATE messages received} where ExaBGP reported the count.

    The count is ExaBGP's per-session statistic, incremented (by ExaBGP 5.0.15) before the
    message is decoded, so it costs nothing even with `adj-rib-in false`: a transit that
    sends a default route sends a handful of UPDATEs, one that sends a full table thousands
    (BIRD packed 100,000 routes into ~320)."""

    sessions: Mapping[str, bool]
    updates_received: Mapping[str, int] = field(default_factory=dict)


Event = Ack | NeighborState | NeighborSummary | Shutdown | Other


def parse_event(line: str) -> Event:
    """Parse one line ExaBGP wrote to us. Raises ValueError for a malformed line."""
    text = line.strip()
    if text in ("done", "error"):
        return Ack(AckKind(text))
    if text == "shutdown":
        return Shutdown()
    if not text.startswith(("{", "[")):
        raise ValueError(f"not an ExaBGP message: {text[:80]!r}")
    try:
        message = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"bad JSON from ExaBGP: {exc}") from None
    if isinstance(message, list):
        return _summary(message)
    if not isinstance(message, dict):
        raise ValueError("ExaBGP message is not an object")
    if message.get("answer") in ("done", "error"):
        return Ack(AckKind(message["answer"]))
    if message.get("notification") == "shutdown":
        return Shutdown()
    kind = message.get("type", "")
    if kind == "state":
        neighbor = message.get("neighbor") or {}
        address = neighbor.get("address") or {}
        peer, local, state = address.get("peer"), address.get("local"), neighbor.get("state")
        if not (isinstance(peer, str) and isinstance(state, str)):
            raise ValueError("state message without neighbor address or state")
        reason = str(neighbor.get("reason", ""))
        known = {s.value: s for s in PeerState}
        return NeighborState(_address(peer), str(local or ""), known.get(state, PeerState.OTHER),
                             reason)
    return Other(str(kind))


def _summary(items: list) -> NeighborSummary:
    # "fsm", not "state": ExaBGP 5.0.15 derives "state" from whole seconds since the session
    # came up, so a session established less than 1 s ago reads "down" (seen in the lab).
    sessions, updates = {}, {}
    for item in items:
        peer = (item.get("peer") or {}).get("address") if isinstance(item, dict) else None
        fsm = item.get("fsm") if isinstance(item, dict) else None
        if not isinstance(peer, str) or not isinstance(fsm, str):
            raise ValueError("show neighbor answer without peer address or fsm state")
        address = _address(peer)
        sessions[address] = fsm.upper() == "ESTABLISHED"
        messages = item.get("messages")
        received = messages.get("received") if isinstance(messages, dict) else None
        count = received.get("update") if isinstance(received, dict) else None
        if isinstance(count, int) and not isinstance(count, bool) and count >= 0:
            updates[address] = count
    return NeighborSummary(sessions, updates)
