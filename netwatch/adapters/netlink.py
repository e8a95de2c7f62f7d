"""Links and default routes through rtnetlink (pyroute2's AsyncIPRoute). I/O only.

`Netlink` owns two sockets on the caller's asyncio loop: one for requests and one bound to the
link and route multicast groups for events. (A synchronous pyroute2 `IPRoute` is per thread:
bound for events in one thread and read in another, it silently gets nothing. Everything here
runs on the one loop of the daemon.) Errors come out as NetlinkError or OSError; whether one is
transient is the caller's call (the agent retries, then gives up loudly).

Facts that shape the callers, measured on the dev machine:
- the kernel reports carrier changes at most about once a second per device (linkwatch), so
  the second flap of a fast pair arrives late; admin down and RTM_DELLINK are immediate;
- setting a link admin-down makes the kernel delete every route through it, in every table;
- `route replace` of a default route takes about 1 ms;
- IPv6 duplicate address detection keeps a new address tentative for 1-2 s (a random delay
  up to 1 s, then one probe and 1 s of waiting): the kernel refuses to send from it
  (EADDRNOTAVAIL) and refuses it as a route's source ("Invalid source address"). The
  link-local address a link gets when it comes up is announced only once DAD is over (no
  RTM_NEWADDR while it is tentative), so the addresses are dumped again on every link event;
  a carrier that returns restarts DAD on addresses that stay usable meanwhile, an admin
  down/up (with `keep_addr_on_down`) makes them tentative again.
"""

from __future__ import annotations

import enum
import errno
import functools
import ipaddress
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address

from pyroute2.iproute.linux import AsyncIPRoute
from pyroute2.netlink import NETLINK_GET_STRICT_CHK, SOL_NETLINK
from pyroute2.netlink.rtnl import (
    RTMGRP_IPV4_ROUTE,
    RTMGRP_IPV6_IFADDR,
    RTMGRP_IPV6_ROUTE,
    RTMGRP_LINK,
)

from netwatch.adapters.policy_routing import (
    RTPROT_NETWATCH,
    ProbePath,
    install_probe_path,
    install_unreachable,
    is_unreachable_default,
)

IFF_UP = 0x1
IFF_LOWER_UP = 0x10000
MAIN_TABLE = 254
# Without an explicit metric the kernel gives IPv4 routes 0 and IPv6 routes 1024 (`ip route`).
DEFAULT_METRIC = {socket.AF_INET: 0, socket.AF_INET6: 1024}
# Address flags (linux/if_addr.h).
IFA_F_OPTIMISTIC = 0x04  # usable while DAD runs (optimistic DAD)
IFA_F_DADFAILED = 0x08  # a duplicate was found: never usable (stays TENTATIVE too)
IFA_F_TENTATIVE = 0x40  # DAD has not finished: not usable as a source
NUD_FAILED = 0x20  # a neighbour entry whose resolution gave up


@functools.cache
def kernel_filters_dumps() -> bool:
    """Whether the kernel filters a dump by what it asks for (NETLINK_GET_STRICT_CHK, Linux
    4.20: routes by table, neighbours by interface): without it, every probe-path check
    decoded every route of every table in Python. Asked once; before 4.20 the sockets are
    opened without it, as they were (every caller checks table and interface itself too)."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as probe:
        try:
            probe.setsockopt(SOL_NETLINK, NETLINK_GET_STRICT_CHK, 1)
        except OSError as exc:
            if exc.errno == errno.ENOPROTOOPT:
                return False
            raise
    return True

@dataclass(frozen=True)
class LinkState:
    """What netlink says about one interface. `exists` False: no such interface (deleted,
    moved to another namespace, or renamed: `renamed_to` is then its new name). `index`: the
    kernel's interface index, which tells a new interface of a name from the old one."""

    ifname: str
    exists: bool
    admin_up: bool = False
    carrier: bool = False
    index: int | None = None
    renamed_to: str | None = None


@dataclass(frozen=True)
class DefaultRoute:
    """One default route of the main table."""

    family: int
    ifname: str | None
    gateway: IPv4Address | IPv6Address | None
    metric: int
    proto: int
    source: IPv4Address | IPv6Address | None = None

    @property
    def ours(self) -> bool:
        return self.proto == RTPROT_NETWATCH


