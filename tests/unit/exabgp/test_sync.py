"""Sync, the controller's ExaBGP bookkeeping, driven directly with a fake clock: the session
gate, acknowledgements and their timeouts, per-key backoff, a failing diff, and
make-before-break as a wait."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from netwatch.config import load_site
from netwatch.controller.params import SessionState, TransitState, params_from_site
from netwatch.controller.plan import Announcement, make_plan
from netwatch.core.vocabulary import Family
from netwatch.exabgp import protocol
from netwatch.exabgp.protocol import AckKind, EndOfRib
from netwatch.exabgp.sync import (
    ACK_TIMEOUT_S,
    RETRY_MAX_S,
    SESSIONS_TIMEOUT_S,
    Accepted,
    AckTimeout,
    DiffFailed,
    Due,
    LateAck,
    Rejected,
    SessionsTimeout,
    SessionsUnanswered,
    Sync,
    WithdrawalsHeld,
)

DONE, ERROR = AckKind.DONE, AckKind.ERROR
N1, N2, N3, N4 = NEIGHBORS = ("192.0.2.1", "192.0.2.5", "192.0.2.9", "192.0.2.13")
P = "198.51.100.0/24"
A = Announcement()
PREPENDED = Announcement((64500,) * 4)
# The diff's order of neighbors (their addresses as text): one line announces P to them all.
ALL = tuple(sorted(NEIGHBORS))
# A different announcement per neighbor: one command each, for what is about one command.
SPREAD = {n: Announcement((), (f"64500:{i}",)) for i, n in enumerate(NEIGHBORS)}


def desired(*announcing: str, ann: Announcement = A) -> dict:
    """P announced (as `ann`) to `announcing`, withdrawn from the other neighbors."""
    return {(n, P): (ann if n in announcing else None) for n in NEIGHBORS}


def spread() -> dict:
    """P announced to every neighbor, each with its own announcement (SPREAD)."""
    return {(n, P): SPREAD[n] for n in NEIGHBORS}


def announce(neighbor, ann: Announcement = A) -> str:
    """The line announcing P as `ann` to one neighbor or to several (one line)."""
    return protocol.announce_line(neighbor, ann, [P])


def withdraw(neighbor: str) -> str:
    return protocol.withdraw_line(neighbor, [P])


def lines(due) -> list[str]:
    return [c.line for c in due.commands]


def started(clock, want: dict, up=NEIGHBORS) -> Sync:
    """A Sync whose `show neighbor json` was answered and acknowledged."""
    sync = Sync(2)
    sync.want(want, up)
    sync.ask_sessions(clock.now)
    sync.sessions_reported()
    assert sync.on_ack(DONE, clock.now) is None  # the show command's own ack
    return sync


def settle(sync: Sync, clock) -> None:
    """ExaBGP accepts everything until nothing more is due."""
    for _ in range(10):
        due = sync.due(clock.now)
        if not due.commands and not sync.in_flight:
            return
        for _ in range(sync.in_flight):
            assert isinstance(sync.on_ack(DONE, clock.now), Accepted)
    raise AssertionError("still sending after 10 rounds")


# --- the session gate -------------------------------------------------------------------------


def test_nothing_goes_out_before_the_sessions_are_asked_for(clock):
    sync = Sync(2)
    sync.want(desired(*NEIGHBORS), NEIGHBORS)
    clock.now += 3600
    assert sync.due(clock.now).commands == ()


def test_the_first_diff_waits_for_the_answer_to_show_neighbor(clock):
    sync = Sync(2)
    sync.want(desired(*NEIGHBORS), NEIGHBORS)
    assert sync.ask_sessions(clock.now).line == "show neighbor json"
    assert sync.due(clock.now).commands == ()  # no plan made on guesses goes out
    sync.sessions_reported()
    assert lines(sync.due(clock.now)) == [announce(ALL)]


def test_the_first_diff_goes_out_after_the_timeout_without_an_answer(clock):
    sync = Sync(2)
    sync.want(desired(*NEIGHBORS), ())
    sync.ask_sessions(clock.now)
    clock.now += SESSIONS_TIMEOUT_S - 0.1
    assert sync.due(clock.now) == Due()  # nothing, and nothing to report
    clock.now += 0.2
    due = sync.due(clock.now)
    assert lines(due) == [announce(ALL)]
    assert due.reports == (SessionsTimeout(SESSIONS_TIMEOUT_S),)


def test_an_ack_without_an_answer_opens_the_gate_and_is_no_rejection(clock):
    sync = Sync(2)
    sync.want(desired(*NEIGHBORS), ())
    sync.ask_sessions(clock.now)
    assert sync.on_ack(ERROR, clock.now) == SessionsUnanswered(ERROR)  # an old ExaBGP
    assert lines(sync.due(clock.now)) == [announce(ALL)]


# --- acknowledgements, rejections, backoff ----------------------------------------------------


def test_announcements_go_before_withdrawals(clock):
    sync = started(clock, desired(*NEIGHBORS))
    settle(sync, clock)
    sync.want(desired(N1, N3, N4) | {(N1, P): PREPENDED}, NEIGHBORS)
    assert lines(sync.due(clock.now)) == [announce(N1, PREPENDED), withdraw(N2)]


def test_rejected_commands_back_off_per_key_doubling_up_to_the_cap(clock):
    sync = started(clock, spread())
    first = sync.due(clock.now).commands[0]
    assert sync.on_ack(ERROR, clock.now) == Rejected(first, 1.0)
    for _ in range(3):
        assert isinstance(sync.on_ack(DONE, clock.now), Accepted)
    gaps, waits = [], []
    for _ in range(8):
        sent_at = clock.now
        while not (due := sync.due(clock.now)).commands:
            clock.now += 0.5
        gaps.append(clock.now - sent_at)
        assert lines(due) == [first.line]  # only what was rejected is sent again
        waits.append(sync.on_ack(ERROR, clock.now).retry_in_s)
    # The 3 others being accepted does not shorten the rejected one's backoff.
    assert gaps == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    assert waits == [2.0, 4.0, 8.0, 16.0, RETRY_MAX_S, RETRY_MAX_S, RETRY_MAX_S, RETRY_MAX_S]
    clock.now += RETRY_MAX_S
    assert lines(sync.due(clock.now)) == [first.line]
    assert isinstance(sync.on_ack(DONE, clock.now), Accepted)  # accepted at last ...
    sync.peer_reset(N1)
    assert lines(sync.due(clock.now)) == [first.line]
    assert sync.on_ack(ERROR, clock.now) == Rejected(first, 1.0)  # ... so 1 s again


def test_a_held_back_key_does_not_delay_the_others(clock):
    """N1's announcement keeps being rejected (30 s backoff); N2 fails meanwhile: N2's
    withdrawal goes out at once, N1's announcement only when its own backoff has run."""
    sync = started(clock, desired(*NEIGHBORS))
    settle(sync, clock)
    sync.peer_reset(N1)
    wait = 0.0
    while wait < RETRY_MAX_S:
        clock.now += wait
        assert lines(sync.due(clock.now)) == [announce(N1)]
        wait = sync.on_ack(ERROR, clock.now).retry_in_s
    clock.now += 0.2
    sync.want(desired(N1, N3, N4), NEIGHBORS)
    assert lines(sync.due(clock.now)) == [withdraw(N2)]
    sync.on_ack(DONE, clock.now)
    clock.now += RETRY_MAX_S - 1.0
    assert lines(sync.due(clock.now)) == []
    clock.now += 1.0
    assert lines(sync.due(clock.now)) == [announce(N1)]


