"""The controller daemon, driven through its public methods with a recording pipe, fake
clocks, fake probe routes and fake probers: the lines it writes to ExaBGP at start and as the
plan changes, the metrics and logs it produces, what it does with a damaged state file, and
how it stops. Sync's bookkeeping on its own is tested in tests/unit/exabgp/test_sync.py."""

from __future__ import annotations

import asyncio
import copy
import errno
import itertools
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from netwatch import exitcodes
from netwatch.config import load_site
from netwatch.controller.daemon import Controller
from netwatch.controller.verdict import PathStats, ProbeStats
from netwatch.exabgp import protocol as exabgp
from netwatch.exabgp.sync import ACK_TIMEOUT_S, SESSIONS_TIMEOUT_S

T = {"t1": "192.0.2.1", "t2": "192.0.2.5", "t3": "192.0.2.9", "t4": "192.0.2.13"}
T6 = {f"t{i}": f"2001:db8:ffff:{i}::1" for i in range(1, 5)}
V4, V6 = "198.51.100.0/24", "2001:db8:100::/48"
PREPEND = "as-path [ 64500 64500 64500 64500 ] "
# What make-before-break waits for in the fast site: t3 replaces t2.
WITHDRAW_T2 = [f"neighbor {T['t2']} withdraw attributes next-hop self nlri {V4}",
               f"neighbor {T6['t2']} withdraw attributes next-hop self nlri {V6}"]


def announce(upstream: str, family: int = 4, attributes: str = "") -> str:
    neighbor, prefix = (T[upstream], V4) if family == 4 else (T6[upstream], V6)
    return f"neighbor {neighbor} announce attributes next-hop self {attributes}nlri {prefix}"


def announce_all(family: int = 4, attributes: str = "") -> str:
    """One line announcing the family's prefix to the four sessions (the diff names them in
    the order of their addresses as text)."""
    neighbors, prefix = (T, V4) if family == 4 else (T6, V6)
    selector = " , ".join(f"neighbor {n}" for n in sorted(neighbors.values()))
    return f"{selector} announce attributes next-hop self {attributes}nlri {prefix}"


# The first diff with every session up: one line per family.
START = [announce_all(4), announce_all(6)]
V4_ORDER = sorted(T, key=T.get)  # the upstreams in that order: t1, t4, t2, t3


def eor(upstream: str, family: int = 4) -> str:
    """The End-of-RIB that follows a session's acknowledged desired state (Sync)."""
    neighbor = T[upstream] if family == 4 else T6[upstream]
    return f"neighbor {neighbor} announce eor ipv{family} unicast"


class RecordingPipe:
    """The ExaBGP pipe, recording every line; it refuses the next `refuse` writes."""

    def __init__(self):
        self.written: list[str] = []
        self.refuse = 0

    def send(self, line: str) -> None:
        if self.refuse:
            self.refuse -= 1
            raise OSError(32, "Broken pipe")
        self.written.append(line)

    async def flush(self) -> None:
        pass


class RecordingRoutes:
    """ProbeRoutes without a kernel: records every path ensured; the paths whose table is in
    `refuse` are refused as a down link would be."""

    def __init__(self, refuse: tuple[int, ...] = ()):
        self.ensured: list = []
        self.refuse = set(refuse)
        self.opened = self.closed = 0
        self.links_asked: list[list[str]] = []

    async def open(self) -> None:
        self.opened += 1

    async def links(self, ifnames: list[str]) -> dict:
        self.links_asked.append(ifnames)
        return {}

    def close(self) -> None:
        self.closed += 1

    async def ensure_probe_path(self, path) -> bool:
        if path.table in self.refuse:
            raise OSError(101, "Network is unreachable")
        self.ensured.append(path)
        return True


@dataclass
class FakeProbers:
    """A ProberFactory: every target answers in 1 ms; opening the prober of a mark in
    `fail` raises that mark's error."""

    fail: dict[int, Exception] = field(default_factory=dict)
    opened: list[tuple[str, int, int]] = field(default_factory=list)

    def __call__(self, method: str, family: int, mark: int):
        if mark in self.fail:
            raise self.fail[mark]
        self.opened.append((method, family, mark))
        return self

    async def ping(self, target, timeout_s: float) -> float | None:
        return 0.001


@dataclass
class Rig:
    """A controller and what a test watches it through."""

    c: Controller
    pipe: RecordingPipe
    registry: CollectorRegistry
    mono: object

    def sample(self, name: str, **labels) -> float | None:
        return self.registry.get_sample_value(name, labels)

    @property
    def rejected(self) -> float:
        return self.sample("netwatch_exabgp_commands_rejected_total")


FAST = {"fall": 1, "rise": 1, "recovery_hold_s": 0, "max_actions_per_hour": 1000}


@pytest.fixture
def make(site_copy, lab_site, clock, tmp_path):
    """make(...) -> Rig: a controller on the lab's site file. `policy` changes the policy
    (FAST: every verdict acted on at once), `edit(controller_section)` anything else, `state`
    is written to the state file first; `mono` starts a new decision clock (default: the
    `clock` fixture), `boot` is the boot id the controller reads, `sleep` the probe loop's
    (`VirtualTime.sleep`: the probes run on the fake clock)."""
    raw = yaml.safe_load(lab_site.read_text())
    targets = (lab_site.parent / raw["controller"]["probe"]["targets_file"]).resolve()

    def build(pipe=None, *, policy=None, edit=None, state=None, mono=None, boot="boot-1",
              routes=None, prober=None, sleep=asyncio.sleep) -> Rig:
        section = copy.deepcopy(raw["controller"])
        section["probe"]["targets_file"] = str(targets)
        section["policy"].update(policy or {})
        if edit is not None:
            edit(section)
        path = site_copy(controller=section)
        if state is not None:
            (tmp_path / "state").mkdir(exist_ok=True)
            (tmp_path / "state" / "controller.json").write_text(json.dumps(state))
        registry = CollectorRegistry()
        mono_clock = clock if mono is None else type(clock)(mono)
        pipe = pipe if pipe is not None else RecordingPipe()
        c = Controller(load_site(path), registry, pipe, mono=mono_clock, boot=lambda: boot,
                       routes=routes or RecordingRoutes(), prober=prober or FakeProbers(),
                       sleep=sleep)
        return Rig(c, pipe, registry, mono_clock)

    return build


@pytest.fixture
def logs(caplog):
    caplog.set_level(logging.INFO, logger="netwatch.controller")
    return caplog


def logged(caplog, event: str) -> list[logging.LogRecord]:
    """The controller's log records of `event`."""
    return [r for r in caplog.records if r.name == "netwatch.controller"
            and r.getMessage().split(" ", 1)[0] == f"event={event}"]


def answer(up: dict[str, bool]) -> str:
    """ExaBGP's answer to `show neighbor json` ("fsm" counts: see exabgp._summary)."""
    return json.dumps([
        {"state": "down", "fsm": "ESTABLISHED" if is_up else "ACTIVE",
         "peer": {"address": address}}
        for address, is_up in up.items()
    ])


EVERY_SESSION_UP = dict.fromkeys([*T.values(), *T6.values()], True)


def neighbor_up(peer: str) -> str:
    """ExaBGP's `neighbor-changes` event for a session that came up."""
    return json.dumps({"type": "state", "neighbor": {"address": {"peer": peer, "local": "x"},
                                                     "state": "up"}})


def started(r: Rig, up: dict[str, bool] | None = None) -> Rig:
    """Start as run() does, ExaBGP answering with every session up (or `up`)."""
    r.c.start()
    r.c.on_event(answer(EVERY_SESSION_UP if up is None else up))
    r.c.on_event("done")
    return r


