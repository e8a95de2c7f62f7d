"""The controller's ExaBGP side with a recording pipe and fake clocks: what it writes at
start, how it retries a rejected or unanswered command, what it learns from `show neighbor
json`, what it does with a damaged state file, and how it dies."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from netwatch import exitcodes
from netwatch.config import load_site
from netwatch.controller.daemon import ACK_TIMEOUT_S, SESSIONS_TIMEOUT_S, Controller
from netwatch.controller.decision import SessionSummary, step
from netwatch.controller.params import HOUR_S, SessionState, TransitState
from netwatch.controller.persistence import restore
from netwatch.controller.plan import Announcement
from netwatch.controller.verdict import PathStats, ProbeStats
from netwatch.core.hysteresis import ActionBudget
from netwatch.core.vocabulary import Family
from netwatch.exabgp import protocol as exabgp
from netwatch.lab.lifecycle import DEFAULT_CONFIG as LAB_SITE

T = {"t1": "192.0.2.1", "t2": "192.0.2.5", "t3": "192.0.2.9", "t4": "192.0.2.13"}
T6 = {f"t{i}": f"2001:db8:ffff:{i}::1" for i in range(1, 5)}


class RecordingPipe:
    def __init__(self):
        self.lines: list[str] = []

    def send(self, line: str) -> None:
        self.lines.append(line)


class Clock:
    def __init__(self, now: float):
        self.now = now

    def __call__(self) -> float:
        return self.now


def site_file(tmp_path: Path) -> Path:
    raw = yaml.safe_load(LAB_SITE.read_text())
    raw["state_dir"] = str(tmp_path / "state")
    raw["controller"]["probe"]["targets_file"] = str(LAB_SITE.parent / "targets" / "lab.yaml")
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def make(tmp_path: Path, pipe=None, wall: float = 1.7e9, mono: float = 1000.0) -> Controller:
    registry = CollectorRegistry()
    wall_clock, mono_clock = Clock(wall), Clock(mono)
    ctl = Controller(load_site(site_file(tmp_path)), registry, pipe or RecordingPipe(),
                     clock=wall_clock, mono=mono_clock)
    ctl.registry, ctl.wall_, ctl.mono_ = registry, wall_clock, mono_clock
    return ctl


def answer(up: dict[str, bool]) -> str:
    """ExaBGP's answer to `show neighbor json` ("fsm" counts: see exabgp._summary)."""
    return json.dumps([
        {"state": "down", "fsm": "ESTABLISHED" if is_up else "ACTIVE",
         "peer": {"address": address}}
        for address, is_up in up.items()
    ])


def started(c: Controller, up: dict[str, bool] | None = None) -> Controller:
    """Start as run() does, ExaBGP answering with every session up (or `up`)."""
    c.ask_sessions()
    c.on_event(answer(up if up is not None else dict.fromkeys([*T.values(), *T6.values()], True)))
    c.on_event("done")
    return c


@pytest.fixture
def controller(tmp_path):
    return make(tmp_path)


def test_first_diff_waits_for_the_sessions_state(controller):
    c = controller
    c.ask_sessions()
    c.sync()
    assert c.pipe.lines == ["show neighbor json"]  # no plan made on guesses goes out
    c.on_event(answer(dict.fromkeys(T.values(), True)))
    assert len(c.pipe.lines) == 1 + 8  # 4 upstreams x 2 families: announce
    assert c.state.sessions[("t1", Family.V6)] is SessionState.UNKNOWN  # not reported


def test_first_diff_goes_out_after_the_timeout_without_an_answer(controller):
    c = controller
    c.ask_sessions()
    c.mono_.now += SESSIONS_TIMEOUT_S - 0.1
    c.sync()
    assert c.pipe.lines == ["show neighbor json"]
    c.mono_.now += 0.2
    c.sync()
    assert len(c.pipe.lines) == 1 + 8
    assert all(s is SessionState.UNKNOWN for s in c.state.sessions.values())


def test_an_ack_without_an_answer_sends_at_once(controller):
    c = controller
    c.ask_sessions()
    c.on_event("error")  # an ExaBGP that does not know the command
    assert len(c.pipe.lines) == 1 + 8
    assert c.registry.get_sample_value("netwatch_exabgp_commands_rejected_total") == 0