class EventKind(enum.Enum):
    LINK = "link"  # a link appeared, changed or vanished: the event carries its new state
    ROUTE = "route"  # a route was added or deleted (in any table): re-read the defaults
    ADDRESS = "address"  # an IPv6 address appeared, vanished, or finished DAD


@dataclass(frozen=True)
class Event:
    """A change worth re-reading the state for. `link` is set for LINK events only."""

    kind: EventKind
    link: LinkState | None = None


def _address_flags(msg) -> int:
    """The 32-bit IFA_FLAGS when the kernel sends them, else the header's 8 bits."""
    flags = msg.get_attr("IFA_FLAGS")
    return msg["flags"] if flags is None else flags


def _dad_running(flags: int) -> bool:
    """Tentative and not usable meanwhile: not optimistic, and DAD has not failed (an
    address whose DAD failed stays tentative for ever, and is no more usable than none)."""
    return bool(flags & IFA_F_TENTATIVE) and not flags & (IFA_F_OPTIMISTIC | IFA_F_DADFAILED)


def _usable(flags: int) -> bool:
    return not flags & IFA_F_DADFAILED and (
        not flags & IFA_F_TENTATIVE or bool(flags & IFA_F_OPTIMISTIC))


def _link_state(msg) -> LinkState:
    name = msg.get("ifname") or msg.get_attr("IFLA_IFNAME") or ""
    if msg["header"]["type"] == 17:  # RTM_DELLINK
        return LinkState(name, exists=False, index=msg["index"])
    flags = msg["flags"]
    return LinkState(name, True, bool(flags & IFF_UP), bool(flags & IFF_LOWER_UP),
                     index=msg["index"])