def test_a_new_decision_about_a_backed_off_key_goes_out_at_once(clock):
    """The backoff holds back sending the same rejected value again, not a new one."""
    sync = started(clock, desired(*NEIGHBORS))
    for command in sync.due(clock.now).commands:
        sync.on_ack(ERROR if command.line == announce(N2) else DONE, clock.now)
    clock.now += 0.2
    sync.want(desired(N1, N3, N4), NEIGHBORS)
    assert lines(sync.due(clock.now)) == [withdraw(N2)]


def test_unacknowledged_commands_time_out_and_are_sent_again(clock):
    sync = started(clock, spread())
    sent = sync.due(clock.now).commands
    sync.on_ack(DONE, clock.now)  # one of the 4 acknowledged, 3 never
    clock.now += ACK_TIMEOUT_S - 0.5
    assert sync.due(clock.now).commands == () and sync.in_flight == 3
    clock.now += 1.0
    due = sync.due(clock.now)
    assert due.commands == ()
    assert due.reports == (AckTimeout(sent[1:], ACK_TIMEOUT_S, 1.0, 3),)
    assert dict(sync.acknowledged) == {(N1, P): SPREAD[N1]}  # what the others did is unknown
    clock.now += 1.0
    assert lines(sync.due(clock.now)) == [c.line for c in sent[1:]]