def test_restart_with_three_failed_keeps_the_persisted_hold(tmp_path):
    """The incident: t1-t3 FAILED, the hold kept t2 (with t4). A restarted controller sent its
    first diff before it knew a session: everything UNKNOWN, nothing kept, t2 withdrawn, t1
    re-announced later. Now: t2 and t4 stay announced, t1 and t3 withdrawn, from the start,
    the withdrawals once t2's and t4's announcements are acknowledged (what ExaBGP still
    holds from before the restart is unknown)."""
    c = make(tmp_path)
    c.state = restore(c.params, {
        "upstreams": {n: {"state": "failed"} for n in ("t1", "t2", "t3")},
        "holds": {"ipv4": ["t2"], "ipv6": ["t2"]},
    })
    c.persist()
    again = started(make(tmp_path))
    prepend = "as-path [ 64500 64500 64500 64500 ] "
    assert sorted(again.pipe.lines[1:]) == sorted([
        f"neighbor {T['t2']} announce attributes next-hop self {prepend}nlri 198.51.100.0/24",
        f"neighbor {T['t4']} announce attributes next-hop self nlri 198.51.100.0/24",
        f"neighbor {T6['t2']} announce attributes next-hop self {prepend}nlri 2001:db8:100::/48",
        f"neighbor {T6['t4']} announce attributes next-hop self nlri 2001:db8:100::/48",
    ])
    again.pipe.lines.clear()
    for _ in range(4):
        again.on_event("done")
    assert sorted(again.pipe.lines) == sorted([
        f"neighbor {T['t1']} withdraw attributes next-hop self nlri 198.51.100.0/24",
        f"neighbor {T['t3']} withdraw attributes next-hop self nlri 198.51.100.0/24",
        f"neighbor {T6['t1']} withdraw attributes next-hop self nlri 2001:db8:100::/48",
        f"neighbor {T6['t3']} withdraw attributes next-hop self nlri 2001:db8:100::/48",
    ])


def test_rejected_commands_back_off_up_to_the_cap_and_are_counted(controller):
    c, clock = started(controller), controller.mono_
    assert len(c.pipe.lines) == 1 + 8
    rejected = c.pending[0].line
    gaps = []
    for _ in range(8):
        c.pipe.lines.clear()
        c.on_event("error")  # ExaBGP rejects the first command in flight
        for _ in range(len(c.pending)):
            c.on_event("done")
        sent_at = clock.now
        while not c.pipe.lines:
            clock.now += 0.5
            c.sync()
        gaps.append(clock.now - sent_at)
        assert c.pipe.lines == [rejected]  # only what was rejected is sent again
    # Per key: the 7 others being accepted does not shorten the rejected one's backoff.
    assert gaps == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    assert c.registry.get_sample_value("netwatch_exabgp_commands_rejected_total") == 8
    c.on_event("done")  # accepted at last: the next rejection of it waits 1 s again
    c.on_event(neighbor_up(T["t1"]))  # its full desired state again ...
    c.pipe.lines.clear()
    c.on_event("error")  # ... rejected
    clock.now += 0.5
    c.sync()
    assert c.pipe.lines == []
    clock.now += 0.5
    c.sync()
    assert c.pipe.lines == [rejected]


def t2_blackholed() -> ProbeStats:
    bad = dict(good_window().paths)
    for i in range(1, 11):
        bad[("t2", f"inet-{i}")] = PathStats(10, 10, None, 5, 5)
    return ProbeStats(bad)


