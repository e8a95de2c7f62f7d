"""The agent daemon without a kernel: its settings from the site file, its metrics, and how it
survives (or stops on) errors, driven through a fake netlink and fake probers."""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import errno
import logging
import os
import signal
import socket
import time
from ipaddress import IPv4Address, IPv6Address

import pytest
from prometheus_client import CollectorRegistry
from pyroute2.netlink.exceptions import NetlinkError

from netwatch.adapters.netlink import DefaultRoute, Event, EventKind, LinkState
from netwatch.agent import daemon as agent_module
from netwatch.agent.daemon import NETLINK_ATTEMPTS, Agent, settings_of
from netwatch.agent.decision import Carrier, ProbeKind
from netwatch.agent.metrics import AgentMetrics
from netwatch.commands.agent_cmd import cmd_agent
from netwatch.config import AgentSection
from netwatch.core.vocabulary import Family, Health, UplinkRole
from netwatch.runtime.supervise import WorkerDied

P, S = UplinkRole.PRIMARY, UplinkRole.SECONDARY


def agent_config(failback: str = "auto", **probe) -> AgentSection:
    return AgentSection.model_validate({
        "uplinks": {
            "primary": {"interface": "eth0", "gateway": "100.64.1.1", "gateway6": "fe80::1",
                        "source": "198.51.100.10"},
            "secondary": {"interface": "eth1", "gateway": "100.64.2.1", "gateway6": "fe80::1",
                          "source": "198.51.100.20"},
        },
        "probe": {"interval_ms": 20, "fall": 3, "rise": 2, **probe},
        "failback": {"mode": failback, "hold_down_s": 0.2},
    })


def test_settings_probe_what_the_site_file_names():
    both = settings_of(agent_config(beyond=["203.0.113.1", "2001:db8:203::1"]))
    assert both.kinds == (ProbeKind.GATEWAY, ProbeKind.GATEWAY6, ProbeKind.BEYOND4,
                          ProbeKind.BEYOND6)
    assert both.families == (Family.V4, Family.V6)
    v4_beyond = settings_of(agent_config(beyond=["203.0.113.1"]))
    assert v4_beyond.kinds == (ProbeKind.GATEWAY, ProbeKind.GATEWAY6, ProbeKind.BEYOND4)


def test_probe_metrics_keep_the_kind_labels_dashboards_read():
    registry = CollectorRegistry()
    metrics = AgentMetrics(registry)
    metrics.probe(P, ProbeKind.GATEWAY6, None)
    metrics.stream(S, ProbeKind.BEYOND4).count(0.002)
    metrics.update_loss()

    def sample(name, **labels):
        return registry.get_sample_value(name, labels)

    assert sample("netwatch_agent_probes_total", uplink="primary", kind="gateway6",
                  result="lost") == 1
    assert sample("netwatch_agent_probe_loss_ratio", uplink="primary", kind="gateway6") == 1
    assert sample("netwatch_agent_probes_total", uplink="secondary", kind="beyond4",
                  result="ok") == 1
    assert sample("netwatch_agent_probe_rtt_seconds_count", uplink="secondary",
                  kind="beyond4") == 1


# ------------------------------------------------------------------ the daemon, with fakes