def test_late_acks_after_a_timeout_are_not_matched_to_newer_commands(clock):
    """ExaBGP stalls on c1, which times out and is sent again (c1'), then c2 goes; ExaBGP
    answers its FIFO: done(c1), done(c1'), error(c2). The late done(c1) is not taken for c1',
    nor done(c1') for c2: c2 is rejected and sent again."""
    sync = started(clock, desired(*NEIGHBORS))
    settle(sync, clock)
    sync.peer_reset(N1)
    assert lines(sync.due(clock.now)) == [announce(N1)]  # c1
    clock.now += ACK_TIMEOUT_S + 0.1
    assert sync.due(clock.now).reports[0].owed_acks == 1
    clock.now += 1.1
    assert lines(sync.due(clock.now)) == [announce(N1)]  # c1'
    sync.peer_reset(N2)
    assert lines(sync.due(clock.now)) == [announce(N2)]  # c2
    assert sync.on_ack(DONE, clock.now) == LateAck(DONE, 0)
    assert isinstance(sync.on_ack(DONE, clock.now), Accepted)
    assert isinstance(sync.on_ack(ERROR, clock.now), Rejected)
    assert sync.acknowledged.get((N1, P)) == A
    assert (N2, P) not in sync.acknowledged
    clock.now += 60
    assert lines(sync.due(clock.now)) == [announce(N2)]


def test_a_late_answer_to_show_neighbor_does_not_shift_the_acks(clock):
    """No answer for 3 s: the desired state goes out behind `show neighbor json`; nothing is
    acknowledged within the timeout, the 4 are sent again. Then ExaBGP answers all 9 in order
    and rejects the first announcement sent again."""
    sync = Sync(2)
    sync.want(spread(), ())
    sync.ask_sessions(clock.now)
    clock.now += SESSIONS_TIMEOUT_S + 0.1
    assert len(sync.due(clock.now).commands) == 4
    clock.now += ACK_TIMEOUT_S
    timeout = sync.due(clock.now).reports[0]
    assert isinstance(timeout, AckTimeout) and timeout.owed_acks == 5  # the show command too
    clock.now += 1.1
    again = sync.due(clock.now).commands
    assert sorted(c.line for c in again) == sorted(announce(n, SPREAD[n]) for n in NEIGHBORS)
    assert again[0].line == announce(N1, SPREAD[N1])
    sync.sessions_reported()  # the late answer
    acks = [sync.on_ack(kind, clock.now) for kind in [DONE] * 5 + [ERROR] + [DONE] * 3]
    assert [type(a).__name__ for a in acks] == ["LateAck"] * 5 + ["Rejected"] + ["Accepted"] * 3
    assert acks[5].command is again[0]
    assert sync.in_flight == 0 and (N1, P) not in sync.acknowledged
    clock.now += 60
    assert lines(sync.due(clock.now)) == [again[0].line]


def test_a_timed_out_command_makes_its_effect_unknown(clock):
    """Whatever ExaBGP did with a command that timed out is not known: its keys' desired
    state is sent again, even when the plan went back to what was acknowledged before."""
    sync = started(clock, desired(*NEIGHBORS))
    settle(sync, clock)
    sync.want(desired(N1, N3, N4), NEIGHBORS)
    assert lines(sync.due(clock.now)) == [withdraw(N2)]
    clock.now += ACK_TIMEOUT_S + 0.1
    sync.due(clock.now)  # no answer
    assert (N2, P) not in sync.acknowledged
    sync.want(desired(*NEIGHBORS), NEIGHBORS)  # the plan is back to announcing N2
    clock.now += 1.1
    assert lines(sync.due(clock.now)) == [announce(N2)]


