"""Confirmation probing: the pacer alone, then the pacer driving the agent's decision, on a
fake clock (a path model says what each probe gets)."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netwatch.agent.decision import (
    Carrier,
    CarrierChange,
    Failover,
    ProbeKind,
    ProbeResult,
    ProbeRound,
    RouteSnapshot,
    Settings,
    initial_state,
    step,
)
from netwatch.core.pacing import CONFIRM_COPIES, Cadence, Pacer, default_confirm_s
from netwatch.core.vocabulary import Family, UplinkRole

P, S = UplinkRole.PRIMARY, UplinkRole.SECONDARY
INTERVAL, TIMEOUT, CONFIRM, FALL = 0.05, 0.05, 0.01, 3
CADENCE = Cadence(INTERVAL, TIMEOUT, CONFIRM, FALL)
LAN_RTT = 0.0003


# --- the pacer alone ------------------------------------------------------------------------


def test_every_stream_probes_on_one_grid():
    pacer = Pacer(CADENCE, 3, now=10.0)
    assert pacer.to_send(10.0) == [0, 1, 2]
    for i in range(3):
        pacer.sent(i, 10.0)
    assert pacer.to_send(10.0) == []  # one probe in flight per stream
    assert pacer.next_at() == pytest.approx(10.05)
    for i in pacer.to_judge(10.05):
        pacer.judged(i, LAN_RTT, 10.05)
    assert pacer.to_send(10.05) == [0, 1, 2]


def test_a_lost_probe_is_confirmed_at_once_and_then_at_the_confirmation_pace():
    pacer = Pacer(CADENCE, 1, now=0.0)
    pacer.sent(0, 0.0)
    pacer.judged(0, LAN_RTT, 0.05)  # the stream knows its round trip now
    pacer.sent(0, 0.1)
    pacer.judged(0, None, 0.15)
    assert pacer.confirming(0)
    assert pacer.to_send(0.15) == [0]  # at once, not at the next slot (0.2)
    pacer.sent(0, 0.15)
    assert pacer.wait(0) == pytest.approx(CONFIRM)  # the LAN answers in 0.3 ms: 10 ms is plenty
    assert pacer.to_judge(0.155) == []
    assert pacer.to_judge(0.16) == [0]


def test_fall_losses_in_a_row_end_the_confirmations():
    """A dead path goes back to the grid: it costs no more probes than a live one."""
    pacer = Pacer(CADENCE, 1, now=0.0)
    now = 0.0
    sends = []
    while now < 1.0:
        for i in pacer.to_judge(now):
            pacer.judged(i, None, now)
        for i in pacer.to_send(now):
            pacer.sent(i, now)
            sends.append(now)
        now = pacer.next_at()
    # No answer ever: the wait is the timeout (no round trip known), so the first probes are
    # confirmed at the timeout's pace; after FALL of them, one per slot.
    assert len(sends) <= math.ceil(1.0 / INTERVAL) + 1


def test_a_confirmation_waits_for_the_paths_own_round_trip():
    """A path 30 ms away is not condemned for missing a 10 ms deadline (RFC 6298's RTO)."""
    pacer = Pacer(CADENCE, 1, now=0.0)
    for k in range(5):
        pacer.sent(0, k * INTERVAL)
        pacer.judged(0, 0.030, k * INTERVAL + TIMEOUT)
    pacer.sent(0, 0.25)
    pacer.judged(0, None, 0.30)
    pacer.sent(0, 0.30)
    assert pacer.wait(0) >= 0.030
    assert pacer.wait(0) <= TIMEOUT


def test_a_steady_far_path_gets_headroom_beyond_its_jitter():
    """80 ms away with 0.1 ms of jitter: the wait is 85 ms (RFC 6298's granularity term),
    not 80.3, so a loop that reads the answer a little late does not make it a loss."""
    cadence = Cadence(0.2, 0.2, 0.04, 4)
    pacer = Pacer(cadence, 1, now=0.0)
    for k in range(20):
        pacer.sent(0, k * 0.2)
        pacer.judged(0, 0.080 + (k % 2) * 0.0001, k * 0.2 + 0.2)
    pacer.sent(0, 4.0)
    pacer.judged(0, None, 4.2)
    pacer.sent(0, 4.2)
    assert pacer.wait(0) >= 0.085


def test_no_streams_is_nothing_due_ever():
    pacer = Pacer(CADENCE, 0, now=0.0)
    assert pacer.next_at() == math.inf
    assert pacer.to_send(1.0) == pacer.to_judge(1.0) == []


def test_no_verdict_is_no_suspicion():
    pacer = Pacer(CADENCE, 1, now=0.0)
    pacer.sent(0, 0.0)
    pacer.judged(0, None, 0.05, verdict=False)
    assert not pacer.confirming(0)
    assert pacer.to_send(0.05) == [0]  # its slot has come: 0.05 is the next one anyway
    pacer.sent(0, 0.05)
    pacer.judged(0, None, 0.07, verdict=False)
    assert pacer.to_send(0.07) == []
    assert pacer.next_at() == pytest.approx(0.10)


def test_a_stalled_loop_skips_the_missed_slots():
    pacer = Pacer(CADENCE, 1, now=0.0)
    pacer.sent(0, 0.0)
    pacer.judged(0, LAN_RTT, 1.0)  # woken a second late: one probe now, not 19
    assert pacer.to_send(1.0) == [0]
    pacer.sent(0, 1.0)
    pacer.judged(0, LAN_RTT, 1.05)
    assert pacer.to_send(1.05) == [0]


@pytest.mark.parametrize("timeout, late", [(INTERVAL, 0.0007), (INTERVAL, 0.003),
                                           (INTERVAL * 0.99, 0.001), (INTERVAL, 0.012)])
def test_a_late_loop_does_not_drift_the_streams_off_the_grid(timeout, late):
    """The loop wakes `late` every time, and the timeout is the interval (the default):
    each probe is judged by its stream's next slot, so 1,000 intervals later the streams
    still probe `late` after each slot, and none skipped one. (Judged at send + timeout,
    each probe held the next one past its slot and the phase grew by the latency every
    interval: 50 ms in 50 intervals at 1 ms.) A stream that went through confirmations is
    back in step with the others, with no gap longer than an interval on the way."""
    pacer = Pacer(Cadence(INTERVAL, timeout, CONFIRM, FALL), 2, now=0.0)
    now, sends = 0.0, {0: [], 1: []}
    while now < 1000 * INTERVAL:
        for i in pacer.to_judge(now):
            lost = i == 1 and 10.0 <= now < 10.2  # stream 1: an episode of confirmations
            pacer.judged(i, None if lost else LAN_RTT, now)
        for i in pacer.to_send(now):
            pacer.sent(i, now)
            sends[i].append(now)
        now = pacer.next_at() + late
    for i in (0, 1):
        phases = [t % INTERVAL for t in sends[i][-100:]]
        assert max(phases) == pytest.approx(late, abs=1e-6)
        gaps = [b - a for a, b in zip(sends[i], sends[i][1:], strict=False)]
        assert max(gaps) <= INTERVAL + late + 1e-9
    assert len(sends[0]) == 1000


def test_after_a_confirmation_past_the_slot_the_stream_probes_at_once_and_is_back_on_grid():
    pacer = Pacer(CADENCE, 1, now=0.0)
    for t in (0.0, 0.05):  # a round trip is known: confirmations wait CONFIRM
        pacer.sent(0, t)
        pacer.judged(0, LAN_RTT, t + LAN_RTT)
    pacer.sent(0, 0.10)
    pacer.judged(0, None, 0.195)  # lost, and judged late: its confirmation leaves at 0.195
    pacer.sent(0, 0.195)
    assert pacer.wait(0) == pytest.approx(CONFIRM)
    pacer.judged(0, LAN_RTT, 0.205)  # answered, its deadline 5 ms past the slot of 0.20
    assert pacer.to_send(0.205) == [0]  # at once: the slot is not skipped
    pacer.sent(0, 0.205)
    assert pacer.wait(0) == pytest.approx(0.25 - 0.205)  # and on the grid from the next one


def test_a_send_late_by_more_than_a_quarter_of_the_timeout_keeps_it_then_the_grid():
    pacer = Pacer(CADENCE, 1, now=0.0)
    pacer.sent(0, 0.03)  # a stalled loop: 30 ms past the slot
    assert pacer.wait(0) == pytest.approx(TIMEOUT)
    pacer.judged(0, LAN_RTT, 0.08)
    assert pacer.to_send(0.08) == []  # its deadline was past the slot: the next one, 0.10
    assert pacer.next_at() == pytest.approx(0.10)
    pacer.sent(0, 0.10)
    assert pacer.wait(0) == pytest.approx(TIMEOUT)


def test_a_timeout_longer_than_the_interval_skips_the_slots_it_covers_on_the_grid():
    pacer = Pacer(Cadence(0.2, 0.5, 0.04, 4), 1, now=0.0)
    pacer.sent(0, 0.0)
    assert pacer.wait(0) == pytest.approx(0.5)
    pacer.judged(0, LAN_RTT, 0.5)
    assert pacer.to_send(0.5) == []
    assert pacer.next_at() == pytest.approx(0.6)


def test_confirmation_off_probes_at_the_grids_pace():
    pacer = Pacer(Cadence(INTERVAL, TIMEOUT, 0.0, FALL), 1, now=0.0)
    pacer.sent(0, 0.0)
    pacer.judged(0, None, 0.05)
    pacer.sent(0, 0.05)
    assert pacer.wait(0) == TIMEOUT


def test_the_default_pace_is_a_fifth_of_the_interval_within_bounds():
    assert default_confirm_s(0.05, 0.05) == pytest.approx(0.01)
    assert default_confirm_s(0.01, 0.01) == pytest.approx(0.005)  # the floor
    assert default_confirm_s(1.0, 0.1) == pytest.approx(0.1)  # never above the timeout


@pytest.mark.parametrize("bad", [
    dict(interval_s=0, timeout_s=0.05, confirm_s=0.01, fall=3),
    dict(interval_s=0.05, timeout_s=0.05, confirm_s=0.06, fall=3),
    dict(interval_s=0.05, timeout_s=0.05, confirm_s=0.01, fall=0),
])
def test_a_cadence_that_cannot_work_is_refused(bad):
    with pytest.raises(ValueError):
        Cadence(**bad)


# --- the pacer driving the agent's decision -------------------------------------------------


def run(path, until: float, cadence: Cadence = CADENCE, suspect: bool = False):
    """Drive the agent's decision for IPv4 with gateway probes only, on a fake clock, each
    probe paced by `cadence` (and early suspicion, as the agent's loop does it, when
    `suspect`). `path(sent_at, copies) -> rtt or None` is what the primary's gateway gives a
    probe sent then as that many requests (the secondary always answers).
    Returns the failovers with their times, and the send times of the primary's probes."""
    settings_ = Settings(fall=cadence.fall, rise=5, hold_down_s=30.0, failback_auto=True,
                         families=(Family.V4,), kinds=(ProbeKind.GATEWAY,))
    state, _ = step(initial_state(settings_), RouteSnapshot(v4=P, v6=None), 0.0)
    for role in (P, S):
        state, _ = step(state, CarrierChange(role, Carrier.UP), 0.0)
    roles = (P, S)
    pacer = Pacer(cadence, 2, now=0.0, suspect=suspect)
    sent_at = [0.0, 0.0]
    copies = [1, 1]
    fate: list[float | None] = [None, None]  # the round trip the probe in flight will get
    held: list[tuple[float, float | None] | None] = [None, None]  # (sent, rtt)
    sends: list[float] = []
    failovers: list[tuple[float, Failover]] = []

    def answer(i: int, within: float) -> float | None:
        rtt = fate[i]
        return rtt if rtt is not None and rtt <= within + 1e-9 else None

    def verdict(results: list, i: int, rtt: float | None, wait: float) -> None:
        results.append(ProbeResult(roles[i], ProbeKind.GATEWAY, rtt, "gw", wait))

    def release(results: list, i: int, now: float) -> None:
        h_sent, h_rtt = held[i]
        rtt = h_rtt if h_rtt is not None and h_sent + h_rtt <= now + 1e-9 else None
        held[i] = None
        pacer.judged_held(i, rtt, now)
        verdict(results, i, rtt, pacer.held_wait(i))

    now = 0.0
    while now <= until:
        results: list[ProbeResult] = []
        judge = pacer.to_judge(now)
        for i in pacer.to_release(now):
            release(results, i, now)
        for i in pacer.to_suspect(now):
            if i in judge:
                continue
            rtt = answer(i, now - sent_at[i])
            if rtt is None:
                held[i] = (sent_at[i], answer(i, pacer.wait(i)))
                pacer.suspected(i, now)
            else:
                pacer.judged(i, rtt, now)
                verdict(results, i, rtt, pacer.wait(i))
        for i in judge:
            rtt = answer(i, pacer.wait(i))
            if rtt is not None and pacer.holds(i):
                release(results, i, now)  # the held probe left first: judged first
            pacer.judged(i, rtt, now)
            verdict(results, i, rtt, pacer.wait(i))
        if results:
            state, actions = step(state, ProbeRound(tuple(results)), now)
            failovers += [(now, a) for a in actions if isinstance(a, Failover)]
        for i in pacer.to_send(now):
            copies[i] = pacer.copies(i)
            pacer.sent(i, now)
            sent_at[i] = now
            fate[i] = path(now, copies[i]) if roles[i] is P else LAN_RTT
            if roles[i] is P:
                sends.append(now)
        now = pacer.next_at()
    return failovers, sends


def test_a_single_miss_then_an_answer_never_fails_over():
    lost = 5.0 + 1e-9

    def path(sent: float, copies: int):
        return None if abs(sent - 5.0) < 1e-6 else LAN_RTT

    failovers, sends = run(path, until=10.0)
    assert failovers == []
    assert lost + TIMEOUT in [pytest.approx(t) for t in sends]  # confirmed at once


@pytest.mark.parametrize("start", [5.0, 5.013, 5.049])
def test_fall_misses_at_the_confirmation_pace_fail_over(start):
    def path(sent: float, copies: int):
        return None if sent >= start - 1e-9 else LAN_RTT

    failovers, _ = run(path, until=7.0)
    assert len(failovers) == 1
    first_lost_sent = math.ceil(start / INTERVAL - 1e-6) * INTERVAL
    # The first loss is known at its timeout, the next FALL-1 at the confirmation pace.
    expected = first_lost_sent + TIMEOUT + (FALL - 1) * CONFIRM
    assert failovers[0][0] == pytest.approx(expected, abs=1e-6)
    # Without confirmation it takes FALL - 1 more intervals.
    slow, _ = run(path, until=7.0, cadence=Cadence(INTERVAL, TIMEOUT, 0.0, FALL))
    assert slow[0][0] == pytest.approx(first_lost_sent + TIMEOUT + (FALL - 1) * INTERVAL)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.booleans(), min_size=1, max_size=120), st.booleans())