class FakeKernel:
    """Links up unless `link()` says otherwise, one default route per family, writes recorded;
    errors scripted: `write_errors` / `dump_errors` raise once each (in order),
    `events_error` on every read of the event socket. `tentative`: the interfaces whose
    IPv6 addresses are in DAD (`dad_done()` ends it, with the kernel's address event).
    Interfaces can be renamed, deleted and created (`index` holds those that exist); a
    route write through a missing one is refused with ENODEV and counted in `refused`."""

    GATEWAYS = {("eth0", socket.AF_INET): IPv4Address("100.64.1.1"),
                ("eth1", socket.AF_INET): IPv4Address("100.64.2.1"),
                ("eth0", socket.AF_INET6): IPv6Address("fe80::1"),
                ("eth1", socket.AF_INET6): IPv6Address("fe80::1")}

    def __init__(self):
        self.routes = {socket.AF_INET: "eth0", socket.AF_INET6: "eth0"}
        self.carrier = {"eth0": True, "eth1": True}
        self.writes: list[tuple[int, str]] = []
        self.write_errors: list[BaseException] = []
        self.dump_errors: list[BaseException] = []
        self.events_error: BaseException | None = None
        self.path_checks = 0  # ensure_probe_path calls
        self.reopened = self.link_reads = 0
        self.queue: asyncio.Queue | None = None
        self.tentative: set[str] = set()
        self.index = {"eth0": 2, "eth1": 3}
        self.was: dict[str, str] = {}  # a renamed interface's name in the site file
        self.refused = 0

    async def open(self):
        self.queue = asyncio.Queue()

    def close(self):
        pass

    def state(self, ifname: str) -> LinkState:
        if ifname not in self.index:
            return LinkState(ifname, exists=False)
        return LinkState(ifname, True, True, self.carrier[ifname], index=self.index[ifname])

    async def links(self, ifnames):
        self.link_reads += 1
        return {name: self.state(name) for name in ifnames}

    def link(self, ifname: str, carrier: bool) -> None:
        """The cable of `ifname` pulled or plugged back: the kernel announces it."""
        self.carrier[ifname] = carrier
        self.queue.put_nowait(Event(EventKind.LINK, self.state(ifname)))

    def rename(self, old: str, new: str) -> None:
        """`ip link set old name new`: the routes follow the interface, and the kernel
        announces the old name gone and the new one (as the netlink adapter does)."""
        index = self.index.pop(old)
        self.index[new], self.carrier[new] = index, self.carrier[old]
        self.was[new] = self.was.pop(old, old)
        self.routes = {f: new if via == old else via for f, via in self.routes.items()}
        self.queue.put_nowait(Event(EventKind.LINK, LinkState(old, False, index=index,
                                                              renamed_to=new)))
        self.queue.put_nowait(Event(EventKind.LINK, self.state(new)))
        self.queue.put_nowait(Event(EventKind.ROUTE))

    def delete(self, ifname: str) -> None:
        """`ip link del`: the kernel deletes every route through it."""
        index = self.index.pop(ifname)
        self.routes = {f: None if via == ifname else via for f, via in self.routes.items()}
        self.queue.put_nowait(Event(EventKind.LINK, LinkState(ifname, False, index=index)))
        self.queue.put_nowait(Event(EventKind.ROUTE))

    def create(self, ifname: str) -> None:
        """A new interface of that name, up with carrier, under a new index."""
        self.index[ifname] = max(self.index.values(), default=0) + 10
        self.carrier[ifname] = True
        self.queue.put_nowait(Event(EventKind.LINK, self.state(ifname)))

    async def events(self):
        while True:
            if self.events_error is not None:
                raise self.events_error
            item = await self.queue.get()
            if isinstance(item, BaseException):
                raise item
            if item is None:
                return
            yield item

    async def reopen_events(self):
        self.reopened += 1

    async def default_routes(self, family):
        if self.dump_errors:
            raise self.dump_errors.pop(0)
        ifname = self.routes[family]
        if ifname is None:
            return []
        gateway = self.GATEWAYS[self.was.get(ifname, ifname), family]
        return [DefaultRoute(family, ifname, gateway, 0, 252)]

    async def replace_default(self, family, ifname, gateway, source, metric=None):
        if self.write_errors:
            raise self.write_errors.pop(0)
        if ifname not in self.index:
            self.refused += 1
            raise OSError(errno.ENODEV, f"no interface {ifname!r}")
        self.routes[family] = ifname
        self.writes.append((family, ifname))
        self.queue.put_nowait(Event(EventKind.ROUTE))  # as the kernel announces it

    async def ensure_probe_path(self, path):
        self.path_checks += 1
        return False

    async def address_towards(self, ifname, gateway):
        return None

    def ipv6_tentative(self, ifname, address=None):
        return ifname in self.tentative

    def dad_done(self, ifname: str) -> None:
        self.tentative.discard(ifname)
        self.queue.put_nowait(Event(EventKind.ADDRESS))

    def on(self, ifname: str) -> bool:
        return self.routes == {socket.AF_INET: ifname, socket.AF_INET6: ifname}


