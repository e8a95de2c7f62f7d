"""The agent's control API without a kernel: the forced failover as a lease (in force at once,
kept across a restart, ended by `--auto` and by its expiry), `status`, signals while forced,
and the audit trail. The decision is driven by observations on a fake clock; the lease clock
is the fake wall clock."""

from __future__ import annotations

import asyncio
import json

import pytest
from prometheus_client import CollectorRegistry

from netwatch.agent import decision
from netwatch.agent.daemon import Agent
from netwatch.agent.decision import (
    Carrier,
    CarrierChange,
    FailoverCause,
    ProbeResult,
    ProbeRound,
    RouteSnapshot,
    SetDefaultRoute,
)
from netwatch.config import load_site
from netwatch.control.protocol import Command, Peer, Request, validate_args
from netwatch.core.vocabulary import Family, TransitionError, UplinkRole

P, S = UplinkRole.PRIMARY, UplinkRole.SECONDARY
ROOT = Peer(uid=0, gid=0, pid=1, user="root", may_write=True)


class Clocks:
    """The decision's monotonic clock and the leases' wall clock, moved together."""

    def __init__(self):
        self.mono, self.wall = 100.0, 1_700_000_000.0

    def advance(self, seconds: float) -> None:
        self.mono += seconds
        self.wall += seconds


class NoKernel:
    """Never called: these tests feed the decision themselves."""

    async def address_towards(self, ifname, gateway):
        return None


@pytest.fixture
def site(site_copy, tmp_path):
    path = site_copy(control={"agent": str(tmp_path / "agent.sock"), "mode": "0660"})
    return load_site(path)


def start(site, clocks: Clocks, on: UplinkRole = P) -> Agent:
    """An agent as after a start: routes found via `on`, both uplinks UP in every family."""
    agent = Agent(site.agent, CollectorRegistry(), clock=lambda: clocks.mono, kernel=NoKernel(),
                  probers=None, site=site, wall=lambda: clocks.wall)
    agent.feed(RouteSnapshot(v4=on, v6=on))
    for role in (P, S):
        agent.feed(CarrierChange(role, Carrier.UP))
    probe(agent, clocks, site.agent.probe.rise)
    return agent


def probe(agent: Agent, clocks: Clocks, rounds: int, secondary: bool = True) -> None:
    for _ in range(rounds):
        clocks.advance(0.05)
        agent.feed(ProbeRound(tuple(
            ProbeResult(role, kind, 0.001 if role is P or secondary else None, "x", 0.05)
            for role in (P, S) for kind in agent.settings.kinds)))


def routes(agent: Agent) -> dict[Family, UplinkRole | None]:
    return {f: r.active for f, r in agent.state.routing.items()}


def written(agent: Agent) -> list[tuple[Family, UplinkRole]]:
    """The route writes the agent queued since the last call."""
    out = []
    while not agent._actions.empty():
        action = agent._actions.get_nowait()
        if isinstance(action, SetDefaultRoute):
            out.append((action.family, action.uplink))
    return out


def ask(agent: Agent, cmd: Command, **args) -> dict:
    request = Request(1, cmd, validate_args(cmd, args))
    return asyncio.run(agent.control.handle(request, ROOT))


def test_a_forced_failover_moves_every_family_at_once(site):
    clocks = Clocks()
    agent = start(site, clocks)
    written(agent)
    answer = ask(agent, Command.FAILOVER, to="secondary", reason="CHG-1", for_s=600)
    assert written(agent) == [(Family.V4, S), (Family.V6, S)]
    assert answer["lease"]["target"] == "secondary"
    assert "ipv4 via secondary, ipv6 via secondary" in answer["message"]


def test_the_lease_survives_a_restart_and_is_applied_again(site):
    clocks = Clocks()
    agent = start(site, clocks)
    ask(agent, Command.FAILOVER, to="secondary", reason="CHG-1", for_s=600)
    restarted = start(site, clocks, on=S)  # the routes where the first agent left them
    probe(restarted, clocks, int(3 * site.agent.failback.hold_down_s / 0.05))
    assert set(routes(restarted).values()) == {S}  # no failback while forced
    assert restarted.state.forced is not None
    restarted_wrong = start(site, clocks, on=P)  # or found on the primary: moved again
    assert set(routes(restarted_wrong).values()) == {S}


def test_auto_ends_it_and_a_served_hold_down_is_not_waited_again(site):
    clocks = Clocks()
    agent = start(site, clocks)
    ask(agent, Command.FAILOVER, to="secondary", reason="CHG-1", for_s=600)
    probe(agent, clocks, int(site.agent.failback.hold_down_s / 0.05) + 1)
    written(agent)
    answer = ask(agent, Command.FAILOVER, to="auto", reason="done")
    assert written(agent) == [(Family.V4, P), (Family.V6, P)]
    assert "ended forced failover" in answer["message"]
    assert ask(agent, Command.OVERRIDES)["overrides"] == []


