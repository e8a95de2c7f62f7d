"""Outbound steering against a recording kernel: what the controller writes to the border's
default routes, and when (adopt at start, follow the plan, repair, never delete, leave them
on exit), the logs and the `netwatch_egress_weight` gauge. The pure egress rules are tested
in test_decision.py; the real kernel in tests/lab/test_outbound.py."""

from __future__ import annotations

import asyncio
import copy
import itertools
import json
import logging
from ipaddress import ip_address

import pytest
import yaml
from prometheus_client import CollectorRegistry

from netwatch import exitcodes
from netwatch.adapters.egress_routes import KernelDefault, NextHop
from netwatch.config import load_site
from netwatch.controller import egress
from netwatch.controller.daemon import Controller
from netwatch.controller.egress import EgressSync, next_hops, route_of, same_route
from netwatch.controller.verdict import PathStats, ProbeStats
from netwatch.core.vocabulary import Family

V4, V6 = Family.V4, Family.V6
NAMES = ("t1", "t2", "t3", "t4")
GW4 = {"t1": "192.0.2.1", "t2": "192.0.2.5", "t3": "192.0.2.9", "t4": "192.0.2.13"}
GW6 = {n: f"2001:db8:ffff:{i}::1" for i, n in enumerate(NAMES, start=1)}
OURS, STATIC = 253, 3  # proto: the site's outbound.protocol, and RTPROT_BOOT (`ip route`)
FAST = {"fall": 1, "rise": 1, "recovery_hold_s": 0, "max_actions_per_hour": 1000}


def hops(family: Family, *names: str, weight: int = 10) -> tuple[NextHop, ...]:
    gw = GW4 if family is V4 else GW6
    return tuple(sorted(NextHop(ip_address(gw[n]), n, weight) for n in names))


def default(family: Family, *names: str, proto: int = OURS, weight: int = 10,
            metric: int | None = None) -> KernelDefault:
    return KernelDefault(family, egress.METRIC[family] if metric is None else metric, proto,
                         hops(family, *names, weight=weight))


class KernelTable:
    """EgressRoutes without a kernel: one table of default routes, {(family, metric): route}.
    Every write is recorded (`writes`) and so is every state of the table (`history`: there
    must never be one without a default route); `delete` and `put` change it as an operator or
    another program would, and wake `changed()` as a route event does (writes through the
    port wake it too, as the kernel's echo of our own writes does). A next hop on an
    interface in `down` is refused as the kernel refuses one on an interface that is
    administratively down; `fail_events` makes the event socket fail that many times."""

    def __init__(self, *routes: KernelDefault):
        self.routes = {(r.family, r.metric): r for r in routes}
        self.writes: list[tuple[Family, int, int, tuple[NextHop, ...]]] = []
        self.history: list[dict] = [dict(self.routes)]
        self.down: set[str] = set()
        self.opened = self.closed = 0
        self.fail_events = 0
        self._event: asyncio.Event | None = None

    def _changed(self) -> None:
        self.history.append(dict(self.routes))
        if self._event is not None:
            self._event.set()

    async def open(self) -> None:
        self.opened += 1
        self._event = asyncio.Event()

    def close(self) -> None:
        self.closed += 1

    async def defaults(self, family: Family) -> list[KernelDefault]:
        return sorted((r for (f, _), r in self.routes.items() if f is family),
                      key=lambda r: r.metric)

    async def replace(self, family, metric, proto, nexthops) -> None:
        refused = [h.ifname for h in nexthops if h.ifname in self.down]
        if refused:
            raise OSError(22, f"Nexthop has invalid gateway ({', '.join(refused)})")
        self.writes.append((family, metric, proto, nexthops))
        if len(nexthops) == 1:  # read back without a weight, as the kernel does
            nexthops = (NextHop(nexthops[0].gateway, nexthops[0].ifname, 1),)
        self.routes[(family, metric)] = KernelDefault(family, metric, proto, nexthops)
        self._changed()

    async def links_up(self) -> set[str]:
        return set(NAMES) - self.down

    async def changed(self) -> None:
        await self._event.wait()
        self._event.clear()
        if self.fail_events:
            self.fail_events -= 1
            raise OSError(105, "No buffer space available")

    # --- by hand ------------------------------------------------------------------------

    def delete(self, family: Family) -> None:
        del self.routes[(family, egress.METRIC[family])]
        self._changed()

    def put(self, route: KernelDefault) -> None:
        self.routes[(route.family, route.metric)] = route
        self._changed()

    def now(self, family: Family) -> KernelDefault | None:
        return self.routes.get((family, egress.METRIC[family]))