class FakeProbers:
    """Every stream of an uplink answers while `alive[uplink]` and its kind is not in
    `silent` (a set of (uplink, kind)); `make` is the agent's factory; `sent[uplink, kind]`
    counts the probes sent."""

    def __init__(self):
        self.alive = {P: True, S: True}
        self.silent: set[tuple[UplinkRole, ProbeKind]] = set()
        self.sent: collections.Counter = collections.Counter()
        self.closed: collections.Counter = collections.Counter()  # per uplink
        self.drop: collections.Counter = collections.Counter()  # (uplink, kind): lose n more
        self.held: collections.Counter = collections.Counter()  # (uplink, kind): hold() calls
        self.log: list[tuple[float, UplinkRole, ProbeKind, int]] = []  # (time, .., copies)

    async def make(self, role, kind):
        probers = self

        class Prober:
            def send(self, copies=1):
                probers.sent[role, kind] += 1
                probers.log.append((time.monotonic(), role, kind, copies))
                return True

            held = None

            def result(self, timeout_s):
                if probers.drop[role, kind] > 0:
                    probers.drop[role, kind] -= 1
                    return None
                if probers.alive[role] and (role, kind) not in probers.silent:
                    return 0.0005
                return None

            def hold(self):  # a probe unanswered at its suspicion stays lost
                probers.held[role, kind] += 1
                self.held = None

            def held_result(self, timeout_s):
                return self.held

            def timed(self, held=False):
                return True

            def close(self):
                probers.closed[role] += 1

        return Prober(), f"{role.value}-{kind.value}"


async def until(check, timeout_s: float = 10.0) -> None:
    """Wait (generously) until check() holds; fail the test otherwise."""
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.005)


def run_agent(scenario, *, clock=None, kernel=None, probers=None, failback="auto",
              both_up=True, resync_idle_s=0.02):
    """Run an Agent with fakes, resyncing and retrying netlink in milliseconds, and
    `await scenario(agent, kernel, probers, task)` (once both uplinks are UP, unless
    `both_up` is False); return (registry, the agent task's exception or None)."""
    kernel = kernel or FakeKernel()
    probers = probers or FakeProbers()
    registry = CollectorRegistry()
    extra = {"clock": clock} if clock is not None else {}
    agent = Agent(agent_config(failback, beyond=["203.0.113.1"]), registry, kernel=kernel,
                  probers=probers.make, resync_interval_s=0.02, resync_idle_s=resync_idle_s,
                  netlink_retry_s=0.001, **extra)

    async def main():
        task = asyncio.create_task(agent.run())
        try:
            await until(lambda: task.done() or not both_up or (
                agent.state.health(P) is Health.UP and agent.state.health(S) is Health.UP))
            await scenario(agent, kernel, probers, task)
        finally:
            agent.stop()
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(asyncio.shield(task), 10)
        return task.exception()

    return registry, asyncio.run(main())


def sample(registry, name, **labels):
    return registry.get_sample_value(name, labels) or 0.0


def test_decisions_read_the_injected_monotonic_clock(clock):
    """Failback waits for hold_down_s on the agent's clock: with the clock held still, the
    routes stay on the secondary however long the loop runs; moving it fails back."""

    async def scenario(agent, kernel, probers, task):
        probers.alive[P] = False
        await until(lambda: kernel.on("eth1"))
        probers.alive[P] = True
        await until(lambda: agent.state.health(P) is Health.UP)
        await asyncio.sleep(0.5)  # 2.5 hold-downs of real time, none on the agent's clock
        assert kernel.on("eth1")
        clock.now += 0.25
        await until(lambda: kernel.on("eth0"))

    registry, error = run_agent(scenario, clock=clock)
    assert error is None
    assert sample(registry, "netwatch_agent_failovers_total", reason="failback") == 1


def test_a_link_event_moves_the_routes_at_once():
    """The primary's cable pulled: netlink's link event alone moves both default routes to
    the secondary, whatever the probes say, counted under the carrier reason."""

    async def scenario(agent, kernel, probers, task):
        kernel.link("eth0", carrier=False)
        await until(lambda: kernel.on("eth1"))

    registry, error = run_agent(scenario)
    assert error is None
    assert sample(registry, "netwatch_agent_failovers_total", reason="carrier") == 1
    assert sample(registry, "netwatch_agent_uplink_carrier", uplink="primary") == 0
    assert sample(registry, "netwatch_agent_active_uplink", uplink="secondary") == 1