def test_the_lease_expires_by_itself(site):
    clocks = Clocks()
    agent = start(site, clocks)
    ask(agent, Command.FAILOVER, to="secondary", reason="CHG-1", for_s=3)
    probe(agent, clocks, int(site.agent.failback.hold_down_s / 0.05) + 1)  # past 3 s
    asyncio.run(agent.control.tick())
    assert set(routes(agent).values()) == {P}
    kinds = [json.loads(x)["kind"] for x in agent.control.audit_log.path.read_text().splitlines()]
    assert "lease_expired" in kinds


def test_a_forced_uplink_that_is_down_takes_the_routes_once_up(site):
    clocks = Clocks()
    agent = start(site, clocks)
    probe(agent, clocks, site.agent.probe.fall, secondary=False)  # the secondary is DOWN
    answer = ask(agent, Command.FAILOVER, to="secondary", reason="CHG-1")
    assert set(routes(agent).values()) == {P}
    assert "not on secondary yet: secondary is not UP" in answer["message"]
    probe(agent, clocks, site.agent.probe.rise)
    assert set(routes(agent).values()) == {S}


def test_signals_are_ignored_while_forced(site, caplog):
    clocks = Clocks()
    agent = start(site, clocks)
    ask(agent, Command.FAILOVER, to="secondary", reason="CHG-1")
    agent.request(P, "SIGUSR1")
    assert set(routes(agent).values()) == {S}
    assert "netwatch failover --auto ends it" in caplog.text


def test_status_shows_each_uplink_and_family(site):
    clocks = Clocks()
    agent = start(site, clocks)
    ask(agent, Command.FAILOVER, to="secondary", reason="CHG-1", for_s=600)
    status = ask(agent, Command.STATUS)
    assert status["daemon"] == "agent" and status["mode"] == "on_secondary"
    assert status["forced"] == {"uplink": "secondary", "reason": "a1 CHG-1", "applied": True}
    primary, secondary = status["uplinks"]
    assert (primary["role"], primary["state"], primary["active"]) == ("primary", "up", False)
    assert secondary["active"] and secondary["families"]["ipv6"]["active"]
    assert primary["since"] == pytest.approx(clocks.wall, abs=5)
    assert [o["id"] for o in status["overrides"]] == ["a1"]


def test_automatic_actions_are_audited(site):
    clocks = Clocks()
    agent = start(site, clocks)
    ask(agent, Command.FAILOVER, to="secondary", reason="CHG-1")

    async def audit_all():
        for action in list(agent._actions._queue):
            agent.control.audit_action(action)
        writer = asyncio.ensure_future(agent.control.write_audit())
        while not agent.control._audit.empty():
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        writer.cancel()

    asyncio.run(audit_all())
    records = [json.loads(x) for x in agent.control.audit_log.path.read_text().split("\n") if x]
    failovers = [r for r in records if r["kind"] == "failover"]
    assert failovers[-1]["cause"] == FailoverCause.OPERATOR.value
    assert failovers[-1]["families"] == "ipv4,ipv6"
    assert any(r["kind"] == "uplink_health" for r in records)


def test_the_agent_exports_the_control_metrics(site):
    clocks = Clocks()
    registry = CollectorRegistry()
    agent = Agent(site.agent, registry, clock=lambda: clocks.mono, kernel=NoKernel(),
                  site=site, wall=lambda: clocks.wall)
    assert registry.get_sample_value("netwatch_control_requests_total",
                                     {"daemon": "agent", "cmd": "failover", "result": "ok"}) == 0
    ask(agent, Command.FAILOVER, to="secondary", reason="CHG-1", for_s=60)
    assert registry.get_sample_value(
        "netwatch_override_expiry_timestamp_seconds",
        {"daemon": "agent", "id": "a1", "kind": "failover", "target": "secondary"},
    ) == pytest.approx(clocks.wall + 60)


def test_a_decision_error_on_the_lease_clock_stops_the_agent(site, monkeypatch):
    """A lease that ends into a decision that raises (a bug) is not retried every second with
    the forced failover still in force: the lease clock dies, and with it the daemon, for
    systemd to restart."""
    clocks = Clocks()
    agent = start(site, clocks)
    ask(agent, Command.FAILOVER, to="secondary", reason="CHG-1", for_s=3)
    clocks.advance(5)

    def broken(state, obs, now):
        raise TransitionError("uplink mode on_secondary -> on_secondary is not allowed")

    monkeypatch.setattr(decision, "step", broken)

    async def lease_clock():
        async with asyncio.timeout(5):
            await agent.control.keep_time()

    with pytest.raises(TransitionError):
        asyncio.run(lease_clock())


def test_the_answer_says_a_forced_uplink_that_failed_waits_for_its_hold_down(site):
    clocks = Clocks()
    agent = start(site, clocks)
    ask(agent, Command.FAILOVER, to="secondary", reason="CHG-1", for_s=600)
    probe(agent, clocks, site.agent.probe.fall, secondary=False)  # it fails: back on primary
    probe(agent, clocks, site.agent.probe.rise)  # UP again
    assert set(routes(agent).values()) == {P}
    answer = ask(agent, Command.FAILOVER, to="secondary", reason="CHG-1 again", for_s=600)
    assert set(routes(agent).values()) == {P}
    assert "is UP again: its hold-down ends in" in answer["message"]