def test_fewer_than_fall_losses_in_a_row_never_fail_over(answered, suspect):
    """Whatever the pattern of losses, confirmations included, with early suspicion or
    without: a failover needs FALL losses in a row (in the order the probes left), never
    fewer, and FALL of them make one."""
    outcomes: dict[float, bool] = {}
    order: list[bool] = []

    def path(sent: float, copies: int):
        key = round(sent, 9)
        if key not in outcomes:
            outcomes[key] = answered[len(outcomes) % len(answered)]
            order.append(outcomes[key])
        return LAN_RTT if outcomes[key] else None

    failovers, _ = run(path, until=3.0, suspect=suspect)
    run_of_losses = longest = 0
    for ok in order:
        run_of_losses = 0 if ok else run_of_losses + 1
        longest = max(longest, run_of_losses)
    assert bool(failovers) == (longest >= FALL)


def test_a_confirmation_is_two_requests():
    pacer = Pacer(CADENCE, 1, now=0.0)
    assert pacer.copies(0) == 1
    pacer.sent(0, 0.0)
    pacer.judged(0, None, 0.05)
    assert pacer.copies(0) == CONFIRM_COPIES == 2
    pacer.sent(0, 0.05)
    pacer.judged(0, LAN_RTT, 0.1)
    assert pacer.copies(0) == 1


