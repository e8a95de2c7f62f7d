"""The transit verdict, plan and interlock with a fake clock; properties over random histories."""

from __future__ import annotations

import dataclasses
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netwatch.controller.decision import (
    BudgetExhausted,
    OperatorOverrides,
    SessionChange,
    SessionSummary,
    State,
    Transition,
    drain_refusal,
    plan_of,
    step,
    what_if,
)
from netwatch.controller.params import (
    Params,
    SessionState,
    TransitState,
    Treatment,
    TreatmentAction,
    UpstreamParams,
)
from netwatch.controller.persistence import restore, to_json
from netwatch.controller.plan import (
    GRACEFUL_SHUTDOWN,
    Announcement,
    AnnouncementMode,
    Drain,
    Overrides,
    Plan,
    SafetyHold,
    egress_of,
    make_plan,
    mode_of,
)
from netwatch.controller.verdict import PathStats, ProbeStats, ProbeWindow, assess, is_local_fault
from netwatch.core.vocabulary import Family
from netwatch.exabgp import protocol as exabgp

NAMES = ("t1", "t2", "t3", "t4")
TARGETS = tuple(f"inet-{i}" for i in range(10))


def params(**over) -> Params:
    base = dict(
        asn=64500,
        upstreams=tuple(
            UpstreamParams(n, frozenset({Family.V4, Family.V6}), ("64500:1",))
            for n in NAMES
        ),
        degraded_loss=0.15, degraded_latency_s=0.08, failed_loss=0.6, failed_latency_s=None,
        degraded=Treatment(TreatmentAction.PREPEND, 3),
        failed=Treatment(TreatmentAction.WITHDRAW),
        fall=3, rise=5, min_announcing_upstreams=2, recovery_hold_s=10.0,
        max_actions_per_hour=30, min_targets=3,
    )
    base.update(over)
    return Params(**base)


def stats(loss: dict[str, float], rtt_s: float = 0.01, dead: tuple[str, ...] = ()) -> ProbeStats:
    paths = {}
    for name in NAMES:
        for t in TARGETS:
            lost = 10 if t in dead else round(10 * loss.get(name, 0.0))
            paths[(name, t)] = PathStats(10, lost, rtt_s if lost < 10 else None)
    return ProbeStats(paths)


def up_everywhere(state: State) -> State:
    for n in NAMES:
        for f in Family:
            state, _ = step(state, SessionChange(n, f, True), 0.0)
    return state


def run(state, observation, times):
    for now in times:
        state, _ = step(state, observation, now)
    return state


def test_blackhole_withdraws_after_fall_and_returns_after_recovery_hold():
    s = up_everywhere(restore(params()))
    s = run(s, stats({"t2": 1.0}), [1.4])  # every probe of the window lost: > fall of them
    assert s.upstreams["t2"].state is TransitState.FAILED
    assert s.plan.desired[("t2", Family.V4)] is None
    assert s.plan.announcing(Family.V6) == ["t1", "t3", "t4"]
    s = run(s, stats({}), [2.0 + 0.2 * i for i in range(5)])  # rise = 5 ...
    assert s.upstreams["t2"].state is TransitState.FAILED  # ... but the recovery hold is 10 s
    s = run(s, stats({}), [11.0])
    assert s.upstreams["t2"].state is TransitState.FAILED
    s = run(s, stats({}), [12.9])
    assert s.upstreams["t2"].state is TransitState.HEALTHY
    assert s.plan.desired[("t2", Family.V4)] == Announcement((), ("64500:1",))


def test_loss_30_prepends():
    s = up_everywhere(restore(params()))
    s = run(s, stats({"t3": 0.3}), [1, 2, 3])
    assert s.upstreams["t3"].state is TransitState.DEGRADED
    assert s.plan.desired[("t3", Family.V4)] == Announcement((64500,) * 4, ("64500:1",))


def test_latency_degrades():
    s = up_everywhere(restore(params()))
    slow = stats({})
    paths = dict(slow.paths)
    for t in TARGETS:
        paths[("t1", t)] = PathStats(10, 0, 0.2)
    s = run(s, ProbeStats(paths), [1, 2, 3])
    assert s.upstreams["t1"].state is TransitState.DEGRADED


def test_three_blackholed_keep_two_announced_with_safety_hold():
    s = up_everywhere(restore(params()))
    actions = []
    for now in (1, 2, 3):
        s, actions = step(s, stats({"t1": 1.0, "t2": 1.0, "t3": 1.0}), now)
    assert {n for n in NAMES if s.upstreams[n].state is TransitState.FAILED} == {"t1", "t2", "t3"}
    assert s.plan.announcing(Family.V4) == ["t1", "t4"]
    assert any(isinstance(a, SafetyHold) for a in actions)


def test_dead_targets_and_everything_down_take_no_action():
    s = up_everywhere(restore(params()))
    s = run(s, stats({}, dead=TARGETS[:8]), [1, 2, 3, 4])  # dead targets are no verdict
    assert all(u.state is TransitState.HEALTHY for u in s.upstreams.values())
    s = run(s, stats({n: 1.0 for n in NAMES}), [5, 6, 7, 8])
    assert s.local_fault
    assert all(u.state is TransitState.HEALTHY for u in s.upstreams.values())


