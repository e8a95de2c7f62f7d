"""The uplink decision, driven by a fake clock: scenario tables and properties."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netwatch.agent.decision import (
    BeyondSuspect,
    BothDown,
    Carrier,
    CarrierChange,
    Failover,
    FailoverCause,
    Force,
    Mode,
    ProbeKind,
    ProbeResult,
    ProbeRound,
    RequestRefused,
    RouteSnapshot,
    SetDefaultRoute,
    Settings,
    UplinkHealthChanged,
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
V4, V6 = Family.V4, Family.V6
FALL, RISE, HOLD = 3, 5, 5.0
TICK = 0.05
KINDS = (ProbeKind.GATEWAY, ProbeKind.BEYOND4, ProbeKind.GATEWAY6)
CARRIER, GATEWAY, BEYOND = FailoverCause.CARRIER, FailoverCause.GATEWAY, FailoverCause.BEYOND
FAILBACK, OPERATOR = FailoverCause.FAILBACK, FailoverCause.OPERATOR


def make(auto: bool = True, families=(V4, V6), kinds=KINDS):
    return initial_state(Settings(fall=FALL, rise=RISE, hold_down_s=HOLD, failback_auto=auto,
                                  families=families, kinds=kinds))


# A link set admin-down or removed takes every route through it with it (the kernel flushes
# them, and refuses new ones: ENETUNREACH). A link without carrier keeps its routes, flagged
# linkdown: present, accepted, and useless.
FLUSHED = (Carrier.ADMIN_DOWN, Carrier.VANISHED)


def answers(script, kind: ProbeKind) -> bool | None:
    """What a scripted uplink does for one probe kind: True/False/None for every kind, or a
    {family: True/False/None} dict (a missing family answers)."""
    if isinstance(script, dict):
        return script.get(kind.family, True)
    return script


class Driver:
    """Feeds observations at a fake time and records the routes a real kernel would hold:
    `routes[family]` is the uplink the default route goes through, None when there is none.
    `writes` counts the route writes asked for, `refused` those a real kernel would refuse."""

    def __init__(self, auto: bool = True):
        self.now = 0.0
        self.state = make(auto)
        self.routes: dict[Family, UplinkRole | None] = {V4: P, V6: P}
        self.carrier = {P: Carrier.UP, S: Carrier.UP}
        self.actions = []
        self.refused = 0
        self.feed(RouteSnapshot(v4=P, v6=P))
        for role in (P, S):
            self.feed(CarrierChange(role, Carrier.UP))

    def feed(self, obs):
        self.state, actions = step(self.state, obs, self.now)
        for action in actions:
            if not isinstance(action, SetDefaultRoute):
                continue
            if self.carrier[action.uplink] in FLUSHED:
                self.refused += 1
            else:
                self.routes[action.family] = action.uplink
        self.actions += actions
        return actions

    def tick(self, primary=True, secondary=True, n: int = 1, tentative=()):
        """n probe rounds, each one observation as the agent feeds it; a script per uplink
        (see `answers`), None = no probe. A probe through a link that is not up gets no
        answer, whatever the script says. `tentative`: the uplinks whose IPv6 source
        address is still tentative (their lost IPv6 probes are no verdict)."""
        for _ in range(n):
            self.now += TICK
            results = []
            for role, script in ((P, primary), (S, secondary)):
                for kind in KINDS:
                    ok = answers(script, kind)
                    if ok is None:
                        continue
                    ok = ok and self.carrier[role] is Carrier.UP
                    results.append(ProbeResult(role, kind, 0.001 if ok else None, "x", TICK,
                                               tentative=role in tentative
                                               and kind.family is V6))
            self.feed(ProbeRound(tuple(results)))

    def link(self, role: UplinkRole, carrier: Carrier):
        """A link event as the agent meets it: the kernel acts first (flushing the routes of a
        link set down or removed), the agent reads the event, then re-reads the routes."""
        self.carrier[role] = carrier
        if carrier in FLUSHED:
            self.routes = {f: None if via is role else via for f, via in self.routes.items()}
        actions = self.feed(CarrierChange(role, carrier))
        return actions + self.snapshot()

    def snapshot(self):
        return self.feed(RouteSnapshot(v4=self.routes[V4], v6=self.routes[V6]))

    def run(self, script):
        """Steps `(primary, secondary, rounds)` or `(uplink, carrier)`."""
        for item in script:
            if isinstance(item[0], UplinkRole):
                self.link(*item)
            else:
                self.tick(*item)

    def failovers(self):
        return [a for a in self.actions if isinstance(a, Failover)]

    def on(self, role: UplinkRole | None) -> bool:
        return self.routes == {V4: role, V6: role}


def test_start_adopts_the_route_it_finds():
    state, actions = step(make(), RouteSnapshot(v4=S, v6=S), 0.0)
    assert state.active(V4) is S and state.active(V6) is S and actions == []


def test_start_adopts_each_family_where_it_is():
    """An IPv4 route via the secondary and none for IPv6: each family is adopted on its own,
    and the missing one is installed via the primary."""
    state, actions = step(make(), RouteSnapshot(v4=S, v6=None), 0.0)
    assert (state.active(V4), state.active(V6)) == (S, P)
    assert [(a.family, a.uplink) for a in actions] == [(V6, P)]


def test_start_without_default_route_installs_the_primary():
    state, actions = step(make(), RouteSnapshot(v4=None, v6=None), 0.0)
    assert state.active(V4) is P and state.active(V6) is P
    assert {(a.family, a.uplink) for a in actions} == {(V4, P), (V6, P)}


def test_unexpected_transition_raises():
    with pytest.raises(TransitionError):
        _transition(make().routing[V4], Mode.STARTING)


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
    """Both families fail together in these: they move together, one Failover each time."""
    d = Driver()
    for p, s, n in script:
        d.tick(p, s, n)
    assert d.on(expect_routes), name
    assert len(d.failovers()) == expect_failovers, name
    assert all(f.families == (V4, V6) for f in d.failovers()), name


def test_failover_reason_names_the_gateway_and_duration():
    d = Driver()
    d.tick(True, True, 10)
    d.tick(False, True, FALL)
    (failover,) = d.failovers()
    assert failover.cause is GATEWAY
    assert "silent: 3 probes, 150 ms" in failover.reason


def test_blackholing_gateway_fails_over_as_beyond():
    """Only the beyond probes fail (the gateway answers ARP): the cause says `beyond` and the
    reason names the targets, not the gateway; only IPv4, whose targets they are, moves."""
    d = Driver()
    d.tick(True, True, 10)
    for _ in range(FALL):
        d.now += TICK
        d.feed(ProbeRound((
            ProbeResult(P, ProbeKind.GATEWAY, 0.001, "100.64.1.1", TICK),
            ProbeResult(P, ProbeKind.BEYOND4, None, "203.0.113.1", TICK),
            ProbeResult(P, ProbeKind.GATEWAY6, 0.001, "fe80::1", TICK),
            *(ProbeResult(S, kind, 0.001, "x", TICK) for kind in KINDS))))
    (failover,) = d.failovers()
    assert failover.cause is BEYOND and failover.families == (V4,)
    assert "beyond target 203.0.113.1 silent: 3 probes" in failover.reason
    assert d.routes == {V4: S, V6: P}


def test_a_probe_kind_must_be_declared():
    """A bare string or an undeclared kind fails loudly, never silently counts for nothing."""
    with pytest.raises(TypeError):
        Settings(kinds=("gateway",))
    with pytest.raises(KeyError):
        step(make(), ProbeResult(P, ProbeKind.BEYOND6, None, "2001:db8::1", TICK), 0.0)
    with pytest.raises(KeyError):  # a tentative one too: no verdict is no excuse
        step(make(), ProbeResult(P, ProbeKind.BEYOND6, None, "2001:db8::1", TICK,
                                 tentative=True), 0.0)


def test_each_managed_family_needs_its_own_probes():
    """A managed family without a probe kind would follow the carrier alone; a kind of an
    unmanaged family would judge a route nobody writes: both refused."""
    with pytest.raises(ValueError, match="ipv6 is managed but has no probe kind"):
        Settings(families=(V4, V6), kinds=(ProbeKind.GATEWAY,))
    with pytest.raises(ValueError, match="beyond6 is of an unmanaged family"):
        Settings(families=(V4,), kinds=(ProbeKind.GATEWAY, ProbeKind.BEYOND6))


def test_carrier_loss_fails_over_at_once():
    d = Driver()
    d.tick(True, True, 10)
    actions = d.link(P, Carrier.NO_CARRIER)
    assert d.on(S)
    (failover,) = d.failovers()
    assert failover.cause is CARRIER and failover.families == (V4, V6)
    assert any(isinstance(a, SetDefaultRoute) for a in actions)


def test_carrier_back_needs_rise_probes_and_hold_down():
    d = Driver()
    d.tick(True, True, 10)
    d.link(P, Carrier.ADMIN_DOWN)
    d.tick(None, True, 10)
    d.link(P, Carrier.UP)
    assert d.state.health(P) is Health.UNKNOWN
    d.tick(True, True, RISE)
    assert d.state.health(P) is Health.UP and d.on(S)
    d.tick(True, True, int(HOLD / TICK) + 1)
    assert d.on(P)


def test_both_down_reported_once():
    d = Driver()
    d.tick(True, True, 10)
    d.tick(False, False, 20)
    both = [a for a in d.actions if isinstance(a, BothDown)]
    assert [a.family for a in both] == [V4, V6]
    assert d.on(P)
    assert d.state.both_down


def test_manual_failback_waits_for_the_operator():
    d = Driver(auto=False)
    d.tick(True, True, 10)
    d.tick(False, True, FALL)
    d.tick(True, True, int(10 * HOLD / TICK))
    assert d.on(S)
    d.feed(UseUplink(P, "change 1234"))
    assert d.on(P)
    assert d.failovers()[-1].cause is OPERATOR


def test_operator_route_change_is_repaired():
    d = Driver()
    d.tick(True, True, 10)
    actions = d.feed(RouteSnapshot(v4=S, v6=P))
    assert [(a.family, a.uplink, a.failover) for a in actions] == [(V4, P, False)]
    actions = d.feed(RouteSnapshot(v4=None, v6=None))  # kernel flushed them (admin down)
    assert {a.family for a in actions} == {V4, V6}


# ---------------------------------------------------- each address family on its own health

HEALTHY = (True, True, 10)
HELD = int(HOLD / TICK)
V6_SILENT = {V6: False}  # the IPv6 gateway silent, IPv4 answering
V4_SILENT = {V4: False}


@pytest.mark.parametrize(
    "name, script, expect_v4, expect_v6, expect_moves",
    [
        # (primary, secondary, rounds) or (uplink, carrier); the uplink of each family's
        # route at the end; the failovers as (cause, families).
        ("IPv6 gateway silent: IPv6 moves, IPv4 stays",
         [HEALTHY, (V6_SILENT, True, FALL)], P, S, [(GATEWAY, (V6,))]),
        ("IPv4 gateway silent: IPv4 moves, IPv6 stays",
         [HEALTHY, (V4_SILENT, True, FALL)], S, P, [(GATEWAY, (V4,))]),
        ("IPv6 back: it fails back after its own hold-down",
         [HEALTHY, (V6_SILENT, True, FALL), (True, True, RISE + HELD + 1)], P, P,
         [(GATEWAY, (V6,)), (FAILBACK, (V6,))]),
        ("IPv6 silent, then IPv4 too, a second apart: two failovers, then both back",
         [HEALTHY, (V6_SILENT, True, 20), (False, True, FALL), (True, True, RISE + HELD + 1)],
         P, P, [(GATEWAY, (V6,)), (GATEWAY, (V4,)), (FAILBACK, (V4, V6))]),
        ("IPv6 dead on both uplinks: IPv6 kept, IPv4 untouched",
         [HEALTHY, (V6_SILENT, V6_SILENT, 20)], P, P, []),
        ("the secondary's IPv6 dead, the primary's IPv4 dead: each goes where it works",
         [HEALTHY, (True, V6_SILENT, FALL), (V4_SILENT, V6_SILENT, FALL)], S, P,
         [(GATEWAY, (V4,))]),
        ("IPv6 on the secondary, the secondary's link lost: IPv6 comes back at once",
         [HEALTHY, (V6_SILENT, True, FALL), (S, Carrier.NO_CARRIER)], P, P,
         [(GATEWAY, (V6,)), (CARRIER, (V6,))]),
        ("IPv6 on the secondary, the primary's link lost: only IPv4 has to move",
         [HEALTHY, (V6_SILENT, True, FALL), (P, Carrier.NO_CARRIER)], S, S,
         [(GATEWAY, (V6,)), (CARRIER, (V4,))]),
    ],
)
def test_each_family_follows_its_own_health(name, script, expect_v4, expect_v6, expect_moves):
    d = Driver()
    d.run(script)
    assert d.routes == {V4: expect_v4, V6: expect_v6}, name
    assert [(f.cause, f.families) for f in d.failovers()] == expect_moves, name
    assert (d.state.active(V4), d.state.active(V6)) == (expect_v4, expect_v6), name


def test_families_back_a_round_apart_fail_back_together():
    """After the primary's link returns, its IPv6 gateway answers one round later than IPv4
    (a router re-adding its link-local address after the link): the IPv4 hold-down ends a
    round before the IPv6 one, and IPv4 waits that round, so both come back in one failover,
    neither before its own hold-down."""
    d = Driver()
    d.run([HEALTHY, (P, Carrier.NO_CARRIER), (None, True, 5), (P, Carrier.UP),
           (V6_SILENT, True, 1)])
    d.tick(True, True, RISE + HELD - 1)
    assert d.on(S)
    d.tick(True, True, 1)  # IPv4's hold-down is over, IPv6's is not: IPv4 waits
    assert d.on(S)
    d.tick(True, True, 1)
    assert d.on(P)
    assert [(f.cause, f.families) for f in d.failovers()] == [(CARRIER, (V4, V6)),
                                                              (FAILBACK, (V4, V6))]


def test_a_family_waits_for_another_only_a_tenth_of_the_hold_down():
    """IPv6 came back a whole second after IPv4 (hold-down 5 s): IPv4 does not wait for it."""
    d = Driver()
    d.run([HEALTHY, (P, Carrier.NO_CARRIER), (None, True, 5), (P, Carrier.UP),
           (V6_SILENT, True, 20), (True, True, RISE + HELD + 1)])
    assert [(f.cause, f.families) for f in d.failovers()] == [
        (CARRIER, (V4, V6)), (FAILBACK, (V4,)), (FAILBACK, (V6,))]


def test_an_ipv6_only_failure_says_so():
    """The uplink's whole verdict is DOWN (dashboards: not every family works), the IPv4
    verdict stays UP, and the failover and health change name IPv6 only."""
    d = Driver()
    d.run([HEALTHY, (V6_SILENT, True, FALL)])
    assert d.state.health(P) is Health.DOWN
    assert (d.state.health(P, V4), d.state.health(P, V6)) == (Health.UP, Health.DOWN)
    changes = [a for a in d.actions if isinstance(a, UplinkHealthChanged)
               and a.health is Health.DOWN]
    assert [(a.uplink, a.families) for a in changes] == [(P, (V6,))]
    (failover,) = d.failovers()
    assert failover.reason == "primary: gateway x silent: 3 probes, 150 ms"
    assert d.state.carrying == {P, S}


# ---------------------------------------------- at start and after a carrier return: DAD

DAD_ROUNDS = int(2.0 / TICK)  # 2 s of duplicate address detection


def started(d: Driver | None = None) -> Driver:
    """An agent that has just started: links read, routes adopted on the primary, no probe
    judged yet."""
    d = Driver.__new__(Driver)
    d.now, d.state, d.actions, d.refused = 0.0, make(), [], 0
    d.routes = {V4: P, V6: P}
    d.carrier = {P: Carrier.UP, S: Carrier.UP}
    for role in (P, S):
        d.feed(CarrierChange(role, Carrier.UP))
    d.feed(RouteSnapshot(v4=P, v6=P))
    return d


def test_dad_at_start_moves_nothing():
    """The agent starts as the primary's link comes up: for 2 s its IPv6 gateway probes are
    lost (the link-local address is tentative: the kernel refuses the solicitation, or the
    gateway cannot answer it), IPv4 answers from the first probe, the secondary is fine.
    Tentative losses are no verdict: nothing moves, and once DAD is over every family of
    both uplinks is UP."""
    d = started()
    d.tick(V6_SILENT, True, DAD_ROUNDS, tentative={P})
    assert d.on(P) and d.failovers() == []
    assert d.state.health(P, V4) is Health.UP
    assert d.state.health(P, V6) is Health.UNKNOWN  # not judged yet: UNKNOWN, not DOWN
    d.tick(True, True, RISE)
    assert d.on(P) and d.failovers() == []
    assert d.state.health(P) is Health.UP and d.state.health(S) is Health.UP


def test_a_real_ipv6_loss_at_start_moves_ipv6_only():
    """The same losses with no tentative address are a verdict: IPv6 moves after `fall`
    probes (as soon as the secondary's IPv6 is UP), IPv4 never does. (Before each family
    followed its own health, both routes left the working primary 150 ms after start.)"""
    d = started()
    d.tick(V6_SILENT, True, DAD_ROUNDS)
    assert d.routes == {V4: P, V6: S}
    assert [(f.cause, f.families) for f in d.failovers()] == [(GATEWAY, (V6,))]


def test_dad_after_a_carrier_return_delays_only_the_primarys_ipv6():
    """The primary's link flaps: the routes move at once, and when it is back its IPv6
    source is tentative for 2 s: no verdict meanwhile, so IPv6 is not condemned; each family
    then comes back after its own hold-down, IPv4 first (its probes answered all along)."""
    d = Driver()
    d.run([HEALTHY, (P, Carrier.NO_CARRIER), (None, True, 5), (P, Carrier.UP)])
    d.tick(V6_SILENT, True, DAD_ROUNDS, tentative={P})
    assert d.state.health(P, V6) is Health.UNKNOWN and d.on(S)
    d.tick(True, True, RISE + HELD - DAD_ROUNDS + 1)
    assert d.routes == {V4: P, V6: S}
    d.tick(True, True, DAD_ROUNDS)
    assert d.on(P)
    assert [(f.cause, f.families) for f in d.failovers()] == [
        (CARRIER, (V4, V6)), (FAILBACK, (V4,)), (FAILBACK, (V6,))]


def test_dad_on_the_standby_changes_nothing():
    d = Driver()
    d.run([HEALTHY, (S, Carrier.NO_CARRIER), (True, None, 5), (S, Carrier.UP)])
    d.tick(True, V6_SILENT, DAD_ROUNDS, tentative={S})
    assert d.state.health(S, V6) is Health.UNKNOWN
    d.tick(True, True, RISE)
    assert d.state.health(S) is Health.UP and d.on(P) and d.failovers() == []


def test_a_tentative_probe_that_is_answered_counts():
    """An optimistic address, or DAD ending as the probe flies: an answer is an answer."""
    d = started()
    d.tick(True, True, RISE, tentative={P, S})
    assert d.state.health(P) is Health.UP


# ------------------------------------------- the active's link gone, the other's link up

SECONDARY_SILENT = (True, False, FALL)  # gwb silent, eth1's carrier up
PRIMARY_SILENT = (False, True, FALL)


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
    assert d.on(expect_routes), name
    assert [f.cause for f in d.failovers()] == expect_causes, name


def test_moving_to_a_probe_dead_uplink_says_why():
    d = Driver()
    d.run([HEALTHY])
    for _ in range(FALL):
        d.now += TICK
        d.feed(ProbeRound((
            *(ProbeResult(P, kind, 0.001, "x", TICK) for kind in KINDS),
            ProbeResult(S, ProbeKind.GATEWAY, None, "100.64.2.1", TICK),
            ProbeResult(S, ProbeKind.BEYOND4, 0.001, "x", TICK),
            ProbeResult(S, ProbeKind.GATEWAY6, 0.001, "x", TICK))))
    actions = d.link(P, Carrier.ADMIN_DOWN)
    (failover,) = d.failovers()
    assert failover.reason == (
        "primary: admin down; secondary's IPv4 is DOWN (gateway 100.64.2.1 silent: 3 probes, "
        "150 ms) but its link is up: a route that may work beats none")
    (both,) = [a for a in actions if isinstance(a, BothDown)]
    assert both.family is V4
    assert both.reason.startswith(
        "both uplinks down for IPv4, route moved to secondary, whose link is up")
    assert [(a.family, a.uplink) for a in actions if isinstance(a, SetDefaultRoute)] == [
        (V4, S), (V6, S)]


def test_an_operator_cannot_put_the_routes_on_a_dead_link():
    """SIGUSR1 while the primary is admin-down: refused, and said so; no route is written
    and no failover counted (it used to move there and straight back in one step)."""
    d = Driver()
    d.run([HEALTHY, SECONDARY_SILENT, (P, Carrier.ADMIN_DOWN)])
    n_failovers = len(d.failovers())
    actions = d.feed(UseUplink(P, "SIGUSR1"))
    assert d.on(S) and d.refused == 0
    assert len(d.failovers()) == n_failovers
    assert not any(isinstance(a, SetDefaultRoute) for a in actions)
    (refusal,) = [a for a in actions if isinstance(a, RequestRefused)]
    assert refusal.families == (V4, V6) and "admin down" in refusal.reason


def test_an_operator_cannot_send_the_routes_through_a_silent_gateway():
    """SIGUSR2 while the secondary's gateway is silent (DOWN, its link up): refused, no
    route through it even for a moment."""
    d = Driver()
    d.tick(True, True, 10)
    d.tick(True, False, FALL)
    actions = d.feed(UseUplink(S, "SIGUSR2"))
    assert d.on(P) and d.failovers() == []
    assert not any(isinstance(a, SetDefaultRoute) for a in actions)
    (refusal,) = [a for a in actions if isinstance(a, RequestRefused)]
    assert "secondary is DOWN" in refusal.reason and "silent" in refusal.reason


def test_an_operator_moves_only_the_families_the_uplink_can_carry():
    """The secondary's IPv6 gateway is silent: SIGUSR2 moves IPv4 and refuses IPv6."""
    d = Driver()
    d.tick(True, True, 10)
    d.tick(True, {V6: False}, FALL)
    actions = d.feed(UseUplink(S, "SIGUSR2"))
    assert d.routes == {V4: S, V6: P}
    assert [(f.cause, f.families) for f in d.failovers()] == [(OPERATOR, (V4,))]
    (refusal,) = [a for a in actions if isinstance(a, RequestRefused)]
    assert refusal.families == (V6,)