def lossy(p: float, seed: int):
    """A path losing each request (or its answer) with probability p, independently."""
    rng = random.Random(seed)

    def path(sent: float, copies: int):
        return LAN_RTT if any(rng.random() >= p for _ in range(copies)) else None

    return path


def test_random_loss_makes_no_false_failover_through_the_confirmations():
    """Half an hour of 4 % independent loss (the lab soak's 2 % each way) on the primary's
    gateway: fall 3 losses in a row of single requests happen about every 10 minutes at
    20 Hz (p^3 x 36,000 probes: ~2 here), but with the confirmations sent twice the evidence
    is p^5 per lost probe, and no failover comes. The seed is fixed: the figures are those
    of this sequence, and the one without copies shows the noise was enough to matter."""
    failovers, sends = run(lossy(0.04, seed=7), until=1800.0)
    assert failovers == []
    assert len(sends) > 1800 / INTERVAL  # confirmations were sent: the loss was there

    noise = lossy(0.04, seed=7)

    def single(sent: float, copies: int):
        return noise(sent, 1)

    without_copies, _ = run(single, until=1800.0)
    assert without_copies  # the same noise with single-request confirmations fails over


# --- early suspicion (the agent's) ----------------------------------------------------------


def test_a_probe_unanswered_at_its_suspicion_time_is_held_and_confirmed():
    pacer = Pacer(CADENCE, 1, now=0.0, suspect=True)
    pacer.sent(0, 0.0)
    assert pacer.to_suspect(0.0) == []  # no round trip known yet: judged at the timeout
    pacer.judged(0, LAN_RTT, 0.05)
    pacer.sent(0, 0.05)
    # As late as two confirmations 10 ms apart still end by the probe's own timeout: 30 ms.
    assert pacer.next_at() == pytest.approx(0.05 + TIMEOUT - (FALL - 1) * CONFIRM)
    assert pacer.to_suspect(0.078) == []
    assert pacer.to_suspect(0.08) == [0]
    pacer.suspected(0, 0.08)
    assert pacer.holds(0) and pacer.held_wait(0) == pytest.approx(TIMEOUT)
    assert pacer.to_send(0.08) == [0] and pacer.copies(0) == CONFIRM_COPIES  # at once
    pacer.sent(0, 0.08)
    assert pacer.wait(0) == pytest.approx(CONFIRM)
    pacer.judged(0, None, 0.09)
    pacer.sent(0, 0.09)
    assert pacer.to_release(0.098) == [] and pacer.to_release(0.1) == [0]
    pacer.judged(0, None, 0.1)  # fall: the routine's miss and two confirmations
    assert not pacer.confirming(0)
    pacer.judged_held(0, None, 0.1)
    assert not pacer.holds(0) and pacer.to_send(0.1) == [0]  # the grid again


