"""The border's multipath default routes through rtnetlink (pyroute2's AsyncIPRoute). I/O only.

One default route per family in one table, its next hops in RTA_MULTIPATH (pyroute2 has no
nexthop objects): `replace` writes the whole route in one message, so the kernel swaps it
atomically and there is never a moment without a default route. `defaults` reads back every
default route of the table; `changed` returns when one of them may have changed.

Facts that shape the callers, measured in the lab (kernel 6.x):
- a route written with one next hop reads back as a plain route (RTA_GATEWAY and RTA_OIF, no
  weight); two or more read back as RTA_MULTIPATH with their weights;
- `replace` at the metric of a default route that is already there (a static one, another
  daemon's) takes it over in place, whatever its protocol; both families;
- a next hop whose interface has lost its carrier is accepted (flag `linkdown`); one whose
  interface is administratively down is refused (IPv4 EINVAL "Nexthop has invalid gateway",
  IPv6 EHOSTUNREACH), and the whole route with it;
- reading the defaults of a small table (the lab's edge: ~20 routes) takes ~1 ms.

pyroute2 takes ~80 ms to import: it is imported in `open`, so that a respawned controller has
asked ExaBGP for its sessions before it pays for it.
"""

from __future__ import annotations

import errno
import socket
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address

from netwatch.core.vocabulary import Family

AF = {Family.V4: socket.AF_INET, Family.V6: socket.AF_INET6}
IFF_UP = 0x1
RTN_UNICAST = 1


@dataclass(frozen=True, order=True)
class NextHop:
    """One next hop of a default route: via `gateway` on `ifname`, `weight` 1..256."""

    gateway: IPv4Address | IPv6Address
    ifname: str
    weight: int = 1


@dataclass(frozen=True)
class KernelDefault:
    """One default route of the table, as the kernel holds it. `hops` are sorted; empty for
    a route with no gateway (a blackhole, unreachable or device-only default)."""

    family: Family
    metric: int
    proto: int
    hops: tuple[NextHop, ...]


class NetlinkEgressRoutes:
    """`netwatch.controller.egress.EgressRoutes` on the kernel: the default routes of `table`.
    Call `await open()` on the running loop; every method raises OSError (a NetlinkError
    becomes an OSError with its errno)."""

    def __init__(self, table: int):
        self.table = table
        self.ipr = None
        self._events = None
        self._index: dict[str, int] = {}  # ifname -> ifindex, from the last link dump
        self._up: set[str] = set()  # admin-up interfaces, from the last link dump

    async def open(self) -> None:
        from pyroute2.iproute.linux import AsyncIPRoute
        from pyroute2.netlink.rtnl import RTMGRP_IPV4_ROUTE, RTMGRP_IPV6_ROUTE

        from netwatch.adapters.netlink import kernel_filters_dumps

        # The kernel filters a dump by table (before Linux 4.20 it cannot: we do, below).
        self.ipr = AsyncIPRoute(strict_check=kernel_filters_dumps())
        try:
            events = AsyncIPRoute()
        except BaseException:  # out of file descriptors: the first socket must not leak
            self.close()
            raise
        try:
            await _netlink(events.bind(groups=RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_ROUTE))
        except BaseException:
            events.close()
            self.close()
            raise
        self._events = events

    def close(self) -> None:
        for sock in (self._events, self.ipr):
            if sock is not None:
                sock.close()
        self.ipr = self._events = None

    async def _links(self) -> None:
        index, up = {}, set()
        for msg in await _all(self.ipr.link("dump")):
            name = msg.get("ifname")
            index[name] = msg["index"]
            if msg["flags"] & IFF_UP:
                up.add(name)
        self._index, self._up = index, up

    async def links_up(self) -> set[str]:
        """The names of the interfaces that are administratively up, read now."""
        await self._links()
        return set(self._up)

    async def defaults(self, family: Family) -> list[KernelDefault]:
        """Every default route of `family` in the table, lowest metric first."""
        found = []
        for msg in await _all(self.ipr.route("dump", family=AF[family], table=self.table)):
            if msg["dst_len"] != 0 or msg.get("table") != self.table:
                continue
            hops = []
            if msg["type"] == RTN_UNICAST:
                if msg.get("multipath"):
                    for nh in msg.get("multipath"):
                        gateway = dict(nh.get("attrs", ())).get("RTA_GATEWAY")
                        if gateway is not None:
                            hops.append((gateway, nh["oif"], nh.get("hops", 0) + 1))
                elif msg.get("gateway"):
                    hops.append((msg.get("gateway"), msg.get("oif"), 1))
            names = {v: k for k, v in self._index.items()}
            if any(oif not in names for _, oif, _ in hops):
                await self._links()
                names = {v: k for k, v in self._index.items()}
            found.append(KernelDefault(
                family=family,
                metric=msg.get("priority") or 0,
                proto=msg["proto"],
                hops=tuple(sorted(NextHop(ip_address(gw), names.get(oif, f"#{oif}"), weight)
                                  for gw, oif, weight in hops)),
            ))
        found.sort(key=lambda r: r.metric)
        return found

    async def replace(self, family: Family, metric: int, proto: int,
                      hops: tuple[NextHop, ...]) -> None:
        """Make the table's default route of `family` at `metric` exactly `hops`, in one
        message (RTM_NEWROUTE with NLM_F_REPLACE). Raises OSError: ENODEV for an interface
        that does not exist, what the kernel answers otherwise."""
        if not hops:
            raise ValueError("a default route needs at least one next hop")
        if any(h.ifname not in self._index for h in hops):
            await self._links()
        missing = [h.ifname for h in hops if h.ifname not in self._index]
        if missing:
            raise OSError(errno.ENODEV, f"no interface {', '.join(missing)}")
        await _netlink(self.ipr.route(
            "replace",
            dst="default",
            family=AF[family],
            table=self.table,
            proto=proto,
            priority=metric,
            multipath=[{"gateway": str(h.gateway), "oif": self._index[h.ifname],
                        "hops": h.weight - 1} for h in hops],
        ))

    async def changed(self) -> None:
        """Return when a default route of the table was added, replaced or deleted (by anyone,
        this process included). Raises OSError when the event socket fails (ENOBUFS: the
        kernel dropped events): reopen, and read the routes again."""
        while True:
            async for msg in _aiter_netlink(self._events.get()):
                if (msg.get("event") in ("RTM_NEWROUTE", "RTM_DELROUTE")
                        and msg.get("dst_len") == 0 and msg.get("table") == self.table):
                    return


async def _netlink(awaitable):
    """`await awaitable`, a NetlinkError coming out as an OSError with its errno."""
    from pyroute2.netlink.exceptions import NetlinkError

    try:
        return await awaitable
    except NetlinkError as exc:
        raise OSError(exc.code, str(exc)) from exc


async def _all(awaitable) -> list:
    """Every message of a dump, a NetlinkError coming out as an OSError with its errno."""
    from pyroute2.netlink.exceptions import NetlinkError

    try:
        return [msg async for msg in await awaitable]
    except NetlinkError as exc:
        raise OSError(exc.code, str(exc)) from exc


async def _aiter_netlink(messages):
    from pyroute2.netlink.exceptions import NetlinkError

    try:
        async for msg in messages:
            yield msg
    except NetlinkError as exc:
        raise OSError(exc.code, str(exc)) from exc