def test_an_unprobed_upstream_does_not_disable_the_all_bad_guard():
    """t3 has no probe path (no interface, or its prober failed at start): no sample at all.
    t1, t2 at 30 % loss and t4 at 60 % is every *probed* upstream bad at once: our fault, and
    no verdict moves, as with all four probed."""
    p = params()
    bad = stats({"t1": 0.3, "t2": 0.3, "t3": 0.3, "t4": 0.6})
    partial = ProbeStats({k: v for k, v in bad.paths.items() if k[0] != "t3"})
    for picture in (bad, partial):
        assert is_local_fault(p, assess(p, picture), picture)
        s = up_everywhere(restore(p))
        s = run(s, picture, [1, 2, 3, 4])
        assert s.local_fault
        assert all(u.state is TransitState.HEALTHY for u in s.upstreams.values())


def test_the_all_bad_guard_needs_two_probed_upstreams():
    p = params()
    only_t1 = ProbeStats({k: v for k, v in stats({"t1": 0.5}).paths.items() if k[0] == "t1"})
    assert not is_local_fault(p, assess(p, only_t1), only_t1)


def test_action_budget_holds_and_says_so_once_per_episode():
    s = up_everywhere(restore(params(max_actions_per_hour=1)))
    reported = []
    for now in range(1, 11):
        s, actions = step(s, stats({"t1": 1.0, "t2": 1.0}), now)
        reported += [a for a in actions if isinstance(a, BudgetExhausted)]
    failed = [n for n in NAMES if s.upstreams[n].state is TransitState.FAILED]
    assert failed == ["t1"] and s.budget_exhausted
    assert reported == [BudgetExhausted("t2", TransitState.FAILED)]  # not one per judgement
    s = run(s, stats({"t1": 1.0}), [11 + 0.2 * i for i in range(5)])  # t2 is fine again (rise)
    assert not s.budget_exhausted  # the episode is over ...
    s, actions = step(s, stats({"t1": 1.0, "t2": 1.0}), 13)
    assert BudgetExhausted("t2", TransitState.FAILED) in actions  # ... a new one is reported


def test_restart_keeps_failed_state():
    s = up_everywhere(restore(params()))
    s = run(s, stats({"t2": 1.0}), [1, 2, 3])
    again = restore(params(), to_json(s))
    assert again.upstreams["t2"].state is TransitState.FAILED


def three_failed() -> State:
    s = up_everywhere(restore(params()))
    s = run(s, stats({"t1": 1.0, "t2": 1.0, "t3": 1.0}), [1, 2, 3])
    assert [h.kept for h in s.plan.holds] == [("t1",), ("t1",)]
    return s


def test_a_restart_keeps_the_hold_on_the_same_upstream():
    """The incident: three FAILED, t4 and the held t1 announced. A restarted controller knows
    no session (UNKNOWN): it must not count them as down and drop the hold, nor move it."""
    s = three_failed()
    again = restore(params(), to_json(s))
    assert all(v is SessionState.UNKNOWN for v in again.sessions.values())
    assert again.plan == s.plan
    known = {k: v is SessionState.UP for k, v in s.sessions.items()}
    again, _ = step(again, SessionSummary(known), 4)
    assert again.plan == s.plan


def test_a_released_hold_is_announced_elsewhere_before_it_is_withdrawn():
    """t2 held for the interlock while t2-t4 are FAILED; t3 recovers and the hold on t2 is
    released in the same plan: t3's announcement goes out before t2's withdrawal, so at no
    moment does only t1 announce."""
    sessions = {(n, int(f)): f"192.0.2.{4 * i + 1}" if f == Family.V4
                else f"2001:db8:ffff:{i + 1}::1"
                for i, n in enumerate(NAMES) for f in Family}
    prefixes = ["198.51.100.0/24", "2001:db8:100::/48"]
    s = up_everywhere(restore(params(), {
        "upstreams": {n: {"state": "failed"} for n in ("t2", "t3", "t4")}}))
    assert s.plan.announcing(Family.V4) == ["t1", "t2"]
    known = exabgp.expand(s.plan.desired, sessions, prefixes)
    u = s.upstreams["t3"]
    s = dataclasses.replace(s, upstreams={
        **s.upstreams, "t3": dataclasses.replace(u, state=TransitState.HEALTHY)})
    new = plan_of(s)
    assert new.announcing(Family.V4) == ["t1", "t3"]
    lines = [c.line for c in exabgp.diff(exabgp.expand(new.desired, sessions, prefixes), known)]
    kinds = [line.split()[2] for line in lines]
    assert kinds == ["announce", "announce", "withdraw", "withdraw"], lines


