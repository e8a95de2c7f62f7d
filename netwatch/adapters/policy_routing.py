"""Policy routing for probes: one routing table and one fwmark rule per path. I/O only.

Both daemons judge each path on its own, whatever the main table's best route is: the agent
probes through each uplink, the controller through each transit. A probe socket carries
SO_MARK=mark; the rule `fwmark mark lookup table` sends it into a table whose route is the
default via that path's next hop, backed by an unreachable default at UNREACHABLE_METRIC: when
the real route is missing (link down, its source address still tentative, deleted by hand),
a marked probe fails at once instead of falling through to the main table and leaving through
another path (a false "beyond answers" for a dead uplink, or a transit judged through another).
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address

from pyroute2.iproute.linux import AsyncIPRoute
from pyroute2.netlink.exceptions import NetlinkError

# Routes netwatch installs carry this protocol number, one iproute2 leaves unassigned:
# recognisable in `ip route` output as "proto 252", and never touched by other daemons.
RTPROT_NETWATCH = 252
RULE_PRIORITY = 100  # ahead of the main table (32766)
# Behind every real route of a probe table (IPv4 0, IPv6 1024): only used when it is gone.
UNREACHABLE_METRIC = 1_000_000
RTN_UNREACHABLE = 7  # rtm_type of an unreachable route


@dataclass(frozen=True)
class ProbePath:
    """One path to probe through: packets marked `mark` go via `gateway` on `ifname`.
    `source`, when set, is the table route's preferred source (`prefsrc`): probes leave from
    that address (the agent's uplink service address) instead of the interface's first one."""

    mark: int
    table: int
    gateway: IPv4Address | IPv6Address
    ifname: str
    source: IPv4Address | IPv6Address | None = None

    @property
    def family(self) -> int:
        return socket.AF_INET if self.gateway.version == 4 else socket.AF_INET6


async def install_probe_path(ipr: AsyncIPRoute, path: ProbePath) -> None:
    """Create or repair the table route and the fwmark rule of `path`. Idempotent.

    The table's unreachable default is written first: it needs no link, so it is in place
    even when the real route cannot be. Raises NetlinkError when the interface is missing or
    the gateway is unreachable (the kernel refuses a route via a down link): the caller
    retries on the next link event.
    """
    await install_unreachable(ipr, path)
    index = await _ifindex(ipr, path.ifname)
    extra = {"prefsrc": str(path.source)} if path.source is not None else {}
    await ipr.route(
        "replace",
        dst="default",
        gateway=str(path.gateway),
        oif=index,
        table=path.table,
        proto=RTPROT_NETWATCH,
        family=path.family,
        **extra,
    )
    rules = [r async for r in await ipr.rule("dump", family=path.family)]
    for rule in rules:
        if rule.get("fwmark") == path.mark and rule.get("table") == path.table:
            return
    await ipr.rule("add", **_rule(path))


async def install_unreachable(ipr: AsyncIPRoute, path: ProbePath) -> None:
    """Create or repair `path`'s unreachable default (see the module doc). Idempotent."""
    await ipr.route(
        "replace",
        dst="default",
        type="unreachable",
        table=path.table,
        priority=UNREACHABLE_METRIC,
        proto=RTPROT_NETWATCH,
        family=path.family,
    )


def is_unreachable_default(msg) -> bool:
    """True for a route message that is a probe table's unreachable default."""
    return msg["dst_len"] == 0 and msg.get("type") == RTN_UNREACHABLE


def _rule(path: ProbePath) -> dict:
    """The fwmark rule of `path`, as pyroute2 takes it for both add and del."""
    return {
        "family": path.family,
        "fwmark": path.mark,
        "fwmask": 0xFFFFFFFF,
        "table": path.table,
        "priority": RULE_PRIORITY,
    }


async def _ifindex(ipr: AsyncIPRoute, ifname: str) -> int:
    found = await ipr.link_lookup(ifname=ifname)
    if not found:
        raise NetlinkError(19, f"no interface {ifname!r}")  # ENODEV
    return found[0]
