"""The uplink decision, driven by a fake clock: scenario tables and properties."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netwatch.agent.decision import (
    BothDown,
    Carrier,
    CarrierChange,
    Failover,
    FailoverCause,
    Mode,
    ProbeKind,
    ProbeResult,
    RouteSnapshot,
    SetDefaultRoute,
    Settings,
    UseUplink,
    _decide,
    _observe_probe,
    _repair_routes,
    _transition,
    initial_state,
    steady,
    step,
)
from netwatch.core.vocabulary import Family, Health, TransitionError, UplinkRole

P, S = UplinkRole.PRIMARY, UplinkRole.SECONDARY
FALL, RISE, HOLD = 3, 5, 5.0
TICK = 0.05
KINDS = (ProbeKind.GATEWAY, ProbeKind.BEYOND4)
CARRIER, GATEWAY, BEYOND = FailoverCause.CARRIER, FailoverCause.GATEWAY, FailoverCause.BEYOND
FAILBACK, OPERATOR = FailoverCause.FAILBACK, FailoverCause.OPERATOR


def make(auto: bool = True, families=(Family.V4, Family.V6)):
    return initial_state(Settings(fall=FALL, rise=RISE, hold_down_s=HOLD, failback_auto=auto,
                                  families=families, kinds=KINDS))


# A link set admin-down or removed takes every route through it with it (the kernel flushes
# them, and refuses new ones: ENETUNREACH). A link without carrier keeps its routes, flagged
# linkdown: present, accepted, and useless.
FLUSHED = (Carrier.ADMIN_DOWN, Carrier.VANISHED)


class Driver:
    """Feeds observations at a fake time and records the routes a real kernel would hold:
    `routes[family]` is the uplink the default route goes through, None when there is none."""

    def __init__(self, auto: bool = True):
        self.now = 0.0
        self.state = make(auto)
        self.routes: dict[Family, UplinkRole | None] = {Family.V4: P, Family.V6: P}
        self.carrier = {P: Carrier.UP, S: Carrier.UP}
        self.actions = []
        self.feed(RouteSnapshot(v4=P, v6=P))
        for role in (P, S):
            self.feed(CarrierChange(role, Carrier.UP))

    def feed(self, obs):
        self.state, actions = step(self.state, obs, self.now)
        for action in actions:
            if isinstance(action, SetDefaultRoute) and self.carrier[action.uplink] not in FLUSHED:
                self.routes[action.family] = action.uplink
        self.actions += actions
        return actions

    def tick(self, primary: bool | None = True, secondary: bool | None = True, n: int = 1):
        """n probe rounds; None = no probe of that uplink this round. A probe through a link
        that is not up gets no answer, whatever the script says."""
        for _ in range(n):
            self.now += TICK
            for role, ok in ((P, primary), (S, secondary)):
                if ok is None:
                    continue
                ok = ok and self.carrier[role] is Carrier.UP
                for kind in KINDS:
                    self.feed(ProbeResult(role, kind, 0.001 if ok else None, "x", TICK))

    def link(self, role: UplinkRole, carrier: Carrier):
        """A link event as the agent meets it: the kernel acts first (flushing the routes of a
        link set down or removed), the agent reads the event, then re-reads the routes."""
        self.carrier[role] = carrier
        if carrier in FLUSHED:
            self.routes = {f: None if via is role else via for f, via in self.routes.items()}
        actions = self.feed(CarrierChange(role, carrier))
        return actions + self.feed(RouteSnapshot(v4=self.routes[Family.V4],
                                                 v6=self.routes[Family.V6]))

    def run(self, script):
        """Steps `(primary ok, secondary ok, rounds)` or `(uplink, carrier)`."""
        for item in script:
            if isinstance(item[0], UplinkRole):
                self.link(*item)
            else:
                self.tick(*item)

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
    assert failover.cause is GATEWAY
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
    assert failover.cause is BEYOND
    assert "beyond target 203.0.113.1 silent: 3 probes" in failover.reason
    assert d.routes == {Family.V4: S, Family.V6: S}


def test_a_probe_kind_must_be_declared():
    """A bare string or an undeclared kind fails loudly, never silently counts for nothing."""
    with pytest.raises(TypeError):
        Settings(kinds=("gateway",))
    with pytest.raises(KeyError):
        step(make(), ProbeResult(P, ProbeKind.GATEWAY6, None, "fe80::1", TICK), 0.0)


def test_carrier_loss_fails_over_at_once():
    d = Driver()
    d.tick(True, True, 10)
    actions = d.link(P, Carrier.NO_CARRIER)
    assert d.routes[Family.V4] is S and d.failovers()[0].cause is CARRIER
    assert any(isinstance(a, SetDefaultRoute) for a in actions)


def test_carrier_back_needs_rise_probes_and_hold_down():
    d = Driver()
    d.tick(True, True, 10)
    d.link(P, Carrier.ADMIN_DOWN)
    d.tick(None, True, 10)
    d.link(P, Carrier.UP)
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
    assert d.failovers()[-1].cause is OPERATOR


def test_operator_route_change_is_repaired():
    d = Driver()
    d.tick(True, True, 10)
    actions = d.feed(RouteSnapshot(v4=S, v6=P))
    assert [(a.family, a.uplink, a.failover) for a in actions] == [(Family.V4, P, False)]
    actions = d.feed(RouteSnapshot(v4=None, v6=None))  # kernel flushed them (admin down)
    assert {a.family for a in actions} == {Family.V4, Family.V6}


# ------------------------------------------- the active's link gone, the other's link up

HEALTHY = (True, True, 10)
SECONDARY_SILENT = (True, False, FALL)  # gwb silent, eth1's carrier up
PRIMARY_SILENT = (False, True, FALL)
HELD = int(HOLD / TICK)


@pytest.mark.parametrize(
    "name, script, expect_routes, expect_causes",
    [
        # (primary ok, secondary ok, rounds) or (uplink, carrier); the routes expected in
        # the kernel (None: no default route), the causes of the failovers in order.
        ("secondary silent, primary admin down: the secondary beats no route",
         [HEALTHY, SECONDARY_SILENT, (P, Carrier.ADMIN_DOWN)], S, [CARRIER]),
        ("secondary silent, primary carrier lost", [HEALTHY, SECONDARY_SILENT,
                                                    (P, Carrier.NO_CARRIER)], S, [CARRIER]),
        ("secondary silent, primary vanished", [HEALTHY, SECONDARY_SILENT,
                                                (P, Carrier.VANISHED)], S, [CARRIER]),
        ("it stays there while the primary's link is gone", [
            HEALTHY, SECONDARY_SILENT, (P, Carrier.ADMIN_DOWN), (False, False, 200)],
         S, [CARRIER]),
        ("secondary still unknown (its carrier just back), primary carrier lost", [
            HEALTHY, (S, Carrier.NO_CARRIER), (True, True, 5), (S, Carrier.UP),
            (True, True, RISE - 1), (P, Carrier.NO_CARRIER)], S, [CARRIER]),
        ("secondary up but failing now, primary carrier lost", [
            HEALTHY, (True, False, FALL - 1), (P, Carrier.NO_CARRIER)], S, [CARRIER]),
        ("both links gone: nothing to move to", [
            HEALTHY, (S, Carrier.NO_CARRIER), (P, Carrier.ADMIN_DOWN)], None, []),
        ("both links gone, then the secondary's returns: routes go there at once", [
            HEALTHY, (S, Carrier.NO_CARRIER), (P, Carrier.ADMIN_DOWN), (S, Carrier.UP)],
         S, [CARRIER]),
        ("both links gone, then the active's returns: its routes are put back", [
            HEALTHY, (S, Carrier.ADMIN_DOWN), (P, Carrier.ADMIN_DOWN), (P, Carrier.UP)], P, []),
        ("primary's link back, secondary still silent: rise probes, no hold-down", [
            HEALTHY, SECONDARY_SILENT, (P, Carrier.ADMIN_DOWN), (False, False, 10),
            (P, Carrier.UP), (True, False, RISE)], P, [CARRIER, GATEWAY]),
        ("primary's link back: not before rise probes", [
            HEALTHY, SECONDARY_SILENT, (P, Carrier.ADMIN_DOWN), (False, False, 10),
            (P, Carrier.UP), (True, False, RISE - 1)], S, [CARRIER]),
        ("secondary heals first: the primary only after its hold-down", [
            HEALTHY, SECONDARY_SILENT, (P, Carrier.ADMIN_DOWN), (False, True, RISE),
            (P, Carrier.UP), (True, True, RISE + HELD - 2)], S, [CARRIER]),
        ("secondary heals first, hold-down over: failback", [
            HEALTHY, SECONDARY_SILENT, (P, Carrier.ADMIN_DOWN), (False, True, RISE),
            (P, Carrier.UP), (True, True, RISE + HELD + 2)], P, [CARRIER, FAILBACK]),
        ("on the secondary, primary silent, secondary's link lost: back to the primary", [
            HEALTHY, PRIMARY_SILENT, (S, Carrier.NO_CARRIER)], P, [GATEWAY, CARRIER]),
        ("a flapping primary link while the secondary is dead: never a dead link's route", [
            HEALTHY, SECONDARY_SILENT]
         + [(P, Carrier.NO_CARRIER), (False, False, 3), (P, Carrier.UP), (True, False, 2)] * 5,
         S, [CARRIER]),
    ],
)
def test_active_link_lost(name, script, expect_routes, expect_causes):
    d = Driver()
    d.run(script)
    assert d.routes == {Family.V4: expect_routes, Family.V6: expect_routes}, name
    assert [f.cause for f in d.failovers()] == expect_causes, name


def test_moving_to_a_probe_dead_uplink_says_why():
    d = Driver()
    d.run([HEALTHY])
    for _ in range(FALL):
        d.now += TICK
        for kind in KINDS:
            d.feed(ProbeResult(P, kind, 0.001, "x", TICK))
        d.feed(ProbeResult(S, ProbeKind.GATEWAY, None, "100.64.2.1", TICK))
        d.feed(ProbeResult(S, ProbeKind.BEYOND4, 0.001, "x", TICK))
    actions = d.link(P, Carrier.ADMIN_DOWN)
    (failover,) = d.failovers()
    assert failover.reason == (
        "primary: admin down; secondary is DOWN (gateway 100.64.2.1 silent: 3 probes, 150 ms) "
        "but its link is up: a route that may work beats none")
    (both,) = [a for a in actions if isinstance(a, BothDown)]
    assert both.reason.startswith("both uplinks down, routes moved to secondary, whose link is up")
    assert [(a.family, a.uplink) for a in actions if isinstance(a, SetDefaultRoute)] == [
        (Family.V4, S), (Family.V6, S)]


def test_an_operator_cannot_put_the_routes_on_a_dead_link():
    """SIGUSR1 while the primary is admin-down: the order is carried out and undone in the
    same step (the kernel refuses the first write), so the routes stay on a live link."""
    d = Driver()
    d.run([HEALTHY, SECONDARY_SILENT, (P, Carrier.ADMIN_DOWN)])
    d.feed(UseUplink(P, "SIGUSR1"))
    assert d.routes == {Family.V4: S, Family.V6: S} and d.state.active is S
    assert [f.cause for f in d.failovers()] == [CARRIER, OPERATOR, CARRIER]


def test_start_on_a_dead_link_moves_to_the_live_one():
    """The agent adopts the route it finds (a linkdown route via the primary, whose cable is
    out) and moves at once to the secondary, its probes not even started."""
    state = make()
    for obs in (CarrierChange(P, Carrier.NO_CARRIER), CarrierChange(S, Carrier.UP),
                RouteSnapshot(v4=P, v6=P)):
        state, actions = step(state, obs, 0.0)
    assert state.mode is Mode.ON_SECONDARY
    assert {(a.family, a.uplink) for a in actions if isinstance(a, SetDefaultRoute)} == {
        (Family.V4, S), (Family.V6, S)}


# ------------------------------------------------------------------------------ properties

probe_round = st.tuples(st.sampled_from([True, False, None]), st.sampled_from([True, False, None]))
link_event = st.tuples(st.sampled_from([P, S]), st.sampled_from(list(Carrier)))
# Mostly probe rounds; a link event in one step of five or so.
steps = st.lists(st.one_of(probe_round, probe_round, probe_round, probe_round, link_event),
                 max_size=400)


@settings(max_examples=200, deadline=None)
@given(steps, st.booleans())
def test_properties_over_random_probe_and_link_sequences(seq, auto):
    """Over any run of probe rounds and link events:
    - a default route in both families, through an uplink whose link is up, whenever one is
      (with none, nothing can be done, and the kernel may hold no route at all);
    - a switch made on probes is at least min(`fall`, `rise`) probe rounds (`fall` here)
      after the previous switch, whatever that was: flapping probes never flap the routes.
      After a switch forced by a link event, going back on probes needs the uplink it left
      to be UP again: `rise` good probes after its link returned;
    - a switch made on a link event is forced: away from an uplink whose link is gone, onto
      one whose link is up, at most one per event. A link that flaps moves the routes as
      often as it flaps, since each time the alternative is no route;
    - no failback sooner than hold_down_s after the primary came back.
    """
    d = Driver(auto=auto)
    up_since = 0.0  # when the primary last became UP
    rounds = 0
    last_switch: int | None = None  # probe rounds done at the last failover
    for item in seq:
        before = d.state.health(P)
        active_before = d.state.active
        n_before = len(d.failovers())
        d.run([item])
        is_link = isinstance(item[0], UplinkRole)
        rounds += 0 if is_link else 1
        if d.state.health(P) is Health.UP and before is not Health.UP:
            up_since = d.now
        new = d.failovers()[n_before:]
        assert len(new) <= 1
        for f in new:
            if f.cause is FAILBACK:
                assert d.now - up_since >= HOLD - 1e-9
            elif is_link:
                assert f.cause is CARRIER
                assert f.from_uplink is active_before
                assert d.carrier[f.from_uplink] is not Carrier.UP
                assert d.carrier[f.to_uplink] is Carrier.UP
            else:
                assert last_switch is None or rounds - last_switch >= FALL, (rounds, last_switch)
            last_switch = rounds
        live = {r for r, c in d.carrier.items() if c is Carrier.UP}
        if live:
            assert d.state.active in live
            assert d.routes == {Family.V4: d.state.active, Family.V6: d.state.active}


@settings(max_examples=60, deadline=None)
@given(st.lists(st.one_of(st.tuples(st.booleans(), st.booleans(), st.integers(1, 40)),
                          link_event), max_size=10),
       st.booleans())
def test_steady_means_a_good_probe_changes_nothing(script, auto):
    """`steady` (the agent's and step's fast path) is true only when the full step on a good
    probe would give back the same state and no action."""
    d = Driver(auto)
    for item in script:
        if isinstance(item[0], UplinkRole):
            d.link(*item)
            continue
        primary, secondary, rounds = item
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