def test_a_persistently_rejected_command_does_not_delay_other_changes(controller):
    """ExaBGP keeps rejecting t1's IPv4 announcement (its backoff reaches 16 s); then t2 is
    blackholed: t2's withdrawal goes out at once, t1's announcement only when its own
    backoff has run."""
    c, clock = started(controller), controller.mono_
    for _ in range(5):
        c.on_event("error")
        for _ in range(len(c.pending)):
            c.on_event("done")
        while not c.pending:
            clock.now += 0.5
            c.sync()
    c.on_event("error")  # the 6th rejection: t1 waits 32 s, capped at 30 s
    c.pipe.lines.clear()
    clock.now += 0.2
    c.apply(t2_blackholed())
    assert c.state.upstreams["t2"].state is TransitState.FAILED
    c.sync()
    assert c.pipe.lines == [
        f"neighbor {T['t2']} withdraw attributes next-hop self nlri 198.51.100.0/24",
        f"neighbor {T6['t2']} withdraw attributes next-hop self nlri 2001:db8:100::/48",
    ]
    c.on_event("done")
    c.on_event("done")
    c.pipe.lines.clear()
    clock.now += 29.0
    c.sync()
    assert c.pipe.lines == []
    clock.now += 1.0
    c.sync()
    assert c.pipe.lines == [
        f"neighbor {T['t1']} announce attributes next-hop self nlri 198.51.100.0/24"]


def test_a_changed_plan_for_a_backed_off_key_goes_out_at_once(controller):
    """The backoff holds back sending the *same* rejected thing again, not a new decision
    about that key: t2's announcement is rejected, then t2 fails: withdrawn at once."""
    c, clock = started(controller), controller.mono_
    t2 = next(i for i, cmd in enumerate(c.pending) if cmd.line.startswith(f"neighbor {T['t2']}"))
    for i in range(len(c.pending)):
        c.on_event("error" if i == t2 else "done")
    c.pipe.lines.clear()
    clock.now += 0.2
    c.apply(t2_blackholed())
    c.sync()
    assert f"neighbor {T['t2']} withdraw attributes next-hop self nlri 198.51.100.0/24" in (
        c.pipe.lines)


def with_states(c: Controller, **states: str) -> Controller:
    """Put the upstreams in `states` (the others HEALTHY), every session up: a new plan."""
    c.state = restore(c.params, {"upstreams": {n: {"state": v}
                                                        for n, v in states.items()}})
    c.state, _ = step(c.state, SessionSummary(
        {k: True for k in c.state.sessions}), c.mono_.now)
    c.dirty = True
    return c


def t3_replaces_t2(controller) -> Controller:
    """t1 and t2 announce (t3, t4 FAILED, all acknowledged), then t3 recovers and t2 fails:
    the diff announces t3 and withdraws t2; only the announcements go out."""
    c = started(controller)
    for _ in range(len(c.pending)):
        c.on_event("done")
    with_states(c, t3="failed", t4="failed").sync()
    for _ in range(len(c.pending)):
        c.on_event("done")
    assert c.state.plan.announcing(4) == ["t1", "t2"]
    c.pipe.lines.clear()
    with_states(c, t2="failed", t4="failed").sync()
    assert c.pipe.lines == [
        f"neighbor {T['t3']} announce attributes next-hop self nlri 198.51.100.0/24",
        f"neighbor {T6['t3']} announce attributes next-hop self nlri 2001:db8:100::/48",
    ]  # t2's withdrawals would leave t1 alone until t3's announcements are acknowledged
    c.pipe.lines.clear()
    return c


WITHDRAW_T2 = [f"neighbor {T['t2']} withdraw attributes next-hop self nlri 198.51.100.0/24",
               f"neighbor {T6['t2']} withdraw attributes next-hop self nlri 2001:db8:100::/48"]


def test_withdrawals_follow_the_announcements_once_acknowledged(controller):
    c = t3_replaces_t2(controller)
    c.on_event("done")
    assert c.pipe.lines == []  # one announcement still in flight
    c.on_event("done")
    assert c.pipe.lines == WITHDRAW_T2  # at once, with the last ack: no probe interval lost


