"""`diagnose(site, upstream, ...)`: which paths to trace, the healthy upstream to compare
with, the check that each mark leads through its upstream, and the report.

An upstream's probe path is the controller's (`netwatch.controller.probing.layout`): mark
`fwmark_base + 2i + j` and table `route_table_base + 2i + j` for upstream i, family j (0:
IPv4, 1: IPv6), the table's only route the default via the upstream's next hop. The
controller installs them; where it does not run, a marked packet would follow the main table
instead and the trace would show some other path. So before tracing, the kernel is asked
where each mark leads (`RouteLookup`), and a mark that does not lead via the upstream's next
hop is an error, not a misleading trace.

The upstream to compare with is `compare`, or the first other upstream the controller's
status calls healthy, or (the controller does not answer) the first other one with a path.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from netwatch.config.schema import Site
from netwatch.control.client import DaemonUnreachable, request
from netwatch.control.protocol import Command, ControlError
from netwatch.controller.probing import layout
from netwatch.diagnose.analysis import Comparison, Report, build_trace
from netwatch.diagnose.tracer import KernelRoutes, ScapyTracer, Tracer, TraceRequest

MAX_TTL = 16
PROBES = 3


class DiagnoseError(Exception):
    """The diagnosis cannot run; the message says why and what to do."""


class NoProbeRoute(DiagnoseError):
    """An upstream's probe mark does not lead via its next hop (no controller here)."""


@dataclass(frozen=True)
class UpstreamPath:
    upstream: str
    family: int  # 4 or 6
    mark: int
    table: int
    gateway: str
    ifname: str
    targets: tuple[tuple[str, str | None], ...]  # (address, name)

    @property
    def description(self) -> str:
        return f"mark {self.mark:#x}, table {self.table}, via {self.gateway} dev {self.ifname}"


class RouteLookup(Protocol):
    def route(self, family: int, mark: int, target: str) -> tuple[str | None, str | None]:
        """(gateway, interface) of the kernel's route to `target` for packets marked
        `mark`; (None, None) when there is none. Raises OSError."""
        ...


def probe_paths(site: Site) -> dict[str, dict[int, UpstreamPath]]:
    """{upstream: {family: its probe path}} from the site file's controller section."""
    if site.controller is None:
        raise DiagnoseError("the site file has no `controller` section: no upstream to trace")
    out: dict[str, dict[int, UpstreamPath]] = {u.name: {} for u in site.controller.upstreams}
    for p in layout(site.controller).paths:
        family = p.path.gateway.version
        out[p.upstream][family] = UpstreamPath(
            p.upstream, family, p.path.mark, p.path.table, str(p.path.gateway), p.path.ifname,
            tuple((str(t.address), t.name) for t in p.targets),
        )
    return out


def _choose_compare(paths: Mapping[str, Mapping[int, UpstreamPath]], upstream: str,
                    family: int, status: Mapping[str, Any] | None) -> tuple[str | None, str]:
    candidates = [n for n, by_family in paths.items() if n != upstream and family in by_family]
    if not candidates:
        return None, f"no other upstream has an IPv{family} probe path to compare with"
    if status is None:
        return candidates[0], "the controller did not answer: its health is not known"
    states = {u.get("name"): u.get("state") for u in status.get("upstreams", [])
              if isinstance(u, Mapping)}
    healthy = [n for n in candidates if states.get(n) == "healthy"]
    if healthy:
        return healthy[0], "healthy, by the controller's status"
    return candidates[0], f"no other upstream is healthy; {candidates[0]} is " \
                          f"{states.get(candidates[0], 'unknown')}"


def diagnose(
    site: Site, upstream: str, *, tracer: Tracer, routes: RouteLookup,
    status: Callable[[], Mapping[str, Any] | None], compare: str | None = None,
    family: int | None = None, targets: int = 3, max_ttl: int = MAX_TTL, probes: int = PROBES,
) -> Report:
    """The report of `upstream`'s paths beside `compare`'s. `status()` is the controller's
    status (None when it does not answer). Raises DiagnoseError."""
    paths = probe_paths(site)
    if upstream not in paths:
        raise DiagnoseError(f"no upstream {upstream!r} in the site file "
                            f"(upstreams: {', '.join(paths)})")
    mine = paths[upstream]
    if not mine:
        raise DiagnoseError(f"{upstream} has no probe path (no `interface`, or no target of "
                            "its families)")
    if family is None:
        family = 4 if 4 in mine else 6
    if family not in mine:
        raise DiagnoseError(f"{upstream} has no IPv{family} probe path")
    if compare is not None:
        if compare == upstream or compare not in paths:
            raise DiagnoseError(f"--compare {compare}: not another upstream of the site file")
        if family not in paths[compare]:
            raise DiagnoseError(f"--compare {compare}: no IPv{family} probe path")
        note = "chosen by the operator"
    else:
        compare, note = _choose_compare(paths, upstream, family, status())
    used = [mine[family]] + ([paths[compare][family]] if compare else [])
    chosen = mine[family].targets[:targets]
    for path in used:
        gateway, ifname = routes.route(family, path.mark, chosen[0][0])
        if (gateway, ifname) != (path.gateway, path.ifname):
            seen = f"via {gateway} dev {ifname}" if ifname else "nowhere (no route)"
            raise NoProbeRoute(
                f"packets marked {path.mark:#x} do not go through {path.upstream}: the kernel "
                f"routes them {seen}, not via {path.gateway} dev {path.ifname}. The controller "
                "installs its probe tables: run this where it runs (the border), while it runs."
            )
    requests = [TraceRequest(p.upstream, family, p.mark, address)
                for p in used for address, _ in chosen]
    replies = tracer.trace(requests, max_ttl=max_ttl, probes=probes, timeout_s=1.0,
                           spacing_s=0.35)
    rows = tuple(
        Comparison(address, name, build_trace(upstream, address, replies, probes, max_ttl),
                   build_trace(compare, address, replies, probes, max_ttl) if compare else None)
        for address, name in chosen
    )
    labels = {p.gateway: f"{n}'s router" for n, by_family in paths.items()
              for p in by_family.values()}
    return Report(upstream, f"ipv{family}", mine[family].description, compare, note, rows,
                  labels)


def controller_status(socket_path: str, timeout_s: float = 2.0) -> Callable[[], Any]:
    """A function giving the controller's status from its control socket, or None when it
    does not answer."""

    def ask() -> Mapping[str, Any] | None:
        try:
            answer = request(socket_path, Command.STATUS, None, timeout_s=timeout_s)
        except (ControlError, DaemonUnreachable):
            return None
        return answer if isinstance(answer, dict) else None

    return ask


def diagnose_here(site: Site, upstream: str, **options: Any) -> Report:
    """`diagnose` with the real tracer, the kernel's routes and the site's controller (the
    border, as root). Raises DiagnoseError, PermissionError (not root) or OSError."""
    return diagnose(site, upstream, tracer=ScapyTracer(), routes=KernelRoutes(),
                    status=controller_status(site.control.controller), **options)