@pytest.fixture
def logs(caplog):
    caplog.set_level(logging.INFO, logger="netwatch.controller")
    return caplog


def logged(caplog, event: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "netwatch.controller"
            and r.getMessage().split(" ", 1)[0] == f"event={event}"]


@pytest.fixture
def ctl(lab_site):
    """The lab site's controller section, outbound.mode kernel."""
    site = load_site(lab_site)
    assert site.controller.outbound.mode == "kernel"  # the lab turns it on
    return site.controller


class Gauge:
    """What `show` was told last, per family."""

    def __init__(self):
        self.shown: dict[Family, dict[str, int]] = {}

    def __call__(self, family, weights) -> None:
        self.shown[family] = dict(weights)


def every(*names: str, weight: int = 10) -> dict[Family, dict[str, int]]:
    return {f: dict.fromkeys(names, weight) for f in Family}


async def settle() -> None:
    """Let the worker run until it waits for something again."""
    for _ in range(50):
        await asyncio.sleep(0)


def scenario(sync: EgressSync, steps) -> None:
    """Run `sync`'s worker while `await steps()` runs, then cancel it (as the daemon's exit)."""
    async def main():
        worker = asyncio.create_task(sync.run())
        try:
            await settle()
            await steps()
        finally:
            worker.cancel()
            with pytest.raises(asyncio.CancelledError):
                await worker

    asyncio.run(asyncio.wait_for(main(), 10))


class Clock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


# --- the pure part -----------------------------------------------------------------------------


def test_next_hops_are_each_upstreams_probe_next_hops_on_its_interface(ctl):
    found = next_hops(ctl)
    assert found[("t2", V4)] == (ip_address("192.0.2.5"), "t2")
    assert found[("t3", V6)] == (ip_address("2001:db8:ffff:3::1"), "t3")
    assert len(found) == 8
    without = ctl.model_copy(update={"upstreams": [
        u.model_copy(update={"interface": None}) if u.name == "t4" else u
        for u in ctl.upstreams]})
    assert ("t4", V4) not in next_hops(without)  # no interface: never in the default route
    route = route_of(V4, {"t1": 10, "t4": 10, "t2": 1}, next_hops(without))
    assert route == (NextHop(ip_address("192.0.2.1"), "t1", 10),
                     NextHop(ip_address("192.0.2.5"), "t2", 1))


def test_one_next_hop_carries_no_weight_when_compared():
    assert same_route(hops(V4, "t1", weight=10), hops(V4, "t1", weight=1))
    assert not same_route(hops(V4, "t1", "t2", weight=10), hops(V4, "t1", "t2", weight=1))
    assert not same_route(hops(V4, "t1"), hops(V4, "t2"))


# --- adopt at start ------------------------------------------------------------------------------


def test_a_predecessors_route_is_adopted_until_the_plan_is_settled(ctl, logs):
    """A respawned controller finds the route its predecessor wrote (t2 out) while the plan it
    starts with (sessions unknown) would have t2: nothing is written until the plan is
    settled, and then only what differs."""
    kernel = KernelTable(default(V4, "t1", "t3", "t4"), default(V6, "t1", "t3", "t4"))
    gauge = Gauge()
    sync = EgressSync(ctl, kernel, gauge)
    sync.want(every(*NAMES), settled=False)

    async def steps():
        assert kernel.writes == []
        assert gauge.shown[V4] == {"t1": 10, "t3": 10, "t4": 10}
        sync.want(every("t1", "t3", "t4"))  # the settled plan agrees: nothing to write
        await settle()
        assert kernel.writes == []
        sync.want(every("t1", "t2", "t3", "t4"))  # t2 recovered: written
        await settle()
        assert kernel.now(V4) == default(V4, *NAMES)
        assert kernel.now(V6) == default(V6, *NAMES)

    scenario(sync, steps)
    assert [m for m in logged(logs, "egress_adopted")] == [
        'event=egress_adopted family=ipv4 upstreams=t1:10,t3:10,t4:10 proto=253 '
        'note="kept until the plan is settled"',
        'event=egress_adopted family=ipv6 upstreams=t1:10,t3:10,t4:10 proto=253 '
        'note="kept until the plan is settled"']
    assert logged(logs, "egress")[0].startswith(
        "event=egress family=ipv4 upstreams=t1:10,t2:10,t3:10,t4:10 was=t1:10,t3:10,t4:10 "
        "reason=plan table=254 metric=0")