def held_at_80_ms() -> Pacer:
    """A stream that answered, then a probe sent at 50 ms, suspect and held at 80 ms, its
    first confirmation sent then."""
    pacer = Pacer(CADENCE, 1, now=0.0, suspect=True)
    pacer.sent(0, 0.0)
    pacer.judged(0, LAN_RTT, 0.05)
    pacer.sent(0, 0.05)
    pacer.suspected(0, 0.08)
    pacer.sent(0, 0.08)
    return pacer


def test_a_held_probe_answered_late_clears_the_suspicion():
    pacer = held_at_80_ms()
    pacer.judged(0, None, 0.09)
    pacer.judged_held(0, 0.035, 0.09)  # it had answered, 35 ms after it left
    assert not pacer.confirming(0)
    assert pacer.to_send(0.09) == []  # the grid again, not another confirmation
    assert pacer.next_at() == pytest.approx(0.10)


@pytest.mark.parametrize("start", [5.0, 5.013, 5.049])
def test_with_suspicion_fall_misses_are_known_at_the_first_ones_timeout(start):
    """max(timeout, RTO + (fall-1) x confirm): 50 ms after the first lost probe left, not
    70 (timeout + (fall-1) x confirm) nor 150 (fall x interval)."""
    def path(sent: float, copies: int):
        return None if sent >= start - 1e-9 else LAN_RTT

    failovers, _ = run(path, until=7.0, suspect=True)
    assert len(failovers) == 1
    first_lost_sent = math.ceil(start / INTERVAL - 1e-6) * INTERVAL
    assert failovers[0][0] == pytest.approx(first_lost_sent + TIMEOUT, abs=1e-6)
    # Silent since the first lost probe left, though its verdict came after its confirmations'.
    assert "silent: 3 probes, 50 ms" in failovers[0][1].reason


