"""Outbound steering on a Linux border: the default routes follow the plan's egress set.

With `controller.outbound.mode: kernel` the controller owns one default route per family in
`outbound.table`, tagged `outbound.protocol`: a multipath over the next hops of the upstreams
in the plan's egress set (`Plan.egress`, see netwatch.controller.plan), each via the
upstream's `probe_nexthop` / `probe_nexthop6` on its `interface`, with the plan's weight. An
upstream without an interface, or without a next hop of the family, is never in it.

The kernel is reached only through the `EgressRoutes` port
(`netwatch.adapters.egress_routes.NetlinkEgressRoutes`, a recording fake in the unit tests);
`EgressSync` is what the daemon runs (one worker) and tells about every new plan.

Contract of `EgressSync`:
* every write is one `replace` of the whole route at the kernel's own default metric (IPv4
  0, IPv6 1024), never a delete and an add: there is never a moment without a default route,
  and a static default the border had at that metric is taken over in place;
* at start, whatever default route is at that metric stays as it is (adopted) until the
  plan is settled (the daemon's first decision: the sessions' answer or a judgement); only a
  missing one is written at once, from the plan the controller started with;
* whenever the plan's egress set changes, the routes are made what it says at once;
* the defaults are read again on every route event about a default route of the table, and
  every CHECK_S anyway (events can be lost); one that is missing or not what the plan says
  (deleted by hand, replaced by another program) is written again (`egress_repaired`). A
  repair needed again within REPAIR_WINDOW_S of the last one waits 1 s, doubling up to
  REPAIR_MAX_WAIT_S: two owners of one route fight at most once a minute, and loudly;
* a default route at a lower metric than ours (someone else's: an operator's deliberate
  override, or a DHCP client's) wins over ours: it is left alone and logged
  (`egress_shadowed`, once per episode);
* a write the kernel refuses (a next hop on an interface that is administratively down) is
  made again without the next hops on interfaces that are down, and logged once per episode;
  the full set is tried again at every check;
* a failing netlink socket is closed and opened again after REOPEN_S; the routes are read
  again then;
* on exit nothing is removed: the last egress set stays in the kernel (like the announcements
  ExaBGP holds), for the next controller to adopt.

Cost, measured in the lab: reading one family's defaults from edge's main table ~1 ms, a
replace ~0.5 ms. A new plan is one replace per family whose set changed, without a read (the
kernel's route is known from the last read or write); a check (a read of both families) runs
at every route event about a default route of the table (the controller's own writes
included) and every CHECK_S: nothing on a quiet border.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from ipaddress import IPv4Address, IPv6Address
from typing import TYPE_CHECKING, Protocol

from netwatch.adapters.egress_routes import KernelDefault, NextHop
from netwatch.core.vocabulary import Family
from netwatch.runtime.logs import kv

if TYPE_CHECKING:
    from netwatch.config.schema import ControllerSection

log = logging.getLogger("netwatch.controller")

# Without an explicit metric the kernel gives IPv4 routes 0 and IPv6 routes 1024 (`ip route`):
# ours go there, so the static default a border is set up with is replaced in place.
METRIC = {Family.V4: 0, Family.V6: 1024}
CHECK_S = 10.0  # read the defaults this often besides route events (ENOBUFS drops events)
REPAIR_WINDOW_S = 60.0  # a repair needed again within this is a fight: back off
REPAIR_MAX_WAIT_S = 60.0
REOPEN_S = 1.0  # after a netlink socket failed

Weights = Mapping[Family, Mapping[str, int]]  # Plan.egress: {family: {upstream: weight}}


class EgressRoutes(Protocol):
    """The border's default routes of one table (`NetlinkEgressRoutes`). Every method raises
    OSError: the kernel's answer, or a failing socket."""

    async def open(self) -> None: ...

    def close(self) -> None: ...

    async def defaults(self, family: Family) -> list[KernelDefault]:
        """Every default route of `family` in the table, lowest metric first."""
        ...

    async def replace(self, family: Family, metric: int, proto: int,
                      hops: tuple[NextHop, ...]) -> None:
        """Make the default route at `metric` exactly `hops`, atomically."""
        ...

    async def links_up(self) -> set[str]:
        """The interfaces that are administratively up."""
        ...

    async def changed(self) -> None:
        """Return when a default route of the table may have changed."""
        ...