def test_a_rejected_announcement_holds_the_withdrawal_that_needed_it(controller):
    """t3's IPv4 announcement is rejected: t2's IPv4 withdrawal waits (t1 would announce
    alone), t2's IPv6 one goes (t3's IPv6 announcement was acknowledged). After its backoff
    t3's announcement is sent again; once acknowledged, t2 is withdrawn."""
    c, clock = t3_replaces_t2(controller), controller.mono_
    c.on_event("error")
    c.on_event("done")
    assert c.pipe.lines == [WITHDRAW_T2[1]]
    c.on_event("done")
    c.pipe.lines.clear()
    for _ in range(4):  # probe rounds during the backoff: nothing, above all no withdrawal
        clock.now += 0.2
        c.sync()
    assert c.pipe.lines == []
    clock.now += 0.2
    c.sync()
    assert c.pipe.lines == [
        f"neighbor {T['t3']} announce attributes next-hop self nlri 198.51.100.0/24"]
    c.on_event("error")  # rejected again: still held, now for 2 s
    clock.now += 1.5
    c.sync()
    assert c.pipe.lines == [
        f"neighbor {T['t3']} announce attributes next-hop self nlri 198.51.100.0/24"]
    clock.now += 0.5
    c.sync()
    c.on_event("done")
    assert c.pipe.lines == [
        f"neighbor {T['t3']} announce attributes next-hop self nlri 198.51.100.0/24"] * 2 + [
        WITHDRAW_T2[0]]


def test_an_unanswered_announcement_holds_the_withdrawals(controller):
    """ExaBGP answers neither of t3's announcements within ACK_TIMEOUT_S: t2 stays announced.
    They are sent again after the backoff; the late acks of the first ones are not taken for
    theirs; the withdrawals go once the second ones are acknowledged."""
    c, clock = t3_replaces_t2(controller), controller.mono_
    clock.now += ACK_TIMEOUT_S + 0.1
    c.sync()
    assert c.pipe.lines == [] and not c.pending
    clock.now += 1.0
    c.sync()
    assert [line.split()[2] for line in c.pipe.lines] == ["announce", "announce"]
    c.pipe.lines.clear()
    c.on_event("done")
    c.on_event("done")  # the late answers to the first two
    assert c.pipe.lines == []
    c.on_event("done")
    c.on_event("done")
    assert c.pipe.lines == WITHDRAW_T2


def test_a_withdrawal_that_needs_no_announcement_goes_out_at_once(controller):
    c = started(controller)
    for _ in range(len(c.pending)):
        c.on_event("done")
    c.pipe.lines.clear()
    with_states(c, t2="failed").sync()
    assert c.pipe.lines == WITHDRAW_T2


class FakeExabgp:
    """ExaBGP's side of the pipe, for the property test: a FIFO of commands, each applied to
    its RIB only when answered `done`. At every write it checks make-before-break: counting
    only announcements ExaBGP acknowledged, minus the withdrawals written and not yet
    rejected, no prefix goes below `minimum` neighbors (every session is up)."""

    def __init__(self, minimum: int):
        self.minimum = minimum
        self.queue: list[tuple[str, str, list[str]]] = []  # (neighbor, verb, prefixes)
        self.announced: set[tuple[str, str]] = set()  # acknowledged
        self.violations: list[str] = []

    def counted(self) -> set[tuple[str, str]]:
        withdrawing = {(n, p) for n, verb, ps in self.queue if verb == "withdraw" for p in ps}
        return self.announced - withdrawing

    def send(self, line: str) -> None:
        words = line.split()
        if words[0] != "neighbor":
            self.queue.append(("", "show", []))
            return
        neighbor, verb = words[1], words[2]
        prefixes = words[words.index("nlri") + 1:]
        before = self.counted()
        self.queue.append((neighbor, verb, prefixes))
        after = self.counted()
        for prefix in prefixes:
            if (neighbor, prefix) in before - after:
                left = sum(1 for _, p in after if p == prefix)
                if left < self.minimum:
                    self.violations.append(f"{line}: {prefix} left with {left}")

    def answer(self, c: Controller, ack: str) -> None:
        if not self.queue:
            return
        neighbor, verb, prefixes = self.queue.pop(0)
        if ack == "done":
            for prefix in prefixes:
                if verb == "announce":
                    self.announced.add((neighbor, prefix))
                else:
                    self.announced.discard((neighbor, prefix))
        c.on_event(ack)