def test_with_suspicion_a_path_slower_than_its_rto_but_within_the_timeout_never_fails_over():
    """The round trip jumps from 0.3 ms to 35 ms (a queue filling), past the suspicion time
    (30 ms): the probes are held, the confirmations miss their RTO, but the held probe
    answers within its 50 ms, and one answer clears."""
    def path(sent: float, copies: int):
        return LAN_RTT if sent < 5.0 else 0.035

    failovers, _ = run(path, until=15.0, suspect=True)
    assert failovers == []


def test_with_suspicion_random_loss_makes_no_false_failover():
    """The same half hour of 4 % loss as without suspicion: the held probe is still judged at
    its full timeout, so the evidence is unchanged (p^5 per lost probe)."""
    failovers, sends = run(lossy(0.04, seed=7), until=1800.0, suspect=True)
    assert failovers == []
    assert len(sends) > 1800 / INTERVAL


def test_an_untimed_answer_clears_but_teaches_no_round_trip():
    """An ARP or ND reply that may have been either of two requests (Karn's rule)."""
    pacer = held_at_80_ms()
    pacer.judged_held(0, 0.035, 0.09, timed=False)
    pacer.judged(0, 0.005, 0.09, timed=False)
    assert not pacer.confirming(0)
    pacer.sent(0, 0.1)
    assert pacer.next_at() == pytest.approx(0.1 + TIMEOUT - (FALL - 1) * CONFIRM)  # as before
    pacer.judged(0, 0.035, 0.14)  # a measured 35 ms: the suspicion moves out
    pacer.sent(0, 0.15)
    assert pacer.next_at() > 0.15 + TIMEOUT - (FALL - 1) * CONFIRM