# --- what to write (pure) ---------------------------------------------------------------------


Gateway = IPv4Address | IPv6Address


def next_hops(ctl: ControllerSection) -> dict[tuple[str, Family], tuple[Gateway, str]]:
    """{(upstream, family): (gateway, interface)} for every upstream with an interface and a
    next hop of that family."""
    hops = {}
    for u in ctl.upstreams:
        if u.interface is None:
            continue
        for family, gateway in ((Family.V4, u.probe_nexthop), (Family.V6, u.probe_nexthop6)):
            if gateway is not None and gateway.version == family.value:
                hops[(u.name, family)] = (gateway, u.interface)
    return hops


def route_of(family: Family, weights: Mapping[str, int],
             hops: Mapping[tuple[str, Family], tuple[Gateway, str]]) -> tuple[NextHop, ...]:
    """The next hops of `family`'s default route for the egress set `weights`, sorted (the
    kernel's order when read back)."""
    return tuple(sorted(NextHop(*hops[(name, family)], weight)
                        for name, weight in weights.items() if (name, family) in hops))


def same_route(a: tuple[NextHop, ...], b: tuple[NextHop, ...]) -> bool:
    """Whether two routes forward alike. A route with one next hop carries no weight (the
    kernel reads it back without one)."""
    if len(a) == len(b) == 1:
        return (a[0].gateway, a[0].ifname) == (b[0].gateway, b[0].ifname)
    return a == b


# --- the daemon side --------------------------------------------------------------------------