def test_a_hold_is_kept_where_it_was_even_if_another_looks_better_now():
    s = three_failed()
    persisted = to_json(s)
    persisted["holds"] = {"ipv4": ["t3"], "ipv6": ["t3"]}  # say the hold had been on t3
    again = restore(params(), persisted)
    known = {k: v is SessionState.UP for k, v in s.sessions.items()}
    again, _ = step(again, SessionSummary(known), 4)
    assert again.plan.announcing(Family.V4) == ["t3", "t4"]


def test_unknown_sessions_are_possibly_up():
    """Before the first session is known, the interlock counts announcements through sessions
    that may be up: two of them, not zero and not all four."""
    p = params()
    persisted = {"upstreams": {n: {"state": "failed"} for n in ("t1", "t2", "t3")}}
    s = restore(p, persisted)
    assert s.plan.announcing(Family.V4) == ["t1", "t4"]
    # A session that turns out down is not counted; one that is up is kept.
    s, _ = step(s, SessionChange("t4", Family.V4, False), 1)
    s, _ = step(s, SessionChange("t1", Family.V4, True), 1)
    assert s.plan.announcing(Family.V4) == ["t1", "t2", "t4"]  # t4 down, t2 possibly up


def test_an_event_wins_over_the_summary_that_follows_it():
    s = restore(params())
    s, _ = step(s, SessionChange("t1", Family.V4, True), 1)
    s, _ = step(s, SessionSummary({("t1", Family.V4): False,
                                         ("t2", Family.V4): True}), 1)
    assert s.sessions[("t1", Family.V4)] is SessionState.UP
    assert s.sessions[("t2", Family.V4)] is SessionState.UP
    assert s.sessions[("t3", Family.V4)] is SessionState.UNKNOWN


def test_persisted_times_are_the_decision_clocks_with_the_boot():
    p = params(max_actions_per_hour=5)
    s = up_everywhere(restore(p))
    s = run(s, stats({"t2": 1.0}), [100.0])  # FAILED at monotonic 100
    s = run(s, stats({}), [101.0 + 0.2 * i for i in range(5)])  # rise: hold since 101.8
    saved = to_json(s, saved_at=102.0, boot_id="b1")
    t2 = saved["upstreams"]["t2"]
    assert (saved["saved_at"], saved["boot_id"]) == (102.0, "b1")
    assert t2["changed_at"] == pytest.approx(100) and saved["action_times"] == [pytest.approx(100)]
    assert t2["recovery_since"] == pytest.approx(101.8)
    # The same boot 4.8 s later: the same clock, used as it is (the downtime counts).
    same = restore(p, saved, now=106.8, boot_id="b1")
    assert same.upstreams["t2"].recovery.since == pytest.approx(101.8)
    assert same.budget.times == (pytest.approx(100),)
    # Another boot (the monotonic clock restarted near 0; the wall clock may say anything):
    # every time moves by now - saved_at, the downtime counts as nothing.
    other = restore(p, saved, now=5.0, boot_id="b2")
    assert other.upstreams["t2"].recovery.since == pytest.approx(4.8)  # 0.2 s served, kept
    assert other.upstreams["t2"].changed_at == pytest.approx(3.0)
    assert other.budget.times == (pytest.approx(3.0),)  # the budget is not refilled
    # Saved without a boot id (an older file): treated as another boot, from its latest time.
    legacy = {k: v for k, v in saved.items() if k not in ("saved_at", "boot_id")}
    assert restore(p, legacy, now=5.0, boot_id="b1").upstreams["t2"].recovery.since == 5.0


def test_a_recovery_hold_in_progress_survives_a_restart():
    p = params()
    s = up_everywhere(restore(p))
    s = run(s, stats({"t2": 1.0}), [1.0])
    s = run(s, stats({}), [2.0 + 0.2 * i for i in range(5)])  # hold since 2.8, ends 12.8
    saved = to_json(s, saved_at=3.0, boot_id="b1")
    again = up_everywhere(restore(p, saved, now=8.0, boot_id="b1"))
    again = run(again, stats({}), [12.7])
    assert again.upstreams["t2"].state is TransitState.FAILED
    again = run(again, stats({}), [12.9])
    assert again.upstreams["t2"].state is TransitState.HEALTHY  # not at 8 + 10 + rise


@pytest.mark.parametrize(
    ("persisted", "field"),
    [
        ({"upstreams": {"t1": {"state": "bogus"}}}, "upstreams.t1.state"),
        ({"upstreams": {"t1": {}}}, "upstreams.t1.state"),
        ({"upstreams": []}, "upstreams"),
        ({"upstreams": {"t1": ["failed"]}}, "upstreams.t1"),
        ({"upstreams": {"t1": {"state": "failed", "candidate": 2}}}, "upstreams.t1.candidate"),
        ({"upstreams": {"t1": {"state": "failed", "changed_at": "1"}}}, "upstreams.t1.changed_at"),
        ({"upstreams": {"t1": {"state": "failed", "recovery_since": float("nan")}}},
         "upstreams.t1.recovery_since"),
        ({"action_times": ["1"]}, "action_times[0]"),
        ({"action_times": [1.0, None]}, "action_times[1]"),
        ({"action_times": 3}, "action_times"),
        ({"holds": {"ipv4": "t1"}}, "holds.ipv4"),
        ({"holds": {"4": ["t1"]}}, "holds.4"),
    ],
)
def test_a_persisted_state_of_the_wrong_shape_is_refused_with_the_field(persisted, field):
    with pytest.raises(ValueError, match=re.escape(field)):
        restore(params(), persisted)