def test_a_failing_diff_is_retried_after_its_own_backoff(clock, monkeypatch):
    real, calls = protocol.diff, []

    def flaky(want, known):
        calls.append(1)
        if len(calls) in (1, 2, 4):
            raise protocol.UnsafeValue("a value the line builder refuses")
        return real(want, known)

    monkeypatch.setattr(protocol, "diff", flaky)
    sync = started(clock, desired(*NEIGHBORS))
    due = sync.due(clock.now)
    assert due.commands == () and [type(r) for r in due.reports] == [DiffFailed]
    assert due.reports[0].retry_in_s == 1.0
    clock.now += 0.5
    assert sync.due(clock.now) == Due() and len(calls) == 1  # waiting
    clock.now += 0.5
    assert sync.due(clock.now).reports[0].retry_in_s == 2.0  # doubling
    clock.now += 2.0
    assert lines(sync.due(clock.now)) == [announce(ALL)]  # not lost: sent after the backoff
    sync.want(desired(N1, N2, N3), NEIGHBORS)
    assert sync.due(clock.now).reports[0].retry_in_s == 1.0  # a success reset it


def test_a_refused_write_is_sent_at_the_next_round(clock):
    sync = started(clock, spread())
    commands = sync.due(clock.now).commands
    sync.unsent(commands[1])
    assert sync.in_flight == 3
    assert lines(sync.due(clock.now)) == [commands[1].line]


def test_a_session_event_sends_the_neighbors_full_desired_state_again(clock):
    sync = started(clock, desired(*NEIGHBORS))
    settle(sync, clock)
    assert sync.due(clock.now).commands == ()
    sync.peer_reset(N2)
    assert lines(sync.due(clock.now)) == [announce(N2)]


# --- make-before-break ------------------------------------------------------------------------


def n3_replaces_n2(clock) -> Sync:
    """N1 and N2 announce (acknowledged), then N3 replaces N2: only N3's announcement goes."""
    sync = started(clock, desired(N1, N2))
    settle(sync, clock)
    assert dict(sync.acknowledged) == desired(N1, N2)
    sync.want(desired(N1, N3), NEIGHBORS)
    due = sync.due(clock.now)
    assert lines(due) == [announce(N3)]  # N2's withdrawal would leave N1 alone
    assert due.reports == (WithdrawalsHeld(1, 1),)
    return sync


def test_held_withdrawals_follow_the_last_announcement_acknowledged(clock):
    sync = n3_replaces_n2(clock)
    assert isinstance(sync.on_ack(DONE, clock.now), Accepted)
    assert lines(sync.due(clock.now)) == [withdraw(N2)]  # at once: no probe interval lost


def test_a_rejected_announcement_holds_the_withdrawal_that_needs_it(clock):
    sync = n3_replaces_n2(clock)
    rejected = sync.on_ack(ERROR, clock.now)
    assert isinstance(rejected, Rejected) and rejected.retry_in_s == 1.0
    assert rejected.command.line == announce(N3)
    for _ in range(4):  # rounds during the backoff: nothing, above all no withdrawal
        clock.now += 0.2
        assert lines(sync.due(clock.now)) == []
    clock.now += 0.2
    assert lines(sync.due(clock.now)) == [announce(N3)]
    sync.on_ack(ERROR, clock.now)  # rejected again: still held, now for 2 s
    clock.now += 1.5
    assert lines(sync.due(clock.now)) == []
    clock.now += 0.5
    assert lines(sync.due(clock.now)) == [announce(N3)]
    sync.on_ack(DONE, clock.now)
    assert lines(sync.due(clock.now)) == [withdraw(N2)]