def test_an_ipv6_failure_moves_the_ipv6_route_only(caplog):
    """The primary's IPv6 gateway goes silent: the IPv6 default route moves to the secondary,
    IPv4 stays on the primary, and the metrics say where each one is."""

    async def scenario(agent, kernel, probers, task):
        probers.silent.add((P, ProbeKind.GATEWAY6))
        await until(lambda: kernel.routes[socket.AF_INET6] == "eth1")
        await asyncio.sleep(0.2)  # ten more rounds: IPv4 stays
        assert kernel.routes[socket.AF_INET] == "eth0"
        assert kernel.writes == [(socket.AF_INET6, "eth1")]

    registry, error = run_agent(scenario)
    assert error is None
    routes = {(f, u): sample(registry, "netwatch_agent_default_route_uplink", family=f,
                             uplink=u) for f in ("ipv4", "ipv6") for u in ("primary", "secondary")}
    assert routes == {("ipv4", "primary"): 1, ("ipv4", "secondary"): 0,
                      ("ipv6", "primary"): 0, ("ipv6", "secondary"): 1}
    # Both uplinks carry a default route; the primary is DOWN as a whole, UP for IPv4.
    assert [sample(registry, "netwatch_agent_active_uplink", uplink=u)
            for u in ("primary", "secondary")] == [1, 1]
    assert sample(registry, "netwatch_agent_uplink_up", uplink="primary") == 0
    assert sample(registry, "netwatch_agent_uplink_family_up", uplink="primary",
                  family="ipv4") == 1
    assert sample(registry, "netwatch_agent_uplink_family_up", uplink="primary",
                  family="ipv6") == 0
    assert sample(registry, "netwatch_agent_failovers_total", reason="gateway") == 1
    assert ("event=failover uplink=secondary previous=primary families=ipv6 cause=gateway "
            "reason=\"primary: gateway primary-gateway6 silent: 3 probes") in caplog.text


def test_dad_at_start_moves_nothing(caplog):
    """The agent starts while the primary's link-local address is tentative: its IPv6
    gateway probes get no answer for a while (the kernel refuses them), which is no verdict.
    Nothing moves, the probes are counted as no_verdict, not lost, and once DAD is over
    every family of both uplinks is UP on the primary's routes."""
    caplog.set_level(logging.INFO, logger="netwatch.agent")
    kernel, probers = FakeKernel(), FakeProbers()
    kernel.tentative.add("eth0")
    probers.silent.add((P, ProbeKind.GATEWAY6))

    async def scenario(agent, kernel, probers, task):
        await until(lambda: agent.state.health(S) is Health.UP)
        await asyncio.sleep(0.3)  # 15 rounds, 5 times `fall`
        assert agent.state.health(P, Family.V6) is Health.UNKNOWN
        probers.silent.clear()
        kernel.dad_done("eth0")
        await until(lambda: agent.state.health(P) is Health.UP)

    registry, error = run_agent(scenario, kernel=kernel, probers=probers, both_up=False)
    assert error is None
    assert kernel.writes == [] and kernel.on("eth0")
    assert sample(registry, "netwatch_agent_probes_total", uplink="primary", kind="gateway6",
                  result="no_verdict") >= 15
    assert sample(registry, "netwatch_agent_probes_total", uplink="primary", kind="gateway6",
                  result="lost") == 0
    assert sum(sample(registry, "netwatch_agent_failovers_total", reason=r)
               for r in ("carrier", "gateway", "beyond", "failback", "operator")) == 0
    assert "event=ipv6_dad uplink=primary interface=eth0 state=tentative" in caplog.text
    assert "event=ipv6_dad uplink=primary interface=eth0 state=done" in caplog.text