def test_a_static_default_is_taken_over_in_place_never_deleted(ctl):
    """The border's static multipath default (proto boot) at the kernel's metric: kept until
    the plan is settled, then replaced in place. The table never lacks a default route."""
    kernel = KernelTable(default(V4, *NAMES, proto=STATIC, weight=1),
                         default(V6, *NAMES, proto=STATIC, weight=1))
    sync = EgressSync(ctl, kernel, Gauge())
    sync.want(every(*NAMES), settled=False)

    async def steps():
        assert kernel.writes == []
        sync.want(every("t1", "t3", "t4"))
        await settle()

    scenario(sync, steps)
    assert kernel.now(V4) == default(V4, "t1", "t3", "t4")
    assert kernel.now(V6) == default(V6, "t1", "t3", "t4")
    assert all(len(table) == 2 for table in kernel.history)  # both defaults, at every step


def test_a_missing_default_is_written_at_once_from_the_starting_plan(ctl, logs):
    kernel = KernelTable()
    gauge = Gauge()
    sync = EgressSync(ctl, kernel, gauge)
    sync.want(every("t1", "t3", "t4"), settled=False)

    async def steps():
        assert kernel.now(V4) == default(V4, "t1", "t3", "t4")
        assert kernel.now(V6) == default(V6, "t1", "t3", "t4")

    scenario(sync, steps)
    assert gauge.shown == every("t1", "t3", "t4")
    assert [m.split(" was=")[0].split(" reason=")[0] for m in logged(logs, "egress")] == [
        "event=egress family=ipv4 upstreams=t1:10,t3:10,t4:10",
        "event=egress family=ipv6 upstreams=t1:10,t3:10,t4:10"]


# --- following the plan --------------------------------------------------------------------------


def test_each_change_of_the_egress_set_is_one_replace_per_family(ctl, logs):
    kernel = KernelTable(default(V4, *NAMES), default(V6, *NAMES))
    gauge = Gauge()
    sync = EgressSync(ctl, kernel, gauge)
    sync.want(every(*NAMES))

    async def steps():
        assert kernel.writes == []
        sync.want({V4: {"t1": 10, "t2": 1, "t3": 10, "t4": 10}, V6: every(*NAMES)[V6]})
        await settle()
        t2_degraded = tuple(sorted(hops(V4, "t1", "t3", "t4") + hops(V4, "t2", weight=1)))
        assert kernel.writes == [(V4, 0, OURS, t2_degraded)]
        sync.want(every("t4"))  # three failed: the healthy one alone
        await settle()

    scenario(sync, steps)
    assert kernel.now(V4).hops == (NextHop(ip_address(GW4["t4"]), "t4", 1),)  # one hop
    assert kernel.now(V6).proto == OURS and len(kernel.writes) == 3
    assert gauge.shown == every("t4")  # the plan's weight, not the kernel's missing one
    assert "upstreams=t1:10,t2:1,t3:10,t4:10 was=t1:10,t2:10,t3:10,t4:10 reason=plan" in (
        logged(logs, "egress")[0])


# --- repairs -------------------------------------------------------------------------------------


def test_a_default_deleted_by_hand_is_put_back_at_once(ctl, logs):
    kernel = KernelTable()
    sync = EgressSync(ctl, kernel, Gauge())
    sync.want(every("t1", "t3", "t4"))

    async def steps():
        kernel.delete(V4)
        await settle()
        assert kernel.now(V4) == default(V4, "t1", "t3", "t4")
        kernel.put(default(V6, *NAMES, proto=STATIC, weight=1))  # someone's static one
        await settle()
        assert kernel.now(V6) == default(V6, "t1", "t3", "t4")

    scenario(sync, steps)
    assert logged(logs, "egress_repaired") == [
        "event=egress_repaired family=ipv4 found=none upstreams=t1:10,t3:10,t4:10 "
        "next_repair_after_s=0.0",
        'event=egress_repaired family=ipv6 found="proto 3 t1:1,t2:1,t3:1,t4:1" '
        "upstreams=t1:10,t3:10,t4:10 next_repair_after_s=0.0"]


