"""The default routes in the decision's terms, over a recording route table."""

from __future__ import annotations

import asyncio
import socket
from ipaddress import IPv4Address, IPv6Address

from netwatch.adapters.netlink import DefaultRoute
from netwatch.agent.decision import RouteSnapshot
from netwatch.agent.routes import DefaultRoutes
from netwatch.config import AgentSection
from netwatch.core.vocabulary import Family, UplinkRole

P, S = UplinkRole.PRIMARY, UplinkRole.SECONDARY
V4, V6 = socket.AF_INET, socket.AF_INET6

CONFIG = AgentSection.model_validate({"uplinks": {
    "primary": {"interface": "eth0", "gateway": "100.64.1.1", "gateway6": "fe80::1",
                "source": "198.51.100.10"},
    "secondary": {"interface": "eth1", "gateway": "100.64.2.1", "gateway6": "fe80::1",
                  "source": "198.51.100.20", "source6": "2001:db8:100:2::10"},
}})


class Table:
    """The main table's default routes per family (best first), and the writes asked for."""

    def __init__(self, routes: dict[int, list[DefaultRoute]]):
        self.routes = routes
        self.writes: list[tuple] = []

    async def default_routes(self, family):
        return self.routes.get(family, [])

    async def replace_default(self, family, ifname, gateway, source, metric=None):
        self.writes.append((family, ifname, gateway, source, metric))


def route(family, ifname, gateway, metric=0) -> DefaultRoute:
    address = IPv4Address(gateway) if family == V4 else IPv6Address(gateway)
    return DefaultRoute(family, ifname, address, metric, 252)


def snapshot(routes) -> RouteSnapshot:
    table = DefaultRoutes(Table(routes), CONFIG, (Family.V4, Family.V6))
    return asyncio.run(table.snapshot())


def test_a_route_counts_for_an_uplink_only_via_its_own_gateway():
    assert snapshot({V4: [route(V4, "eth1", "100.64.2.1")],
                     V6: [route(V6, "eth0", "fe80::1")]}) == RouteSnapshot(v4=S, v6=P)
    # An operator's gateway on the primary's interface, and no IPv6 default at all: neither
    # is the agent's, so the decision repairs both.
    assert snapshot({V4: [route(V4, "eth0", "100.64.9.9")]}) == RouteSnapshot(v4=None, v6=None)


def test_a_write_keeps_the_metric_seen_and_leaves_from_the_uplinks_address():
    table = Table({V4: [route(V4, "eth0", "100.64.1.1", metric=100)]})
    routes = DefaultRoutes(table, CONFIG, (Family.V4, Family.V6))

    async def main():
        await routes.snapshot()
        await routes.replace(Family.V4, S)
        await routes.replace(Family.V6, S)

    asyncio.run(main())
    assert table.writes == [
        (V4, "eth1", IPv4Address("100.64.2.1"), IPv4Address("198.51.100.20"), 100),
        (V6, "eth1", IPv6Address("fe80::1"), IPv6Address("2001:db8:100:2::10"), None),
    ]