def ack_all(r: Rig) -> None:
    """ExaBGP accepts every command written since the last clear (and any written on the
    way), but `show neighbor json`, which `started` answered; then clears the record."""
    answered = r.pipe.written.count("show neighbor json")
    while answered < len(r.pipe.written):
        answered += 1
        r.c.on_event("done")
    r.pipe.written.clear()


QUALITY = {
    "healthy": PathStats(10, 0, 0.01),
    "degraded": PathStats(10, 3, 0.01),  # 30 % loss: above the lab's 15 %
    "failed": PathStats(10, 10, None, 5, 5),  # nothing answers
}


def window(**quality: str) -> ProbeStats:
    """A probe window through every upstream (10 targets, both families): healthy unless
    named in `quality`."""
    return ProbeStats({(n, f"inet-{i}"): QUALITY[quality.get(n, "healthy")]
                       for n in T for i in range(1, 11)})


def state_of(r: Rig, upstream: str) -> str:
    """The upstream's state, as netwatch_transit_state says it."""
    on = [s for s in ("healthy", "degraded", "failed")
          if r.sample("netwatch_transit_state", upstream=upstream, state=s) == 1]
    assert len(on) == 1, on
    return on[0]


# --- the first diff ---------------------------------------------------------------------------


def test_first_diff_waits_for_the_sessions_state(make):
    r = make()
    r.c.start()
    r.c.send_due()
    assert r.pipe.written == ["show neighbor json"]  # no plan made on guesses goes out
    r.c.on_event(answer(dict.fromkeys(T.values(), True)))
    assert r.pipe.written[1:] == START
    assert r.sample("netwatch_bgp_session_up", upstream="t1", family="ipv4") == 1
    # Not reported: still unknown, so no gauge says up or down.
    assert r.sample("netwatch_bgp_session_up", upstream="t1", family="ipv6") is None


def test_first_diff_goes_out_after_the_timeout_without_an_answer(make, logs):
    r = make()
    r.c.start()
    r.mono.now += SESSIONS_TIMEOUT_S - 0.1
    r.c.send_due()
    assert r.pipe.written == ["show neighbor json"]
    r.mono.now += 0.2
    r.c.send_due()
    assert r.pipe.written[1:] == START
    [record] = logged(logs, "sessions_timeout")
    assert record.levelno == logging.WARNING
    every = ",".join(f"{t}/{f}" for t in T for f in ("ipv4", "ipv6"))
    assert f"unknown={every}" in record.getMessage()


def test_an_ack_without_an_answer_sends_at_once(make, logs):
    r = make()
    r.c.start()
    r.c.on_event("error")  # an ExaBGP that does not know the command
    assert r.pipe.written[1:] == START
    assert r.rejected == 0
    assert [x.levelno for x in logged(logs, "sessions_unanswered")] == [logging.WARNING]


def test_restart_with_three_failed_keeps_the_persisted_hold(make):
    """t1-t3 FAILED, the hold kept t2 (with t4). A restarted controller that sent its first
    diff before it knew a session would have had everything UNKNOWN, nothing kept, t2
    withdrawn. Here t2 and t4 stay announced, t1 and t3 are withdrawn, from the start, the
    withdrawals once t2's and t4's announcements are acknowledged (what ExaBGP still holds
    from before the restart is unknown)."""
    r = started(make(state={
        "upstreams": {n: {"state": "failed"} for n in ("t1", "t2", "t3")},
        "holds": {"ipv4": ["t2"], "ipv6": ["t2"]},
    }))
    assert sorted(r.pipe.written[1:]) == sorted([
        announce("t2", 4, PREPEND), announce("t4", 4), announce("t2", 6, PREPEND),
        announce("t4", 6),
    ])
    r.pipe.written.clear()
    for _ in range(4):
        r.c.on_event("done")
    assert sorted(r.pipe.written) == sorted([
        f"neighbor {T['t1']} withdraw attributes next-hop self nlri {V4}",
        f"neighbor {T['t3']} withdraw attributes next-hop self nlri {V4}",
        f"neighbor {T6['t1']} withdraw attributes next-hop self nlri {V6}",
        f"neighbor {T6['t3']} withdraw attributes next-hop self nlri {V6}",
        # t2's and t4's state is acknowledged: their End-of-RIBs (t1's and t3's follow their
        # withdrawals)
        eor("t2"), eor("t4"), eor("t2", 6), eor("t4", 6),
    ])


# --- rejections, timeouts, backoff ------------------------------------------------------------


def test_rejected_commands_back_off_up_to_the_cap_and_are_counted(make, logs):
    r = started(make())
    rejected = r.pipe.written[1]  # the first command after `show neighbor json`: IPv4
    gaps = []
    for i in range(8):
        r.pipe.written.clear()
        r.c.on_event("error")  # ExaBGP rejects the first command in flight ...
        for _ in range(1 if i == 0 else 0):
            r.c.on_event("done")  # ... and accepts the other (IPv6)
        for _ in range(4 if i == 0 else 0):
            r.c.on_event("done")  # ... and its sessions' End-of-RIBs
        r.pipe.written.clear()
        sent_at = r.mono.now
        while not r.pipe.written:
            r.mono.now += 0.5
            r.c.send_due()
        gaps.append(r.mono.now - sent_at)
        assert r.pipe.written == [rejected]  # only what was rejected is sent again
    # Per key: the other being accepted does not shorten the rejected one's backoff.
    assert gaps == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    assert r.rejected == 8
    records = logged(logs, "command_rejected")
    assert len(records) == 8 and {x.levelno for x in records} == {logging.WARNING}
    assert "retry_in_s=30.0" in records[-1].getMessage()
    r.c.on_event("done")  # accepted at last: the next rejection of it waits 1 s again
    for _ in range(4):
        r.c.on_event("done")  # (its sessions' End-of-RIBs, due once their state was accepted)
    r.c.on_event(neighbor_up(T["t1"]))  # t1's full desired state again ...
    r.pipe.written.clear()
    r.c.on_event("error")  # ... rejected
    r.mono.now += 0.5
    r.c.send_due()
    assert r.pipe.written == []
    r.mono.now += 0.5
    r.c.send_due()
    assert r.pipe.written == [announce("t1")]


def test_a_persistently_rejected_command_does_not_delay_other_changes(make):
    """ExaBGP keeps rejecting t1's IPv4 announcement (its backoff reaches 30 s); then t2 is
    blackholed: t2's withdrawal goes out at once, t1's announcement only when its own
    backoff has run."""
    r = started(make())
    ack_all(r)
    r.c.on_event(neighbor_up(T["t1"]))  # t1's IPv4 session again: its state is sent again
    assert r.pipe.written == [announce("t1")]
    r.c.on_event("error")
    for _ in range(5):  # sent again after 1, 2, 4, 8, 16 s and rejected again
        r.pipe.written.clear()
        while not r.pipe.written:
            r.mono.now += 0.5
            r.c.send_due()
        r.c.on_event("error")  # the 6th rejection: t1 waits 32 s, capped at 30 s
    r.pipe.written.clear()
    r.mono.now += 0.2
    r.c.apply(window(t2="failed"))
    assert state_of(r, "t2") == "failed"
    r.c.send_due()
    assert r.pipe.written == WITHDRAW_T2
    r.c.on_event("done")
    r.c.on_event("done")
    r.pipe.written.clear()
    r.mono.now += 29.0
    r.c.send_due()
    assert r.pipe.written == []
    r.mono.now += 1.0
    r.c.send_due()
    assert r.pipe.written == [announce("t1")]


