"""The controller's probe paths: one policy-routed path per (upstream, family) and its probers.

Every upstream is measured through itself whatever the best path is: a probe socket carries
SO_MARK=mark, and the mark's rule sends it into a table whose only route is the default via
that upstream's next hop (`netwatch.adapters.policy_routing`). Path n of the site file's
upstream i (n=0: IPv4, 1: IPv6) gets mark `fwmark_base + 2i + n` and table
`route_table_base + 2i + n`.

The kernel is reached only through the `ProbeRoutes` port (`netwatch.adapters.netlink.Netlink`;
a recording fake in the unit tests), the probes only through a `ProberFactory`. Probes are
batched (`BatchProber`: send now, read the result at the deadline): ICMP through one raw socket
per path (`netwatch.adapters.probes.batch.EchoBatch`), TCP one connect per probe (`PingEach`:
a SYN needs a socket of its own anyway, and a site probes with TCP only where ICMP is
filtered).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from netwatch.adapters.probes.batch import EchoBatch
from netwatch.adapters.probes.tcp import TcpProber

if TYPE_CHECKING:
    from netwatch.adapters.policy_routing import ProbePath
    from netwatch.config.schema import ControllerSection, Target

# The policy routes are checked (a link flap removes a table's route) every PATH_CHECK_S, and
# at most every PATH_REPAIR_S while a probe is refused (the table's unreachable default: its
# route is gone). A check dumps every route and rule of the namespace per path: at every
# 10 s it was a quarter of the controller's probing CPU in the lab.
PATH_CHECK_S = 60.0
PATH_REPAIR_S = 10.0


class ProbeRoutes(Protocol):
    """The controller's port to the kernel's routing: `netwatch.adapters.netlink.Netlink`.
    Opened for each round of checks and closed after it. Errors are NetlinkError or OSError."""

    async def open(self) -> None: ...

    def close(self) -> None: ...

    async def links(self, ifnames: list[str]) -> object:
        """Learn the interfaces' indexes (what `ensure_probe_path` compares the table route
        with); the answer is not used here."""
        ...

    async def ensure_probe_path(self, path: ProbePath) -> bool:
        """Install `path`'s table route and fwmark rule where missing; True when it wrote."""
        ...


class Prober(Protocol):
    """Sends one probe and waits for its answer: the RTT in seconds, or None when lost."""

    async def ping(self, target, timeout_s: float) -> float | None: ...


class BatchProber(Protocol):
    """One path's probes, at most one in flight per destination: `send` now (False: the
    kernel refused it, a loss), `result` at its deadline or later (the RTT in seconds, or
    None: lost, or answered later than `wait_s`; the controller passes math.inf). No task or
    future per probe."""

    def send(self, destination, wait_s: float) -> bool: ...

    def result(self, destination, wait_s: float) -> float | None: ...


class ProberFactory(Protocol):
    """Opens a prober of `method` ("icmp" or "tcp") whose packets carry `mark`: a BatchProber,
    or a Prober (`open_probers` runs it through `PingEach`). Raises OSError when the socket
    cannot be opened."""

    def __call__(self, method: str, family: int, mark: int) -> BatchProber | Prober: ...


class PingEach:
    """A BatchProber over a Prober: one task per probe, cancelled if still waiting when its
    result is asked for. A ping that raised re-raises from `result`."""

    def __init__(self, prober: Prober):
        self.prober = prober
        self._tasks: dict[object, asyncio.Task] = {}

    def send(self, destination, wait_s: float) -> bool:
        old = self._tasks.pop(destination, None)
        if old is not None:
            old.cancel()
        self._tasks[destination] = asyncio.ensure_future(self.prober.ping(destination, wait_s))
        return True

    def result(self, destination, wait_s: float) -> float | None:
        task = self._tasks.pop(destination, None)
        if task is None:
            return None
        if not task.done():
            task.cancel()
            return None
        if task.cancelled():
            return None
        rtt = task.result()  # raises what the ping raised
        return rtt if rtt is not None and rtt <= wait_s else None

    def close(self) -> None:
        for task in self._tasks.values():
            task.cancel()
        self._tasks.clear()
        close = getattr(self.prober, "close", None)
        if close is not None:
            close()