def test_a_persisted_state_from_another_site_file_is_read_for_what_still_applies():
    s = restore(params(), {
        "upstreams": {"t9": {"state": "failed"}, "t2": {"state": "degraded"}},
        "holds": {"ipv4": ["t9"]},
    })  # t9 is gone from the site file; an old file has no candidate
    assert s.upstreams["t2"].state is TransitState.DEGRADED and "t9" not in s.upstreams


# --- properties -----------------------------------------------------------------------------

loss_values = st.sampled_from([0.0, 0.02, 0.1, 0.3, 0.5, 0.8, 1.0])
events = st.one_of(
    st.tuples(st.just("probe"), st.fixed_dictionaries({n: loss_values for n in NAMES})),
    st.tuples(st.just("session"), st.tuples(st.sampled_from(NAMES), st.sampled_from(Family),
                                            st.booleans())),
    # the controller restarts; True: ExaBGP's answer (the sessions as they were) comes at once
    st.tuples(st.just("restart"), st.booleans()),
)


def holds_of(plan: Plan) -> dict:
    return {h.family: set(h.kept) for h in plan.holds}


@settings(max_examples=300, deadline=None)
@given(st.lists(events, min_size=1, max_size=60))
def test_properties_over_random_histories(history):
    p = params(max_actions_per_hour=1000)
    s = restore(p)
    now = 0.0
    for kind, value in history:
        now += 0.5
        before = {n: (u.state, u.changed_at) for n, u in s.upstreams.items()}
        was_announced = dict(s.plan.desired)
        if kind == "restart":
            old = s
            s = restore(p, to_json(old), now=now)
            # knowing the same sessions again, the restarted controller plans what it planned
            known = {k: v is SessionState.UP for k, v in old.sessions.items()
                     if v is not SessionState.UNKNOWN}
            learnt, _ = step(s, SessionSummary(known), now)
            assert learnt.plan.desired == old.plan.desired
            assert holds_of(learnt.plan) == holds_of(old.plan)  # no hold migration
            if value:
                s = learnt
        else:
            obs = SessionChange(*value) if kind == "session" else stats(value)
            s, _ = step(s, obs, now)
        all_bad = kind == "probe" and all(v >= p.degraded_loss for v in value.values())
        for fam in Family:
            session = {n: s.sessions[(n, fam)] for n in NAMES}
            announced = {n for n in NAMES if s.plan.desired[(n, fam)] is not None}
            # The interlock holds whether the UNKNOWN sessions turn out down ...
            up = {n for n in NAMES if session[n] is SessionState.UP}
            assert len(up & announced) >= min(p.min_announcing_upstreams, len(up))
            # ... or up,
            maybe = {n for n in NAMES if session[n] is not SessionState.DOWN}
            assert len(maybe & announced) >= min(p.min_announcing_upstreams, len(maybe))
            for n in NAMES:
                # and an UNKNOWN session never loses an announcement (not through a restart
                # either): no withdrawal on a guess.
                if session[n] is SessionState.UNKNOWN and was_announced[(n, fam)] is not None:
                    assert n in announced
                if all_bad and was_announced[(n, fam)] is not None:
                    # an all-bad picture never withdraws anything new
                    assert n in announced or session[n] is not SessionState.UP
        for n, u in s.upstreams.items():
            old_state, worse_since = before[n]
            if u.state.severity < old_state.severity:  # recovery never before the hold
                assert now - worse_since >= p.recovery_hold_s


@settings(max_examples=50, deadline=None)
@given(st.lists(st.fixed_dictionaries({n: loss_values for n in NAMES}), min_size=1, max_size=20))
def test_applying_a_plan_twice_sends_nothing(history):
    s = up_everywhere(restore(params()))
    sessions = {(n, f): f"192.0.2.{i * 4 + f}" for i, n in enumerate(NAMES) for f in (4, 6)}
    known = {}
    for i, losses in enumerate(history):
        s, _ = step(s, stats(losses), float(i))
        desired = exabgp.expand(s.plan.desired, {k: v for k, v in sessions.items() if k[1] == 4},
                                ["198.51.100.0/24"])
        for c in exabgp.diff(desired, known):
            known.update(c.effect)
        assert exabgp.diff(desired, known) == []


# --- probe-level simulation: the look-back of FAILED ----------------------------------------

INTERVAL_S = 0.2  # the lab's policy: 200 ms probes, 2 s window, fall 3, failed 0.8