def test_a_lost_probe_is_confirmed_by_two_requests_at_the_confirmation_pace():
    """Probes every 20 ms, fall 3, confirmations every 5 ms (the default floor): two probes
    of the primary's gateway lost, then answers. The second loss is confirmed at once, not at
    the next slot, each confirmation is two requests, and two losses are no failover."""
    outcome = {}

    async def scenario(agent, kernel, probers, task):
        await asyncio.sleep(0.1)
        start = len(probers.log)
        probers.drop[P, ProbeKind.GATEWAY] = 2
        await until(lambda: probers.drop[P, ProbeKind.GATEWAY] == 0)
        await asyncio.sleep(0.1)
        outcome["log"] = probers.log[start:]

    registry, error = run_agent(scenario)
    assert error is None
    sends = [(t, copies) for t, role, kind, copies in outcome["log"]
             if (role, kind) == (P, ProbeKind.GATEWAY)]
    confirmations = [i for i, (_, copies) in enumerate(sends) if copies == 2]
    assert len(confirmations) == 2, sends  # one per lost probe, each two requests
    first, second = confirmations
    assert second == first + 1
    assert sends[second][0] - sends[first][0] < 0.015  # the confirmation pace, not 20 ms
    assert all(copies == 1 for _, copies in sends[second + 1:])  # answered: back to the grid
    assert sum(sample(registry, "netwatch_agent_failovers_total", reason=r)
               for r in ("carrier", "gateway", "beyond", "failback", "operator")) == 0


def test_a_probe_unanswered_at_its_round_trip_timeout_is_held_and_counted_once():
    """Early suspicion (netwatch.core.pacing): the lost probe is held (its confirmations leave
    beside it), judged once, as one lost probe, and its confirmation's answer ends it."""
    probers = FakeProbers()

    async def scenario(agent, kernel, probers, task):
        await asyncio.sleep(0.1)
        probers.drop[P, ProbeKind.GATEWAY] = 1
        await until(lambda: probers.drop[P, ProbeKind.GATEWAY] == 0)
        await asyncio.sleep(0.1)

    registry, error = run_agent(scenario, probers=probers)
    assert error is None
    assert probers.held[P, ProbeKind.GATEWAY] == 1
    lost = sample(registry, "netwatch_agent_probes_total", uplink="primary", kind="gateway",
                  result="lost")
    assert lost == 1


def test_an_ipv6_gateway_answering_again_has_the_probe_paths_checked_at_once():
    """The paths are checked on events and every resync_idle_s (a minute here); the IPv6
    gateway answering after losses is checked at once (a FAILED neighbour entry of it keeps
    the marked beyond probes unreachable until the check forgets it)."""
    kernel = FakeKernel()

    async def scenario(agent, kernel, probers, task):
        await asyncio.sleep(0.1)
        before = kernel.path_checks
        probers.drop[P, ProbeKind.GATEWAY6] = 1
        await until(lambda: kernel.path_checks > before, timeout_s=2.0)

    _, error = run_agent(scenario, kernel=kernel, resync_idle_s=60.0)
    assert error is None


def test_one_failure_of_both_families_is_one_failover(caplog):
    """The primary's gateway silent for ARP and ND in the same rounds: both routes move, in
    one decision: one failover counted, one log line naming both families."""

    async def scenario(agent, kernel, probers, task):
        probers.alive[P] = False
        await until(lambda: kernel.on("eth1"))

    registry, error = run_agent(scenario)
    assert error is None
    assert sample(registry, "netwatch_agent_failovers_total", reason="gateway") == 1
    assert "families=ipv4,ipv6 cause=gateway" in caplog.text


def test_a_renamed_primary_moves_the_routes_and_waits_for_its_name(caplog):
    """`ip link set eth0 name wan0` at runtime: the configured name is gone, as if the
    interface had been deleted. The routes move to eth1 at once, the primary's probe
    sockets (bound to the renamed interface) are closed, it is logged once, and no route is
    written through eth0 meanwhile (it used to be, every resync, refused with ENODEV). Named
    eth0 again, the primary comes back after its hold-down."""
    caplog.set_level(logging.INFO, logger="netwatch.agent")

    async def scenario(agent, kernel, probers, task):
        closed = probers.closed[P]
        kernel.rename("eth0", "wan0")
        await until(lambda: kernel.on("eth1"))
        assert probers.closed[P] == closed + 3  # gateway, gateway6, beyond4
        await asyncio.sleep(0.3)  # 15 resyncs
        assert kernel.on("eth1") and kernel.refused == 0
        kernel.rename("wan0", "eth0")
        await until(lambda: kernel.on("eth0"))
        assert probers.closed[P] == closed + 6

    registry, error = run_agent(scenario)
    assert error is None
    assert sample(registry, "netwatch_agent_failovers_total", reason="carrier") == 1
    assert sample(registry, "netwatch_agent_failovers_total", reason="failback") == 1
    assert sample(registry, "netwatch_agent_route_errors_total", family="ipv4") == 0
    gone = ('event=carrier uplink=primary interface=eth0 state="interface vanished" '
            'renamed_to=wan0 note="waiting for an interface named eth0"')
    assert caplog.text.count(gone) == 1