def test_a_route_fight_backs_off_to_once_a_minute(ctl, logs, monkeypatch):
    """Another program that puts its own default back whenever ours replaces it: repairs
    1, 2, 4 ... s apart, up to REPAIR_MAX_WAIT_S (60 s; 8 s here), not a busy loop."""
    monkeypatch.setattr(egress, "CHECK_S", 0.005)  # the periodic check, on real time
    monkeypatch.setattr(egress, "REPAIR_MAX_WAIT_S", 8.0)
    clock = Clock()
    kernel = KernelTable()
    sync = EgressSync(ctl, kernel, Gauge(), mono=clock)
    sync.want(every(*NAMES))
    theirs = default(V4, "t1", proto=STATIC)

    repairs_at = []

    async def steps():
        for _ in range(7):
            kernel.put(theirs)
            await settle()
            while kernel.now(V4) == theirs:  # held back: let time pass
                clock.now += 0.25
                await asyncio.sleep(0.01)
                await settle()
                assert clock.now < 1100, "never repaired"
            repairs_at.append(clock.now)

    scenario(sync, steps)
    gaps = [b - a for a, b in itertools.pairwise(repairs_at)]
    assert gaps == [0.0, 1.0, 2.0, 4.0, 8.0, 8.0]
    assert [m.rsplit("=", 1)[1] for m in logged(logs, "egress_repaired")] == [
        "0.0", "1.0", "2.0", "4.0", "8.0", "8.0", "8.0"]


def test_a_lower_metric_default_is_left_alone_and_logged_once(ctl, logs):
    kernel = KernelTable(default(V6, *NAMES))
    operator = KernelDefault(V6, 100, STATIC, hops(V6, "t3", weight=1))
    kernel.put(operator)
    sync = EgressSync(ctl, kernel, Gauge())
    sync.want(every(*NAMES))

    async def steps():
        kernel.put(default(V6, *NAMES))  # an event: checked again, still shadowed
        await settle()

    scenario(sync, steps)
    assert kernel.routes[(V6, 100)] == operator  # untouched
    assert logged(logs, "egress_shadowed") == [
        "event=egress_shadowed family=ipv6 metric=100 proto=3 via=t3:1 "
        'note="a default route at a lower metric wins over ours: left alone"']


def test_a_refused_next_hop_leaves_the_others_written(ctl, logs):
    """t2's interface is administratively down: the kernel refuses the route with it, so the
    others are written, and the full set again once the interface is up."""
    kernel = KernelTable(default(V4, "t1"), default(V6, "t1"))
    kernel.down.add("t2")
    gauge = Gauge()
    sync = EgressSync(ctl, kernel, gauge)

    async def steps():
        sync.want(every(*NAMES))
        await settle()
        assert kernel.now(V4) == default(V4, "t1", "t3", "t4")
        assert gauge.shown[V4] == {"t1": 10, "t3": 10, "t4": 10}
        kernel.down.clear()
        await sync.check("check")  # the periodic check
        assert kernel.now(V4) == default(V4, *NAMES)

    scenario(sync, steps)
    assert len(logged(logs, "egress_refused")) == 2  # once per family and episode
    assert "usable=t1:10,t3:10,t4:10" in logged(logs, "egress_refused")[0]


def test_a_failing_event_socket_is_reopened_and_the_routes_read_again(ctl, logs, monkeypatch):
    monkeypatch.setattr(egress, "REOPEN_S", 0.01)
    kernel = KernelTable(default(V4, *NAMES), default(V6, *NAMES))
    kernel.fail_events = 1
    errors = []
    sync = EgressSync(ctl, kernel, Gauge(), count_error=lambda: errors.append(1))
    sync.want(every(*NAMES))

    async def steps():
        kernel.delete(V4)  # the event that fails; the reopened worker reads and repairs
        await asyncio.sleep(0.05)
        await settle()

    scenario(sync, steps)
    assert kernel.now(V4) == default(V4, *NAMES)
    assert kernel.opened == 2 and kernel.closed == 2 and errors == [1]
    assert len(logged(logs, "egress_netlink_failed")) == 1
    assert len(logged(logs, "egress_netlink_recovered")) == 1


# --- the daemon ---------------------------------------------------------------------------------