def simulate(p: Params, loss_of, seconds: float, seed: int):
    """Probe every target through every upstream each INTERVAL_S with `loss_of(upstream, t)`
    as the loss probability, judge after each round; yield (time, state) after each judgement.
    """
    import random

    rng = random.Random(seed)
    targets = TARGETS + tuple(f"inet6-{i}" for i in range(10))  # the lab's 20
    window = ProbeWindow(2.0, p.recent_probes)
    s = up_everywhere(restore(p))
    now = 0.0
    while now < seconds:
        for name in NAMES:
            for target in targets:
                lost = rng.random() < loss_of(name, now)
                window.record(name, target, now, None if lost else 0.01)
        now = round(now + INTERVAL_S, 6)
        if now >= 2.0:  # one full window first, as the controller does
            s, _ = step(s, window.stats(now), now)
            yield now, s


LAB = dict(failed_loss=0.8, degraded_latency_s=None)


@settings(max_examples=40, deadline=None, derandomize=True)
@given(st.integers(0, 2**32), st.floats(0.0, 0.05))
def test_noise_never_acts(seed, noise):
    """2-5 % random loss on every upstream for a minute: no state change at all."""
    for _, s in simulate(params(**LAB), lambda n, t: noise, 60.0, seed):
        assert all(u.state is TransitState.HEALTHY for u in s.upstreams.values())


@settings(max_examples=40, deadline=None, derandomize=True)
@given(st.integers(0, 2**32))
def test_51_percent_loss_degrades_and_never_fails(seed):
    """The lab's `loss 30` (30 % each way, ~51 % of probes): prepend, never withdraw."""
    hit = lambda n, t: 0.51 if n == "t3" and t >= 3.0 else 0.02  # noqa: E731
    states = [s.upstreams["t3"].state for _, s in simulate(params(**LAB), hit, 30.0, seed)]
    assert TransitState.FAILED not in states
    assert states[-1] is TransitState.DEGRADED


@settings(max_examples=40, deadline=None, derandomize=True)
@given(st.integers(0, 2**32), st.floats(3.0, 3.2))
def test_blackhole_fails_after_fall_probes(seed, start):
    """A blackhole is FAILED (withdrawn) once 4 of the last 5 probes per path were lost: the
    first lost probe within one interval of the fault, 4 x 200 ms, plus the round that records
    the last loss (1.2 s at most); the others stay announced."""
    hit = lambda n, t: 1.0 if n == "t2" and t >= start else 0.02  # noqa: E731
    p = params(**LAB)
    for now, s in simulate(p, hit, 6.0, seed):
        if s.upstreams["t2"].state is TransitState.FAILED:
            assert now - start <= 6 * INTERVAL_S + 1e-9
            assert s.plan.announcing(Family.V4) == ["t1", "t3", "t4"]
            return
    raise AssertionError("a blackhole was never judged FAILED")


@pytest.mark.parametrize("persisted", [
    {"action_times": [10**400]},  # OverflowError inside float() before
    {"upstreams": {"t1": {"state": "failed", "recovery_since": -(10**400)}}},
    {"upstreams": {"t1": {"state": "failed", "changed_at": float("nan")}}},
])
def test_a_damaged_state_is_a_value_error_naming_the_field(persisted):
    with pytest.raises(ValueError, match=r"action_times\[0\]|recovery_since|changed_at"):
        restore(params(), persisted, now=1000.0)


def test_the_window_counts_a_loss_as_soon_as_its_answer_would_have():
    """Interval 0.2 s, timeout 1 s, window 2 s, every probe lost: recorded at sent + 1 s.
    Without settling, the answers of the last second would be in the window and the losses
    not: here nothing answers, so compare with a path that answers everything."""
    window = ProbeWindow(2.0, settle_s=1.0)
    for i in range(30):  # 6 s of probes, every 0.2 s
        sent = i * 0.2
        window.record("t1", "x", sent, 0.01)  # answered at once
        if sent + 1.0 <= 6.0:
            window.record("t2", "x", sent, None)  # lost: known at sent + 1 s
    stats = window.stats(6.0).paths
    assert stats[("t1", "x")].sent == stats[("t2", "x")].sent  # the same probes count
    assert stats[("t2", "x")].loss == 1.0


def test_an_unsettled_window_under_counted_loss():
    """The same probes, half of them lost, judged the old way (settle 0) and the new way."""
    old, new = ProbeWindow(2.0), ProbeWindow(2.0, settle_s=1.0)
    for window in (old, new):
        for i in range(30):
            sent = i * 0.2
            if i % 2:
                window.record("t1", "x", sent, 0.01)
            elif sent + 1.0 <= 6.0:
                window.record("t1", "x", sent, None)
    assert old.stats(6.0).paths[("t1", "x")].loss < 0.4  # ~1/3: the last second's losses missing
    settled = new.stats(6.0).paths[("t1", "x")]
    assert (settled.sent, settled.lost) == (11, 5)  # every probe sent in [3.0, 5.0]: exact


# --- egress: which upstreams carry our outgoing traffic ------------------------------------

H, D, F = TransitState.HEALTHY, TransitState.DEGRADED, TransitState.FAILED
UP, DOWN, UNKNOWN = SessionState.UP, SessionState.DOWN, SessionState.UNKNOWN


