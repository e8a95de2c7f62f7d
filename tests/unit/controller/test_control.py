"""The operators' side of the controller: drains (graceful shutdown, then withdrawal),
restores, prepends, lease expiry, restarts with leases in force, the interlock, `status`, the
audit trail and the metrics. Driven through the control handler and the controller's public
methods, with a recording ExaBGP pipe and fake clocks (decision and wall): what a test
checks is the line ExaBGP is told, the answer an operator gets, the record in the audit log.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import shutil
import tempfile
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry

from netwatch.commands import Daemon
from netwatch.commands.status_cmd import render
from netwatch.config import load_site
from netwatch.control import client
from netwatch.control.audit import AuditLog, audit_path
from netwatch.control.leases import LeaseBook, LeaseKind, Who
from netwatch.control.protocol import (
    Command,
    NotFound,
    Peer,
    Refused,
    Request,
    UnknownCommand,
    validate_args,
)
from netwatch.controller import overrides as operator
from netwatch.controller.daemon import Controller
from netwatch.controller.decision import (
    OperatorOverrides,
    SessionChange,
    SessionSummary,
    drain_refusal,
    initial_state,
    step,
)
from netwatch.controller.params import SessionState, params_from_site
from netwatch.controller.plan import Drain, Overrides
from netwatch.controller.verdict import PathStats, ProbeStats
from netwatch.core.vocabulary import Family

T = {"t1": "192.0.2.1", "t2": "192.0.2.5", "t3": "192.0.2.9", "t4": "192.0.2.13"}
T6 = {f"t{i}": f"2001:db8:ffff:{i}::1" for i in range(1, 5)}
V4, V6 = "198.51.100.0/24", "2001:db8:100::/48"
WALL = 1_800_000_000.0
ROOT = Peer(uid=0, gid=0, pid=4242, user="root", may_write=True)
FAST = {"fall": 1, "rise": 1, "recovery_hold_s": 0, "max_actions_per_hour": 1000}


def announce(upstream: str, family: int = 4, attributes: str = "") -> str:
    neighbor, prefix = (T[upstream], V4) if family == 4 else (T6[upstream], V6)
    return f"neighbor {neighbor} announce attributes next-hop self {attributes}nlri {prefix}"


def withdraw(upstream: str, family: int = 4) -> str:
    neighbor, prefix = (T[upstream], V4) if family == 4 else (T6[upstream], V6)
    return f"neighbor {neighbor} withdraw attributes next-hop self nlri {prefix}"


GSHUT = "community [ 65535:0 ] "


class Pipe:
    """ExaBGP's pipe, recording every line written."""

    def __init__(self):
        self.written: list[str] = []

    def send(self, line: str) -> None:
        self.written.append(line)

    async def flush(self) -> None:
        pass


class Rig:
    """A controller, its clocks, its pipe and its registry."""

    def __init__(self, c: Controller, pipe: Pipe, registry: CollectorRegistry, mono, wall):
        self.c, self.pipe, self.registry, self.mono, self.wall = c, pipe, registry, mono, wall

    def request(self, cmd: Command, peer: Peer = ROOT, **args) -> dict:
        """The controller's answer to a request, as the control server would hand it over."""
        req = Request(7, cmd, validate_args(cmd, args))
        return asyncio.run(self.c.control.handle(req, peer))

    def tick(self) -> None:
        asyncio.run(self.c.control.tick())

    def sent(self) -> list[str]:
        """The lines written since the last time, each then accepted by ExaBGP (but `show
        neighbor json`, which is answered); what that makes due is written, not returned."""
        lines = list(self.pipe.written)
        del self.pipe.written[: len(lines)]
        for line in lines:
            if line != "show neighbor json":
                self.c.on_event("done")
        return lines

    def ack(self) -> None:
        self.sent()

    def settled(self) -> list[str]:
        """Every line written until ExaBGP, accepting each, is told nothing more (withdrawals
        wait for the announcements they need): the routes, End-of-RIBs left out."""
        lines: list[str] = []
        while self.pipe.written:
            lines += self.sent()
        return [x for x in lines if " eor " not in x and x != "show neighbor json"]

    def audit(self, kind: str | None = None) -> list[dict]:
        events, _ = self.c.control.audit_log.read(limit=10_000)
        return [e for e in events if kind is None or e["kind"] == kind]

    def sample(self, name: str, **labels) -> float | None:
        return self.registry.get_sample_value(name, labels)