def test_start_on_a_dead_link_moves_to_the_live_one():
    """The agent adopts the route it finds (a linkdown route via the primary, whose cable is
    out) and moves at once to the secondary, its probes not even started."""
    state = make()
    for obs in (CarrierChange(P, Carrier.NO_CARRIER), CarrierChange(S, Carrier.UP),
                RouteSnapshot(v4=P, v6=P)):
        state, actions = step(state, obs, 0.0)
    assert state.active(V4) is S and state.active(V6) is S
    assert {(a.family, a.uplink) for a in actions if isinstance(a, SetDefaultRoute)} == {
        (V4, S), (V6, S)}


def test_no_route_is_asked_through_a_vanished_link():
    """Both links gone (the primary's interface deleted or renamed, the secondary's cable
    out): the kernel would refuse any write through the primary, so the periodic snapshots
    ask for none (they used to, and failed with ENODEV every 2 s). When an interface of the
    primary's name is back, its routes are written again."""
    d = Driver()
    d.run([HEALTHY, (S, Carrier.NO_CARRIER), (P, Carrier.VANISHED)])
    for _ in range(10):
        d.snapshot()
    assert d.refused == 0 and d.routes == {V4: None, V6: None}
    d.link(P, Carrier.UP)
    assert d.on(P)


# ------------------------------------------------------------------------------ properties