STATES = st.sampled_from(["healthy", "degraded", "failed"])
STEPS = st.one_of(
    st.tuples(st.just("plan"), st.tuples(STATES, STATES, STATES, STATES)),
    st.tuples(st.just("ack"), st.sampled_from(["done", "done", "done", "error"])),
    st.tuples(st.just("wait"), st.sampled_from([0.2, 1.0, 5.0, ACK_TIMEOUT_S + 0.1])),
)


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(STEPS, max_size=40))
def test_make_before_break_holds_at_every_point_of_the_command_stream(tmp_path, steps):
    """Random plans, rejections and timeouts: at every command written, counting only the
    announcements ExaBGP acknowledged minus the withdrawals written, each prefix keeps
    min_announcing_upstreams neighbors. Once ExaBGP accepts everything, it holds the plan."""
    c = make(tmp_path)
    exa = FakeExabgp(c.params.min_announcing_upstreams)
    c.pipe = exa
    c.ask_sessions()
    c.on_event(answer(dict.fromkeys([*T.values(), *T6.values()], True)))
    for kind, value in steps:
        if kind == "plan":
            with_states(c, **dict(zip(T, value, strict=True))).sync()
        elif kind == "ack":
            exa.answer(c, value)
        else:
            c.mono_.now += value
            c.sync()
        assert exa.violations == []
    for _ in range(20):  # ExaBGP accepts everything from now on
        while exa.queue:
            exa.answer(c, "done")
        c.mono_.now += 31.0
        c.sync()
        if not exa.queue:
            break
    assert exa.violations == []
    desired = exabgp.expand(c.state.plan.desired, c.sessions, c.site.prefixes)
    assert {k for k, ann in desired.items() if ann is not None} == exa.announced


def test_unacknowledged_commands_time_out_and_are_sent_again(controller):
    c = started(controller)
    c.on_event("done")  # one of the 8 announcements acknowledged, 7 never
    c.pipe.lines.clear()
    c.mono_.now += ACK_TIMEOUT_S - 0.5
    c.sync()
    assert c.pipe.lines == [] and len(c.pending) == 7
    c.mono_.now += 1.0
    c.sync()  # timed out: counted, backoff started
    assert c.pending == type(c.pending)() and c.pipe.lines == []
    assert c.registry.get_sample_value("netwatch_exabgp_commands_rejected_total") == 7
    c.mono_.now += 1.0
    c.sync()
    assert len(c.pipe.lines) == 7  # what was not confirmed, again


def neighbor_up(peer: str) -> str:
    """ExaBGP's `neighbor-changes` event for a session that came up."""
    return json.dumps({"type": "state", "neighbor": {"address": {"peer": peer, "local": "x"},
                                                     "state": "up"}})


def test_late_acks_after_a_timeout_are_not_matched_to_newer_commands(controller):
    """ExaBGP stalls on c1, the controller times it out and sends c1 again (c1'), then c2;
    ExaBGP answers its FIFO: done(c1), done(c1'), error(c2). The late done(c1) must not be
    taken for c1', nor done(c1') for c2: the rejected c2 is counted and sent again."""
    c = started(controller)
    for _ in range(len(c.pending)):
        c.on_event("done")  # the first diff, acknowledged
    c.on_event(neighbor_up(T["t1"]))  # c1: t1's full desired state again
    c.mono_.now += ACK_TIMEOUT_S + 0.1
    c.sync()  # timed out: c1 is an orphan whose ack may still come
    c.mono_.now += 1.1
    c.sync()  # c1' after the backoff
    c.on_event(neighbor_up(T["t2"]))  # c2
    c.pipe.lines.clear()
    for ack in ("done", "done", "error"):
        c.on_event(ack)
    assert c.registry.get_sample_value("netwatch_exabgp_commands_rejected_total") == 2
    assert (T["t2"], "198.51.100.0/24") not in c.acked  # c2 was rejected: not known
    assert c.acked[(T["t1"], "198.51.100.0/24")] == Announcement()  # c1' was done
    c.mono_.now += 60
    c.sync()
    assert c.pipe.lines == [
        f"neighbor {T['t2']} announce attributes next-hop self nlri 198.51.100.0/24"]