def test_an_unanswered_announcement_holds_the_withdrawal(clock):
    """N3's announcement is not answered within ACK_TIMEOUT_S: N2 stays announced. It is sent
    again; the late ack of the first is not taken for the second; N2 is withdrawn once the
    second is acknowledged."""
    sync = n3_replaces_n2(clock)
    clock.now += ACK_TIMEOUT_S + 0.1
    assert lines(sync.due(clock.now)) == [] and sync.in_flight == 0
    clock.now += 1.0
    assert lines(sync.due(clock.now)) == [announce(N3)]
    assert isinstance(sync.on_ack(DONE, clock.now), LateAck)
    assert lines(sync.due(clock.now)) == []
    assert isinstance(sync.on_ack(DONE, clock.now), Accepted)
    assert lines(sync.due(clock.now)) == [withdraw(N2)]


def test_a_withdrawal_that_takes_nothing_needed_goes_out_at_once(clock):
    sync = started(clock, desired(*NEIGHBORS), up=(N1, N2, N3))
    settle(sync, clock)
    sync.want(desired(N1, N3), (N1, N2, N3))
    # N4's session is down (nothing taken); N2 leaves N1 and N3 announcing.
    assert sorted(lines(sync.due(clock.now))) == sorted([withdraw(N2), withdraw(N4)])


def test_a_session_coming_up_releases_a_held_withdrawal(clock):
    sync = started(clock, desired(*NEIGHBORS), up=(N1, N2))
    settle(sync, clock)
    sync.want(desired(N1, N3, N4), (N1, N2))
    due = sync.due(clock.now)
    assert lines(due) == [] and due.reports == (WithdrawalsHeld(1, 0),)
    sync.want(desired(N1, N3, N4), (N1, N2, N3))
    assert lines(sync.due(clock.now)) == [withdraw(N2)]


# --- the interlock, at every command ----------------------------------------------------------


class Exabgp:
    """ExaBGP's side: a FIFO of commands, each applied to its RIB only when answered `done`.
    At every write it checks make-before-break: counting only acknowledged announcements,
    minus the withdrawals written and not yet answered, no prefix goes below `minimum`
    neighbors (every session is up)."""

    def __init__(self, minimum: int):
        self.minimum = minimum
        self.queue: list[protocol.Command] = []
        self.announced: set[protocol.Key] = set()
        self.violations: list[str] = []

    def counted(self) -> set[protocol.Key]:
        withdrawing = {k for c in self.queue if c.withdraws for k in c.effect}
        return self.announced - withdrawing

    def write(self, command: protocol.Command) -> None:
        before = self.counted()
        self.queue.append(command)
        for _, prefix in before - self.counted():
            left = sum(1 for _, p in self.counted() if p == prefix)
            if left < self.minimum:
                self.violations.append(f"{command.line}: {prefix} left with {left}")

    def answer(self, sync: Sync, kind: AckKind, now: float) -> None:
        if not self.queue:
            return
        command = self.queue.pop(0)
        if kind is DONE:
            for key, ann in command.effect.items():
                (self.announced.add if ann is not None else self.announced.discard)(key)
        sync.on_ack(kind, now)


LEVELS = st.sampled_from(list(TransitState))
STEPS = st.one_of(
    st.tuples(st.just("plan"), st.tuples(LEVELS, LEVELS, LEVELS, LEVELS)),
    st.tuples(st.just("ack"), st.sampled_from([DONE, DONE, DONE, ERROR])),
    st.tuples(st.just("wait"), st.sampled_from([0.2, 1.0, 5.0, ACK_TIMEOUT_S + 0.1])),
)


@pytest.fixture
def lab_params(lab_site):
    site = load_site(lab_site)
    sessions = {}
    for u in site.controller.upstreams:
        sessions[(u.name, 4)] = str(u.neighbor)
        sessions[(u.name, 6)] = str(u.neighbor6)
    return params_from_site(site), sessions, site.prefixes