outcome = st.sampled_from([True, False, None])
# One uplink's round: the same for every kind, or one outcome per family.
uplink_round = st.one_of(outcome, st.fixed_dictionaries({V4: outcome, V6: outcome}))
probe_round = st.tuples(uplink_round, uplink_round)
link_event = st.tuples(st.sampled_from([P, S]), st.sampled_from(list(Carrier)))
# Mostly probe rounds; a link event in one step of five or so.
steps = st.lists(st.one_of(probe_round, probe_round, probe_round, probe_round, link_event),
                 max_size=400)


@settings(max_examples=200, deadline=None)
@given(steps, st.booleans())
def test_properties_over_random_probe_and_link_sequences(seq, auto):
    """Over any run of probe rounds and link events, for each family on its own:
    - a default route through an uplink whose link is up, whenever one is (with none,
      nothing can be done, and the kernel may hold no route at all), and never a write the
      kernel would refuse (through a link admin down or gone);
    - a switch made on probes is at least min(`fall`, `rise`) probe rounds (`fall` here)
      after the family's previous switch, whatever that was: flapping probes never flap the
      routes. After a switch forced by a link event, going back on probes needs the uplink
      it left to be UP again in that family: `rise` good probes after its link returned;
    - a switch made on a link event is forced: away from an uplink whose link is gone, onto
      one whose link is up, at most one per event. A link that flaps moves the routes as
      often as it flaps, since each time the alternative is no route;
    - no failback sooner than hold_down_s after the primary came back in that family;
    - one failover per step at most for a family, and the families of one failover all left
      the same uplink for the same reason.
    """
    d = Driver(auto=auto)
    up_since = dict.fromkeys((V4, V6), 0.0)  # when the primary last became UP per family
    rounds = 0
    last_switch: dict[Family, int | None] = dict.fromkeys((V4, V6))
    for item in seq:
        before = {f: d.state.health(P, f) for f in (V4, V6)}
        active_before = {f: d.state.active(f) for f in (V4, V6)}
        n_before = len(d.failovers())
        d.run([item])
        is_link = isinstance(item[0], UplinkRole)
        rounds += 0 if is_link else 1
        for family in (V4, V6):
            if d.state.health(P, family) is Health.UP and before[family] is not Health.UP:
                up_since[family] = d.now
        new = d.failovers()[n_before:]
        moved = [f for failover in new for f in failover.families]
        assert len(moved) == len(set(moved))
        for failover in new:
            for family in failover.families:
                assert failover.from_uplink is active_before[family]
                if failover.cause is FAILBACK:
                    assert d.now - up_since[family] >= HOLD - 1e-9
                elif is_link:
                    assert failover.cause is CARRIER
                    assert d.carrier[failover.from_uplink] is not Carrier.UP
                    assert d.carrier[failover.to_uplink] is Carrier.UP
                else:
                    last = last_switch[family]
                    assert last is None or rounds - last >= FALL, (family, rounds, last)
                last_switch[family] = rounds
        assert d.refused == 0
        live = {r for r, c in d.carrier.items() if c is Carrier.UP}
        if live:
            for family in (V4, V6):
                assert d.state.active(family) in live
                assert d.routes[family] is d.state.active(family)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.one_of(probe_round, link_event), max_size=60))
