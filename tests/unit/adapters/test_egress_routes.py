"""The border's default-route adapter against a scripted pyroute2 socket: what rtnetlink's
answers become (`defaults`), the one message a `replace` sends, which route events count
(`changed`), and errors as OSError. The real kernel: tests/lab/test_outbound.py."""

from __future__ import annotations

import asyncio
import errno
import socket
from ipaddress import ip_address

import pyroute2.iproute.linux
import pytest
from pyroute2.netlink.exceptions import NetlinkError

from netwatch.adapters.egress_routes import KernelDefault, NetlinkEgressRoutes, NextHop
from netwatch.core.vocabulary import Family

LINKS = [{"ifname": "lo", "index": 1, "flags": 0x1}, {"ifname": "t1", "index": 3, "flags": 0x1},
         {"ifname": "t2", "index": 5, "flags": 0x0}, {"ifname": "t3", "index": 7, "flags": 0x1}]


def route(table=254, dst_len=0, **fields) -> dict:
    return {"dst_len": dst_len, "table": table, "type": 1, "proto": 253, **fields}


def nexthop(gateway: str, oif: int, hops: int) -> dict:
    return {"attrs": [("RTA_GATEWAY", gateway)], "flags": 0, "hops": hops, "oif": oif}


class ScriptedIPRoute:
    """Stands for pyroute2's AsyncIPRoute: dumps answer from `ROUTES` and `LINKS`, requests
    are recorded in `SENT` (or raise `REFUSE`), the event socket reads `EVENTS` once."""

    ROUTES: list[dict] = []
    EVENTS: list[dict] = []
    SENT: list[tuple[str, dict]] = []
    REFUSE: Exception | None = None

    def __init__(self, **kwargs):
        self.kwargs = kwargs

    async def bind(self, groups):
        pass

    def close(self):
        pass

    async def _answer(self, messages):
        for msg in messages:
            yield msg

    async def link(self, command):
        return self._answer(LINKS)

    async def route(self, command, **kwargs):
        if command == "dump":
            return self._answer(self.ROUTES)
        if self.REFUSE is not None:
            raise self.REFUSE
        self.SENT.append((command, kwargs))
        return self._answer([])

    async def get(self):
        for msg in self.EVENTS:
            yield msg
        await asyncio.Event().wait()


@pytest.fixture
def kernel(monkeypatch):
    monkeypatch.setattr(pyroute2.iproute.linux, "AsyncIPRoute", ScriptedIPRoute)
    monkeypatch.setattr(ScriptedIPRoute, "SENT", [])
    monkeypatch.setattr(ScriptedIPRoute, "REFUSE", None)
    return ScriptedIPRoute


def run(coroutine_fn):
    async def main():
        routes = NetlinkEgressRoutes(254)
        await routes.open()
        try:
            return await asyncio.wait_for(coroutine_fn(routes), 5)
        finally:
            routes.close()

    return asyncio.run(main())


def test_defaults_read_multipath_and_single_next_hop_routes_of_the_table_only(kernel):
    kernel.ROUTES = [
        route(multipath=[nexthop("192.0.2.9", 7, 9), nexthop("192.0.2.1", 3, 0)]),
        route(priority=10, proto=3, gateway="192.0.2.5", oif=5),  # one hop: no weight
        route(dst_len=24, gateway="192.0.2.1", oif=3),  # not a default
        route(table=2000, gateway="192.0.2.1", oif=3),  # a probe path's table
        route(priority=20, type=6, proto=4),  # a blackhole default: no next hop
    ]
    found = run(lambda r: r.defaults(Family.V4))
    assert found == [
        KernelDefault(Family.V4, 0, 253, (NextHop(ip_address("192.0.2.1"), "t1", 1),
                                          NextHop(ip_address("192.0.2.9"), "t3", 10))),
        KernelDefault(Family.V4, 10, 3, (NextHop(ip_address("192.0.2.5"), "t2", 1),)),
        KernelDefault(Family.V4, 20, 4, ()),
    ]


def test_replace_is_one_multipath_message_with_the_weights_as_hops(kernel):
    hops = (NextHop(ip_address("2001:db8:ffff:1::1"), "t1", 10),
            NextHop(ip_address("2001:db8:ffff:3::1"), "t3", 1))
    run(lambda r: r.replace(Family.V6, 1024, 253, hops))
    assert kernel.SENT == [("replace", {
        "dst": "default", "family": socket.AF_INET6, "table": 254, "proto": 253,
        "priority": 1024,
        "multipath": [{"gateway": "2001:db8:ffff:1::1", "oif": 3, "hops": 9},
                      {"gateway": "2001:db8:ffff:3::1", "oif": 7, "hops": 0}],
    })]


def test_errors_come_out_as_oserror_with_their_errno(kernel):
    with pytest.raises(OSError) as missing:
        run(lambda r: r.replace(Family.V4, 0, 253,
                                (NextHop(ip_address("192.0.2.1"), "t9", 1),)))
    assert missing.value.errno == errno.ENODEV and "t9" in str(missing.value)
    kernel.REFUSE = NetlinkError(errno.EINVAL, "Nexthop has invalid gateway")
    with pytest.raises(OSError) as refused:
        run(lambda r: r.replace(Family.V4, 0, 253,
                                (NextHop(ip_address("192.0.2.5"), "t2", 1),)))
    assert refused.value.errno == errno.EINVAL
    assert run(lambda r: r.links_up()) == {"lo", "t1", "t3"}  # t2 administratively down


def test_only_default_routes_of_the_table_count_as_changed(kernel):
    kernel.EVENTS = [
        {"event": "RTM_NEWROUTE", "dst_len": 0, "table": 2001},  # a probe path
        {"event": "RTM_NEWROUTE", "dst_len": 24, "table": 254},  # not a default
        {"event": "RTM_NEWADDR"},
        {"event": "RTM_DELROUTE", "dst_len": 0, "table": 254},
    ]
    assert run(lambda r: r.changed()) is None
    kernel.EVENTS = kernel.EVENTS[:3]
    with pytest.raises(asyncio.TimeoutError):
        run(lambda r: asyncio.wait_for(r.changed(), 0.1))