@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(STEPS, max_size=40))
def test_make_before_break_holds_at_every_command_written(lab_params, steps):
    """Random plans (the interlock applied), rejections and timeouts: at every command
    written, counting only the announcements ExaBGP acknowledged minus the withdrawals
    written, each prefix keeps min_announcing_upstreams neighbors. Once ExaBGP accepts
    everything, it holds the plan."""
    params, sessions, prefixes = lab_params
    now = 1000.0
    up = set(sessions.values())
    every_session_up = {(u.name, f): SessionState.UP for u in params.upstreams for f in Family}
    sync, exa = Sync(params.min_announcing_upstreams), Exabgp(params.min_announcing_upstreams)
    plan = make_plan(params, {u.name: TransitState.HEALTHY for u in params.upstreams}, {},
                     every_session_up, None)
    sync.want(protocol.expand(plan.desired, sessions, prefixes), up)
    sync.ask_sessions(now)
    sync.sessions_reported()

    def round_() -> None:
        for command in sync.due(now).commands:
            exa.write(command)

    exa.queue.append(protocol.show_neighbors())
    for kind, value in steps:
        if kind == "plan":
            levels = dict(zip((u.name for u in params.upstreams), value, strict=True))
            plan = make_plan(params, levels, {}, every_session_up, plan)
            sync.want(protocol.expand(plan.desired, sessions, prefixes), up)
        elif kind == "ack":
            exa.answer(sync, value, now)
        else:
            now += value
        round_()
        assert exa.violations == []
    for _ in range(20):  # ExaBGP accepts everything from now on
        while exa.queue:
            exa.answer(sync, DONE, now)
            round_()
        now += RETRY_MAX_S + 1
        round_()
        if not exa.queue:
            break
    assert exa.violations == []
    want = protocol.expand(plan.desired, sessions, prefixes)
    assert {k for k, ann in want.items() if ann is not None} == exa.announced


# --- End-of-RIB after a session comes up --------------------------------------------------------


def eor(neighbor: str) -> str:
    return protocol.eor_line(neighbor, 4)


def acked(sync: Sync, clock, count: int) -> None:
    for _ in range(count):
        assert isinstance(sync.on_ack(DONE, clock.now), Accepted)


def test_a_session_up_gets_its_full_desired_state_then_its_end_of_rib(clock):
    """After a restart every session comes up with nothing acknowledged: each neighbor's
    End-of-RIB goes once ExaBGP acknowledged its desired state, and a neighbor withdrawn in
    the plan gets only its withdrawal and End-of-RIB, so it stays withdrawn."""
    sync = started(clock, desired(N1, N3, N4))
    for n in NEIGHBORS:
        sync.session_up(n)
    assert lines(sync.due(clock.now)) == [announce((N1, N4, N3))]  # one line, three sessions
    # N2's withdrawal (of whatever it may still hold) waits for that announcement to be
    # acknowledged (make-before-break).
    acked(sync, clock, 1)
    assert lines(sync.due(clock.now)) == [withdraw(N2), eor(N1), eor(N4), eor(N3)]
    acked(sync, clock, 4)
    assert lines(sync.due(clock.now)) == [eor(N2)]
    settle(sync, clock)
    assert sync.due(clock.now).commands == ()  # once per session up, not at every round


def test_no_end_of_rib_for_a_session_that_is_not_up_and_none_before_the_gate_opens(clock):
    sync = Sync(2)
    sync.want(desired(*NEIGHBORS), {N1, N2, N3})
    sync.session_up(N1)
    sync.session_up(N4)  # reported up, but the plan's view says down: ExaBGP would refuse it
    sync.ask_sessions(clock.now)
    assert sync.due(clock.now).commands == ()  # the session gate is closed
    sync.sessions_reported()
    sync.on_ack(DONE, clock.now)
    assert lines(sync.due(clock.now)) == [announce(ALL)]
    acked(sync, clock, 1)
    assert lines(sync.due(clock.now)) == [eor(N1)]
    sync.want(desired(*NEIGHBORS), NEIGHBORS)
    assert lines(sync.due(clock.now)) == [eor(N4)]


def test_a_held_withdrawal_holds_that_neighbors_end_of_rib(clock):
    """N3 replaces N2 while N2's session comes up again: N2's withdrawal waits for N3's
    announcement (make-before-break), and so does N2's End-of-RIB, which would drop N2's
    stale routes at the peer as surely as the withdrawal."""
    sync = n3_replaces_n2(clock)
    sync.session_up(N2)
    assert sync.due(clock.now).commands == ()
    acked(sync, clock, 1)  # N3's announcement
    assert lines(sync.due(clock.now)) == [withdraw(N2)]
    acked(sync, clock, 1)
    assert lines(sync.due(clock.now)) == [eor(N2)]