class EgressSync:
    """Keeps the table's default routes what the plan's egress set says (module doc)."""

    def __init__(self, ctl: ControllerSection, routes: EgressRoutes,
                 show: Callable[[Family, Mapping[str, int]], None],
                 mono: Callable[[], float] = time.monotonic,
                 count_error: Callable[[], None] = lambda: None):
        """`show(family, {upstream: weight})` is told the set in effect after every write or
        adoption (the `netwatch_egress_weight` gauge), `count_error()` every failure."""
        self.routes = routes
        self.table = ctl.outbound.table
        self.proto = ctl.outbound.protocol
        self.show = show
        self.mono = mono
        self.count_error = count_error
        self.hops = next_hops(ctl)
        self.names = {hop: name for (name, _), hop in self.hops.items()}
        self.families = sorted({f for _, f in self.hops})
        self.wanted: dict[Family, tuple[NextHop, ...]] = {}
        self.settled = False
        self.in_effect: dict[Family, tuple[NextHop, ...]] = {}
        self._wake = asyncio.Event()
        self._last_repair: dict[Family, float] = {}
        self._repair_wait: dict[Family, float] = {}
        self._not_before: dict[Family, float] = {}
        self._failing: set[str] = set()  # episodes logged once: "write:ipv4", "shadow:ipv6"
        for u in ctl.upstreams:
            if u.interface is None:
                log.warning(kv("egress_unusable", upstream=u.name,
                               reason="no interface in the site file",
                               note="never in the default routes"))

    def want(self, egress: Weights, settled: bool = True) -> None:
        """The plan's egress set. `settled` False: the plan the controller started with
        (sessions not known yet). Cheap when nothing changed."""
        wanted = {f: route_of(f, egress.get(f, {}), self.hops) for f in self.families}
        wanted = {f: hops for f, hops in wanted.items() if hops}
        if wanted != self.wanted or (settled and not self.settled):
            self.wanted = wanted
            self.settled = self.settled or settled
            self._wake.set()

    def describe(self, hops: tuple[NextHop, ...]) -> str:
        """`t1:10,t3:10`: the upstreams (or gateway%interface) of a route, with weights."""
        named = [(self.names.get((h.gateway, h.ifname), f"{h.gateway}%{h.ifname}"), h.weight)
                 for h in hops]
        return ",".join(f"{name}:{weight}" for name, weight in sorted(named)) or "-"

    def _publish(self, family: Family, hops: tuple[NextHop, ...]) -> None:
        self.in_effect[family] = hops
        weights = {self.names[(h.gateway, h.ifname)]: h.weight for h in hops
                   if (h.gateway, h.ifname) in self.names}
        self.show(family, weights)

    def _episode(self, key: str, failing: bool) -> bool:
        """True when `key` starts failing (log it) or stops; False while it goes on as it
        was."""
        if failing == (key in self._failing):
            return False
        (self._failing.add if failing else self._failing.discard)(key)
        return True

    # --- one check ------------------------------------------------------------------------

    async def check(self, reason: str) -> float | None:
        """Read every family's defaults and write the ones that are not what the plan says.
        Returns when to check again for a repair held back (monotonic), or None. Raises
        OSError when the routes cannot be read (the socket failed)."""
        again = []
        for family in self.families:
            when = await self._check(family, reason)
            if when is not None:
                again.append(when)
        return min(again, default=None)

    async def _check(self, family: Family, reason: str) -> float | None:
        metric = METRIC[family]
        desired = self.wanted.get(family)
        had = self.in_effect.get(family)
        if reason == "plan" and self.settled and desired is not None and had is not None:
            # A new plan, and the kernel's route known from the last read or write: write
            # without reading first (half the round trips, on the failover's critical path);
            # what someone else did meanwhile is the route events' and the checks' business.
            if not same_route(had, desired):
                await self._write(family, metric, desired, None, reason)
            return None
        found = await self.routes.defaults(family)
        current = next((r for r in found if r.metric == metric), None)
        self._shadowed(family, [r for r in found if r.metric < metric])
        if current is not None and (not self.settled or desired is None):
            # Before the plan is settled (or with nothing to say for the family), whatever
            # default is there stays: a respawned controller adopts its predecessor's route.
            if self.in_effect.get(family) != current.hops:
                log.info(kv("egress_adopted", family=family.label,
                            upstreams=self.describe(current.hops), proto=current.proto,
                            note="kept until the plan is settled"))
                self._publish(family, current.hops)
            return None
        if desired is None:
            return None  # nothing there and nothing to write: no upstream has a next hop
        if current is not None and current.proto == self.proto and same_route(current.hops,
                                                                               desired):
            if self.in_effect.get(family) != desired:
                self._publish(family, desired)  # one next hop reads back without its weight
            return None
        # A repair: the plan still says what was in effect, and the kernel no longer has it
        # (deleted, or replaced by another program). A plan change is written at once.
        repair = had is not None and same_route(had, desired)
        if repair and self.mono() < self._not_before.get(family, 0.0):
            return self._not_before[family]
        written = await self._write(family, metric, desired, current,
                                    "repair" if repair else reason)
        if repair and written:
            now = self.mono()
            fight = now - self._last_repair.get(family, -REPAIR_WINDOW_S) < REPAIR_WINDOW_S
            wait = (min(max(2 * self._repair_wait.get(family, 0.0), 1.0), REPAIR_MAX_WAIT_S)
                    if fight else 0.0)
            self._repair_wait[family] = wait
            self._last_repair[family] = now
            self._not_before[family] = now + wait
            found_text = ("none" if current is None else
                          f"proto {current.proto} {self.describe(current.hops)}")
            log.warning(kv("egress_repaired", family=family.label, found=found_text,
                           upstreams=self.describe(self.in_effect.get(family, ())),
                           next_repair_after_s=round(wait, 1)))
        return None

    def _shadowed(self, family: Family, lower: list[KernelDefault]) -> None:
        key = f"shadow:{family.label}"
        if self._episode(key, bool(lower)):
            if lower:
                log.warning(kv("egress_shadowed", family=family.label,
                               metric=lower[0].metric, proto=lower[0].proto,
                               via=self.describe(lower[0].hops),
                               note="a default route at a lower metric wins over ours: "
                                    "left alone"))
            else:
                log.info(kv("egress_unshadowed", family=family.label))

    async def _write(self, family: Family, metric: int, desired: tuple[NextHop, ...],
                     current: KernelDefault | None, reason: str) -> bool:
        """Replace the route with `desired`; when the kernel refuses it, with the next hops
        on interfaces that are up. Logs `egress` for a change of the set in effect. False
        when nothing could be written (what is there stays)."""
        before = self.in_effect.get(family)
        written = desired
        key = f"write:{family.label}"
        try:
            await self.routes.replace(family, metric, self.proto, desired)
        except OSError as exc:
            self.count_error()
            up = await self.routes.links_up()
            usable = tuple(h for h in desired if h.ifname in up)
            if self._episode(key, True):
                log.error(kv("egress_refused", family=family.label,
                             upstreams=self.describe(desired), error=exc,
                             usable=self.describe(usable),
                             note="writing the next hops on interfaces that are up; the "
                                  "full set is tried again at every check"))
            if not usable or usable == desired:
                return False  # what is there stays; tried again at the next check
            if current is not None and current.proto == self.proto and same_route(
                    current.hops, usable):
                written = current.hops
            else:
                try:
                    await self.routes.replace(family, metric, self.proto, usable)
                except OSError:
                    self.count_error()
                    return False
                written = usable
        else:
            if self._episode(key, False):
                log.info(kv("egress_accepted", family=family.label))
        self._publish(family, written)
        if before != written:
            log.info(kv("egress", family=family.label, upstreams=self.describe(written),
                        was=self.describe(before) if before is not None else None,
                        reason=reason, table=self.table, metric=metric))
        return True

    # --- the worker ---------------------------------------------------------------------

    async def run(self) -> None:
        """The worker: open the routes, adopt or write, then keep them what the plan says
        until cancelled. Survives every OSError (logged once per episode, retried)."""
        while True:
            try:
                await self.routes.open()
            except OSError as exc:
                self.count_error()
                if self._episode("open", True):
                    log.error(kv("egress_netlink_failed", error=exc, retry_in_s=REOPEN_S))
                await asyncio.sleep(REOPEN_S)
                continue
            try:
                await self._serve()
            except OSError as exc:
                self.count_error()
                if self._episode("open", True):
                    log.error(kv("egress_netlink_failed", error=exc, retry_in_s=REOPEN_S))
            finally:
                self.routes.close()
            await asyncio.sleep(REOPEN_S)

    async def _serve(self) -> None:
        self._wake.clear()
        again = await self.check("start")
        if self._episode("open", False):
            log.info(kv("egress_netlink_recovered"))
        changed = asyncio.ensure_future(self.routes.changed())
        try:
            while True:
                wake = asyncio.ensure_future(self._wake.wait())
                timeout = CHECK_S if again is None else max(0.0, min(CHECK_S,
                                                                     again - self.mono()))
                done, _ = await asyncio.wait({wake, changed}, timeout=timeout,
                                             return_when=asyncio.FIRST_COMPLETED)
                wake.cancel()
                # A route event wins: the routes are read again whatever else happened.
                reason = "event" if changed in done else "plan" if wake in done else "check"
                if changed in done:
                    changed.result()  # raises the socket's OSError
                    changed = asyncio.ensure_future(self.routes.changed())
                # Cleared before the check: a plan that arrives while it runs wakes the next.
                self._wake.clear()
                again = await self.check(reason)
        finally:
            changed.cancel()


def kernel_routes(ctl: ControllerSection) -> EgressRoutes | None:
    """The kernel's default routes of `outbound.table` with `outbound.mode: kernel`, else
    None. Nothing is opened here (see NetlinkEgressRoutes)."""
    if ctl.outbound.mode != "kernel":
        return None
    from netwatch.adapters.egress_routes import NetlinkEgressRoutes

    return NetlinkEgressRoutes(ctl.outbound.table)
