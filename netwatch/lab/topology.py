"""Pure: the lab's nodes, links, addresses and static routes, derived from a Site.

No I/O here. `build_topology(site)` returns a `Topology` that `netns` turns into namespaces
and `bird` into BIRD configs. Address plan (inside the lab's namespaces only):
- srv eth0 100.64.1.2/24 + 2001:db8:ff:1::2/64 (gwa 100.64.1.1, fe80::1), eth1 100.64.2.2/24
  (gwb 100.64.2.1, fe80::1); srv's service addresses are the uplinks' `source`/`source6`.
- gwa/gwb <-> edge: 100.64.11.0/30, 100.64.12.0/30, 2001:db8:ff:11::/64, 2001:db8:ff:12::/64.
- edge <-> tN: the upstream's local_address/neighbor (/30) and local_address6/neighbor6 (/64).
- tN <-> inet: 100.64.(100+N).0/30 and 2001:db8:fffe:N::/64; inet holds the targets on lo.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

INET_ASN = 64510
GATEWAYS = ("gwa", "gwb")
UPLINK_ROLES = ("primary", "secondary")


@dataclass(frozen=True)
class Iface:
    """One end of a veth: node, interface name, addresses in CIDR form."""

    node: str
    name: str
    addrs: tuple[str, ...]


@dataclass(frozen=True)
class Link:
    """A veth pair. `kind` is uplink, gateway, transit or inet; `name` is how faults name it."""

    name: str
    kind: str
    a: Iface
    b: Iface


@dataclass(frozen=True)
class Transit:
    """One transit provider: its BGP identity and both of its links."""

    name: str
    asn: int
    index: int
    edge4: str
    peer4: str
    edge6: str
    peer6: str
    inet_side4: str  # the transit's address towards inet
    inet_peer4: str  # inet's address towards the transit
    inet_side6: str
    inet_peer6: str
    upstream: str = ""  # the site file's upstream name (keys its TCP-MD5 password)
    md5: bool = False  # TCP-MD5 on both sessions to edge (the password is not in here)
    ttl_security: bool = False  # GTSM on both sessions to edge


@dataclass
class Topology:
    """Everything `lab up` builds. `routes[node]` are `ip route replace` argument strings."""

    asn: int
    prefixes: list[str]
    nodes: list[str]
    routing_nodes: set[str]
    links: list[Link]
    transits: list[Transit]
    loopbacks: dict[str, list[str]]
    routes: dict[str, list[str]] = field(default_factory=dict)
    targets: list[str] = field(default_factory=list)
    uplinks: dict[str, str] = field(default_factory=dict)  # role -> gateway node

    def link(self, name: str) -> Link:
        """The link called `name` (eth0/eth1/primary/secondary/gwa/gwb for uplinks, tN)."""
        aliases = {"primary": "gwa", "secondary": "gwb", "eth0": "gwa", "eth1": "gwb"}
        name = aliases.get(name, name)
        for link in self.links:
            if link.name == name:
                return link
        raise KeyError(name)

    def transit(self, name: str) -> Transit:
        for transit in self.transits:
            if transit.name == name:
                return transit
        raise KeyError(name)

    def bird_nodes(self) -> list[str]:
        return [t.name for t in self.transits] + ["inet"]


def _s(value: object) -> str:
    return str(value)


def _prefixlen_between(a: str, b: str, v4: int = 30, v6: int = 64) -> str:
    """`a` in CIDR form with the prefix length that contains both `a` and `b`."""
    ip_a = ipaddress.ip_address(a)
    ip_b = ipaddress.ip_address(b)
    length = v4 if ip_a.version == 4 else v6
    if ip_b not in ipaddress.ip_network(f"{a}/{length}", strict=False):
        raise ValueError(f"{a} and {b} are not in one /{length}")
    return f"{a}/{length}"


def build_topology(site) -> Topology:
    """The lab for `site` (a Site model or the equivalent attribute namespace)."""
    uplinks = site.agent.uplinks
    upstreams = list(site.controller.upstreams)
    transits: list[Transit] = []
    for index, up in enumerate(upstreams, start=1):
        transits.append(
            Transit(
                name=_s(up.interface or up.name),
                asn=int(up.asn),
                index=index,
                edge4=_s(up.local_address),
                peer4=_s(up.neighbor),
                edge6=_s(up.local_address6),
                peer6=_s(up.neighbor6),
                inet_side4=f"100.64.{100 + index}.1",
                inet_peer4=f"100.64.{100 + index}.2",
                inet_side6=f"2001:db8:fffe:{index}::1",
                inet_peer6=f"2001:db8:fffe:{index}::2",
                upstream=_s(up.name),
                md5=up.md5_password_file is not None,
                ttl_security=bool(up.ttl_security),
            )
        )
    nodes = ["srv", *GATEWAYS, "edge", *[t.name for t in transits], "inet"]
    links: list[Link] = []
    routes: dict[str, list[str]] = {n: [] for n in nodes}
    sources = {}
    for i, (role, gw) in enumerate(zip(UPLINK_ROLES, GATEWAYS, strict=True), start=1):
        uplink = getattr(uplinks, role)
        src4, src6 = _s(uplink.source), _s(uplink.source6)
        sources[gw] = (src4, src6)
        links.append(
            Link(
                name=gw,
                kind="uplink",
                a=Iface(
                    "srv",
                    _s(uplink.interface),
                    (f"100.64.{i}.2/24", f"2001:db8:ff:{i}::2/64", f"{src4}/32", f"{src6}/128"),
                ),
                b=Iface(
                    gw,
                    "srv",
                    (
                        f"{_s(uplink.gateway)}/24",
                        f"2001:db8:ff:{i}::1/64",
                        f"{_s(uplink.gateway6)}/64",
                    ),
                ),
            )
        )
        links.append(
            Link(
                name=f"{gw}-edge",
                kind="gateway",
                a=Iface(gw, "edge", (f"100.64.1{i}.1/30", f"2001:db8:ff:1{i}::1/64")),
                b=Iface("edge", gw, (f"100.64.1{i}.2/30", f"2001:db8:ff:1{i}::2/64")),
            )
        )
        routes[gw] += [
            f"-4 default via 100.64.1{i}.2 dev edge",
            f"-6 default via 2001:db8:ff:1{i}::2 dev edge",
        ]
    # Each gateway reaches both of srv's service addresses over its own uplink, so a gateway
    # never blackholes return traffic whichever source the agent picks.
    for i, gw in enumerate(GATEWAYS, start=1):
        for src4, src6 in sources.values():
            routes[gw] += [
                f"-4 {src4}/32 via 100.64.{i}.2 dev srv",
                f"-6 {src6}/128 via 2001:db8:ff:{i}::2 dev srv",
            ]
        src4, src6 = sources[gw]
        routes["edge"] += [
            f"-4 {src4}/32 via 100.64.1{i}.1 dev {gw}",
            f"-6 {src6}/128 via 2001:db8:ff:1{i}::1 dev {gw}",
        ]
    primary = uplinks.primary
    src4, src6 = sources["gwa"]
    routes["srv"] += [
        f"-4 default via {_s(primary.gateway)} dev {_s(primary.interface)} src {src4}",
        f"-6 default via {_s(primary.gateway6)} dev {_s(primary.interface)} src {src6}",
    ]
    prefixes = [_s(p) for p in site.prefixes]
    # Our own prefixes end at edge: anything not routed to a gateway is dropped there instead
    # of looping back out through a transit's default.
    routes["edge"] += [f"-{ipaddress.ip_network(p).version} unreachable {p}" for p in prefixes]
    # edge's defaults: a static multipath over every transit, unless the controller owns them
    # (controller.outbound.mode kernel). A static one beside the controller's would be
    # written again by every `ip route replace` of these lines (a heal after a link-down puts
    # a node's routes back) over the controller's route at the same metric, putting a failed
    # transit back into it until the controller repairs it; at another metric it would stay
    # as a fallback that hides a missing route from the tests.
    outbound = getattr(getattr(site.controller, "outbound", None), "mode", "off")
    if outbound != "kernel":
        nh4 = " ".join(f"nexthop via {t.peer4} dev {t.name}" for t in transits)
        nh6 = " ".join(f"nexthop via {t.peer6} dev {t.name}" for t in transits)
        routes["edge"] += [f"-4 default {nh4}", f"-6 default {nh6}"]
    targets = [_s(t.address) for t in site.controller.probe.targets]
    nets4 = sorted(
        {
            str(ipaddress.ip_network(f"{a}/24", strict=False))
            for a in targets
            if ipaddress.ip_address(a).version == 4
        }
    )
    nets6 = sorted(
        {
            str(ipaddress.ip_network(f"{a}/64", strict=False))
            for a in targets
            if ipaddress.ip_address(a).version == 6
        }
    )
    for t in transits:
        links.append(
            Link(
                name=t.name,
                kind="transit",
                a=Iface(
                    "edge",
                    t.name,
                    (_prefixlen_between(t.edge4, t.peer4), _prefixlen_between(t.edge6, t.peer6)),
                ),
                b=Iface(
                    t.name,
                    "edge",
                    (_prefixlen_between(t.peer4, t.edge4), _prefixlen_between(t.peer6, t.edge6)),
                ),
            )
        )
        links.append(
            Link(
                name=f"{t.name}-inet",
                kind="inet",
                a=Iface(t.name, "inet", (f"{t.inet_side4}/30", f"{t.inet_side6}/64")),
                b=Iface("inet", t.name, (f"{t.inet_peer4}/30", f"{t.inet_peer6}/64")),
            )
        )
        routes[t.name] += [f"-4 {n} via {t.inet_peer4} dev inet" for n in nets4]
        routes[t.name] += [f"-6 {n} via {t.inet_peer6} dev inet" for n in nets6]
        # Replies to per-transit probes from edge go back through the same transit.
        edge_net4 = ipaddress.ip_network(_prefixlen_between(t.edge4, t.peer4), strict=False)
        edge_net6 = ipaddress.ip_network(_prefixlen_between(t.edge6, t.peer6), strict=False)
        routes["inet"] += [
            f"-4 {edge_net4} via {t.inet_side4} dev {t.name}",
            f"-6 {edge_net6} via {t.inet_side6} dev {t.name}",
        ]
    def host(a: str) -> str:
        return f"{a}/32" if ipaddress.ip_address(a).version == 4 else f"{a}/128"

    # The agent's beyond targets are addresses inside our network past the gateways (the
    # agent judges the path to our border; the transits are the controller's): the lab puts
    # the ones inside our prefixes on the border itself, as a production border's loopback.
    ours = [ipaddress.ip_network(p) for p in prefixes]
    beyond = [_s(b) for b in site.agent.probe.beyond] if site.agent is not None else []
    loopbacks = {
        "inet": [host(a) for a in targets],
        "edge": [host(b) for b in beyond
                 if any(ipaddress.ip_address(b) in net for net in ours)],
    }
    return Topology(
        asn=int(site.asn),
        prefixes=prefixes,
        nodes=nodes,
        routing_nodes=set(nodes) - {"srv"},
        links=links,
        transits=transits,
        loopbacks=loopbacks,
        routes=routes,
        targets=targets,
        uplinks={"primary": "gwa", "secondary": "gwb"},
    )
def node_commands(topo: Topology, node: str) -> list[str]:
    """iproute2 batch lines configuring `node`: addresses, links up, loopbacks."""
    lines = ["link set lo up"]
    for link in topo.links:
        for end in (link.a, link.b):
            if end.node != node:
                continue
            for addr in end.addrs:
                extra = " nodad" if ":" in addr else ""
                lines.append(f"addr add {addr} dev {end.name}{extra}")
            lines.append(f"link set {end.name} up")
    for addr in topo.loopbacks.get(node, []):
        extra = " nodad" if ":" in addr else ""
        lines.append(f"addr add {addr} dev lo{extra}")
    return lines


def route_commands(topo: Topology, node: str) -> list[str]:
    """iproute2 batch lines for `node`'s static routes (`ip -batch` takes no -4/-6, so the
    family is spelled out in the destination)."""
    lines = []
    for route in topo.routes[node]:
        family, dest, *rest = route.split()
        if dest == "default":
            dest = "0.0.0.0/0" if family == "-4" else "::/0"
        lines.append(" ".join(["route", "replace", dest, *rest]))
    return lines