def egress4(levels, sessions=None, drained=()):
    sessions = sessions or {}
    full = {(n, f): sessions.get(n, UP) for n in NAMES for f in Family}
    return egress_of(params(), dict(zip(NAMES, levels, strict=True)), full,
                     frozenset(drained))[Family.V4]


@pytest.mark.parametrize(("levels", "sessions", "drained", "expected"), [
    ((H, H, H, H), {}, (), {"t1": 10, "t2": 10, "t3": 10, "t4": 10}),
    ((H, F, H, H), {}, (), {"t1": 10, "t3": 10, "t4": 10}),  # a failed transit leaves
    ((H, D, H, H), {}, (), {"t1": 10, "t2": 1, "t3": 10, "t4": 10}),  # degraded: lower weight
    ((H, H, H, H), {}, ("t1",), {"t2": 10, "t3": 10, "t4": 10}),  # drained by an operator
    ((H, H, H, H), {"t3": DOWN}, (), {"t1": 10, "t2": 10, "t4": 10}),  # session down
    ((H, H, H, H), {"t3": UNKNOWN}, (), {"t1": 10, "t2": 10, "t3": 10, "t4": 10}),  # maybe up
    ((F, F, F, H), {}, (), {"t4": 10}),  # three failed: the healthy one
    ((F, F, F, F), {}, (), {"t1": 10, "t2": 10, "t3": 10, "t4": 10}),  # all bad: ours, keep all
    # every working one drained: they carry it, not the FAILED ones (a blackhole)
    ((F, H, D, F), {}, ("t2", "t3"), {"t2": 10, "t3": 1}),
    ((F, H, F, F), {"t3": DOWN}, ("t2",), {"t2": 10}),
    ((F, F, H, H), {"t3": DOWN, "t4": DOWN}, (), {"t1": 10, "t2": 10}),  # none other up
    ((H, H, H, H), dict.fromkeys(NAMES, DOWN), (), {"t1": 10, "t2": 10, "t3": 10, "t4": 10}),
    # no session up (ExaBGP restarting): the verdicts still count, over every upstream
    ((H, F, D, H), dict.fromkeys(NAMES, DOWN), (), {"t1": 10, "t3": 1, "t4": 10}),
    ((F, F, F, F), dict.fromkeys(NAMES, DOWN), (), {"t1": 10, "t2": 10, "t3": 10, "t4": 10}),
])
def test_egress_table(levels, sessions, drained, expected):
    assert egress4(levels, sessions, drained) == expected


def test_egress_recovers_with_the_upstream_state_after_the_recovery_hold():
    s = up_everywhere(restore(params()))
    s = run(s, stats({"t2": 1.0}), [1.4])
    assert "t2" not in s.plan.egress[Family.V4] and "t2" not in s.plan.egress[Family.V6]
    s = run(s, stats({}), [2.0 + 0.2 * i for i in range(5)] + [11.0])
    assert "t2" not in s.plan.egress[Family.V4]  # healthy probes, but the hold is 10 s
    s = run(s, stats({}), [12.9])
    assert s.plan.egress[Family.V4] == dict.fromkeys(NAMES, 10)


@settings(max_examples=300, deadline=None)
@given(
    levels=st.lists(st.sampled_from(list(TransitState)), min_size=4, max_size=4),
    sessions=st.lists(st.sampled_from(list(SessionState)), min_size=4, max_size=4),
    drained=st.sets(st.sampled_from(NAMES)),
)
def test_egress_properties(levels, sessions, drained):
    chosen = egress4(levels, dict(zip(NAMES, sessions, strict=True)), drained)
    assert chosen  # never empty: no default route is worse than any
    maybe_up = [n for n, s in zip(NAMES, sessions, strict=True) if s is not DOWN]
    pool = maybe_up or NAMES  # no session up at all (ExaBGP restarting): every upstream
    fine = [n for n, lv in zip(NAMES, levels, strict=True)
            if n in pool and lv is not F and n not in drained]
    working = [n for n, lv in zip(NAMES, levels, strict=True) if n in pool and lv is not F]
    if fine:  # some upstream may carry traffic: only those do, FAILED and drained never
        assert set(chosen) == set(fine)
    elif working:  # every working one drained: they carry it, never a FAILED one
        assert set(chosen) == set(working)
    else:  # every one that may be up is FAILED: ours, keep them all
        assert set(chosen) == set(pool)



# --- operators' overrides: drains, prepends, restore ----------------------------------------


def with_overrides(state, now=2.0, restored=(), **kw):
    state, actions = step(state, OperatorOverrides(Overrides(**kw), frozenset(restored)), now)
    return state, actions