def test_a_rejected_announcement_holds_its_neighbors_end_of_rib_until_a_retry_is_in(clock):
    """The peer keeps the stale route while ExaBGP rejects the announcement that refreshes
    it: an End-of-RIB now would drop it."""
    sync = started(clock, desired(*NEIGHBORS))
    settle(sync, clock)
    sync.peer_reset(N1)
    sync.session_up(N1)
    assert lines(sync.due(clock.now)) == [announce(N1)]
    assert isinstance(sync.on_ack(ERROR, clock.now), Rejected)
    assert lines(sync.due(clock.now)) == []
    clock.now += 1.0
    assert lines(sync.due(clock.now)) == [announce(N1)]
    assert lines(sync.due(clock.now)) == []  # written is not enough: acknowledged
    acked(sync, clock, 1)
    assert lines(sync.due(clock.now)) == [eor(N1)]


def test_a_session_reset_after_its_end_of_rib_owes_another(clock):
    sync = started(clock, desired(*NEIGHBORS))
    sync.session_up(N2)
    settle(sync, clock)
    assert sync.due(clock.now).commands == ()
    sync.peer_reset(N2)  # went down: nothing acknowledged for it is known any more
    sync.session_up(N2)  # and up
    assert lines(sync.due(clock.now)) == [announce(N2)]
    acked(sync, clock, 1)
    assert lines(sync.due(clock.now)) == [eor(N2)]


def test_a_session_reported_up_again_owes_no_second_end_of_rib(clock):
    """Another answer to `show neighbor json` reports the same sessions up: nothing new."""
    sync = started(clock, desired(*NEIGHBORS))
    sync.session_up(N1)
    settle(sync, clock)
    sync.session_up(N1)
    assert sync.due(clock.now).commands == ()
    sync.peer_reset(N1)  # a new session: owed again
    sync.session_up(N1)
    assert lines(sync.due(clock.now)) == [announce(N1)]
    acked(sync, clock, 1)
    assert lines(sync.due(clock.now)) == [eor(N1)]


def test_a_refused_or_unanswered_end_of_rib_is_sent_again_after_a_backoff(clock):
    sync = started(clock, desired(*NEIGHBORS))
    settle(sync, clock)
    sync.session_up(N1)
    assert lines(sync.due(clock.now)) == [eor(N1)]
    report = sync.on_ack(ERROR, clock.now)  # ExaBGP: no established neighbor matches
    assert isinstance(report, Rejected) and report.retry_in_s == 1.0
    assert lines(sync.due(clock.now)) == []
    clock.now += 1.0
    assert lines(sync.due(clock.now)) == [eor(N1)]
    clock.now += ACK_TIMEOUT_S
    due = sync.due(clock.now)
    assert isinstance(due.reports[0], AckTimeout)
    assert lines(due) == []  # timed out: owed again, after its (doubled) backoff
    clock.now += 2.0
    assert lines(sync.due(clock.now)) == [eor(N1)]
    assert isinstance(sync.on_ack(DONE, clock.now), LateAck)
    assert isinstance(sync.on_ack(DONE, clock.now), Accepted)
    sync.session_up(N2)
    (command,) = sync.due(clock.now).commands
    sync.unsent(command)  # the pipe refused it: owed again at once
    assert lines(sync.due(clock.now)) == [eor(N2)]


RESETS = st.tuples(st.just("reset"), st.integers(0, 7))