def test_a_changed_plan_for_a_backed_off_key_goes_out_at_once(make):
    """The backoff holds back sending the *same* rejected thing again, not a new decision
    about that key: t2's announcement is rejected, then t2 fails: withdrawn at once."""
    r = started(make())
    ack_all(r)
    r.c.on_event(neighbor_up(T["t2"]))
    assert r.pipe.written == [announce("t2")]
    r.c.on_event("error")
    r.pipe.written.clear()
    r.mono.now += 0.2
    r.c.apply(window(t2="failed"))
    r.c.send_due()
    assert WITHDRAW_T2[0] in r.pipe.written


def test_unacknowledged_commands_time_out_and_are_sent_again(make, logs):
    r = started(make())
    r.c.on_event("done")  # the IPv4 announcement acknowledged, the IPv6 one never
    # those sessions' state is in: their End-of-RIBs
    assert r.pipe.written[-4:] == [eor(t) for t in V4_ORDER]
    r.pipe.written.clear()
    r.mono.now += ACK_TIMEOUT_S - 0.5
    r.c.send_due()
    assert r.pipe.written == [] and r.rejected == 0
    r.mono.now += 1.0
    r.c.send_due()  # timed out: counted, backoff started
    assert r.pipe.written == [] and r.rejected == 5
    [record] = logged(logs, "ack_timeout")
    assert record.levelno == logging.WARNING and "commands=5" in record.getMessage()
    r.mono.now += 1.0
    r.c.send_due()
    # what was not confirmed, again (the End-of-RIBs too)
    assert sorted(r.pipe.written) == sorted([START[1], *(eor(t) for t in T)])


def test_late_acks_after_a_timeout_are_not_matched_to_newer_commands(make, logs):
    """ExaBGP stalls on c1, the controller times it out and sends c1 again (c1'), then c2;
    ExaBGP answers its FIFO: done(c1), done(c1'), error(c2). The late done(c1) is not taken
    for c1', nor done(c1') for c2: the rejected c2 is counted and sent again."""
    r = started(make())
    ack_all(r)  # the first diff
    r.c.on_event(neighbor_up(T["t1"]))  # c1: t1's full desired state again
    r.mono.now += ACK_TIMEOUT_S + 0.1
    r.c.send_due()  # timed out: c1 is an orphan whose ack may still come
    r.mono.now += 1.1
    r.c.send_due()  # c1' after the backoff
    r.c.on_event(neighbor_up(T["t2"]))  # c2
    r.pipe.written.clear()
    for ack in ("done", "done", "error"):
        r.c.on_event(ack)
    assert r.rejected == 2  # c1's timeout and c2
    assert len(logged(logs, "late_ack")) == 1
    r.mono.now += 60
    r.c.send_due()
    # c1' was accepted: t1 is not sent again, its End-of-RIB followed the acknowledgement
    assert r.pipe.written == [eor("t1"), announce("t2")]


def test_each_session_gets_its_end_of_rib_once_its_state_is_acknowledged(make):
    """After ExaBGP restarted, the transits keep our routes as stale until the End-of-RIB
    (manual-eor): the sessions reported up at start get theirs one by one, each after its own
    announcement is acknowledged, never before; a session that comes up later likewise."""
    r = started(make())
    assert r.pipe.written[1:] == START  # no End-of-RIB before them
    r.pipe.written.clear()
    r.c.on_event("done")
    assert r.pipe.written == [eor(t) for t in V4_ORDER]
    r.c.on_event("done")
    assert r.pipe.written[4:] == [eor(t, 6) for t in sorted(T, key=T6.get)]
    for _ in range(8):
        r.c.on_event("done")
    r.pipe.written.clear()
    r.c.on_event(neighbor_up(T["t2"]))
    assert r.pipe.written == [announce("t2")]
    r.c.on_event("done")
    assert r.pipe.written == [announce("t2"), eor("t2")]


def test_a_late_answer_to_show_neighbor_does_not_shift_the_acks(make):
    """At start ExaBGP answers nothing for 3 s: the desired state goes out behind `show
    neighbor json`; nothing is acknowledged within the timeout, the 2 are sent again. Then
    ExaBGP answers all 5 in order and rejects the first announcement sent again."""
    r = make()
    r.c.start()
    r.mono.now += SESSIONS_TIMEOUT_S + 0.1
    r.c.send_due()
    assert r.pipe.written[1:] == START
    r.mono.now += ACK_TIMEOUT_S
    r.c.send_due()  # the 3 timed out
    r.pipe.written.clear()
    r.mono.now += 1.1
    r.c.send_due()
    first_again = r.pipe.written[0]
    assert r.pipe.written == START
    r.c.on_event(answer(EVERY_SESSION_UP))  # the late answer
    for ack in ["done"] * 3 + ["error"] + ["done"]:
        r.c.on_event(ack)
    r.pipe.written.clear()
    r.mono.now += 60
    r.c.send_due()
    assert r.pipe.written == [first_again]


def test_a_timed_out_command_makes_its_effect_unknown(make):
    """Whatever ExaBGP did with a command that timed out is not known: the desired state of
    its keys is sent again, even when the plan went back to what was acknowledged before."""
    r = started(make(policy=FAST))
    ack_all(r)
    r.pipe.written.clear()
    r.mono.now += 0.2
    r.c.apply(window(t2="failed"))
    r.c.send_due()  # withdraw t2 ...
    assert r.pipe.written == WITHDRAW_T2
    r.mono.now += ACK_TIMEOUT_S + 0.1
    r.c.send_due()  # ... no answer
    r.pipe.written.clear()
    r.c.apply(window())  # the plan is back to announcing t2: sent by the decision itself
    assert state_of(r, "t2") == "healthy"
    r.mono.now += 1.1
    r.c.send_due()
    assert announce("t2") in r.pipe.written


def test_a_failing_diff_is_retried_after_the_backoff(make, monkeypatch, logs):
    real, calls = exabgp.diff, []

    def flaky(desired, known):
        calls.append(1)
        if len(calls) == 1:
            raise exabgp.UnsafeValue("a value the line builder refuses")
        return real(desired, known)

    monkeypatch.setattr(exabgp, "diff", flaky)
    r = started(make())
    assert r.pipe.written == ["show neighbor json"]
    assert r.sample("netwatch_controller_errors_total", where="sync") == 1
    [record] = logged(logs, "sync_failed")
    assert record.levelno == logging.ERROR and "retry_in_s=1.0" in record.getMessage()
    r.mono.now += 0.5
    r.c.send_due()
    assert len(calls) == 1
    r.mono.now += 0.5
    r.c.send_due()  # not lost until the plan changes: sent after the backoff
    assert r.pipe.written[1:] == START and len(calls) == 2


def test_a_refused_write_is_counted_and_sent_again(make, logs):
    r = make()
    r.c.start()
    r.pipe.refuse = 1
    r.c.on_event(answer(EVERY_SESSION_UP))
    assert r.pipe.written[1:] == START[1:]  # the first was refused
    assert r.sample("netwatch_controller_errors_total", where="send") == 1
    assert [x.levelno for x in logged(logs, "send_failed")] == [logging.ERROR]
    r.c.on_event("done")  # the show command's ack
    r.mono.now += 0.2
    r.c.send_due()
    assert sorted(r.pipe.written[1:]) == sorted(START)


# --- make-before-break ------------------------------------------------------------------------


def t3_replaces_t2(make) -> Rig:
    """t1 and t2 announce (t3, t4 FAILED, all acknowledged), then t3 recovers and t2 fails:
    the plan announces t3 and withdraws t2; only the announcements go out."""
    r = started(make(policy=FAST))
    ack_all(r)
    r.mono.now += 0.2
    r.c.apply(window(t3="failed", t4="failed"))
    r.c.send_due()
    ack_all(r)
    assert [state_of(r, t) for t in T] == ["healthy", "healthy", "failed", "failed"]
    r.pipe.written.clear()
    r.mono.now += 0.2
    r.c.apply(window(t2="failed", t4="failed"))
    r.c.send_due()
    assert r.pipe.written == [announce("t3", 4), announce("t3", 6)]
    # t2's withdrawals would leave t1 alone until t3's announcements are acknowledged.
    r.pipe.written.clear()
    return r