def test_a_deleted_primary_with_no_secondary_is_waited_for(caplog):
    """The secondary's cable out, then the primary's interface deleted (the kernel deletes
    its routes): nowhere to move. The agent asks no route write the kernel would refuse, so
    nothing is logged every resync; when an interface named eth0 appears (a new index), its
    probe sockets are reopened on it and its routes written at once."""
    caplog.set_level(logging.INFO, logger="netwatch.agent")

    async def scenario(agent, kernel, probers, task):
        kernel.link("eth1", carrier=False)
        await until(lambda: agent.state.health(S) is Health.DOWN)
        kernel.delete("eth0")
        await until(lambda: agent.state.uplinks[P].carrier is Carrier.VANISHED)
        closed = probers.closed[P]
        await asyncio.sleep(0.3)  # 15 resyncs
        assert kernel.refused == 0 and kernel.writes == []
        kernel.create("eth0")
        await until(lambda: kernel.on("eth0"))
        assert probers.closed[P] == closed + 3

    registry, error = run_agent(scenario)
    assert error is None
    assert sample(registry, "netwatch_agent_route_errors_total", family="ipv4") == 0
    assert sample(registry, "netwatch_agent_route_changes_total", family="ipv4",
                  cause="repair") == 1
    assert caplog.text.count('state="interface vanished"') == 1
    assert "event=route_error" not in caplog.text


def test_the_standby_uplink_is_probed_at_the_full_rate():
    """Every stream goes out every tick, the standby's beyond probes too: the secondary's
    loss ratio is as fresh as the primary's, and it is as ready to carry traffic."""

    async def scenario(agent, kernel, probers, task):
        await until(lambda: probers.sent[P, ProbeKind.BEYOND4] >= 10)
        assert agent.state.carrying == {P}
        assert len(probers.sent) == 6  # two uplinks: gateway, gateway6, beyond4
        assert len(set(probers.sent.values())) == 1, probers.sent

    _, error = run_agent(scenario)
    assert error is None


def test_lost_netlink_events_are_logged_and_the_state_re_read(caplog):
    """ENOBUFS on the event socket: counted, logged, the socket reopened, the links and routes
    read again; the agent goes on repairing routes."""

    async def scenario(agent, kernel, probers, task):
        reads = kernel.link_reads
        kernel.queue.put_nowait(NetlinkError(errno.ENOBUFS, "No buffer space available"))
        await until(lambda: kernel.reopened == 1 and kernel.link_reads == reads + 1)
        kernel.routes[socket.AF_INET] = "eth1"  # an operator's `ip route replace`
        kernel.queue.put_nowait(Event(EventKind.ROUTE))
        await until(lambda: kernel.on("eth0"))
        assert not task.done()

    registry, error = run_agent(scenario)
    assert error is None
    assert sample(registry, "netwatch_agent_netlink_errors_total", op="events") == 1
    assert "event=netlink_error op=events" in caplog.text and "errno=ENOBUFS" in caplog.text


def test_a_broken_event_socket_stops_the_agent_and_leaves_the_routes():
    async def scenario(agent, kernel, probers, task):
        kernel.events_error = NetlinkError(errno.ECONNRESET, "reset")
        kernel.queue.put_nowait(Event(EventKind.ROUTE))
        await until(task.done)

    kernel = FakeKernel()
    _, error = run_agent(scenario, kernel=kernel)
    assert isinstance(error, WorkerDied) and error.worker == "netlink-events"
    assert isinstance(error.error, NetlinkError)
    assert kernel.reopened == NETLINK_ATTEMPTS - 1
    assert kernel.on("eth0") and kernel.writes == []