@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.one_of(STEPS, RESETS), max_size=40))
def test_an_end_of_rib_never_goes_before_its_neighbors_desired_state(lab_params, steps):
    """Random plans, rejections, timeouts and sessions coming up again: whenever an
    End-of-RIB is written for a neighbor, every key of that neighbor's desired state is in
    ExaBGP's RIB (acknowledged) with the desired value; and once ExaBGP accepts everything,
    every session that came up has had its End-of-RIB."""
    params, sessions, prefixes = lab_params
    now = 1000.0
    neighbors = sorted(sessions.values())
    every_session_up = {(u.name, f): SessionState.UP for u in params.upstreams for f in Family}
    sync = Sync(params.min_announcing_upstreams)
    rib: dict = {}
    queue: list[protocol.Command] = [protocol.show_neighbors()]
    early: list[str] = []
    plan = make_plan(params, {u.name: TransitState.HEALTHY for u in params.upstreams}, {},
                     every_session_up, None)
    want = protocol.expand(plan.desired, sessions, prefixes)
    sync.want(want, neighbors)
    sync.ask_sessions(now)
    sync.sessions_reported()
    owed = set(neighbors)  # sessions up whose End-of-RIB ExaBGP has not accepted yet
    for n in neighbors:
        sync.session_up(n)

    def round_() -> None:
        for command in sync.due(now).commands:
            if isinstance(command, EndOfRib):
                missing = object()
                wrong = [k for k, v in want.items()
                         if k[0] == command.neighbor and rib.get(k, missing) != v]
                if wrong:
                    early.append(f"{command.line} before {wrong}")
            queue.append(command)

    def answer(kind) -> None:
        if queue:
            command = queue.pop(0)
            if kind is DONE:
                rib.update(command.effect)
            if kind is DONE and isinstance(command, EndOfRib):
                owed.discard(command.neighbor)
            sync.on_ack(kind, now)

    for kind, value in steps:
        if kind == "plan":
            levels = dict(zip((u.name for u in params.upstreams), value, strict=True))
            plan = make_plan(params, levels, {}, every_session_up, plan)
            want = protocol.expand(plan.desired, sessions, prefixes)
            sync.want(want, neighbors)
        elif kind == "ack":
            answer(value)
        elif kind == "reset":
            neighbor = neighbors[value]
            for key in [k for k in rib if k[0] == neighbor]:
                del rib[key]  # ExaBGP's RIB for a new session starts empty
            sync.peer_reset(neighbor)
            sync.session_up(neighbor)
            owed.add(neighbor)
        else:
            now += value
        round_()
        assert early == []
    for _ in range(20):
        while queue:
            answer(DONE)
            round_()
        now += RETRY_MAX_S + 1
        round_()
        if not queue:
            break
    assert early == []
    assert owed == set()


# --- an operator's forced drain -----------------------------------------------------------------


def test_a_forced_withdrawal_goes_below_the_minimum_after_the_announcements(clock):
    """An operator drained N2 past the interlock: its withdrawal goes though it leaves N1
    alone, after N3's announcement of the same diff, and N2's End-of-RIB after a reset is
    not held behind it."""
    sync = started(clock, desired(N1, N2))
    settle(sync, clock)
    sync.want(desired(N1, N3), (N1, N2), forced=(N2,))
    due = sync.due(clock.now)
    assert lines(due) == [announce(N3), withdraw(N2)] and due.reports == ()
    settle(sync, clock)
    assert dict(sync.acknowledged) == desired(N1, N3)
    sync.peer_reset(N2)
    sync.session_up(N2)
    sync.want(desired(N1), (N1, N2), forced=(N2,))
    assert lines(sync.due(clock.now)) == [withdraw(N2), withdraw(N3)]
    acked(sync, clock, 2)
    assert lines(sync.due(clock.now)) == [eor(N2)]


def test_a_forced_withdrawal_counts_before_the_others_are_judged(clock):
    """N1's withdrawal is forced, N2's is not: with N1 gone, N2's would leave N3 alone."""
    sync = started(clock, desired(N1, N2, N3))
    settle(sync, clock)
    sync.want(desired(N3), NEIGHBORS, forced=(N1,))
    due = sync.due(clock.now)
    assert lines(due) == [withdraw(N1)] and due.reports == (WithdrawalsHeld(1, 0),)


def test_an_unforced_withdrawal_below_the_minimum_is_still_held(clock):
    sync = started(clock, desired(N1, N2))
    settle(sync, clock)
    sync.want(desired(N1), (N1, N2), forced=(N3,))
    due = sync.due(clock.now)
    assert lines(due) == [] and due.reports == (WithdrawalsHeld(1, 0),)