def test_withdrawals_follow_the_announcements_once_acknowledged(make, logs):
    r = t3_replaces_t2(make)
    assert "commands=2" in logged(logs, "withdrawals_held")[-1].getMessage()
    r.c.on_event("done")
    assert r.pipe.written == []  # one announcement still in flight
    r.c.on_event("done")
    assert r.pipe.written == WITHDRAW_T2  # at once, with the last ack: no probe interval lost


def test_a_rejected_announcement_holds_the_withdrawal_that_needed_it(make):
    """t3's IPv4 announcement is rejected: t2's IPv4 withdrawal waits (t1 would announce
    alone), t2's IPv6 one goes (t3's IPv6 announcement was acknowledged). After its backoff
    t3's announcement is sent again; once acknowledged, t2 is withdrawn."""
    r = t3_replaces_t2(make)
    r.c.on_event("error")
    r.c.on_event("done")
    assert r.pipe.written == [WITHDRAW_T2[1]]
    r.c.on_event("done")
    r.pipe.written.clear()
    for _ in range(4):  # probe rounds during the backoff: nothing, above all no withdrawal
        r.mono.now += 0.2
        r.c.send_due()
    assert r.pipe.written == []
    r.mono.now += 0.2
    r.c.send_due()
    assert r.pipe.written == [announce("t3")]
    r.c.on_event("error")  # rejected again: still held, now for 2 s
    r.mono.now += 1.5
    r.c.send_due()
    assert r.pipe.written == [announce("t3")]
    r.mono.now += 0.5
    r.c.send_due()
    r.c.on_event("done")
    assert r.pipe.written == [announce("t3")] * 2 + [WITHDRAW_T2[0]]


def test_an_unanswered_announcement_holds_the_withdrawals(make):
    """ExaBGP answers neither of t3's announcements within ACK_TIMEOUT_S: t2 stays announced.
    They are sent again after the backoff; the late acks of the first ones are not taken for
    theirs; the withdrawals go once the second ones are acknowledged."""
    r = t3_replaces_t2(make)
    r.mono.now += ACK_TIMEOUT_S + 0.1
    r.c.send_due()
    assert r.pipe.written == [] and r.rejected == 2
    r.mono.now += 1.0
    r.c.send_due()
    assert r.pipe.written == [announce("t3", 4), announce("t3", 6)]
    r.pipe.written.clear()
    r.c.on_event("done")
    r.c.on_event("done")  # the late answers to the first two
    assert r.pipe.written == []
    r.c.on_event("done")
    r.c.on_event("done")
    assert r.pipe.written == WITHDRAW_T2


def test_a_withdrawal_that_needs_no_announcement_goes_out_at_once(make):
    r = started(make(policy=FAST))
    ack_all(r)
    r.pipe.written.clear()
    r.mono.now += 0.2
    r.c.apply(window(t2="failed"))
    r.c.send_due()
    assert r.pipe.written == WITHDRAW_T2


class FakeExabgp(RecordingPipe):
    """ExaBGP's side of the pipe, for the property test: a FIFO of commands, each applied to
    its RIB only when answered `done`. At every write it checks make-before-break: counting
    only announcements ExaBGP acknowledged, minus the withdrawals written and not yet
    answered, no prefix goes below `minimum` neighbors (every session is up)."""

    def __init__(self, minimum: int):
        super().__init__()
        self.minimum = minimum
        # (neighbors, verb, prefixes): `neighbor A , neighbor B announce ...` names several
        self.queue: list[tuple[list[str], str, list[str]]] = []
        self.announced: set[tuple[str, str]] = set()  # acknowledged
        self.violations: list[str] = []

    def counted(self) -> set[tuple[str, str]]:
        withdrawing = {(n, p) for ns, verb, ps in self.queue if verb == "withdraw"
                       for n in ns for p in ps}
        return self.announced - withdrawing

    def send(self, line: str) -> None:
        super().send(line)
        words = line.split()
        if words[0] != "neighbor":
            self.queue.append(([], "show", []))
            return
        at = next(i for i, w in enumerate(words) if w in ("announce", "withdraw"))
        neighbors, verb = words[1:at:3], words[at]
        prefixes = words[words.index("nlri") + 1:]
        before = self.counted()
        self.queue.append((neighbors, verb, prefixes))
        after = self.counted()
        for neighbor in neighbors:
            for prefix in prefixes:
                if (neighbor, prefix) in before - after:
                    left = sum(1 for _, p in after if p == prefix)
                    if left < self.minimum:
                        self.violations.append(f"{line}: {prefix} left with {left}")

    def answer(self, c: Controller, ack: str) -> None:
        if not self.queue:
            return
        neighbors, verb, prefixes = self.queue.pop(0)
        if ack == "done":
            for key in ((n, p) for n in neighbors for p in prefixes):
                if verb == "announce":
                    self.announced.add(key)
                else:
                    self.announced.discard(key)
        c.on_event(ack)


QUALITIES = st.sampled_from(list(QUALITY))
STEPS = st.one_of(
    st.tuples(st.just("window"), st.tuples(QUALITIES, QUALITIES, QUALITIES, QUALITIES)),
    st.tuples(st.just("ack"), st.sampled_from(["done", "done", "done", "error"])),
    st.tuples(st.just("wait"), st.sampled_from([0.2, 1.0, 5.0, ACK_TIMEOUT_S + 0.1])),
)


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(STEPS, max_size=40))
def test_make_before_break_holds_at_every_point_of_the_command_stream(make, steps):
    """Random probe windows (every verdict acted on at once), rejections and timeouts: at
    every command written, counting only the announcements ExaBGP acknowledged minus the
    withdrawals written, each prefix keeps min_announcing_upstreams neighbors. Once ExaBGP
    accepts everything, it holds the plan the announcement-mode metrics show."""
    exa = FakeExabgp(2)
    r = make(exa, policy=FAST)
    assert r.c.params.min_announcing_upstreams == exa.minimum
    r.c.start()
    r.c.on_event(answer(EVERY_SESSION_UP))
    for kind, value in steps:
        if kind == "window":
            r.mono.now += 0.2
            r.c.apply(window(**dict(zip(T, value, strict=True))))
            r.c.send_due()
        elif kind == "ack":
            exa.answer(r.c, value)
        else:
            r.mono.now += value
            r.c.send_due()
        assert exa.violations == []
    for _ in range(20):  # ExaBGP accepts everything from now on
        while exa.queue:
            exa.answer(r.c, "done")
        r.mono.now += 31.0
        r.c.send_due()
        if not exa.queue:
            break
    assert exa.violations == []
    shown = {(neighbor[t], prefix) for t in T for neighbor, prefix in ((T, V4), (T6, V6))
             if r.sample("netwatch_announcement_mode", upstream=t, prefix=prefix,
                         mode="withdrawn") == 0}
    assert shown == exa.announced


# --- sessions, metrics, logs ------------------------------------------------------------------


def test_show_neighbor_answer_counts_sessions_that_are_already_up(make):
    r = make()
    r.c.start()
    r.c.on_event('{"type": "state", "neighbor": {"address": {"peer": "2001:db8:ffff:1::1"}, '
                 '"state": "up"}}')  # an event wins over the answer that follows it
    r.c.on_event(answer({**dict.fromkeys(T.values(), True),
                         **dict.fromkeys(T6.values(), False)}))
    up = {(t, f): r.sample("netwatch_bgp_session_up", upstream=t, family=f)
          for t in T for f in ("ipv4", "ipv6")}
    assert up == {(t, f): (1 if f == "ipv4" or t == "t1" else 0)
                  for t in T for f in ("ipv4", "ipv6")}
    assert r.pipe.written[1] == announce_all(4)