def test_a_late_answer_to_show_neighbor_does_not_shift_the_acks(controller):
    """At start ExaBGP answers nothing for 3 s: the desired state goes out behind `show
    neighbor json`; nothing is acknowledged within the timeout, all 9 are sent again. Then
    ExaBGP answers all 17 in order and rejects the first announcement sent again."""
    c = controller
    c.ask_sessions()
    c.mono_.now += SESSIONS_TIMEOUT_S + 0.1
    c.sync()
    assert len(c.pending) == 1 + 8
    c.mono_.now += ACK_TIMEOUT_S
    c.sync()  # the 9 timed out
    c.mono_.now += 1.1
    c.sync()
    first_again = c.pending[0]
    assert len(c.pending) == 8 and first_again.line.startswith("neighbor")
    c.on_event(answer(dict.fromkeys([*T.values(), *T6.values()], True)))  # the late answer
    for ack in ["done"] * 9 + ["error"] + ["done"] * 7:
        c.on_event(ack)
    assert not c.pending
    assert not any(key in c.acked for key in first_again.effect)
    c.pipe.lines.clear()
    c.mono_.now += 60
    c.sync()
    assert c.pipe.lines == [first_again.line]


def test_a_timed_out_command_makes_its_effect_unknown(controller):
    """Whatever ExaBGP did with a command that timed out is not known: the desired state of
    its keys is sent again, even when the plan went back to what was acknowledged before."""
    c = started(controller)
    for _ in range(len(c.pending)):
        c.on_event("done")
    key = (T["t2"], "198.51.100.0/24")
    c.state = restore(c.params, {"upstreams": {"t2": {"state": "failed"}}})
    c.state, _ = step(c.state, SessionSummary(
        {k: True for k in c.state.sessions}), c.mono_.now)
    c.dirty = True
    c.sync()  # withdraw t2 ...
    assert [cmd.line for cmd in c.pending] == [
        f"neighbor {T['t2']} withdraw attributes next-hop self nlri 198.51.100.0/24",
        f"neighbor {T6['t2']} withdraw attributes next-hop self nlri 2001:db8:100::/48"]
    c.mono_.now += ACK_TIMEOUT_S + 0.1
    c.sync()  # ... no answer
    assert key not in c.acked
    c.state = restore(c.params)  # the plan is back to announcing t2
    c.state, _ = step(c.state, SessionSummary(
        {k: True for k in c.state.sessions}), c.mono_.now)
    c.dirty = True
    c.pipe.lines.clear()
    c.mono_.now += 1.1
    c.sync()
    assert f"neighbor {T['t2']} announce attributes next-hop self nlri 198.51.100.0/24" in (
        c.pipe.lines)


def test_a_failing_diff_is_retried_after_the_backoff(controller, monkeypatch):
    c = started(controller, {})
    real, calls = exabgp.diff, []

    def flaky(desired, known):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("a bug")
        return real(desired, known)

    monkeypatch.setattr(exabgp, "diff", flaky)
    c.dirty = True
    c.sync()
    assert c.dirty and c.registry.get_sample_value(
        "netwatch_controller_errors_total", {"where": "sync"}) == 1
    c.mono_.now += 1.0
    c.sync()  # not lost until the plan changes: sent after the backoff
    assert not c.dirty and len(calls) == 2


def test_show_neighbor_answer_counts_sessions_that_are_already_up(controller):
    c = controller
    c.ask_sessions()
    c.on_event('{"type": "state", "neighbor": {"address": {"peer": "2001:db8:ffff:1::1"}, '
               '"state": "up"}}')  # an event wins over the answer that follows it
    c.on_event(answer({**dict.fromkeys(T.values(), True), **dict.fromkeys(T6.values(), False)}))
    up = c.registry.get_sample_value("netwatch_bgp_session_up", {"upstream": "t2",
                                                                  "family": "ipv4"})
    assert up == 1
    assert c.state.plan.announcing(4) == ["t1", "t2", "t3", "t4"]
    assert all(str(s.value) == "up" for (n, f), s in c.state.sessions.items() if f == 4)
    assert c.state.sessions[("t1", 6)].value == "up"
    assert all(s.value == "down" for (n, f), s in c.state.sessions.items() if f == 6 and n != "t1")


