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
- `route replace` of a default route takes about 1 ms.
"""

from __future__ import annotations

import enum
import ipaddress
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address

from pyroute2 import AsyncIPRoute
from pyroute2.netlink.rtnl import (
    RTMGRP_IPV4_ROUTE,
    RTMGRP_IPV6_ROUTE,
    RTMGRP_LINK,
)

from netwatch.adapters.policy_routing import RTPROT_NETWATCH, ProbePath, install_probe_path

IFF_UP = 0x1
IFF_LOWER_UP = 0x10000
MAIN_TABLE = 254
# Without an explicit metric the kernel gives IPv4 routes 0 and IPv6 routes 1024 (`ip route`).
DEFAULT_METRIC = {socket.AF_INET: 0, socket.AF_INET6: 1024}


@dataclass(frozen=True)
class LinkState:
    """What netlink says about one interface. `exists` False: no such interface."""

    ifname: str
    exists: bool
    admin_up: bool = False
    carrier: bool = False


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


@dataclass(frozen=True)
class Event:
    """A change worth re-reading the state for. `link` is set for LINK events only."""

    kind: EventKind
    link: LinkState | None = None


def _link_state(msg) -> LinkState:
    name = msg.get("ifname") or msg.get_attr("IFLA_IFNAME") or ""
    if msg["header"]["type"] == 17:  # RTM_DELLINK
        return LinkState(name, exists=False)
    flags = msg["flags"]
    return LinkState(name, True, bool(flags & IFF_UP), bool(flags & IFF_LOWER_UP))


class Netlink:
    """Link and default-route I/O for the agent. Call `await open()` on the running loop."""

    def __init__(self) -> None:
        self.ipr: AsyncIPRoute | None = None
        self._events: AsyncIPRoute | None = None
        self._names: dict[int, str] = {}

    async def open(self) -> None:
        self.ipr = AsyncIPRoute()
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
            await events.bind(groups=RTMGRP_LINK | RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_ROUTE)
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
        """The current state of each named interface (missing ones with exists=False)."""
        found = {name: LinkState(name, exists=False) for name in ifnames}
        self._names = {}
        async for msg in await self.ipr.link("dump"):
            state = _link_state(msg)
            self._names[msg["index"]] = state.ifname
            if state.ifname in found:
                found[state.ifname] = state
        return found

    async def events(self) -> AsyncIterator[Event]:
        """Link and route changes, forever. Link events carry the link's new state."""
        while True:
            async for msg in self._events.get():
                event = msg.get("event", "")
                if event in ("RTM_NEWLINK", "RTM_DELLINK"):
                    state = _link_state(msg)
                    if state.exists:
                        self._names[msg["index"]] = state.ifname
                    else:
                        self._names.pop(msg["index"], None)
                    yield Event(EventKind.LINK, state)
                elif event in ("RTM_NEWROUTE", "RTM_DELROUTE"):
                    yield Event(EventKind.ROUTE)

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
        """Install `path`'s table route and fwmark rule when either is missing; True when it
        wrote. Only writes when needed: every write is a route event, and the agent checks the
        paths again after route events. Raises NetlinkError (link down, no such interface)."""
        source = str(path.source) if path.source is not None else None
        route = rule = False
        async for msg in await self.ipr.route("dump", family=path.family, table=path.table):
            route = route or (msg["dst_len"] == 0 and msg.get("table") == path.table
                              and msg.get("prefsrc") == source)
        async for msg in await self.ipr.rule("dump", family=path.family):
            rule = rule or (msg.get("fwmark") == path.mark and msg.get("table") == path.table)
        if route and rule:
            return False
        await install_probe_path(self.ipr, path)
        return True

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