def netlink_routes() -> ProbeRoutes:
    """The real port. pyroute2 takes ~80 ms to import: imported here, when the probes start,
    so that a respawned controller has written `show neighbor json` first."""
    from netwatch.adapters.netlink import Netlink

    return Netlink()


def open_prober(method: str, family: int, mark: int) -> BatchProber | Prober:
    """The real probers: TCP SYN (`method` "tcp") or batched ICMP echo."""
    return TcpProber(family, mark) if method == "tcp" else EchoBatch(family, mark)


def destination(method: str, target: Target):
    """What a prober of `method` probes for `target`: the address as a string, with the port
    for tcp."""
    return (str(target.address), target.port) if method == "tcp" else str(target.address)


@dataclass(frozen=True)
class PathToProbe:
    """One upstream's path for one family, and the targets of that family."""

    upstream: str
    path: ProbePath
    targets: tuple[Target, ...]


@dataclass(frozen=True)
class ProbeLayout:
    """Every path to probe through."""

    paths: tuple[PathToProbe, ...]


def layout(ctl: ControllerSection) -> ProbeLayout:
    """The probe paths of the site file's controller section. A family gets no path when the
    upstream has no next hop of it or no target is of it."""
    from netwatch.adapters.policy_routing import ProbePath  # pyroute2: see netlink_routes

    paths = []
    for i, u in enumerate(ctl.upstreams):
        for j, gateway in enumerate((u.probe_nexthop, u.probe_nexthop6)):
            if gateway is None:
                continue
            mine = tuple(t for t in ctl.probe.targets if t.address.version == gateway.version)
            if not mine:
                continue
            n = 2 * i + j
            path = ProbePath(ctl.fwmark_base + n, ctl.route_table_base + n, gateway, u.interface)
            paths.append(PathToProbe(u.name, path, mine))
    return ProbeLayout(tuple(paths))


@dataclass(frozen=True)
class PathCheck:
    """One path after `check_paths`: `written` when it was missing and has been installed,
    `error` when the kernel refused it (a link down: tried again at the next check)."""

    path: PathToProbe
    written: bool = False
    error: Exception | None = None


async def check_paths(routes: ProbeRoutes, paths: Sequence[PathToProbe]) -> list[PathCheck]:
    """Install every path that is missing. One path's error does not stop the others; an
    error opening `routes` raises (nothing could be checked)."""
    await routes.open()
    try:
        # Without the interfaces' indexes every route looked missing and all the paths were
        # written again at every check (16 route writes every 10 s, a third of the probing
        # CPU in the lab's profile).
        await routes.links(sorted({p.path.ifname for p in paths}))
        checks = []
        for p in paths:
            try:
                checks.append(PathCheck(p, written=await routes.ensure_probe_path(p.path)))
            except Exception as exc:  # a down link must not stop the others
                checks.append(PathCheck(p, error=exc))
        return checks
    finally:
        routes.close()


@dataclass(frozen=True)
class Probing:
    """The probers that opened, with their paths, and the paths whose prober did not."""

    probers: tuple[tuple[PathToProbe, BatchProber], ...]
    failed: tuple[tuple[PathToProbe, OSError], ...]

    @property
    def probed(self) -> set[str]:
        """The upstreams probed through at least one family."""
        return {p.upstream for p, _ in self.probers}


def open_probers(method: str, paths: Sequence[PathToProbe], factory: ProberFactory) -> Probing:
    """One prober per path; a socket that cannot be opened leaves that path unprobed."""
    probers, failed = [], []
    for p in paths:
        try:
            prober = factory(method, p.path.family, p.path.mark)
            probers.append((p, prober if hasattr(prober, "send") else PingEach(prober)))
        except OSError as exc:
            failed.append((p, exc))
    return Probing(tuple(probers), tuple(failed))