@pytest.mark.parametrize(
    "content",
    [
        '{"upstreams": {"t1": {"state": "bogus"}}}',
        '{"upstreams": []}',
        '{"upstreams": {"t1": "failed"}}',
        '{"action_times": ["yesterday"]}',
        '{"action_times": [true]}',
        '{"upstreams": {"t1": {"state": "failed", "recovery_since": "soon"}}}',
        '{"holds": {"ipv5": ["t1"]}}',
        "[]",
        "{not json",
        b"\xff\xfe",
    ],
)
def test_a_damaged_state_file_is_logged_and_ignored(tmp_path, capsys, content):
    state = tmp_path / "state" / "controller.json"
    state.parent.mkdir()
    state.write_bytes(content if isinstance(content, bytes) else content.encode())
    c = make(tmp_path)
    assert "event=state_unreadable" in capsys.readouterr().err
    assert all(u.state is TransitState.HEALTHY for u in c.state.upstreams.values())
    assert c.registry.get_sample_value("netwatch_controller_errors_total", {"where": "state"}) == 1


def test_an_unreadable_state_file_is_logged_and_ignored(tmp_path, capsys, monkeypatch):
    state = tmp_path / "state" / "controller.json"
    state.parent.mkdir()
    state.write_text('{"upstreams": {"t1": {"state": "failed"}}}')

    real = Path.read_text

    def refuse(self, *args, **kwargs):
        if self == state:
            raise PermissionError(13, "Permission denied", str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", refuse)  # root reads any mode: refuse outright
    c = make(tmp_path)
    err = capsys.readouterr().err
    assert "event=state_unreadable" in err and "Permission denied" in err
    assert c.state.upstreams["t1"].state is TransitState.HEALTHY


def good_window() -> ProbeStats:
    return ProbeStats({(n, f"inet-{i}"): PathStats(10, 0, 0.01)
                          for n in T for i in range(1, 11)})


def test_decisions_ignore_a_wall_clock_step(tmp_path):
    """An NTP step of one hour forward does not serve the 10 s recovery hold at once."""
    c = started(make(tmp_path))
    c.state = restore(c.params, {"upstreams": {"t2": {"state": "failed"}}})
    for _ in range(5):  # rise: the hold starts
        c.mono_.now += 0.2
        c.wall_.now += 0.2
        c.apply(good_window())
    c.wall_.now += 3600
    c.mono_.now += 0.2
    c.apply(good_window())
    assert c.state.upstreams["t2"].state is TransitState.FAILED
    c.mono_.now += 10
    c.apply(good_window())
    assert c.state.upstreams["t2"].state is TransitState.HEALTHY


def test_a_recovery_hold_survives_a_restart(tmp_path):
    """Half-way through t2's hold the controller restarts (new monotonic origin, wall clock
    on): it recovers when the hold ends, not a whole hold (or never) after the restart."""
    c = started(make(tmp_path, wall=1.7e9, mono=1000.0))
    c.state = restore(c.params, {"upstreams": {"t2": {"state": "failed"}}},
                               now=1000.0)
    for _ in range(5):  # rise: the 10 s hold starts at mono 1001
        c.mono_.now += 0.2
        c.wall_.now += 0.2
        c.apply(good_window())
    assert c.state.upstreams["t2"].recovery.since == pytest.approx(1001.0)
    c.mono_.now += 5
    c.wall_.now += 5
    c.apply(good_window())
    assert c.state.upstreams["t2"].state is TransitState.FAILED
    restarted_wall = c.wall_.now + 1  # one second later, monotonic clock from 7 (a reboot)
    again = started(make(tmp_path, wall=restarted_wall, mono=7.0))
    assert again.state.upstreams["t2"].state is TransitState.FAILED
    # 6 s into the hold: it started at 1.0 on the new monotonic clock
    assert again.state.upstreams["t2"].recovery.since == pytest.approx(1.0)
    again.mono_.now += 3.0  # 9 s into the hold: not yet
    again.apply(good_window())
    assert again.state.upstreams["t2"].state is TransitState.FAILED
    again.mono_.now += 1.5
    again.apply(good_window())
    assert again.state.upstreams["t2"].state is TransitState.HEALTHY


class ScriptedPipe:
    """Enough of ExabgpPipe for run(): nothing comes from ExaBGP until `closed` is set."""

    def __init__(self):
        self.sent: list[str] = []
        self.closed = None

    def send(self, line: str) -> None:
        self.sent.append(line)

    async def open(self) -> None:
        self.closed = asyncio.Event()

    async def lines(self):
        await self.closed.wait()
        return
        yield  # an async generator that yields nothing

    async def flush(self) -> None:
        pass


def test_a_dead_probe_loop_stops_the_controller_leaving_announcements(tmp_path, capsys):
    c = make(tmp_path, ScriptedPipe())

    async def broken_probes():
        raise RuntimeError("prober exploded")

    c.probe_loop = broken_probes
    code = asyncio.run(asyncio.wait_for(c.run(), 5))
    assert code == exitcodes.SOFTWARE
    assert c.pipe.sent == ["show neighbor json"]  # no withdrawal on the way out
    err = capsys.readouterr().err
    assert "event=worker_died" in err and "prober exploded" in err


def test_exabgp_closing_the_pipe_stops_the_controller_cleanly(tmp_path):
    c = make(tmp_path, ScriptedPipe())

    async def probes_forever():
        await asyncio.sleep(3600)

    async def scenario():
        c.probe_loop = probes_forever
        task = asyncio.create_task(c.run())
        await asyncio.sleep(0.05)
        c.pipe.closed.set()
        return await task

    assert asyncio.run(asyncio.wait_for(scenario(), 5)) == exitcodes.OK


def test_budget_exhaustion_is_logged_once_per_episode(tmp_path, capsys):
    c = started(make(tmp_path))
    c.state = dataclasses.replace(c.state, budget=ActionBudget(1, HOUR_S, (c.mono_.now,)))
    bad = dict(good_window().paths)
    for i in range(1, 11):
        bad[("t2", f"inet-{i}")] = PathStats(10, 10, None)
    for _ in range(20):
        c.mono_.now += 0.2
        c.apply(ProbeStats(bad))
    assert capsys.readouterr().err.count("event=action_budget_exhausted") == 1
    assert c.registry.get_sample_value("netwatch_transit_action_budget_exhausted") == 1
    for _ in range(5):  # rise: nothing held back any more, and the gauge says so
        c.mono_.now += 0.2
        c.apply(good_window())
    assert c.registry.get_sample_value("netwatch_transit_action_budget_exhausted") == 0


def test_an_unprobed_upstream_is_logged_once_and_has_a_metric(tmp_path, monkeypatch, capsys):
    """t3 has no interface (no probe path), t2's IPv4 prober cannot open its socket: t3 is
    not probed at all (netwatch_transit_probed 0, logged once), t2 still is through IPv6."""
    from netwatch.controller import daemon as controller_module

    path = site_file(tmp_path)
    raw = yaml.safe_load(path.read_text())
    del raw["controller"]["upstreams"][2]["interface"]
    path.write_text(yaml.safe_dump(raw))
    registry = CollectorRegistry()
    c = Controller(load_site(path), registry, ScriptedPipe())
    t2_ipv4_mark = c.ctl.fwmark_base + 2

    class FakeProber:
        def __init__(self, family, mark):
            if mark == t2_ipv4_mark:
                raise OSError(1, "Operation not permitted")

        async def ping(self, where, timeout):
            return 0.001

    async def no_paths(paths):
        pass

    monkeypatch.setattr(controller_module, "IcmpProber", FakeProber)
    monkeypatch.setattr(c, "install_paths", no_paths)

    async def a_few_rounds():
        task = asyncio.create_task(c.probe_loop())
        await asyncio.sleep(0.5)  # at least two rounds of 200 ms
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(a_few_rounds())
    probed = {n: registry.get_sample_value("netwatch_transit_probed", {"upstream": n})
              for n in T}
    assert probed == {"t1": 1, "t2": 1, "t3": 0, "t4": 1}
    err = capsys.readouterr().err
    assert err.count("event=unprobed") == 1 and "event=unprobed upstream=t3" in err