def test_announcement_modes_are_published_once_the_first_announcements_are_written(make):
    """With 10,000 prefixes the mode gauges are 200,000 series: they must not hold back the
    first announcements at start, and they follow right after them."""
    r = make()
    r.c.start()

    def normal() -> float | None:
        return r.sample("netwatch_announcement_mode", upstream="t1", prefix=V4, mode="normal")

    assert normal() is None
    r.c.on_event(answer(dict.fromkeys([*T.values(), *T6.values()], True)))
    assert r.pipe.written[1] == announce_all(4)
    assert normal() == 1


def test_announcement_mode_metric_reports_communities(make):
    """A DEGRADED upstream tagged with the policy's communities reads `communities`; an
    upstream's own communities (always sent) leave it `normal`."""

    def tag(section):
        section["upstreams"][0]["communities"] = ["64501:100"]
        section["policy"]["degraded"] = {"loss_ratio": 0.15, "action": "communities",
                                         "communities": ["64500:666"]}

    r = started(make(policy=FAST, edit=tag))

    def mode(upstream: str) -> dict[str, float]:
        return {m: r.sample("netwatch_announcement_mode", upstream=upstream, prefix=V4, mode=m)
                for m in ("normal", "prepend", "communities", "withdrawn")}

    assert announce("t1", 4, "community [ 64501:100 ] ") in r.pipe.written
    assert mode("t1") == {"normal": 1, "prepend": 0, "communities": 0, "withdrawn": 0}
    r.pipe.written.clear()
    r.mono.now += 0.2
    r.c.apply(window(t2="degraded"))
    r.c.send_due()
    assert state_of(r, "t2") == "degraded"
    assert r.pipe.written == [announce("t2", 4, "community [ 64500:666 ] "),
                            announce("t2", 6, "community [ 64500:666 ] ")]
    assert mode("t2") == {"normal": 0, "prepend": 0, "communities": 1, "withdrawn": 0}


def test_transitions_and_commands_are_logged_with_levels(make, logs):
    r = started(make(policy=FAST))
    r.mono.now += 0.2
    r.c.apply(window(t2="failed"))
    [transition] = logged(logs, "transition")
    assert transition.levelno == logging.WARNING
    assert transition.getMessage().startswith("event=transition upstream=t2 old=healthy "
                                              "new=failed ")
    commands = logged(logs, "command")
    assert commands and {x.levelno for x in commands} == {logging.INFO}
    assert f"line=\"neighbor {T['t1']} , neighbor" in commands[1].getMessage()


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
def test_a_damaged_state_file_is_logged_and_ignored(make, tmp_path, logs, content):
    state = tmp_path / "state" / "controller.json"
    state.parent.mkdir()
    state.write_bytes(content if isinstance(content, bytes) else content.encode())
    r = make()
    assert [x.levelno for x in logged(logs, "state_unreadable")] == [logging.ERROR]
    r.c.publish()
    assert [state_of(r, t) for t in T] == ["healthy"] * 4
    assert r.sample("netwatch_controller_errors_total", where="state") == 1