def test_a_drain_tags_then_withdraws_and_takes_the_upstream_out_of_egress_at_once():
    s = up_everywhere(restore(params()))
    s, _ = with_overrides(s, drains={"t1": Drain()})
    graceful = s.plan.desired[("t1", Family.V4)]
    assert graceful == Announcement((), ("64500:1", GRACEFUL_SHUTDOWN))
    assert mode_of(s.params, "t1", graceful) is AnnouncementMode.GRACEFUL_SHUTDOWN
    assert "t1" not in s.plan.egress[Family.V4] and "t1" not in s.plan.egress[Family.V6]
    s, _ = with_overrides(s, drains={"t1": Drain(withdraw=True)})
    assert s.plan.desired[("t1", Family.V4)] is None and not s.plan.holds
    s, _ = with_overrides(s)  # restored
    assert s.plan.desired[("t1", Family.V4)] == Announcement((), ("64500:1",))
    assert s.plan.egress[Family.V4]["t1"] == 10


def test_a_drain_that_breaks_the_interlock_is_refused_unless_forced():
    s = up_everywhere(restore(params()))
    s = run(s, stats({"t2": 1.0, "t3": 1.0}), [1.4])  # two failed: t1 and t4 carry it
    assert s.plan.announcing(Family.V4) == ["t1", "t4"]
    reason = drain_refusal(s, "t1")
    assert reason is not None and "ipv4 announced through 1 other upstream(s) (t4)" in reason
    assert drain_refusal(s, "t2") is None  # withdrawn already: draining it takes nothing
    # not forced: the interlock keeps it, tagged; forced: withdrawn, below the minimum
    kept, _ = with_overrides(s, drains={"t1": Drain(withdraw=True)})
    assert kept.plan.desired[("t1", Family.V4)] is not None
    assert GRACEFUL_SHUTDOWN in kept.plan.desired[("t1", Family.V4)].communities
    forced, _ = with_overrides(s, drains={"t1": Drain(withdraw=True, forced=True)})
    assert forced.plan.desired[("t1", Family.V4)] is None
    assert "t1" not in {n for h in forced.plan.holds for n in h.kept}


def test_an_operators_prepend_lengthens_but_never_brings_a_failed_upstream_back():
    s = up_everywhere(restore(params()))
    s, _ = with_overrides(s, prepends={"t3": 2})
    assert s.plan.desired[("t3", Family.V4)].as_path == (64500,) * 3
    s = run(s, stats({"t3": 1.0}), [3.4])
    assert s.upstreams["t3"].state is TransitState.FAILED
    assert s.plan.desired[("t3", Family.V4)] is None


def test_an_operators_restore_skips_the_rest_of_the_recovery_hold():
    s = up_everywhere(restore(params()))
    s = run(s, stats({"t2": 1.0}), [1.4])
    s = run(s, stats({}), [2.0 + 0.2 * i for i in range(5)])  # rise served, hold is 10 s
    assert s.upstreams["t2"].state is TransitState.FAILED
    s, actions = with_overrides(s, now=3.5, restored={"t2"})
    assert s.upstreams["t2"].state is TransitState.HEALTHY
    assert [a.reason for a in actions if isinstance(a, Transition)] == ["operator restore"]
    assert s.plan.desired[("t2", Family.V4)] is not None


def test_an_operators_restore_does_not_override_the_probes():
    s = up_everywhere(restore(params()))
    s = run(s, stats({"t2": 1.0}), [1.4])
    s, actions = with_overrides(s, now=1.5, restored={"t2"})  # still failing
    assert s.upstreams["t2"].state is TransitState.FAILED
    assert not [a for a in actions if isinstance(a, Transition)]


def test_simulate_what_if_two_transits_fail_now():
    s = up_everywhere(restore(params()))
    plan = what_if(s, failed=frozenset({"t2", "t3"}))
    assert plan.announcing(Family.V4) == ["t1", "t4"]
    assert set(plan.egress[Family.V4]) == {"t1", "t4"}
    plan = what_if(s, failed=frozenset({"t1", "t2", "t3"}))
    assert plan.announcing(Family.V4) == ["t1", "t4"]  # the interlock keeps the least bad
    assert plan.holds and plan.holds[0].kept == ("t1",)
    plan = what_if(s, degraded=frozenset({"t4"}), sessions_down=frozenset({"t1"}))
    assert plan.desired[("t4", Family.V4)].as_path == (64500,) * 4
    assert plan.egress[Family.V4] == {"t2": 10, "t3": 10, "t4": 1}
    assert s.plan == plan_of(s)  # nothing touched
    with pytest.raises(ValueError, match="no upstream t9"):
        what_if(s, failed=frozenset({"t9"}))


@settings(max_examples=200, deadline=None)
@given(
    levels=st.lists(st.sampled_from(list(TransitState)), min_size=4, max_size=4),
    drained=st.dictionaries(st.sampled_from(NAMES), st.booleans()),
)
def test_an_unforced_drain_never_breaks_the_interlock(levels, drained):
    s = up_everywhere(restore(params()))
    s = dataclasses.replace(s, upstreams={
        n: dataclasses.replace(u, state=lv)
        for (n, u), lv in zip(s.upstreams.items(), levels, strict=True)
    })
    drains = {n: Drain(withdraw=w) for n, w in drained.items()}
    s, _ = with_overrides(s, drains=drains)
    for fam in Family:
        assert len(s.plan.announcing(fam)) >= 2