def test_a_tentative_loss_changes_nothing(seq):
    """Whatever came before, a round of unanswered probes sent from a tentative address is
    no verdict: the same state, no action."""
    d = Driver()
    d.run(seq)
    lost = tuple(ProbeResult(role, kind, None, "x", TICK, tentative=True)
                 for role in (P, S) for kind in KINDS if kind.family is V6)
    state, actions = step(d.state, ProbeRound(lost), d.now + TICK)
    assert actions == [] and state == d.state


@settings(max_examples=60, deadline=None)
@given(st.lists(st.one_of(st.tuples(uplink_round, uplink_round, st.integers(1, 40)),
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


# ------------------------------------------------------------------ forced failover (a lease)


def test_a_forced_failover_moves_every_family_and_holds_against_failback():
    d = Driver()
    d.tick(True, True, 10)
    d.feed(Force(S, "CHG-1 switch work"))
    assert d.on(S)
    (failover,) = d.failovers()
    assert failover.cause is OPERATOR and failover.families == (V4, V6)
    assert "CHG-1 switch work" in failover.reason
    d.tick(True, True, int(3 * HOLD / TICK))  # the primary is healthy far past its hold-down
    assert d.on(S) and len(d.failovers()) == 1


def test_an_ended_forced_failover_returns_at_once_when_the_hold_down_was_served():
    d = Driver()
    d.tick(True, True, 10)
    d.feed(Force(S, "CHG-1"))
    d.tick(True, True, int(HOLD / TICK) + 1)  # the primary served its hold-down while forced away
    d.feed(Force(None))
    assert d.on(P)
    assert d.failovers()[-1].cause is FAILBACK


def test_an_ended_forced_failover_waits_for_what_is_left_of_the_hold_down():
    d = Driver()
    d.tick(True, True, 10)
    d.tick(False, True, FALL)  # the primary fails: on the secondary
    d.feed(Force(S, "CHG-1"))
    d.tick(True, True, RISE)  # back UP: its hold-down starts now
    start = d.now
    d.tick(True, True, int(HOLD / 2 / TICK))
    d.feed(Force(None))
    assert d.on(S)  # half the hold-down served: the rest is waited for
    while d.on(S):
        d.tick(True, True)
    assert d.now - start == pytest.approx(HOLD, abs=2 * TICK)


def test_an_ended_forced_failover_returns_with_manual_failback_too():
    d = Driver(auto=False)
    d.tick(True, True, 10)
    d.feed(Force(S, "CHG-1"))
    d.tick(True, True, int(HOLD / TICK) + 1)
    d.feed(Force(None))
    assert d.on(P)


def test_a_forced_uplink_that_fails_is_left_and_taken_again_after_its_hold_down():
    d = Driver()
    d.tick(True, True, 10)
    d.feed(Force(S, "CHG-1"))
    d.tick(True, False, FALL)  # the forced uplink's gateway goes silent, the primary works
    assert d.on(P)
    d.tick(True, True, RISE)  # UP again: its hold-down starts
    assert d.on(P)
    d.tick(True, True, int(HOLD / TICK) + 1)
    assert d.on(S)
    assert d.failovers()[-1].cause is OPERATOR


def test_a_forced_uplink_whose_link_is_dead_never_leaves_the_server_without_a_route():
    d = Driver()
    d.tick(True, True, 10)
    d.link(S, Carrier.ADMIN_DOWN)
    d.tick(True, None, 10)
    d.feed(Force(S, "CHG-1"))
    assert d.on(P) and d.refused == 0  # nothing is asked through the dead link
    d.link(S, Carrier.UP)
    assert d.on(P)  # its gateway has to prove itself first
    d.tick(True, True, RISE)
    assert d.on(S)


def test_forcing_the_primary_skips_its_hold_down():
    d = Driver()
    d.tick(True, True, 10)
    d.tick(False, True, FALL)
    d.tick(True, True, RISE)
    assert d.on(S)
    d.feed(Force(P, "back now"))
    assert d.on(P)


def test_a_forced_state_is_not_steady_while_a_family_is_elsewhere():
    d = Driver()
    d.tick(True, True, 10)
    d.link(S, Carrier.NO_CARRIER)
    d.tick(True, None, 10)
    d.feed(Force(S, "CHG-1"))
    assert d.on(P)
    assert not steady(d.state, S, d.now)


# ----------------------------------------------------------- the runtime hint (beyond_suspect)


def test_a_beyond_failure_on_one_uplink_only_is_explained_once_per_episode():
    d = Driver()
    d.tick(True, True, 10)

    def beyond_only(kind):  # the primary's gateways answer, its IPv4 beyond target does not
        return kind is not ProbeKind.BEYOND4

    for _ in range(3 * FALL):
        d.now += TICK
        d.feed(ProbeRound(tuple(
            ProbeResult(role, kind, 0.001 if role is S or beyond_only(kind) else None, "x", TICK)
            for role in (P, S) for kind in KINDS)))
    hints = [a for a in d.actions if isinstance(a, BeyondSuspect)]
    assert [(h.uplink, h.family) for h in hints] == [(P, V4)]
    assert "path problem past this gateway" in hints[0].note
    d.tick(True, True, RISE)  # the episode ends: a new one would be reported again
    assert not d.state.suspects


def test_no_hint_when_the_other_uplink_fails_beyond_too():
    d = Driver()
    d.tick(True, True, 10)
    for _ in range(3 * FALL):
        d.now += TICK
        d.feed(ProbeRound(tuple(
            ProbeResult(role, kind, None if kind is ProbeKind.BEYOND4 else 0.001, "x", TICK)
            for role in (P, S) for kind in KINDS)))
    assert not [a for a in d.actions if isinstance(a, BeyondSuspect)]


# ------------------------------------------- forced failover: hold-down after a safety failover


def test_a_forced_uplink_that_flaps_does_not_flap_the_routes():
    """Forced onto a secondary that is silent for `fall` probes, then answers `rise`, over and
    over: the first failure moves the routes away, and they stay away while it flaps."""
    d = Driver()
    d.tick(True, True, 10)
    d.feed(Force(S, "CHG-1"))
    assert d.on(S)
    for _ in range(5):
        d.tick(True, False, FALL)
        d.tick(True, True, RISE)
    assert d.on(P)
    assert [f.cause for f in d.failovers()] == [OPERATOR, GATEWAY]


def test_a_forced_uplink_left_for_its_link_is_taken_again_after_the_hold_down():
    d = Driver()
    d.tick(True, True, 10)
    d.feed(Force(S, "CHG-1"))
    d.link(S, Carrier.NO_CARRIER)
    assert d.on(P)
    d.link(S, Carrier.UP)
    d.tick(True, True, RISE)
    start = d.now  # UP again: its hold-down starts
    while d.on(P):
        d.tick(True, True)
    assert d.now - start == pytest.approx(HOLD, abs=2 * TICK)
    assert d.failovers()[-1].cause is OPERATOR


# Runs of identical probe rounds (a gateway silent for a while, then answering), link events
# and lease changes.
# and lease changes; the forced uplink's gateway mostly answers or is silent as a whole.
probe_run = st.tuples(uplink_round, st.one_of(st.booleans(), uplink_round), st.integers(1, 8))
forced_steps = st.lists(st.one_of(probe_run, probe_run, probe_run, link_event,
                                  st.sampled_from([P, S, None])), min_size=4, max_size=100)


@settings(max_examples=200, deadline=None)
@given(forced_steps)
def test_a_forced_uplink_that_went_down_is_not_used_again_before_the_hold_down(seq):
    """Over any run of probe rounds, link events and leases (`P`, `S`: Force onto it; None:
    the lease ends), a family that left the forced uplink while the lease held (it went DOWN
    or lost its link) returns to it only once it has been UP, without a failed probe, for
    hold_down_s: never sooner than hold_down_s after its last bad verdict. (The safety rules
    still apply: with the other uplink failing too, the family goes where it can, as ever.)"""
    d = Driver()
    d.tick(True, True, RISE)  # both UP: a lease moves at once
    bad_since: dict[tuple[UplinkRole, Family], float] = {}  # last time seen DOWN or failing
    left: set[Family] = set()  # families that left the forced uplink during this lease
    forced = None
    for item in seq:
        active_before = {f: d.state.active(f) for f in (V4, V6)}
        n_before = len(d.failovers())
        if item is None or isinstance(item, UplinkRole):
            if item is not forced:
                left.clear()
            forced = item
            d.feed(Force(item, "lease"))
        else:
            d.run([item])
        for role in (P, S):
            view = d.state.uplinks[role]
            for family in (V4, V6):
                if view.families[family] is not Health.UP or view.failing_now(family):
                    bad_since[role, family] = d.now
        for failover in d.failovers()[n_before:]:
            for family in failover.families:
                if failover.cause is OPERATOR and family in left:
                    assert failover.to_uplink is forced
                    assert d.now - bad_since[forced, family] >= HOLD - 1e-9
                if failover.to_uplink is forced:
                    left.discard(family)
                elif (forced is not None and active_before[family] is forced
                      and failover.cause is not OPERATOR):
                    left.add(family)
