"""The agent's probe streams: which prober watches what, and through which path.

Each uplink has one stream per probe kind: its gateway over ARP (IPv4) or neighbour
solicitation (IPv6), or over ICMP echo with `method: icmp`; the targets beyond its gateway over
ICMP echo. Echo probes carry the uplink's fwmark, and `probe_paths` gives each uplink a routing
table and a fwmark rule into it, so every uplink is judged through itself whatever the main
table's default route is.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from ipaddress import IPv4Address
from typing import TYPE_CHECKING, Protocol

from netwatch.adapters.policy_routing import ProbePath
from netwatch.adapters.probes.raw import ArpProber, EchoProber, NdProber
from netwatch.agent.decision import ProbeKind
from netwatch.core.vocabulary import Family, UplinkRole

if TYPE_CHECKING:
    from netwatch.config.schema import AgentSection, Uplink


class Prober(Protocol):
    """A batched prober (netwatch.adapters.probes.raw): one probe in flight, judged a tick
    later. `send(copies)` sends the probe as that many identical requests (a confirmation
    sends two); it is False when the kernel refused the probe; `result(timeout_s)` is the
    round trip in seconds, or None when no answer came within timeout_s of the send.
    `close()` releases the socket, and a later `send()` opens a new one: the agent closes
    the probers of an uplink when another interface (or none) stands behind its name."""

    def send(self, copies: int = 1) -> bool: ...

    def result(self, timeout_s: float) -> float | None: ...

    def hold(self) -> None:
        """Keep the probe in flight as the held one: `held_result()` judges it later, while
        the next probes are sent (a suspect probe waits for its own timeout)."""

    def held_result(self, timeout_s: float) -> float | None: ...

    def timed(self, held: bool = False) -> bool:
        """Whether the last result (`held`: held result) is a measured round trip (False: a
        reply that may have answered another request: answered, no RTT sample)."""

    def close(self) -> None: ...


# `(uplink, kind) -> (prober, target label for the logs)`: the agent opens one per stream.
ProberFactory = Callable[[UplinkRole, ProbeKind], Awaitable[tuple[Prober, str]]]

# An uplink's offset from `fwmark_base` and `route_table_base`.
_INDEX = {UplinkRole.PRIMARY: 0, UplinkRole.SECONDARY: 1}


def uplink_of(cfg: AgentSection, role: UplinkRole) -> Uplink:
    return cfg.uplinks.primary if role is UplinkRole.PRIMARY else cfg.uplinks.secondary


def mark_of(cfg: AgentSection, role: UplinkRole) -> int:
    """The fwmark that sends a probe socket's packets through uplink `role`."""
    return cfg.fwmark_base + _INDEX[role]


def probe_paths(cfg: AgentSection) -> list[tuple[UplinkRole, ProbePath]]:
    """Each uplink's probe path per family it has a gateway for (its table, rule and route)."""
    paths = []
    for role, index in _INDEX.items():
        up = uplink_of(cfg, role)
        for gateway, source in ((up.gateway, up.source), (up.gateway6, up.source6)):
            if gateway is not None:
                # Beyond probes must leave from the uplink's service address (the interface's
                # first address is a link net the world does not route back): the table route
                # carries it as prefsrc.
                paths.append((role, ProbePath(
                    mark=mark_of(cfg, role), table=cfg.route_table_base + index,
                    gateway=gateway, ifname=up.interface, source=source)))
    return paths


AddressTowards = Callable[[str, IPv4Address], Awaitable[IPv4Address | None]]


class RawProbers:
    """The agent's real prober factory: raw-socket probers, opened lazily on the running loop.

    `address_towards(ifname, gateway)` finds the interface's own address in the gateway's
    subnet (the ARP sender; the kernel port's method of that name). The sockets open on the
    first send; one the kernel refuses (no CAP_NET_RAW, the interface gone) is a lost probe.
    """

    def __init__(self, cfg: AgentSection, address_towards: AddressTowards):
        self.cfg = cfg
        self.address_towards = address_towards

    async def __call__(self, role: UplinkRole, kind: ProbeKind) -> tuple[Prober, str]:
        if kind.beyond:
            return self._beyond(role, kind)
        return await self._gateway(role, kind)

    async def _gateway(self, role: UplinkRole, kind: ProbeKind) -> tuple[Prober, str]:
        up = uplink_of(self.cfg, role)
        v4 = kind.family is Family.V4
        gateway = up.gateway if v4 else up.gateway6
        prober: Prober
        if self.cfg.probe.method == "icmp":
            prober = EchoProber([gateway], mark=mark_of(self.cfg, role))
        elif v4:
            sender = await self.address_towards(up.interface, gateway)
            prober = ArpProber(up.interface, gateway, sender)
        else:
            prober = NdProber(up.interface, gateway)
        return prober, str(gateway)

    def _beyond(self, role: UplinkRole, kind: ProbeKind) -> tuple[Prober, str]:
        """Echo every beyond target of the kind's family through the uplink's table; the round
        is good when any target answers (one dead target must not condemn the uplink)."""
        targets = [t for t in self.cfg.probe.beyond if t.version == kind.family.value]
        return EchoProber(targets, mark=mark_of(self.cfg, role)), ",".join(map(str, targets))