@pytest.fixture
def short_dir():
    """A directory with a short path: a Unix socket path has at most 107 bytes."""
    path = Path(tempfile.mkdtemp(prefix="nwctl", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def make(site_copy, lab_site, clock, short_dir, quiet_probes):
    """make(policy=None, graceful_s=None) -> Rig: a controller on the lab's site file, its
    control socket in `short_dir`, its state in the test's tmp_path (the same for every
    controller a test makes: a restart), the decision clock `clock`, a wall clock at WALL."""
    raw = yaml.safe_load(lab_site.read_text())
    targets = (lab_site.parent / raw["controller"]["probe"]["targets_file"]).resolve()
    wall = type(clock)(WALL)

    def build(policy=None, graceful_s=None) -> Rig:
        section = copy.deepcopy(raw["controller"])
        section["probe"]["targets_file"] = str(targets)
        section["policy"].update(policy or {})
        if graceful_s is not None:
            section["drain_graceful_s"] = graceful_s
        control = {"agent": str(short_dir / "agent.sock"),
                   "controller": str(short_dir / "controller.sock"), "mode": "0660"}
        path = site_copy(controller=section, control=control)
        registry, pipe = CollectorRegistry(), Pipe()
        c = Controller(load_site(path), registry, pipe, mono=clock, wall=wall,
                       boot=lambda: "boot-1", routes=quiet_probes, prober=quiet_probes)
        return Rig(c, pipe, registry, clock, wall)

    return build


def sessions_answered(r: Rig) -> None:
    """`start` as run() does; ExaBGP answers `show neighbor json` (and acknowledges it):
    every session up."""
    r.c.start()
    peers = [*T.values(), *T6.values()]
    r.c.on_event(json.dumps([{"state": "up", "fsm": "ESTABLISHED", "peer": {"address": p}}
                             for p in peers]))
    r.c.on_event("done")


def started(r: Rig) -> Rig:
    """Started as run() starts it; ExaBGP accepts the full desired state and the End-of-RIBs
    that follow it; the record is cleared."""
    sessions_answered(r)
    r.settled()
    return r


def window(**quality: str) -> ProbeStats:
    """A probe window through every upstream, 10 targets: healthy unless named failed."""
    paths = {"healthy": PathStats(10, 0, 0.010), "failed": PathStats(10, 10, None, 5, 5)}
    return ProbeStats({(n, f"inet-{i}"): paths[quality.get(n, "healthy")]
                       for n in T for i in range(1, 11)})


# --- the leases as the plan sees them (pure) --------------------------------------------------


def lease_book(*adds) -> LeaseBook:
    book = LeaseBook("c")
    for kind, target, extra in adds:
        book = book.add(kind, target, Who(0, "root"), "test", WALL, 600, **extra).book
    return book


def test_a_drain_is_graceful_until_its_period_ends_then_withdrawn_on_the_wall_clock():
    book = lease_book((LeaseKind.DRAIN, "t1", {"graceful_s": 30}),
                      (LeaseKind.DRAIN, "t2", {}),  # left to the site: 60 s here
                      (LeaseKind.PREPEND, "t3", {"count": 2}))
    at = {t: operator.overrides_of(book.leases, WALL + t, 60) for t in (0, 29.9, 30, 60, 600)}
    assert at[0] == Overrides(drains={"t1": Drain(False), "t2": Drain(False)},
                              prepends={"t3": 2})
    assert at[29.9].drains["t1"] == Drain(False)
    assert at[30].drains == {"t1": Drain(True), "t2": Drain(False)}
    assert at[60].drains == {"t1": Drain(True), "t2": Drain(True)}
    assert at[600] == Overrides()  # every lease expired: nothing forced, whoever dropped them
    assert operator.next_change_at(book.leases, WALL, 60) == WALL + 30
    assert operator.next_change_at(book.leases, WALL + 30, 60) == WALL + 60
    assert operator.next_change_at(book.leases, WALL + 60, 60) == WALL + 600
    assert operator.next_change_at(book.leases, WALL + 600, 60) is None


def test_the_interlock_counts_graceful_drains_as_withdrawn(lab_site):
    """t1 and t2 drained, both still graceful (announcing): a third drain passes the check of
    the instant, but once the first two withdraw only t4 would be left. Refused."""
    params = params_from_site(load_site(lab_site))
    state = initial_state(params)
    up = {(u.name, f): True for u in params.upstreams for f in u.families}
    state, _ = step(state, SessionSummary(up), 0.0)
    graceful = Overrides(drains={"t1": Drain(False), "t2": Drain(False)})
    state, _ = step(state, OperatorOverrides(graceful), 0.0)
    assert drain_refusal(state, "t3") is None  # the instant's check lets it through
    refusal = operator.interlock_refusal(state, "t3")
    assert refusal is not None and "ipv4 announced through 1 other upstream(s) (t4)" in refusal
    assert "--force" in refusal
    forced = Overrides(drains={"t1": Drain(True, forced=True)})
    state, _ = step(state, OperatorOverrides(forced), 0.0)
    assert operator.interlock_refusal(state, "t2") is None  # t3 and t4 stay
    assert operator.interlock_refusal(state, "t3") is None
    state, _ = step(state, OperatorOverrides(
        Overrides(drains={"t1": Drain(True, forced=True), "t2": Drain(True)})), 0.0)
    assert "draining t3" in operator.interlock_refusal(state, "t3")


# --- drains through the controller ------------------------------------------------------------


def test_a_drain_announces_graceful_shutdown_then_withdraws(make):
    r = started(make())
    change = r.request(Command.DRAIN, upstream="t1", reason="CHG-1 maintenance", graceful_s=2)
    assert change["lease"]["graceful_s"] == 2 and change["message"].startswith("c1: drain t1")
    assert r.sent() == [announce("t1", 4, GSHUT), announce("t1", 6, GSHUT)]
    t1 = r.c.control.status()["upstreams"][0]
    assert t1["drain"] == {"stage": "graceful", "withdraw_at": WALL + 2}
    assert t1["egress"] is False  # traffic leaves before the withdrawal
    assert {a["mode"] for a in t1["announcements"]} == {"graceful_shutdown"}
    r.wall.now += 1.9
    r.tick()
    assert r.pipe.written == []
    r.wall.now += 0.1
    r.tick()
    assert r.sent() == [withdraw("t1"), withdraw("t1", 6)]
    assert r.c.control.status()["upstreams"][0]["drain"]["stage"] == "withdrawn"
    assert [(e["upstream"], e["family"], e["old"], e["new"]) for e in r.audit("announcement")
            ] == [("t1", "ipv4", "normal", "graceful_shutdown"),
                  ("t1", "ipv6", "normal", "graceful_shutdown"),
                  ("t1", "ipv4", "graceful_shutdown", "withdrawn"),
                  ("t1", "ipv6", "graceful_shutdown", "withdrawn")]
    assert [e["upstream"] for e in r.audit("drain_stage")] == ["t1"]


def test_a_drain_without_graceful_s_takes_the_site_default_into_its_lease(make):
    r = started(make(graceful_s=45))
    change = r.request(Command.DRAIN, upstream="t2", reason="CHG-2")
    assert change["lease"]["graceful_s"] == 45
    assert r.c.control.status()["upstreams"][1]["drain"]["withdraw_at"] == WALL + 45


def test_a_drain_below_the_interlock_is_refused_and_changes_nothing(make):
    r = started(make())
    for name in ("t1", "t2"):
        r.request(Command.DRAIN, upstream=name, reason="CHG-3", graceful_s=0)
    r.ack()
    with pytest.raises(Refused) as refused:
        r.request(Command.DRAIN, upstream="t3", reason="CHG-3", graceful_s=0)
    assert "draining t3 would leave ipv4 announced through 1 other upstream(s) (t4)" in str(
        refused.value)
    assert r.pipe.written == []
    assert [x.target for x in r.c.control.keeper.book.leases] == ["t1", "t2"]
    assert r.c.control.leases() == list(r.c.control.keeper.store.load().book.leases)


def test_a_forced_drain_goes_through_and_is_logged_and_audited_as_forced(make, caplog):
    """Only t4 would be left: --force withdraws t3 all the same; the drains of t1 and t2 were
    not forced, so the interlock now keeps one of them announced (GRACEFUL_SHUTDOWN still on),
    and only a forced drain of it would take it away."""
    caplog.set_level(logging.INFO, logger="netwatch.controller")
    r = started(make())
    for name in ("t1", "t2"):
        r.request(Command.DRAIN, upstream=name, reason="CHG-4", graceful_s=0)
    r.ack()
    change = r.request(Command.DRAIN, upstream="t3", reason="CHG-4 all but t4", graceful_s=0,
                       force=True)
    assert change["lease"]["forced"] is True
    assert "FORCED past the interlock: draining t3" in change["message"]
    # t3 goes; t1's drain was not forced: the interlock keeps it announced, still tagged
    kept = "as-path [ 64500 64500 64500 64500 ] " + GSHUT
    assert r.settled() == [announce("t1", 4, kept), announce("t1", 6, kept),
                           withdraw("t3"), withdraw("t3", 6)]
    [audited] = r.audit("interlock_overridden")
    assert audited["upstream"] == "t3" and audited["user"] == "root" and audited["uid"] == 0
    assert audited["reason"] == "CHG-4 all but t4" and "min_announcing_upstreams" in audited[
        "refusal"]
    [warning] = [x for x in caplog.records if "event=interlock_overridden" in x.getMessage()]
    assert warning.levelno == logging.WARNING and "upstream=t3" in warning.getMessage()


def test_a_drain_replacing_a_withdrawn_one_does_not_announce_it_again(make):
    r = started(make())
    r.request(Command.DRAIN, upstream="t1", reason="CHG-5", graceful_s=0, for_s=60)
    r.ack()
    change = r.request(Command.DRAIN, upstream="t1", reason="CHG-5 longer", graceful_s=30,
                       for_s=7200)
    assert change["lease"]["graceful_s"] == 0 and "no second graceful stage" in change["message"]
    assert change["replaced"][0]["id"] == "c1"
    assert r.pipe.written == []  # still withdrawn: nothing to say


def test_restore_announces_at_once(make):
    r = started(make())
    r.request(Command.DRAIN, upstream="t1", reason="CHG-6", graceful_s=0)
    r.request(Command.PREPEND, upstream="t1", count=2, reason="CHG-6")
    r.ack()
    change = r.request(Command.RESTORE, upstream="t1", reason="CHG-6 done")
    assert [x["id"] for x in change["removed"]] == ["c1", "c2"]
    assert r.sent() == [announce("t1"), announce("t1", 6)]
    assert r.c.control.status()["upstreams"][0]["drain"] is None


def test_restore_skips_what_is_left_of_the_recovery_hold(make):
    r = started(make(policy={"fall": 1, "rise": 1, "recovery_hold_s": 600}))
    r.c.apply(window(t2="failed"))
    r.c.send_due()
    r.mono.now += 1
    r.c.apply(window())  # probes good again: 600 s of recovery hold ahead
    assert r.settled() == [withdraw("t2"), withdraw("t2", 6)]
    t2 = r.c.control.status()["upstreams"][1]
    assert t2["state"] == "failed" and t2["recovery"]["towards"] == "healthy"
    r.request(Command.RESTORE, upstream="t2", reason="provider confirmed the fix")
    assert r.sent() == [announce("t2"), announce("t2", 6)]
    assert r.c.control.status()["upstreams"][1]["state"] == "healthy"
    [t] = [e for e in r.audit("transition") if e["new"] == "healthy"]
    assert t["reason"] == "operator restore"


def test_prepend_lengthens_the_path_towards_that_upstream(make):
    r = started(make())
    r.request(Command.PREPEND, upstream="t4", count=2, reason="CHG-7")
    path = "as-path [ 64500 64500 64500 ] "
    assert r.sent() == [announce("t4", 4, path), announce("t4", 6, path)]
    t4 = r.c.control.status()["upstreams"][3]
    assert [a["as_path"] for a in t4["announcements"]] == [[64500] * 3] * 2


def test_an_unknown_upstream_is_not_found(make):
    r = started(make())
    with pytest.raises(NotFound, match="no upstream t9"):
        r.request(Command.DRAIN, upstream="t9", reason="typo")


def test_an_expired_drain_restores_by_itself(make):
    r = started(make())
    r.request(Command.DRAIN, upstream="t1", reason="CHG-8", graceful_s=0, for_s=30)
    r.ack()
    labels = dict(daemon="controller", id="c1", kind="drain", target="t1")
    assert r.sample("netwatch_override_expiry_timestamp_seconds", **labels) == WALL + 30
    assert r.sample("netwatch_override_created_timestamp_seconds", **labels) == WALL
    r.wall.now += 30
    r.tick()
    assert r.sent() == [announce("t1"), announce("t1", 6)]
    [expired] = r.audit("lease_expired")
    assert expired["id"] == "c1"
    assert r.sample("netwatch_override_expiry_timestamp_seconds", **labels) is None
    assert r.sample("netwatch_override_created_timestamp_seconds", **labels) is None
    assert r.request(Command.OVERRIDES)["overrides"] == []


# --- restarts ---------------------------------------------------------------------------------


def test_a_restarted_controller_starts_with_the_drain_in_its_stage(make):
    r = started(make())
    r.request(Command.DRAIN, upstream="t1", reason="CHG-9", graceful_s=5)
    r.request(Command.DRAIN, upstream="t2", reason="CHG-9", graceful_s=0)
    # A new controller (ExaBGP respawned it, or ExaBGP restarted): the same state_dir.
    again = make()
    again.wall.now = WALL + 1
    sessions_answered(again)
    first = again.settled()
    assert announce("t1", 4, GSHUT) in first and announce("t1", 6, GSHUT) in first  # 4 s more
    assert not [x for x in first if x.startswith(f"neighbor {T['t2']} announce")]
    assert withdraw("t2") in first and withdraw("t2", 6) in first
    again.wall.now = WALL + 5
    again.tick()
    assert again.sent() == [withdraw("t1"), withdraw("t1", 6)]


def test_an_override_on_an_upstream_no_longer_configured_is_ignored(make, caplog):
    caplog.set_level(logging.INFO, logger="netwatch.controller")
    r = make()
    book = r.c.control.keeper.book.add(LeaseKind.DRAIN, "t7", Who(0, "root"), "old", WALL, 600)
    r.c.control.keeper.store.save(book.book)
    again = make()
    assert again.c.state.overrides == Overrides()
    assert any("event=override_ignored" in x.getMessage() and "t7" in x.getMessage()
               for x in caplog.records)


# --- the audit trail of automatic actions -----------------------------------------------------


def test_automatic_actions_are_audited(make):
    r = started(make(policy=FAST))
    r.c.apply(window(t2="failed", t3="failed", t4="failed"))
    kinds = [e["kind"] for e in r.audit()]
    assert kinds.count("transition") == 3
    [hold] = [e for e in r.audit("safety_hold") if e["family"] == "ipv4"]
    assert len(hold["kept"]) == 1 and hold["kept"][0] in ("t2", "t3", "t4")
    withdrawn = {(e["upstream"], e["family"]) for e in r.audit("announcement")
                 if e["new"] == "withdrawn"}
    assert len(withdrawn) == 4 and all(e["cause"] == "verdict" for e in r.audit("announcement"))


# --- status -----------------------------------------------------------------------------------


def test_status_reports_every_upstream_against_the_others(make):
    r = started(make(policy=FAST))
    for name in T:  # 10 probes per path in the window
        for i in range(1, 11):
            for k in range(10):
                rtt = None if name == "t3" and k < 2 else (0.030 if name == "t4" else 0.010)
                r.c.window.record(name, f"inet-{i}", r.mono.now - 1.5 + k * 0.1, rtt)
    r.request(Command.DRAIN, upstream="t1", reason="CHG-10", graceful_s=30)
    status = r.c.control.status()
    assert status["daemon"] == "controller" and status["site"] == "lab" and status["now"] == WALL
    by = {u["name"]: u for u in status["upstreams"]}
    assert by["t3"]["loss_ratio"] == pytest.approx(0.2)
    assert by["t3"]["median_loss_ratio"] == 0.0
    assert by["t4"]["rtt_ms"] == pytest.approx(30) and by["t4"]["median_rtt_ms"] == pytest.approx(
        10)
    assert by["t1"]["sessions"] == {"ipv4": "up", "ipv6": "up"}
    assert by["t2"]["announcements"] == [
        {"prefix": V4, "family": "ipv4", "mode": "normal", "as_path": [64500], "communities": []},
        {"prefix": V6, "family": "ipv6", "mode": "normal", "as_path": [64500], "communities": []},
    ]
    assert [x["id"] for x in status["overrides"]] == ["c1"]
    json.dumps(status, allow_nan=False)  # the server sends it as JSON
    lines = render([(Daemon("controller", "x"), status, None)])
    table = "\n".join(lines)
    assert "drain: withdraw in 30s" in table
    assert "graceful_shutdown" in table and "CHG-10" in table


# --- the control socket ----------------------------------------------------------------------


def test_the_control_socket_answers_and_counts_requests(make, short_dir):
    r = started(make())
    sock = str(short_dir / "controller.sock")

    async def scenario():
        serving = asyncio.create_task(r.c.control.serve())
        for _ in range(100):
            if Path(sock).exists():
                break
            await asyncio.sleep(0.01)
        try:
            status = await asyncio.to_thread(client.request, sock, Command.STATUS)
            await asyncio.to_thread(client.request, sock, Command.DRAIN,
                                    {"upstream": "t1", "reason": "CHG-11", "graceful_s": 0})
            await asyncio.to_thread(client.request, sock, Command.DRAIN,
                                    {"upstream": "t2", "reason": "CHG-11", "graceful_s": 0})
            with pytest.raises(Refused):
                await asyncio.to_thread(client.request, sock, Command.DRAIN,
                                        {"upstream": "t3", "reason": "CHG-11"})
            with pytest.raises(UnknownCommand):
                await asyncio.to_thread(client.request, sock, Command.FAILOVER,
                                        {"to": "secondary", "reason": "wrong daemon"})
            return status
        finally:
            serving.cancel()
            await asyncio.gather(serving, return_exceptions=True)

    status = asyncio.run(scenario())
    assert [u["name"] for u in status["upstreams"]] == list(T)

    def count(cmd, result):
        return r.sample("netwatch_control_requests_total", daemon="controller", cmd=cmd,
                        result=result)

    assert (count("status", "ok"), count("drain", "ok"), count("drain", "refused")) == (1, 2, 1)
    assert count("failover", "error") == 1 and count("restore", "ok") == 0
    requests = [e for e in r.audit("request")]
    assert [(e["cmd"], e["ok"]) for e in requests] == [
        ("drain", True), ("drain", True), ("drain", False), ("failover", False)]
    assert not Path(sock).exists()  # removed on the way out


def test_a_control_socket_that_cannot_be_opened_is_retried_while_the_controller_runs(
        make, short_dir, caplog):
    r = make()
    (short_dir / "controller.sock").write_text("not a socket")  # someone else's file

    async def scenario():
        serving = asyncio.create_task(r.c.control.serve())
        await asyncio.sleep(0.1)
        assert not serving.done()  # not dead: the controller steers BGP on
        (short_dir / "controller.sock").unlink()
        for _ in range(300):
            if (short_dir / "controller.sock").exists():
                break
            await asyncio.sleep(0.01)
        serving.cancel()
        await asyncio.gather(serving, return_exceptions=True)

    asyncio.run(scenario())
    [failed] = [x for x in caplog.records if "event=control_unavailable" in x.getMessage()]
    assert failed.levelno == logging.ERROR and "retry_in_s=1.0" in failed.getMessage()
    assert r.sample("netwatch_controller_errors_total", where="control") == 1


def test_the_lease_clock_withdraws_on_time_without_a_second_tick(make):
    """keep_time wakes at the drain's withdrawal (wall clock), not only once a second."""
    r = started(make())

    async def scenario():
        clock = asyncio.create_task(r.c.control.keep_time())
        await asyncio.sleep(0)
        await r.c.control.handle(Request(1, Command.DRAIN, validate_args(
            Command.DRAIN, {"upstream": "t1", "reason": "CHG-12", "graceful_s": 0.2})), ROOT)
        r.ack()
        r.wall.now += 0.2
        for _ in range(100):
            if r.pipe.written:
                break
            await asyncio.sleep(0.01)
        clock.cancel()
        await asyncio.gather(clock, return_exceptions=True)

    asyncio.run(scenario())
    assert r.pipe.written == [withdraw("t1"), withdraw("t1", 6)]


def test_audit_records_go_to_the_controllers_log_in_state_dir(make, tmp_path):
    r = started(make())
    r.request(Command.PREPEND, upstream="t2", count=1, reason="CHG-13")
    path = audit_path(tmp_path / "state", "controller")
    assert r.c.control.audit_log.path == path
    events, _ = AuditLog(path).read()
    assert {e["kind"] for e in events} == {"announcement"}


class ExabgpPipe(Pipe):
    """Enough of the ExaBGP pipe for run(): ExaBGP answers `show neighbor json` (every
    session up) and acknowledges it, then says nothing until `closed` is set, then EOF."""

    async def open(self) -> None:
        self.closed = asyncio.Event()

    async def lines(self):
        peers = [*T.values(), *T6.values()]
        yield json.dumps([{"state": "up", "fsm": "ESTABLISHED", "peer": {"address": p}}
                          for p in peers])
        yield "done"
        await self.closed.wait()


def test_run_serves_the_control_socket_until_exabgp_goes(make, short_dir):
    """The controller as ExaBGP runs it: `netwatch status` answers while it runs, a drain
    goes out to ExaBGP, and the socket is gone once ExaBGP closes the pipe."""
    r = make()
    pipe = ExabgpPipe()
    r.c.pipe = pipe
    sock = str(short_dir / "controller.sock")

    async def scenario():
        running = asyncio.create_task(r.c.run())
        for _ in range(300):
            if Path(sock).exists():
                break
            await asyncio.sleep(0.01)
        status = await asyncio.to_thread(client.request, sock, Command.STATUS)
        change = await asyncio.to_thread(client.request, sock, Command.DRAIN,
                                         {"upstream": "t2", "reason": "CHG-14"})
        pipe.closed.set()
        return status, change, await running

    status, change, code = asyncio.run(asyncio.wait_for(scenario(), 10))
    assert code == 0
    assert status["daemon"] == "controller" and len(status["upstreams"]) == 4
    assert change["lease"]["graceful_s"] == 60  # the site's default
    assert announce("t2", 4, GSHUT) in pipe.written
    assert not Path(sock).exists()


def test_a_drain_before_the_sessions_are_known_is_refused_and_says_why(make):
    """Just started, ExaBGP has not reported the sessions: the interlock keeps what every
    possibly-up session announced, so a drain is refused, and the reason says it is the
    sessions, not a lack of upstreams."""
    r = make()
    r.c.start()  # `show neighbor json` not answered yet
    with pytest.raises(Refused) as refused:
        r.request(Command.DRAIN, upstream="t2", reason="too early")
    assert "sessions not known yet: t1/ipv4, t2/ipv4, t3/ipv4, t4/ipv4" in str(refused.value)
    sessions_answered(r)
    assert r.request(Command.DRAIN, upstream="t2", reason="now")["lease"]["target"] == "t2"


def test_a_forced_drain_below_the_minimum_is_withdrawn_not_held_by_make_before_break(make):
    """Every drain forced but t4's: the plan keeps nothing, and ExaBGP is told to withdraw t2
    although only t4 is left (make-before-break would hold it forever, while status and the
    audit say withdrawn)."""
    r = started(make())
    for name in ("t1", "t2"):
        r.request(Command.DRAIN, upstream=name, reason="CHG-4", graceful_s=0)
    r.settled()
    for name in ("t3", "t1", "t2"):
        change = r.request(Command.DRAIN, upstream=name, reason="CHG-4 all but t4",
                           graceful_s=0, force=True)
        assert change["lease"]["forced"] is True
    lines = r.settled()
    assert withdraw("t2") in lines and withdraw("t2", 6) in lines
    assert r.c.state.plan.announcing(Family.V4) == ["t4"]
    assert {k[0] for k, v in r.c.sync.acknowledged.items() if v is not None} == {T["t4"],
                                                                                    T6["t4"]}


def test_a_force_that_overrides_nothing_leaves_the_interlock_free_to_keep_the_upstream(make):
    """`drain t1 --force` while three others announce: nothing refused, so nothing is forced.
    When t2's and t3's IPv4 sessions go down, the interlock keeps t1 (still tagged) beside t4
    instead of leaving IPv4 to t4 alone, and says so."""
    r = started(make())
    change = r.request(Command.DRAIN, upstream="t1", reason="CHG-9", graceful_s=0, force=True)
    assert change["lease"]["forced"] is False and "FORCED" not in change["message"]
    assert r.audit("interlock_overridden") == []
    r.settled()
    for name in ("t2", "t3"):
        r.c.apply(SessionChange(name, Family.V4, False))
    plan = r.c.state.plan
    assert [n for n in plan.announcing(Family.V4)
            if r.c.state.sessions[(n, Family.V4)] is SessionState.UP] == ["t1", "t4"]
    assert [(h.family, h.kept) for h in r.c.state.plan.holds] == [(Family.V4, ("t1",))]


def test_renewing_a_forced_drain_judges_the_interlock_again(make):
    r = started(make())
    for name in ("t1", "t2"):
        r.request(Command.DRAIN, upstream=name, reason="CHG-10", graceful_s=0)
    change = r.request(Command.DRAIN, upstream="t3", reason="CHG-10", graceful_s=0, force=True)
    assert change["lease"]["forced"] is True
    lease_id = change["lease"]["id"]
    renewed = r.request(Command.OVERRIDE_EXTEND, id=lease_id, for_s=600, reason="CHG-10 more")
    assert renewed["lease"]["forced"] is True and "FORCED past the interlock" in renewed[
        "message"]
    assert [e["cmd"] for e in r.audit("interlock_overridden")] == ["drain", "override_extend"]
    r.request(Command.RESTORE, upstream="t1", reason="CHG-10 t1 back")
    renewed = r.request(Command.OVERRIDE_EXTEND, id=lease_id, for_s=600, reason="CHG-10 again")
    assert renewed["lease"]["forced"] is False and "FORCED" not in renewed["message"]
    assert len(r.audit("interlock_overridden")) == 2
    assert r.c.state.overrides.drains["t3"].forced is False


def test_an_expiring_drain_returns_the_upstream_through_its_recovery_hold(make):
    """A drain that ends by itself is no operator's restore: t2, FAILED and recovering, stays
    withdrawn until its recovery hold is served; an explicit delete skips the hold."""
    r = started(make(policy={"fall": 1, "rise": 1, "recovery_hold_s": 600}))
    r.c.apply(window(t2="failed"))
    r.mono.now += 1
    r.c.apply(window())  # probes good again: 600 s of recovery hold ahead
    r.request(Command.DRAIN, upstream="t2", reason="CHG-11", graceful_s=0, for_s=30)
    r.settled()
    r.wall.now += 30
    r.tick()
    assert r.settled() == []
    t2 = r.c.control.status()["upstreams"][1]
    assert t2["state"] == "failed" and t2["recovery"]["towards"] == "healthy"
    assert not [e for e in r.audit("transition") if e["reason"] == "operator restore"]
    r.mono.now += 600
    r.c.apply(window())
    assert r.settled() == [announce("t2"), announce("t2", 6)]
    change = r.request(Command.DRAIN, upstream="t2", reason="CHG-12", graceful_s=0, for_s=30)
    r.settled()
    r.c.apply(window(t2="failed"))
    r.mono.now += 1
    r.c.apply(window())
    r.request(Command.OVERRIDE_DELETE, id=change["lease"]["id"], reason="CHG-12 done")
    assert r.settled() == [announce("t2"), announce("t2", 6)]
