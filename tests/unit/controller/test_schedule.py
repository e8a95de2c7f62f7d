"""Confirmation probing for FAILED (controller/schedule.py), on a fake clock: how fast a
blackhole is judged, and that the extra probes neither bias the window nor add false verdicts.

The simulation runs the schedule, the window and the decision as the daemon does, with each
probe's fate drawn per (upstream, target) and the lab's policy (interval 200 ms, window 2 s,
failed 0.8 over the last 5 probes, degraded 0.15, fall 3)."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netwatch.controller.decision import initial_state, step
from netwatch.controller.params import (
    Params,
    TransitState,
    Treatment,
    TreatmentAction,
    UpstreamParams,
)
from netwatch.controller.schedule import Due, ProbeSchedule, cadence, failed_streak
from netwatch.controller.verdict import ProbeStats, ProbeWindow
from netwatch.core.vocabulary import Family

UPSTREAMS = ("t1", "t2", "t3", "t4")
RTT_S = 0.001


def params(**changes) -> Params:
    p = Params(
        asn=64500,
        upstreams=tuple(UpstreamParams(n, frozenset({Family.V4})) for n in UPSTREAMS),
        degraded_loss=0.15, degraded_latency_s=None, failed_loss=0.8, failed_latency_s=None,
        degraded=Treatment(TreatmentAction.PREPEND, 3),
        failed=Treatment(TreatmentAction.WITHDRAW),
        fall=3, rise=5, recovery_hold_s=10, max_actions_per_hour=1000,
    )
    return replace(p, **changes)


def simulate(p: Params, lost, seconds: float, targets: int = 5, confirm_s: float = 0.04,
             window_s: float = 2.0, phases: dict[str, float] | None = None):
    """Run `seconds` of probing; `lost(upstream, now)` says whether a probe sent then is lost.
    Returns (transitions [(time, upstream, new state)], the window's loss per grid judgement
    per upstream, the number of judgements).

    `phases`: each upstream's streams probe that much after the grid (a schedule of their
    own, sharing the window), as streams that drifted do; any upstream's schedule can call
    for an early look, and only the first one's grid is the interval's judgement."""
    interval = 0.2
    window = ProbeWindow(window_s, p.recent_probes)
    phases = phases or {}
    groups = [[u for u in UPSTREAMS if u not in phases]] + [[u] for u in phases]
    groups = [g for g in groups if g]
    scheds, streams = [], []
    for g in groups:
        streams.append([(u, f"x{k}") for u in g for k in range(targets)])
        scheds.append(ProbeSchedule(cadence(p, interval, interval, confirm_s), interval,
                                    streams[-1], window, phases.get(g[0], 0.0)))
    now = 0.0
    state = initial_state(p, now=now)
    fates: dict[tuple[int, int], bool] = {}
    transitions, losses, judgements = [], {u: [] for u in UPSTREAMS}, 0
    while now < seconds:
        dues = []
        for n, sched in enumerate(scheds):
            for i in sched.to_judge(now):
                sched.judged(i, None if fates[n, i] else RTT_S, now)
            for i in sched.to_send(now):
                sched.sent(i, now)
                fates[n, i] = lost(streams[n][i][0], now)
            dues.append(sched.verdict_due(now))
        due = dues[0] or (Due.EARLY if any(dues) else None)
        if due is not None and now >= window_s + max(phases.values(), default=0.0):
            judgements += 1
            stats = window.stats(now)
            state, actions = step(state, ProbeStats(stats.paths, early=due is Due.EARLY), now)
            transitions += [(now, a.upstream, a.new) for a in actions if hasattr(a, "new")]
            if due is Due.GRID:
                for u in UPSTREAMS:
                    losses[u].append(state.upstreams[u].last.loss)
        now = min(s.next_at() for s in scheds)
    return transitions, losses, judgements


def test_the_streak_of_losses_that_makes_failed_is_computed_from_the_policy():
    assert failed_streak(params()) == 4  # 0.8 of the last 5 probes
    assert failed_streak(params(failed_loss=0.5)) == 3
    assert failed_streak(params(failed_loss=1.0)) == 5
    assert failed_streak(params(failed_loss=0.8, fall=8)) == 7  # look-back max(fall, 5)


@pytest.mark.parametrize("confirm_s, at_most_s", [(0.04, 0.2 + 3 * 0.04 + 0.2),
                                                   (0.0, 4 * 0.2 + 0.2 + 0.2)])
def test_a_blackhole_is_failed_after_the_timeout_and_three_confirmations(confirm_s, at_most_s):
    """t2 stops answering at 3.05 s: FAILED once its first lost probe timed out (0.2 s after
    it left, which is up to 0.2 s after the fault) and three confirmations 40 ms apart were
    lost too; without confirmations, after four intervals. Nobody else moves."""
    fault = 3.05
    transitions, _, _ = simulate(params(), lambda u, t: u == "t2" and t >= fault, 5.0,
                                 confirm_s=confirm_s)
    [(at, upstream, new)] = transitions
    assert (upstream, new) == ("t2", TransitState.FAILED)
    assert at - fault <= at_most_s + 1e-9
    if confirm_s:
        assert at - fault <= 0.6  # the lab's goal at the peer, ExaBGP included


@settings(max_examples=40, deadline=None)
@given(phases=st.lists(st.floats(0.0, 0.19), min_size=4, max_size=4),
       fault=st.floats(3.0, 3.2))
def test_a_fault_common_to_every_upstream_withdraws_none_whatever_their_phases(phases, fault):
    """Nothing answers through any upstream from `fault` on (our side of the internet is
    gone), with every upstream's streams at a phase of their own: the guard sees a local
    fault, and no upstream is judged on probes the others have not had yet. (Compared by
    count, the upstream whose probes left first after the fault was FAILED ~0.2 s before the
    others' losses were known: the lab's t4 with t1-t3 50 ms behind, 9 runs of 52.)"""
    transitions, _, _ = simulate(params(), lambda u, t: t >= fault, fault + 3.0,
                                 phases=dict(zip(UPSTREAMS, phases, strict=True)))
    assert transitions == []


def test_the_lab_case_a_common_fault_with_one_upstream_ahead_withdraws_none():
    """The logged lab run: t4 probing at .060 past the slot, t1-t3 at .007, the fault
    between their probes."""
    transitions, _, _ = simulate(params(), lambda u, t: t >= 3.03, 6.0,
                                 phases={"t1": 0.007, "t2": 0.007, "t3": 0.007, "t4": 0.06})
    assert transitions == []


@settings(max_examples=30, deadline=None)
@given(phases=st.lists(st.floats(0.0, 0.19), min_size=4, max_size=4),
       fault=st.floats(3.0, 3.2))
def test_a_blackhole_is_failed_as_fast_whatever_the_phases(phases, fault):
    """t2 alone stops answering: FAILED, and nobody else moves, as fast as in step (the
    first test: the first lost probe leaves up to an interval after the fault, then its
    timeout and three confirmations), whatever the phases."""
    transitions, _, _ = simulate(params(), lambda u, t: u == "t2" and t >= fault, fault + 2.0,
                                 phases=dict(zip(UPSTREAMS, phases, strict=True)))
    [(at, upstream, new)] = transitions
    assert (upstream, new) == ("t2", TransitState.FAILED)
    assert at - fault <= 0.2 + 0.2 + 3 * 0.04 + 1e-9


def test_random_loss_with_confirmations_is_never_failed_and_its_loss_estimate_is_unbiased():
    """Independent 2 % loss on every transit for 5 minutes: every lost probe is confirmed,
    yet nothing changes state, and the window's loss (the extra probes included) stays at
    ~2 %: which probes the window holds does not depend on their fate (each is recorded at
    its deadline), and a confirmation is lost with the same 2 %."""
    rng = random.Random(7)
    transitions, losses, judgements = simulate(params(), lambda u, t: rng.random() < 0.02,
                                               300.0)
    assert transitions == []
    mean = sum(sum(v) for v in losses.values()) / sum(len(v) for v in losses.values())
    assert 0.015 < mean < 0.025
    # judging stays at about once per interval: early looks only after 4 losses in a row
    assert judgements < 1.01 * (300 - 2) / 0.2


def test_heavy_random_loss_degrades_and_is_never_failed():
    """51 % of the probes lost (the lab's `loss 30`, both ways), for 2 minutes, with their
    confirmations: DEGRADED, never FAILED (FAILED needs 80 % of the last 5 probes over every
    target, and a confirmation is no likelier to be lost than any probe)."""
    rng = random.Random(11)
    transitions, losses, _ = simulate(params(), lambda u, t: u == "t2" and rng.random() < 0.51,
                                      120.0)
    assert [(u, s) for _, u, s in transitions] == [("t2", TransitState.DEGRADED)]
    assert 0.46 < sum(losses["t2"]) / len(losses["t2"]) < 0.56


def test_an_early_look_takes_nothing_but_failed():
    """A judgement between two of the interval's (a confirmation completed) leaves DEGRADED's
    fall and every rise alone: three early looks at a degraded window change nothing."""
    p = params(min_targets=1)
    window = ProbeWindow(2.0, p.recent_probes)
    for k in range(10):  # t1 loses 3 of 10 (degraded, not failed); the others lose nothing
        for u in UPSTREAMS:
            window.record(u, "x", k * 0.2, None if u == "t1" and k in (1, 4, 7) else RTT_S)
    state = initial_state(p)
    stats = window.stats(2.0)
    for now in (2.0, 2.05, 2.1):
        state, _ = step(state, ProbeStats(stats.paths, early=True), now)
    assert state.upstreams["t1"].state is TransitState.HEALTHY
    for now in (2.2, 2.4, 2.6):  # the interval's judgements count
        state, _ = step(state, stats, now)
    assert state.upstreams["t1"].state is TransitState.DEGRADED