# --- which upstream the interlock keeps ---------------------------------------------------------


def three_with_t2_drained() -> State:
    """t1..t3, m=2, every session up; an operator drained t2 (not forced, accepted: t1 and t3
    announce, no hold)."""
    p = params(upstreams=params().upstreams[:3])
    s, _ = step(restore(p), SessionSummary({(n, f): True for n in NAMES[:3] for f in Family}),
                0.0)
    s, _ = step(s, OperatorOverrides(Overrides(drains={"t2": Drain(withdraw=True)})), 0.0)
    assert s.plan.announcing(Family.V4) == ["t1", "t3"] and s.plan.holds == ()
    return s


def with_state(s: State, **states: TransitState) -> State:
    ups = {n: dataclasses.replace(u, state=states.get(n, u.state)) for n, u in s.upstreams.items()}
    s = dataclasses.replace(s, upstreams=ups)
    return dataclasses.replace(s, plan=plan_of(s))


def test_a_drained_healthy_upstream_is_kept_before_one_that_has_just_failed():
    """t1 blackholes while t2 is drained: the interlock announces t2 again (still tagged),
    not t1, which the last plan announced but would carry inbound traffic into a blackhole."""
    s = with_state(three_with_t2_drained(), t1=TransitState.FAILED)
    assert s.plan.announcing(Family.V4) == ["t2", "t3"]
    assert GRACEFUL_SHUTDOWN in s.plan.desired[("t2", Family.V4)].communities
    assert s.plan.holds == (SafetyHold(Family.V4, ("t2",)), SafetyHold(Family.V6, ("t2",)))


def test_a_hold_stays_on_its_upstream_across_changes_and_a_restart():
    """t1 and t3 FAILED, t2 drained: t2 and one failed upstream are kept. The hold stays on
    them when the other failed one looks better (no migration), and across a restart of the
    controller (restore rebuilds the plan's holds; the leases come back after it)."""
    s = with_state(three_with_t2_drained(), t1=TransitState.FAILED, t3=TransitState.FAILED)
    assert holds_of(s.plan) == {Family.V4: {"t1", "t2"}, Family.V6: {"t1", "t2"}}
    better = dataclasses.replace(s, plan=make_plan(
        s.params, {n: u.state for n, u in s.upstreams.items()}, {"t1": 0.9, "t3": 0.1},
        s.sessions, s.plan, s.overrides))
    assert better.plan.holds == s.plan.holds  # t3 measures better now: the hold stays on t1
    again = restore(s.params, to_json(s))
    again, _ = step(again, OperatorOverrides(s.overrides), 0.0)
    again, _ = step(again, SessionSummary({k: True for k in s.sessions}), 0.0)
    assert again.plan == s.plan


def test_restore_rebuilds_the_plans_holds():
    s = three_failed()
    persisted = to_json(s)
    persisted["holds"] = {"ipv4": ["t3"], "ipv6": ["t3"]}
    again = restore(params(), persisted)
    assert holds_of(again.plan) == {Family.V4: {"t3"}, Family.V6: {"t3"}}


levels_st = st.fixed_dictionaries({n: st.sampled_from(list(TransitState)) for n in NAMES})
sessions_st = st.fixed_dictionaries({(n, f): st.sampled_from(list(SessionState))
                                     for n in NAMES for f in Family})
overrides_st = st.builds(
    lambda drains: Overrides(drains=drains),
    st.dictionaries(st.sampled_from(NAMES), st.builds(Drain, st.booleans(), st.booleans())))


@settings(max_examples=400, deadline=None)
@given(levels_st, sessions_st, overrides_st, levels_st, sessions_st, overrides_st)
def test_a_kept_upstream_is_never_failed_while_a_healthier_candidate_is_withdrawn(
        levels0, sessions0, overrides0, levels, sessions, overrides):
    """Whatever the last plan held: a FAILED upstream is kept only when no upstream that is
    not FAILED, withdrawn and not forced out, could serve the same need instead (one whose
    session is up; or possibly up, when the failed one's is not known to be up). Excepted: an
    UNKNOWN session that had the announcement (never withdrawn on a guess)."""
    p = params()
    before = make_plan(p, levels0, {}, sessions0, None, overrides0)
    plan = make_plan(p, levels, {}, sessions, before, overrides)
    forced = overrides.forced_withdrawals
    for hold in plan.holds:
        fam = hold.family
        for k in hold.kept:
            if levels[k] is not TransitState.FAILED:
                continue
            if (sessions[(k, fam)] is SessionState.UNKNOWN
                    and before.desired.get((k, fam)) is not None):
                continue  # no withdrawal on a guess
            for c in NAMES:
                if (plan.desired[(c, fam)] is None and c not in forced
                        and levels[c] is not TransitState.FAILED
                        and sessions[(c, fam)] is not SessionState.DOWN):
                    assert not (sessions[(c, fam)] is SessionState.UP
                                or sessions[(k, fam)] is not SessionState.UP), (k, c, plan)