def test_a_failed_route_read_is_retried_then_fatal_when_it_persists():
    async def scenario(agent, kernel, probers, task):
        kernel.dump_errors = [OSError(errno.EBUSY, "busy")]
        await until(lambda: not kernel.dump_errors)
        kernel.routes[socket.AF_INET6] = "eth1"  # still repaired afterwards
        await until(lambda: kernel.on("eth0"))
        assert not task.done()
        kernel.dump_errors = [OSError(errno.EBUSY, "busy")] * NETLINK_ATTEMPTS
        await until(task.done)

    registry, error = run_agent(scenario)
    assert isinstance(error, WorkerDied) and error.worker == "resync"
    assert isinstance(error.error, OSError) and error.error.errno == errno.EBUSY
    assert sample(registry, "netwatch_agent_netlink_errors_total", op="snapshot") == (
        1 + NETLINK_ATTEMPTS)


def test_a_refused_route_write_is_retried_by_the_next_snapshot():
    """Without a route event, the routes are re-read only every resync_idle_s (a minute
    here); a refused write makes it every resync_interval_s until one succeeds."""
    async def scenario(agent, kernel, probers, task):
        # Both families refused: no route write succeeds, so no route event comes.
        kernel.write_errors = [NetlinkError(errno.ENETUNREACH, "Network is unreachable")] * 2
        probers.alive[P] = False
        await until(lambda: kernel.on("eth1"), timeout_s=5.0)
        assert not task.done()

    registry, error = run_agent(scenario, resync_idle_s=60.0)
    assert error is None
    for family in ("ipv4", "ipv6"):
        assert sample(registry, "netwatch_agent_route_errors_total", family=family) == 1
        assert sample(registry, "netwatch_agent_route_changes_total", family=family,
                      cause="repair") == 1


def test_a_bug_in_route_repair_stops_the_agent_and_leaves_the_routes():
    async def scenario(agent, kernel, probers, task):
        kernel.write_errors = [TypeError("a bug")]
        probers.alive[P] = False
        await until(task.done)

    kernel = FakeKernel()
    _, error = run_agent(scenario, kernel=kernel)
    assert isinstance(error, WorkerDied) and error.worker == "actions"
    assert isinstance(error.error, TypeError)
    assert kernel.on("eth0") and kernel.writes == []


def test_a_bug_in_the_probe_tick_stops_the_agent_naming_the_probes():
    """The tick is a timer callback: its exception still ends the `probes` worker (not a
    line in asyncio's log and a loop that never probes again)."""
    probers = FakeProbers()
    make = probers.make

    async def broken(role, kind):
        prober, label = await make(role, kind)
        if role is S:
            def send(copies=1):
                raise RuntimeError("a bug in send")
            prober.send = send
        return prober, label

    probers.make = broken

    async def scenario(agent, kernel, probers, task):
        await until(task.done)

    kernel = FakeKernel()
    _, error = run_agent(scenario, kernel=kernel, probers=probers, both_up=False)
    assert isinstance(error, WorkerDied) and error.worker == "probes", error
    assert isinstance(error.error, RuntimeError)


def test_an_exception_in_a_probe_callback_stops_the_agent():
    """A reply handler (a loop reader callback, as the raw-socket probers use) that raises
    would otherwise be logged by asyncio and forgotten, its prober deaf for ever."""
    sockets = socket.socketpair()

    async def scenario(agent, kernel, probers, task):
        def handler():
            sockets[0].recv(16)
            raise ValueError("cannot parse the reply")

        asyncio.get_running_loop().add_reader(sockets[0].fileno(), handler)
        sockets[1].send(b"reply")
        await until(task.done)

    kernel = FakeKernel()
    try:
        _, error = run_agent(scenario, kernel=kernel)
    finally:
        for sock in sockets:
            sock.close()
    assert isinstance(error, WorkerDied) and error.worker == "callbacks"
    assert isinstance(error.error, ValueError)
    assert kernel.on("eth0") and kernel.writes == []


def test_an_operator_request_that_fails_stops_the_agent():
    """SIGUSR2, and its handler fails on the way (here the log line of the request raises): a
    signal handler's error would otherwise be logged by asyncio and forgotten."""

    def refuse(record):
        if "event=operator_request" in record.getMessage():
            raise RuntimeError("a bug in the request path")
        return True

    async def scenario(agent, kernel, probers, task):
        os.kill(os.getpid(), signal.SIGUSR2)
        await until(task.done)

    logger = logging.getLogger("netwatch.agent")
    logger.addFilter(refuse)
    try:
        _, error = run_agent(scenario)
    finally:
        logger.removeFilter(refuse)
    assert isinstance(error, WorkerDied) and error.worker == "callbacks"
    assert "request path" in str(error.error)