class Netlink:
    """Link and default-route I/O for the agent. Call `await open()` on the running loop."""

    def __init__(self) -> None:
        self.ipr: AsyncIPRoute | None = None
        self._events: AsyncIPRoute | None = None
        self._names: dict[int, str] = {}
        # Link events handled while a link dump is under way: index -> sequence number, so
        # that the dump (read by the kernel before them) does not undo what they learnt.
        self._link_seq = 0
        self._link_updated: dict[int, int] = {}
        self._dumps = 0  # link dumps under way
        self._addrs6: dict[int, dict[IPv6Address, int]] = {}  # ifindex -> address -> flags
        self._tentative: dict[tuple[str, IPv6Address | None], bool] = {}  # answers, cached

    async def open(self) -> None:
        self.ipr = AsyncIPRoute(strict_check=kernel_filters_dumps())
        await self.reopen_events()

    async def reopen_events(self) -> None:
        """A fresh event socket, bound to the link and route groups. After an error on the old
        one (ENOBUFS: the kernel dropped events; a reset: the socket is dead and a read would
        wait forever), events since then are lost: re-read links and routes."""
        if self._events is not None:
            self._events.close()
            self._events = None
        events = AsyncIPRoute()
        try:
            await events.bind(groups=RTMGRP_LINK | RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_ROUTE
                              | RTMGRP_IPV6_IFADDR)
        except BaseException:
            events.close()
            raise
        self._events = events

    def close(self) -> None:
        for sock in (self._events, self.ipr):
            if sock is not None:
                sock.close()
        self.ipr = self._events = None

    def _index_of(self, ifname: str) -> int | None:
        """From the names learnt by dumps and link events (no request on the fast path)."""
        for index, name in self._names.items():
            if name == ifname:
                return index
        return None

    async def links(self, ifnames: list[str]) -> dict[str, LinkState]:
        """The current state of each named interface (missing ones with exists=False), and
        of every IPv6 address (for `ipv6_tentative`)."""
        found = {name: LinkState(name, exists=False) for name in ifnames}
        start = self._link_seq
        names: dict[int, str] = {}
        self._dumps += 1
        try:
            async for msg in await self.ipr.link("dump"):
                state = _link_state(msg)
                names[msg["index"]] = state.ifname
                if state.ifname in found:
                    found[state.ifname] = state
        finally:
            self._dumps -= 1
        # Merged, not replaced: a link event handled while the dump was awaited (a rename, a
        # deletion, a new link) is newer than the dump, and `events()` reads `_names` to
        # tell a rename (the old name gone) from a new link.
        newer = {i for i, seq in self._link_updated.items() if seq > start}
        merged = {i: n for i, n in names.items() if i not in newer}
        merged.update((i, n) for i, n in self._names.items() if i in newer)
        self._names = merged
        if not self._dumps:
            self._link_updated = {}
        for name, state in found.items():
            if state.exists and merged.get(state.index) != name:
                found[name] = LinkState(name, exists=False, index=state.index,
                                        renamed_to=merged.get(state.index))
        self._tentative = {}
        await self._read_addresses()
        return found

    async def _read_addresses(self) -> None:
        addrs: dict[int, dict[IPv6Address, int]] = {}
        async for msg in await self.ipr.addr("dump", family=socket.AF_INET6):
            address = msg.get("address")
            if address:
                addrs.setdefault(msg["index"], {})[IPv6Address(address)] = _address_flags(msg)
        self._addrs6 = addrs
        self._tentative = {}

    def _learn_address(self, msg) -> None:
        address = msg.get("address")
        if not address:
            return
        known = self._addrs6.setdefault(msg["index"], {})
        if msg["event"] == "RTM_DELADDR":
            known.pop(IPv6Address(address), None)
        else:
            known[IPv6Address(address)] = _address_flags(msg)
        self._tentative = {}

    def ipv6_tentative(self, ifname: str, address: IPv6Address | None = None) -> bool:
        """True while IPv6 duplicate address detection runs on the source a probe through
        `ifname` leaves from, so that an unanswered probe says nothing: `address` (a
        configured source, on whichever interface it lives) when given, else the interface's
        link-local address (every one it has is still tentative). False when the address is
        unknown, usable, or failed DAD (a duplicate: probes from it fail for good, a verdict).
        From the addresses last dumped and the address events since: no request."""
        key = (ifname, address)
        found = self._tentative.get(key)
        if found is None:
            found = self._tentative[key] = self._dad_running(ifname, address)
        return found

    def _dad_running(self, ifname: str, address: IPv6Address | None) -> bool:
        if address is not None:
            for addrs in self._addrs6.values():
                if address in addrs:
                    return _dad_running(addrs[address])
            return False
        index = self._index_of(ifname)
        local = [f for a, f in self._addrs6.get(index, {}).items() if a.is_link_local]
        return any(_dad_running(f) for f in local) and not any(_usable(f) for f in local)

    async def events(self) -> AsyncIterator[Event]:
        """Link, route and IPv6 address changes, forever. Link events carry the link's new
        state; a rename is two of them: the old name gone (`renamed_to` the new one), then
        the new name's state. The IPv6 addresses are re-read before a link event is handed
        over, so a caller that reacts to a link coming up already sees its new link-local
        address tentative."""
        while True:
            async for msg in self._events.get():
                event = msg.get("event", "")
                if event in ("RTM_NEWLINK", "RTM_DELLINK"):
                    state = _link_state(msg)
                    if self._dumps:
                        self._link_seq += 1
                        self._link_updated[msg["index"]] = self._link_seq
                    if state.exists:
                        old = self._names.get(msg["index"])
                        self._names[msg["index"]] = state.ifname
                        if old is not None and old != state.ifname:
                            yield Event(EventKind.LINK, LinkState(
                                old, exists=False, index=msg["index"],
                                renamed_to=state.ifname))
                    else:
                        self._names.pop(msg["index"], None)
                        self._addrs6.pop(msg["index"], None)
                    self._tentative = {}
                    if state.exists and state.admin_up and state.carrier:
                        await self._read_addresses()
                    yield Event(EventKind.LINK, state)
                elif event in ("RTM_NEWROUTE", "RTM_DELROUTE"):
                    yield Event(EventKind.ROUTE)
                elif (event in ("RTM_NEWADDR", "RTM_DELADDR")
                      and msg.get("family") == socket.AF_INET6):
                    self._learn_address(msg)
                    yield Event(EventKind.ADDRESS)

    async def default_routes(self, family: int) -> list[DefaultRoute]:
        """The main table's default routes of `family`, best (lowest metric) first."""
        if not self._names:
            await self.links([])
        routes = []
        async for msg in await self.ipr.route("dump", family=family, table=MAIN_TABLE):
            if msg["dst_len"] != 0 or msg.get("table") != MAIN_TABLE:
                continue
            if msg["type"] != 1:  # RTN_UNICAST: not unreachable/prohibit/blackhole
                continue
            gateway = msg.get("gateway")
            oif = msg.get("oif")
            if oif is None:
                multipath = msg.get("multipath") or []
                oif = multipath[0]["oif"] if multipath else None
            if oif is not None and oif not in self._names:
                await self.links([])
            prefsrc = msg.get("prefsrc")
            routes.append(DefaultRoute(
                family=family,
                ifname=self._names.get(oif) if oif is not None else None,
                gateway=ip_address(gateway) if gateway else None,
                metric=msg.get("priority") or 0,
                proto=msg["proto"],
                source=ip_address(prefsrc) if prefsrc else None,
            ))
        routes.sort(key=lambda r: r.metric)
        return routes

    async def address_towards(self, ifname: str, gateway: IPv4Address) -> IPv4Address | None:
        """The interface's IPv4 address in the gateway's subnet (an ARP sender), if any."""
        index = await self.ipr.link_lookup(ifname=ifname)
        if not index:
            return None
        async for msg in await self.ipr.addr("dump", family=socket.AF_INET, index=index[0]):
            net = ipaddress.ip_interface(f"{msg.get('address')}/{msg['prefixlen']}").network
            if gateway in net:
                return IPv4Address(msg.get("address"))
        return None

    async def ensure_probe_path(self, path: ProbePath) -> bool:
        """Install `path`'s table route and fwmark rule when either is missing or the route
        goes through another interface than the one named `path.ifname` now (renamed away, or
        deleted and created again); True when it wrote. Only writes when needed: every write
        is a route event, and the agent checks the paths again after route events. Raises
        NetlinkError (link down, no such interface)."""
        source = str(path.source) if path.source is not None else None
        index = self._index_of(path.ifname)
        route = rule = unreachable = False
        async for msg in await self.ipr.route("dump", family=path.family, table=path.table):
            if msg.get("table") != path.table:
                continue
            unreachable = unreachable or is_unreachable_default(msg)
            route = route or (msg["dst_len"] == 0 and msg.get("prefsrc") == source
                              and index is not None and msg.get("oif") == index)
        async for msg in await self.ipr.rule("dump", family=path.family):
            rule = rule or (msg.get("fwmark") == path.mark and msg.get("table") == path.table)
        if path.family == socket.AF_INET6 and index is not None:
            await self._forget_failed_gateway(path, index)
        if route and rule and unreachable:
            return False
        if route and rule:
            await install_unreachable(self.ipr, path)
            return True
        await install_probe_path(self.ipr, path)
        return True

    async def _forget_failed_gateway(self, path: ProbePath, index: int) -> bool:
        """Delete the kernel's neighbour entry of an IPv6 path's gateway when it is FAILED;
        True when it did. A host (forwarding off) looks a route up among reachable gateways
        only: a route whose gateway's entry is FAILED loses to the table's unreachable
        default, so a marked probe never reaches the neighbour layer and the entry is never
        resolved again (a neighbour advertisement does not revive a FAILED entry, and the
        kernel probes a router again only after router_probe_interval, 60 s). A gateway silent
        for about 3 s while probed (a link flap, its address in DAD again) left the uplink's
        IPv6 judged DOWN for that minute. Once the entry is gone, the next probe takes the
        route and resolves the gateway afresh; a gateway still dead fails it again."""
        gateway = str(path.gateway)
        async for msg in await self.ipr.neigh("dump", family=socket.AF_INET6, ifindex=index):
            if (msg.get("ifindex") == index and msg.get_attr("NDA_DST") == gateway
                    and msg["state"] & NUD_FAILED):
                await self.ipr.neigh("del", dst=gateway, ifindex=index, family=socket.AF_INET6)
                return True
        return False

    async def replace_default(
        self,
        family: int,
        ifname: str,
        gateway: IPv4Address | IPv6Address,
        source: IPv4Address | IPv6Address | None,
        metric: int | None = None,
    ) -> None:
        """Make the default route of `family` at `metric` (default: the kernel's) go via
        `gateway` on `ifname` with `source`, tagged proto 252. Raises NetlinkError (no such
        interface, link down: ENETUNREACH, source not local: EINVAL)."""
        index = self._index_of(ifname)
        if index is None:
            index = ((await self.ipr.link_lookup(ifname=ifname)) or [None])[0]
        if index is None:
            raise OSError(19, f"no interface {ifname!r}")
        spec = dict(
            dst="default",
            family=family,
            gateway=str(gateway),
            oif=index,
            table=MAIN_TABLE,
            proto=RTPROT_NETWATCH,
            priority=DEFAULT_METRIC[family] if metric is None else metric,
        )
        if source is not None:
            spec["prefsrc"] = str(source)
        await self.ipr.route("replace", **spec)
