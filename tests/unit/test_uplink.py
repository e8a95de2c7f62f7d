"""The uplink decision, driven by a fake clock: scenario tables and properties."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netwatch.model import Health, UplinkRole
from netwatch.uplink import (
    BothDown,
    Carrier,
    CarrierChange,
    Failover,
    Family,
    Mode,
    ProbeKind,
    ProbeResult,
    RouteSnapshot,
    SetDefaultRoute,
    Settings,
    TransitionError,
    UseUplink,
    _decide,
    _observe_probe,
    _repair_routes,
    _transition,
    initial_state,
    steady,
    step,
)

P, S = UplinkRole.PRIMARY, UplinkRole.SECONDARY
FALL, RISE, HOLD = 3, 5, 5.0
TICK = 0.05
KINDS = (ProbeKind.GATEWAY, ProbeKind.BEYOND4)


def make(auto: bool = True, families=(Family.V4, Family.V6)):
    return initial_state(Settings(fall=FALL, rise=RISE, hold_down_s=HOLD, failback_auto=auto,
                                  families=families, kinds=KINDS))


class Driver:
    """Feeds observations at a fake time and records the routes a real kernel would hold."""

    def __init__(self, auto: bool = True):
        self.now = 0.0
        self.state = make(auto)
        self.routes = {Family.V4: P, Family.V6: P}
        self.actions = []
        self.feed(RouteSnapshot(v4=P, v6=P))
        for role in (P, S):
            self.feed(CarrierChange(role, Carrier.UP))

    def feed(self, obs):
        self.state, actions = step(self.state, obs, self.now)
        for action in actions:
            if isinstance(action, SetDefaultRoute):
                self.routes[action.family] = action.uplink
        self.actions += actions
        return actions

    def tick(self, primary: bool | None = True, secondary: bool | None = True, n: int = 1):
        """n probe rounds; None = no probe of that uplink this round."""
        for _ in range(n):
            self.now += TICK
            for role, ok in ((P, primary), (S, secondary)):
                if ok is None:
                    continue
                for kind in KINDS:
                    self.feed(ProbeResult(role, kind, 0.001 if ok else None, "x", TICK))

    def failovers(self):
        return [a for a in self.actions if isinstance(a, Failover)]


def test_start_adopts_the_route_it_finds():
    state, actions = step(make(), RouteSnapshot(v4=S, v6=S), 0.0)
    assert state.mode is Mode.ON_SECONDARY and actions == []


def test_start_without_default_route_installs_the_primary():
    state, actions = step(make(), RouteSnapshot(v4=None, v6=None), 0.0)
    assert state.mode is Mode.ON_PRIMARY
    assert {(a.family, a.uplink) for a in actions} == {(Family.V4, P), (Family.V6, P)}


def test_unexpected_transition_raises():
    with pytest.raises(TransitionError):
        _transition(make(), Mode.STARTING)


@pytest.mark.parametrize(
    "name, script, expect_routes, expect_failovers",
    [
        # (primary ok, secondary ok, rounds)
        ("healthy", [(True, True, 20)], P, 0),
        ("silent gateway: fall rounds", [(True, True, 10), (False, True, FALL)], S, 1),
        ("two bad probes are not enough", [(True, True, 10), (False, True, FALL - 1),
                                           (True, True, 10)], P, 0),
        ("flapping primary never fails over", [(True, True, 10)]
         + [(False, True, FALL - 1), (True, True, 1)] * 20, P, 0),
        ("both down keeps the routes", [(True, True, 10), (False, False, 10)], P, 0),
        ("secondary down then primary down", [(True, True, 10), (True, False, 5),
                                              (False, False, 5)], P, 0),
        ("heal before hold-down stays", [(True, True, 10), (False, True, 5),
                                         (True, True, int(HOLD / TICK) - RISE - 5)], S, 1),
        ("heal after hold-down fails back", [(True, True, 10), (False, True, 5),
                                             (True, True, int(HOLD / TICK) + RISE + 2)], P, 2),
        ("slow recovery: a relapse restarts the hold-down", [
            (True, True, 10), (False, True, 5), (True, True, 60), (False, True, 1),
            (True, True, int(HOLD / TICK) - 5)], S, 1),
        ("secondary dies while primary recovers: immediate switch back", [
            (True, True, 10), (False, True, 5), (True, True, 10), (True, False, FALL)], P, 2),
    ],
)
def test_scenarios(name, script, expect_routes, expect_failovers):
    d = Driver()
    for p, s, n in script:
        d.tick(p, s, n)
    assert d.routes == {Family.V4: expect_routes, Family.V6: expect_routes}, name
    assert len(d.failovers()) == expect_failovers, name


def test_failover_reason_names_the_gateway_and_duration():
    d = Driver()
    d.tick(True, True, 10)
    d.tick(False, True, FALL)
    (failover,) = d.failovers()
    assert failover.cause == "gateway"
    assert "silent: 3 probes, 150 ms" in failover.reason


def test_blackholing_gateway_fails_over_as_beyond():
    """Only the beyond probes fail (the gateway answers ARP): the cause says `beyond` and the
    reason names the targets, not the gateway."""
    d = Driver()
    d.tick(True, True, 10)
    for _ in range(FALL):
        d.now += TICK
        d.feed(ProbeResult(P, ProbeKind.GATEWAY, 0.001, "100.64.1.1", TICK))
        d.feed(ProbeResult(P, ProbeKind.BEYOND4, None, "203.0.113.1", TICK))
        for kind in KINDS:
            d.feed(ProbeResult(S, kind, 0.001, "x", TICK))
    (failover,) = d.failovers()
    assert failover.cause == "beyond"
    assert "beyond target 203.0.113.1 silent: 3 probes" in failover.reason
    assert d.routes == {Family.V4: S, Family.V6: S}


def test_a_probe_kind_must_be_declared():
    """A bare string (the old spelling) or an undeclared kind fails loudly, never silently
    counts for nothing."""
    with pytest.raises(TypeError):
        Settings(kinds=("gateway",))
    with pytest.raises(KeyError):
        step(make(), ProbeResult(P, ProbeKind.GATEWAY6, None, "fe80::1", TICK), 0.0)


def test_carrier_loss_fails_over_at_once():
    d = Driver()
    d.tick(True, True, 10)
    actions = d.feed(CarrierChange(P, Carrier.NO_CARRIER))
    assert d.routes[Family.V4] is S and d.failovers()[0].cause == "carrier"
    assert any(isinstance(a, SetDefaultRoute) for a in actions)


def test_carrier_back_needs_rise_probes_and_hold_down():
    d = Driver()
    d.tick(True, True, 10)
    d.feed(CarrierChange(P, Carrier.ADMIN_DOWN))
    d.tick(None, True, 10)
    d.feed(CarrierChange(P, Carrier.UP))
    assert d.state.health(P) is Health.UNKNOWN
    d.tick(True, True, RISE)
    assert d.state.health(P) is Health.UP and d.routes[Family.V4] is S
    d.tick(True, True, int(HOLD / TICK) + 1)
    assert d.routes[Family.V4] is P


def test_both_down_reported_once():
    d = Driver()
    d.tick(True, True, 10)
    d.tick(False, False, 20)
    assert len([a for a in d.actions if isinstance(a, BothDown)]) == 1
    assert d.routes[Family.V4] is P


def test_manual_failback_waits_for_the_operator():
    d = Driver(auto=False)
    d.tick(True, True, 10)
    d.tick(False, True, FALL)
    d.tick(True, True, int(10 * HOLD / TICK))
    assert d.routes[Family.V4] is S
    d.feed(UseUplink(P, "change 1234"))
    assert d.routes == {Family.V4: P, Family.V6: P}
    assert d.failovers()[-1].cause == "operator"


def test_operator_route_change_is_repaired():
    d = Driver()
    d.tick(True, True, 10)
    actions = d.feed(RouteSnapshot(v4=S, v6=P))
    assert [(a.family, a.uplink, a.failover) for a in actions] == [(Family.V4, P, False)]
    actions = d.feed(RouteSnapshot(v4=None, v6=None))  # kernel flushed them (admin down)
    assert {a.family for a in actions} == {Family.V4, Family.V6}


# ------------------------------------------------------------------------------ properties

rounds = st.lists(
    st.tuples(st.sampled_from([True, False, None]), st.sampled_from([True, False, None])),
    max_size=400,
)


@settings(max_examples=150, deadline=None)
@given(rounds, st.booleans())
def test_properties_over_random_probe_sequences(seq, auto):
    d = Driver(auto=auto)
    up_since = 0.0  # when the primary last became UP
    switches: list[int] = []  # observation index of each failover
    for index, (p, s) in enumerate(seq, 1):
        before = d.state.health(P)
        n_before = len(d.failovers())
        d.tick(p, s)
        if d.state.health(P) is Health.UP and before is not Health.UP:
            up_since = d.now
        new = d.failovers()[n_before:]
        for f in new:
            switches.append(index)
            if f.cause == "failback":
                # no failback sooner than hold_down_s after the primary came back
                assert d.now - up_since >= HOLD - 1e-9
        # the server always has a default route, through an uplink, in both families
        assert d.routes[Family.V4] in (P, S) and d.routes[Family.V6] in (P, S)
        assert d.routes[Family.V4] is d.state.active
    # no more than one switch per `fall` probe rounds
    for a, b in itertools.pairwise(switches):
        assert b - a >= FALL


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.booleans(), st.integers(1, 40)), max_size=8),
       st.booleans())
def test_steady_means_a_good_probe_changes_nothing(script, auto):
    """`steady` (the agent's and step's fast path) is true only when the full step on a good
    probe would give back the same state and no action."""
    d = Driver(auto)
    for primary, secondary, rounds in script:
        for _ in range(rounds):
            d.tick(primary, secondary)
            for role in (P, S):
                if not steady(d.state, role, d.now):
                    continue
                for kind in KINDS:
                    obs = ProbeResult(role, kind, 0.001, "x", TICK)
                    actions = []
                    slow = _observe_probe(d.state, obs, d.now, actions)
                    slow = _repair_routes(_decide(slow, d.now, actions), actions)
                    assert actions == [] and slow == d.state