class Pipe:
    """Enough of ExabgpPipe for the controller: records lines; `run` ends when `closed` is set."""

    def __init__(self):
        self.written: list[str] = []
        self.closed: asyncio.Event | None = None

    def send(self, line: str) -> None:
        self.written.append(line)

    async def open(self) -> None:
        self.closed = asyncio.Event()

    async def lines(self):
        await self.closed.wait()
        return
        yield

    async def flush(self) -> None:
        pass


def every_session_up() -> str:
    peers = [*GW4.values(), *GW6.values()]
    return json.dumps([{"state": "up", "fsm": "ESTABLISHED", "peer": {"address": p}}
                       for p in peers])


def window(failed: tuple[str, ...] = ()) -> ProbeStats:
    return ProbeStats({(n, f"inet-{i}"): (PathStats(10, 10, None, 5, 5) if n in failed
                                          else PathStats(10, 0, 0.01))
                       for n in NAMES for i in range(1, 11)})


@pytest.fixture
def controller(site_copy, lab_site, clock, quiet_probes):
    """controller(kernel, mode="kernel") -> (Controller, registry) on the lab's site file,
    every verdict acted on at once."""
    raw = yaml.safe_load(lab_site.read_text())

    def build(kernel, mode="kernel"):
        section = copy.deepcopy(raw["controller"])
        section["probe"]["targets_file"] = str(
            (lab_site.parent / section["probe"]["targets_file"]).resolve())
        section["policy"].update(FAST)
        section["outbound"] = {"mode": mode}
        registry = CollectorRegistry()
        c = Controller(load_site(site_copy(controller=section)), registry, Pipe(), mono=clock,
                       routes=quiet_probes, prober=quiet_probes, egress_routes=kernel)
        return c, registry

    return build


def weight(registry, upstream: str, family: Family) -> float | None:
    return registry.get_sample_value("netwatch_egress_weight",
                                     {"upstream": upstream, "family": family.label})


def test_the_controller_steers_the_defaults_with_its_decisions_and_leaves_them_on_exit(
        controller, logs):
    kernel = KernelTable(default(V4, *NAMES, proto=STATIC, weight=1),
                         default(V6, *NAMES, proto=STATIC, weight=1))
    c, registry = controller(kernel)

    async def main():
        task = asyncio.create_task(c.run())
        await settle()
        assert kernel.writes == []  # not settled yet: the static default stays
        c.on_event(every_session_up())  # the answer to `show neighbor json`
        await settle()
        assert kernel.now(V4) == default(V4, *NAMES)  # settled: ours now
        c.apply(window(failed=("t2",)))
        await settle()
        assert kernel.now(V4) == default(V4, "t1", "t3", "t4")
        assert kernel.now(V6) == default(V6, "t1", "t3", "t4")
        assert weight(registry, "t2", V4) == 0 and weight(registry, "t3", V6) == 10
        c.pipe.closed.set()  # ExaBGP exits
        return await task

    assert asyncio.run(asyncio.wait_for(main(), 10)) == exitcodes.OK
    assert kernel.now(V4) == default(V4, "t1", "t3", "t4")  # left in place on exit
    assert all(len(table) == 2 for table in kernel.history)
    assert registry.get_sample_value("netwatch_controller_errors_total",
                                     {"where": "egress"}) == 0
    assert "event=egress family=ipv4 upstreams=t1:10,t3:10,t4:10 was=t1:10,t2:10,t3:10,t4:10 " \
           "reason=plan" in "\n".join(logged(logs, "egress"))


def test_with_outbound_off_the_routes_are_left_alone_and_the_gauge_shows_the_plan(controller):
    kernel = KernelTable(default(V4, *NAMES, proto=STATIC))
    c, registry = controller(kernel, mode="off")
    assert c.egress_workers() == {}
    c.start()
    c.on_event(every_session_up())
    c.apply(window(failed=("t2",)))
    assert kernel.writes == []
    assert [weight(registry, n, V4) for n in NAMES] == [10, 0, 10, 10]


def test_a_controller_given_no_kernel_port_never_steers(controller):
    """Only `run_controller` passes the kernel's routes: a controller built anywhere else (a
    test, a tool) cannot touch the default route of the host it runs on."""
    c, _ = controller(None)
    assert c.egress is None and c.egress_workers() == {}
    assert egress.kernel_routes(c.ctl) is not None  # what run_controller would pass