def test_an_unreadable_state_file_is_logged_and_ignored(make, tmp_path, logs, monkeypatch):
    state = tmp_path / "state" / "controller.json"
    real = Path.read_text

    def refuse(self, *args, **kwargs):
        if self == state:
            raise PermissionError(13, "Permission denied", str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", refuse)  # root reads any mode: refuse outright
    r = make(state={"upstreams": {"t1": {"state": "failed"}}})
    [record] = logged(logs, "state_unreadable")
    assert "Permission denied" in record.getMessage()
    r.c.publish()
    assert state_of(r, "t1") == "healthy"


def _hold_begins(make):
    """A controller whose t2 was FAILED: five good windows (rise) start its 10 s recovery
    hold at mono 1001; the state file is saved then."""
    r = started(make(state={"upstreams": {"t2": {"state": "failed"}}}, mono=1000.0))
    for _ in range(5):
        r.mono.now += 0.2
        r.c.apply(window())
    assert state_of(r, "t2") == "failed"
    return r


def test_a_recovery_hold_counts_the_downtime_of_a_restart_in_the_same_boot(make):
    """The decision clock (CLOCK_MONOTONIC) is one per boot: a controller respawned 5 s
    later goes on with the same hold, downtime included, whatever the wall clock did."""
    r = _hold_begins(make)
    again = started(make(mono=r.mono.now + 5))  # same boot id
    again.mono.now += 4.5  # 9.5 s into the hold
    again.c.apply(window())
    assert state_of(again, "t2") == "failed"
    again.mono.now += 1.0
    again.c.apply(window())
    assert state_of(again, "t2") == "healthy"


def test_after_a_reboot_a_hold_resumes_where_it_was_saved(make):
    """Another boot: the old monotonic times mean nothing and the wall clock may have been
    stepped, so the downtime counts as nothing: the hold resumes at what it had served when
    the state was saved (here nothing), never shorter."""
    _hold_begins(make)
    again = started(make(mono=7.0, boot="boot-2"))
    again.mono.now += 9.5
    again.c.apply(window())
    assert state_of(again, "t2") == "failed"
    again.mono.now += 1.0
    again.c.apply(window())
    assert state_of(again, "t2") == "healthy"


def test_budget_exhaustion_is_logged_once_per_episode(make, logs):
    r = started(make(policy={"max_actions_per_hour": 1}, state={"action_times": [1.7e9]}))
    for _ in range(20):
        r.mono.now += 0.2
        r.c.apply(window(t2="failed"))
    [record] = logged(logs, "action_budget_exhausted")
    assert record.levelno == logging.WARNING
    assert r.sample("netwatch_transit_action_budget_exhausted") == 1
    assert state_of(r, "t2") == "healthy"  # held
    for _ in range(5):  # rise: nothing held back any more, and the gauge says so
        r.mono.now += 0.2
        r.c.apply(window())
    assert r.sample("netwatch_transit_action_budget_exhausted") == 0


# --- probes -----------------------------------------------------------------------------------


async def run_probes(c: Controller, seconds: float) -> None:
    task = asyncio.create_task(c.probe_loop())
    await asyncio.sleep(seconds)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def test_probe_paths_are_installed_through_the_port(make, logs):
    """One path per upstream and family: mark and table from the bases, via the upstream's
    neighbor on its interface. A path the kernel refuses is counted and logged; the others
    are installed and probed."""
    routes = RecordingRoutes(refuse=(2003,))  # t2's IPv6 table
    probers = FakeProbers()
    r = make(routes=routes, prober=probers)
    asyncio.run(run_probes(r.c, 0.1))
    installed = [(p.mark - 0x4E580, p.table, str(p.gateway), p.ifname) for p in routes.ensured]
    assert installed == [
        (0, 2000, T["t1"], "t1"), (1, 2001, T6["t1"], "t1"), (2, 2002, T["t2"], "t2"),
        (4, 2004, T["t3"], "t3"), (5, 2005, T6["t3"], "t3"),
        (6, 2006, T["t4"], "t4"), (7, 2007, T6["t4"], "t4"),
    ]
    assert routes.opened == routes.closed == 1
    # the interfaces' indexes first: without them every path looked missing and was rewritten
    assert routes.links_asked == [["t1", "t2", "t3", "t4"]]
    assert r.sample("netwatch_controller_errors_total", where="probe_path") == 1
    [failed] = logged(logs, "probe_path_failed")
    assert failed.levelno == logging.ERROR
    assert "upstream=t2 table=2003" in failed.getMessage()
    assert len(logged(logs, "probe_path_installed")) == 7
    assert [mark - 0x4E580 for _, _, mark in probers.opened] == list(range(8))


def test_an_unprobed_upstream_is_logged_once_and_has_a_metric(make, logs):
    """t3's probers cannot open their sockets (both families), t2's IPv4 one neither: t3 is
    not probed at all (netwatch_transit_probed 0, logged once), t2 still is through IPv6.
    (An upstream without an interface never gets this far: the site file refuses it.)"""
    refused = OSError(1, "Operation not permitted")
    probers = FakeProbers(fail={0x4E580 + 2: refused, 0x4E580 + 4: refused,
                                0x4E580 + 5: refused})
    r = make(prober=probers)
    asyncio.run(run_probes(r.c, 0.5))  # at least two rounds of 200 ms
    probed = {n: r.sample("netwatch_transit_probed", upstream=n) for n in T}
    assert probed == {"t1": 1, "t2": 1, "t3": 0, "t4": 1}
    [unprobed] = logged(logs, "unprobed")
    assert unprobed.getMessage().startswith("event=unprobed upstream=t3 ")
    assert unprobed.levelno == logging.WARNING
    assert "upstream=t2 family=ipv4" in logged(logs, "prober_failed")[0].getMessage()


class VirtualTime:
    """The probe loop on the fake clock: its `sleep` moves the clock (`late_s` further: a
    busy loop wakes up late) and lets the other tasks run once."""

    def __init__(self, clock, late_s: float = 0.0):
        self.clock = clock
        self.late_s = late_s

    async def sleep(self, seconds: float) -> None:
        self.clock.now += seconds + self.late_s
        await asyncio.sleep(0)

    async def until(self, at: float, task: asyncio.Task) -> None:
        """Until the clock reaches `at`, or `task` ends."""
        while self.clock.now < at and not task.done():
            await asyncio.sleep(0)

    async def probe(self, c: Controller, seconds: float) -> None:
        """Run `c.probe_loop()` for `seconds` of the clock."""
        task = asyncio.create_task(c.probe_loop())
        await self.until(self.clock.now + seconds, task)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


MARK = {"t1": 0x4E580, "t2": 0x4E582, "t3": 0x4E584, "t4": 0x4E586}  # each one's IPv4 path


@dataclass
class ScriptedProbers:
    """A ProberFactory of batch probers on the fake clock, with EchoBatch's contract: the probe
    through `mark` to `destination` sent at `sent_at` is answered `rtt(mark, destination,
    sent_at)` seconds later (None: lost); `result(destination, wait_s)` counts an answer read
    by then, as measured, and not when that is more than `wait_s`. `read_late`: the round trip
    ends only when a busy loop gets to it (PingEach's TCP probes: a task per probe). `sent`
    has every probe's send time per (mark, destination)."""

    clock: object
    rtt: object = lambda mark, destination, sent_at: 0.001
    read_late: bool = False
    sent: dict[tuple[int, str], list[float]] = field(default_factory=dict)
    order: list[tuple[int, str]] = field(default_factory=list)  # every send, in order

    def __call__(self, method: str, family: int, mark: int):
        return _ScriptedPath(self, mark)


@dataclass
class _ScriptedPath:
    probers: ScriptedProbers
    mark: int

    def send(self, destination: str, wait_s: float) -> bool:
        self.probers.sent.setdefault((self.mark, destination), []).append(self.probers.clock())
        self.probers.order.append((self.mark, destination))
        return True

    def result(self, destination: str, wait_s: float) -> float | None:
        sent_at = self.probers.sent[(self.mark, destination)][-1]
        rtt = self.probers.rtt(self.mark, destination, sent_at)
        waited = self.probers.clock() - sent_at
        if rtt is None or rtt > waited:
            return None  # lost, or not in yet
        measured = waited if self.probers.read_late else rtt
        return measured if measured <= wait_s else None


def fast_probes(section: dict) -> None:
    """Probes every 100 ms (timeout 50 ms, confirmations every 10 ms), judged on 0.55 s:
    the first judgement that counts is the grid's at 0.6 s."""
    section["probe"].update(interval_ms=100, timeout_ms=50, confirm_interval_ms=10,
                            window_s=0.55)


def test_without_any_prober_the_controller_runs_on_unprobed(make, logs, clock):
    """No prober opens (no CAP_NET_RAW, SO_MARK refused: EPERM for every path). The controller
    runs on: it announces its desired state, reports every upstream unprobed, finds no
    verdict in its empty windows, and stops cleanly when ExaBGP closes the pipe. (A probes
    worker that died would exit 70 and ExaBGP respawn it: a crash loop.)"""

    def refused(method: str, family: int, mark: int):
        raise OSError(errno.EPERM, "Operation not permitted")

    time = VirtualTime(clock)
    r = make(ScriptedPipe(script=(answer(EVERY_SESSION_UP), "done")), prober=refused,
             sleep=time.sleep, edit=fast_probes)

    async def scenario():
        task = asyncio.create_task(r.c.run())
        await time.until(clock.now + 1.0, task)  # a second of its clock: 5 judgements
        running = not task.done()
        r.pipe.closed.set()
        return running, await task

    running, code = asyncio.run(asyncio.wait_for(scenario(), 5))
    assert running and code == exitcodes.OK
    assert logged(logs, "worker_died") == []
    assert r.pipe.written[1:] == START
    assert {n: r.sample("netwatch_transit_probed", upstream=n) for n in T} == dict.fromkeys(T, 0)
    assert len(logged(logs, "unprobed")) == 4
    assert {n: state_of(r, n) for n in T} == dict.fromkeys(T, "healthy")


def test_an_answer_read_late_by_a_busy_loop_is_no_lost_probe(make, clock):
    """The loop wakes up 15 ms late and reads the answers only when it judges them: each one
    measures longer than the wait its probe was given. It came in before the judgement, so it
    is an answer: no loss (the loop's own latency is not the path's), and the RTT is shown as
    measured."""
    time = VirtualTime(clock, late_s=0.015)
    r = started(make(prober=ScriptedProbers(clock, read_late=True), sleep=time.sleep,
                     edit=fast_probes))
    asyncio.run(time.probe(r.c, 1.0))
    assert {n: r.sample("netwatch_transit_loss_ratio", upstream=n) for n in T} == \
        dict.fromkeys(T, 0)
    assert r.sample("netwatch_transit_local_fault") == 0
    # the timeout, and the 15 ms the loop took to read it
    assert {n: r.sample("netwatch_transit_rtt_seconds", upstream=n) for n in T} == \
        dict.fromkeys(T, pytest.approx(0.05 + 0.015))


def test_a_lost_probe_is_confirmed_at_once_not_at_the_next_interval(make, clock):
    """t2's first probe to 203.0.113.1 is lost: judged at its deadline (50 ms), and confirmed
    in the same wake-up, not at the next interval (100 ms) like the probes that answered."""
    time = VirtualTime(clock)
    start = clock.now
    first = (MARK["t2"], "203.0.113.1")
    probers = ScriptedProbers(
        clock, rtt=lambda mark, dest, sent_at: None if (mark, dest) == first and
        sent_at == start else 0.001)
    r = started(make(prober=probers, sleep=time.sleep, edit=fast_probes))
    asyncio.run(time.probe(r.c, 0.15))
    lost, answered = probers.sent[first], probers.sent[(MARK["t2"], "203.0.113.2")]
    assert lost[1] - lost[0] == pytest.approx(0.05)  # the timeout, and no more
    assert answered[1] - answered[0] == pytest.approx(0.1)


def test_a_round_probes_each_target_through_every_upstream_before_the_next(make, clock):
    """A fault that lands in the middle of a round's sends must cost every upstream alike:
    sent upstream by upstream, the Internet going dark behind every transit made the ones
    sent last FAILED (a round ahead of the others) before the all-bad guard saw it."""
    time = VirtualTime(clock)
    probers = ScriptedProbers(clock)
    r = started(make(prober=probers, sleep=time.sleep, edit=fast_probes))
    asyncio.run(time.probe(r.c, 0.01))  # the first round only
    for v6 in (False, True):
        family = [send for send in probers.order if (":" in send[1]) is v6]
        runs = [(dest, [m for m, _ in group])
                for dest, group in itertools.groupby(family, key=lambda s: s[1])]
        assert len(runs) == len({dest for dest, _ in runs}) > 1, family  # each target once
        for dest, marks in runs:
            assert len(marks) == 4 and len(set(marks)) == 4, (dest, marks)  # all four


@pytest.mark.parametrize("t2_rtt, state, then", [
    (0.03, None, "degraded"),  # 29 ms above the others (degraded at 20): DEGRADED's fall
    (0.001, {"upstreams": {"t2": {"state": "degraded"}}}, "healthy"),  # a rise
])
def test_an_early_judgement_counts_toward_failed_only(make, clock, t2_rtt, state, then):
    """Fall and rise 3: t2 changes state at the third judgement of the interval that counts
    (0.6, 0.7, 0.8 s), however many early judgements come between: t4's path to 203.0.113.3
    stops answering at 0.6 s, its confirmations lose FAILED's streak (4) at 0.68 s, and the
    early judgement then takes nothing from t2."""
    time = VirtualTime(clock)
    start = clock.now

    def rtt(mark, dest, sent_at):
        if mark == MARK["t4"] and dest == "203.0.113.3" and sent_at >= start + 0.6 - 1e-6:
            return None
        return t2_rtt if mark in (MARK["t2"], MARK["t2"] + 1) else 0.001

    def edit(section):
        fast_probes(section)
        section["policy"].update(fall=3, rise=3, recovery_hold_s=0, max_actions_per_hour=100)
        section["policy"]["degraded"]["latency_ms"] = 20

    r = started(make(prober=ScriptedProbers(clock, rtt), sleep=time.sleep, edit=edit,
                     state=state))
    before = state_of(r, "t2")
    asyncio.run(time.probe(r.c, 0.75))
    assert state_of(r, "t2") == before  # two judgements of the interval, and an early one
    asyncio.run(time.probe(r.c, 0.1))
    assert state_of(r, "t2") == then


def test_a_blackhole_is_failed_at_its_early_judgement(make, clock):
    """t3 stops answering at 0.6 s: its confirmations lose FAILED's streak (4) at 0.68 s, and
    the early judgement then makes it FAILED, before the interval's at 0.7 s."""
    time = VirtualTime(clock)
    start = clock.now

    def rtt(mark, dest, sent_at):
        dead = mark in (MARK["t3"], MARK["t3"] + 1) and sent_at >= start + 0.6 - 1e-6
        return None if dead else 0.001

    r = started(make(prober=ScriptedProbers(clock, rtt), sleep=time.sleep, edit=fast_probes))
    asyncio.run(time.probe(r.c, 0.69))
    assert state_of(r, "t3") == "failed"

# --- how it stops -----------------------------------------------------------------------------


class ScriptedPipe(RecordingPipe):
    """Enough of ExabgpPipe for run(): the lines of `script` come from ExaBGP, then nothing
    until `closed` is set, then EOF (or `error`, raised by the reader)."""

    def __init__(self, error: Exception | None = None, script: tuple[str, ...] = ()):
        super().__init__()
        self.closed: asyncio.Event | None = None
        self.error = error
        self.script = script

    async def open(self) -> None:
        self.closed = asyncio.Event()

    async def lines(self):
        for line in self.script:
            yield line
        await self.closed.wait()
        if self.error is not None:
            raise self.error

    async def flush(self) -> None:
        pass


def test_a_dead_probe_loop_stops_the_controller_leaving_announcements(make, logs):
    r = make(ScriptedPipe(), prober=FakeProbers(fail={0x4E580: RuntimeError("prober exploded")}))
    code = asyncio.run(asyncio.wait_for(r.c.run(), 5))
    assert code == exitcodes.SOFTWARE
    assert r.pipe.written == ["show neighbor json"]  # no withdrawal on the way out
    [died] = logged(logs, "worker_died")
    assert died.levelno == logging.ERROR
    assert "worker=probes" in died.getMessage() and "prober exploded" in died.getMessage()


def test_a_dead_exabgp_reader_stops_the_controller(make, logs):
    r = make(ScriptedPipe(OSError(5, "Input/output error")))

    async def scenario():
        task = asyncio.create_task(r.c.run())
        await asyncio.sleep(0.05)
        r.pipe.closed.set()
        return await task

    assert asyncio.run(asyncio.wait_for(scenario(), 5)) == exitcodes.SOFTWARE
    [died] = logged(logs, "worker_died")
    assert "worker=exabgp-events" in died.getMessage()


def test_exabgp_closing_the_pipe_stops_the_controller_cleanly(make, logs):
    r = make(ScriptedPipe())

    async def scenario():
        task = asyncio.create_task(r.c.run())
        await asyncio.sleep(0.3)  # the probes run meanwhile
        r.pipe.closed.set()
        return await task

    assert asyncio.run(asyncio.wait_for(scenario(), 5)) == exitcodes.OK
    assert [x.levelno for x in logged(logs, "stop")] == [logging.INFO]
    assert logged(logs, "worker_died") == []


def test_a_failing_save_is_logged_once_per_episode_and_the_controller_runs_on(
        make, logs, caplog, tmp_path):
    """A state_dir that cannot be written (here: a file where the directory should be; a full
    disk alike): every failure is counted, logged once, and the gauge says the file is stale;
    once the directory can be written again, the state is saved and the gauge cleared."""
    blocker = tmp_path / "state"  # the site copy's state_dir
    blocker.write_text("a file, not a directory")
    r = started(make(policy=FAST))
    for quality in ("failed", "healthy", "failed"):
        r.mono.now += 1
        r.c.apply(window(t2=quality))
    assert len(logged(caplog, "persist_failed")) == 1
    assert r.sample("netwatch_controller_errors_total", where="persist") == 3
    assert r.sample("netwatch_controller_state_file_stale") == 1
    assert state_of(r, "t2") == "failed"  # decisions went on from the state in memory
    blocker.unlink()
    blocker.mkdir()
    r.mono.now += 1
    r.c.apply(window(t2="healthy"))
    assert r.sample("netwatch_controller_state_file_stale") == 0
    assert len(logged(caplog, "persist_recovered")) == 1
    assert (blocker / "controller.json").exists()


# --- sessions whose state is unknown ----------------------------------------------------------


def test_unknown_sessions_are_asked_again_with_a_backoff_until_failover_works(make, logs):
    """ExaBGP acknowledges `show neighbor json` without an answer (or with one that cannot be
    read): every session stays UNKNOWN, and the interlock withdraws through none of them, so
    a failed t2 stays announced. The controller asks again after 5 s, then 10 s, ..., and
    once the answer is in, t2 is withdrawn; the gauge counts the unknown sessions."""
    r = make(policy=FAST)
    t0 = r.mono.now
    r.c.start()
    r.c.on_event("done")  # acknowledged, no answer
    ack_all(r)
    assert r.sample("netwatch_bgp_sessions_unknown") == 8
    r.mono.now += 1
    r.c.apply(window(t2="failed"))
    r.c.send_due()
    assert not any("withdraw" in line for line in r.pipe.written)  # the problem itself
    asked = []
    for _ in range(30):  # 30 s of probe rounds; ExaBGP answers every ask with nothing
        r.mono.now += 1
        r.c.send_due()
        while r.pipe.written:  # ExaBGP accepts everything
            if r.pipe.written.pop(0) == "show neighbor json":
                asked.append(r.mono.now)
            r.c.on_event("done")
    assert [round(t - t0) for t in asked] == [5, 15]  # then 35, 75, +60 ...
    [first, *_] = logged(logs, "sessions_unknown")
    assert first.levelno == logging.WARNING and "unknown=t1/ipv4," in first.getMessage()
    r.mono.now += 5  # the next ask, answered this time
    r.c.send_due()
    assert r.pipe.written == ["show neighbor json"]
    r.pipe.written.clear()
    r.c.on_event(answer(EVERY_SESSION_UP))
    r.c.on_event("done")
    assert r.sample("netwatch_bgp_sessions_unknown") == 0
    # t2's withdrawals are held until t3's replacing announcements are acknowledged.
    while r.pipe.written and not all(x in r.pipe.written for x in WITHDRAW_T2):
        ack_all(r)
        r.c.send_due()
    assert all(x in r.pipe.written for x in WITHDRAW_T2)
    ack_all(r)
    r.mono.now += 600
    r.c.send_due()
    assert "show neighbor json" not in r.pipe.written  # all known: no more asking


def test_no_ask_again_while_exabgp_acknowledges_nothing(make):
    """An ExaBGP that answers nothing gets no second `show neighbor json` piled up behind the
    first: its answer, however late, is used when it comes."""
    r = make()
    r.c.start()
    for _ in range(120):
        r.mono.now += 1
        r.c.send_due()
    assert r.pipe.written.count("show neighbor json") == 1


# --- a stalled disk ---------------------------------------------------------------------------


def test_a_stalled_disk_delays_no_failover_and_saves_coalesce(make, monkeypatch, tmp_path):
    """Every fsync hangs (a stalled disk). With the workers running, a failover still writes
    its announcements and withdrawals at once, from the decision itself; no fsync runs on the
    event loop; the state saves run one at a time, the changes made meanwhile coalesced into
    one save of the latest state, and the audit records land once the disk is back."""
    import os
    import threading

    from netwatch.runtime.state_store import StateStore

    r = started(make(policy=FAST))
    ack_all(r)
    disk = threading.Event()
    fsync_threads: list[int] = []
    real_fsync, real_save = os.fsync, StateStore.save
    saves = {"now": 0, "most": 0, "done": 0}

    def stalled_fsync(fd):
        fsync_threads.append(threading.get_ident())
        disk.wait(10)
        real_fsync(fd)

    def counted_save(self, data):
        saves["now"] += 1
        saves["most"] = max(saves["most"], saves["now"])
        try:
            real_save(self, data)
        finally:
            saves["now"] -= 1
            saves["done"] += 1

    monkeypatch.setattr(os, "fsync", stalled_fsync)
    monkeypatch.setattr(StateStore, "save", counted_save)
    loop_thread = threading.get_ident()

    async def scenario():
        workers = [asyncio.create_task(r.c.save_state()),
                   asyncio.create_task(r.c.control.audit_writer.run())]
        await asyncio.sleep(0)  # the workers start
        for quality in ("failed", "healthy", "degraded"):
            r.mono.now += 1
            r.c.apply(window(t2=quality))  # the decision writes what is due itself
            while r.pipe.written and not all(x in r.pipe.written for x in WITHDRAW_T2):
                ack_all(r)
            if quality == "failed":
                assert all(x in r.pipe.written for x in WITHDRAW_T2)
            ack_all(r)
            await asyncio.sleep(0.01)  # the first save starts, and hangs
        await asyncio.sleep(0.05)  # the loop is free while the disk hangs
        assert saves["done"] == 0 and saves["now"] == 1
        disk.set()
        for _ in range(200):
            if saves["done"] == 2 and not r.c.control.audit_writer.pending:
                break
            await asyncio.sleep(0.01)
        for w in workers:
            w.cancel()
        await asyncio.gather(*workers, return_exceptions=True)

    asyncio.run(asyncio.wait_for(scenario(), 20))
    assert loop_thread not in fsync_threads
    assert saves == {"now": 0, "most": 1, "done": 2}  # one in flight; the rest coalesced
    saved = json.loads((tmp_path / "state" / "controller.json").read_text())
    assert saved["upstreams"]["t2"]["state"] == "degraded"  # the latest state won
    transitions, _ = r.c.control.audit_log.read(limit=100)
    assert [e["new"] for e in transitions if e["kind"] == "transition"] == [
        "failed", "healthy", "degraded"]


# --- what the dashboards and alerts read --------------------------------------------------------


def test_the_minimum_and_the_action_budget_left_are_exported(make):
    """The rules compare announcing upstreams with the site's own minimum, and warn when one
    automatic action is left in the hour."""
    r = started(make(policy={**FAST, "max_actions_per_hour": 3}))
    assert r.sample("netwatch_transit_min_announcing_upstreams") == \
        r.c.params.min_announcing_upstreams
    assert r.sample("netwatch_transit_action_budget_remaining") == 3
    r.mono.now += 1
    r.c.apply(window(t2="failed"))
    assert state_of(r, "t2") == "failed"
    assert r.sample("netwatch_transit_action_budget_remaining") == 2


def test_rtt_above_the_others_is_exported_per_upstream(make):
    """t2 answers 50 ms later than the others: its excess RTT is what the verdict judges."""
    r = started(make())
    t0 = r.mono.now
    window_s = r.c.ctl.probe.window_s
    while r.mono.now < t0 + window_s + 2:
        for name in T:
            for i in range(1, 11):
                r.c.window.record(name, f"inet-{i}", r.mono.now, 0.060 if name == "t2" else 0.010)
        r.mono.now += 0.5
    r.c.judge()
    assert r.sample("netwatch_transit_rtt_excess_seconds", upstream="t2") == pytest.approx(0.05)
    assert r.sample("netwatch_transit_rtt_excess_seconds", upstream="t1") == pytest.approx(0)


def full_table_answer(counts: dict[str, int]) -> str:
    """ExaBGP's answer to `show neighbor json`, every session up, with UPDATE counts."""
    return json.dumps([
        {"state": "up", "fsm": "ESTABLISHED", "peer": {"address": address},
         "messages": {"received": {"update": counts.get(address, 3)}}}
        for address in EVERY_SESSION_UP
    ])


def test_update_counts_are_asked_every_30_s_and_change_nothing_else(make):
    """`show neighbor json` again every 30 s: t2 sends a full table (4,000 UPDATEs), exported
    per upstream and family; no announcement and no End-of-RIB goes out again for it."""
    r = make()
    registry = CollectorRegistry()
    c = Controller(r.c.site, registry, r.pipe, mono=r.mono, boot=lambda: "boot-1",
                   routes=RecordingRoutes(), prober=FakeProbers(), updates_ask_s=30.0)

    def updates(upstream: str, family: str) -> float | None:
        return registry.get_sample_value("netwatch_bgp_updates_received",
                                         {"upstream": upstream, "family": family})

    c.start()
    c.on_event(full_table_answer({}))
    c.on_event("done")
    answered = r.pipe.written.count("show neighbor json")  # answered above
    while answered < len(r.pipe.written):  # the full desired state, then the End-of-RIBs
        answered += 1
        c.on_event("done")
    r.pipe.written.clear()
    c.send_due()
    assert r.pipe.written == []
    assert updates("t2", "ipv4") == 3
    r.mono.now += 29
    c.send_due()
    assert r.pipe.written == []
    r.mono.now += 1
    c.send_due()
    assert r.pipe.written == ["show neighbor json"]
    r.pipe.written.clear()
    c.on_event(full_table_answer({T["t2"]: 4000}))
    c.on_event("done")
    c.send_due()
    assert r.pipe.written == []  # the same sessions, already up: nothing sent again
    assert updates("t2", "ipv4") == 4000
    assert updates("t2", "ipv6") == 3