def test_a_worker_that_returns_stops_the_agent():
    async def scenario(agent, kernel, probers, task):
        kernel.queue.put_nowait(None)  # the event stream ends
        await until(task.done)

    _, error = run_agent(scenario)
    assert isinstance(error, WorkerDied) and error.worker == "netlink-events"
    assert error.error is None


def test_manual_failback_waits_for_sigusr1(clock):
    """failback.mode manual: the primary healthy for ever (on the agent's clock) does not
    bring the routes back; SIGUSR1 does."""

    async def scenario(agent, kernel, probers, task):
        probers.alive[P] = False
        await until(lambda: kernel.on("eth1"))
        probers.alive[P] = True
        await until(lambda: agent.state.health(P) is Health.UP)
        clock.now += 3600
        await asyncio.sleep(0.2)  # ten probe rounds on a clock an hour later
        assert kernel.on("eth1")
        os.kill(os.getpid(), signal.SIGUSR1)
        await until(lambda: kernel.on("eth0"))

    registry, error = run_agent(scenario, clock=clock, failback="manual")
    assert error is None
    assert sample(registry, "netwatch_agent_failovers_total", reason="operator") == 1
    assert sample(registry, "netwatch_agent_failovers_total", reason="failback") == 0


@pytest.fixture
def netwatch_logging(monkeypatch):
    """cmd_agent sets up the `netwatch` logger: put it back afterwards. And runs the agent in
    this process, not in a fresh image (netwatch.runtime.lean), so that `Agent` can be
    replaced."""
    monkeypatch.setenv("NETWATCH_IN_PLACE", "1")
    root = logging.getLogger("netwatch")
    saved = root.handlers[:], root.level, root.propagate
    yield
    root.handlers[:], root.level, root.propagate = saved


def agent_args(site, metrics_listen="none") -> argparse.Namespace:
    return argparse.Namespace(config=str(site), netns=None, metrics_listen=metrics_listen,
                              verbose=False)


def died(error):
    return WorkerDied("resync", error)


@pytest.mark.parametrize("error, code", [
    # The kernel, after the retries: EX_OSERR.
    (died(NetlinkError(errno.ECONNRESET, "reset")), 71),
    (died(OSError(errno.ENOBUFS, "No buffer space available")), 71),
    (OSError(errno.EBUSY, "busy"), 71),  # while starting: the first reads
    (NetlinkError(errno.EPERM, "Operation not permitted"), 71),
    (died(PermissionError(errno.EPERM, "Operation not permitted")), 77),  # EX_NOPERM
    (died(TypeError("a bug")), 70),  # EX_SOFTWARE
    (died(None), 70),  # a worker that returned
])
def test_a_fatal_error_exits_non_zero_for_systemd(monkeypatch, lab_site, netwatch_logging,
                                                  error, code):
    class Dying:
        def __init__(self, *args, **kwargs):
            pass

        async def run(self):
            raise error

    monkeypatch.setattr(agent_module, "Agent", Dying)
    assert cmd_agent(agent_args(lab_site)) == code


def test_sigterm_exits_0(monkeypatch, lab_site, netwatch_logging):
    class Stopped:
        def __init__(self, *args, **kwargs):
            pass

        async def run(self):
            return None  # what Agent.run does after stop()

    monkeypatch.setattr(agent_module, "Agent", Stopped)
    assert cmd_agent(agent_args(lab_site)) == 0


def test_an_agent_whose_metrics_port_is_taken_still_runs(monkeypatch, lab_site, netwatch_logging,
                                                        capsys):
    """Protection before metrics: the listener's failure is logged at ERROR and the agent
    runs (the missing scrape is what alerts)."""
    ran = []

    class Recording:
        def __init__(self, *args, **kwargs):
            pass

        async def run(self):
            ran.append(True)

    monkeypatch.setattr(agent_module, "Agent", Recording)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        listen = f"127.0.0.1:{taken.getsockname()[1]}"
        assert cmd_agent(agent_args(lab_site, metrics_listen=listen)) == 0
    assert ran == [True]
    err = capsys.readouterr().err
    assert f"level=ERROR logger=netwatch.agent event=metrics_unavailable listen={listen}" in err
