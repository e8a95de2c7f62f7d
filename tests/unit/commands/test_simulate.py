"""`netwatch simulate`: its output for a few pictures is the plan the controller's pure
decision makes for them (`what_if`), with the overrides in force when the controller answers,
and it says why each upstream is announced as it is."""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
import threading
import time
from pathlib import Path

import pytest

from netwatch import exitcodes
from netwatch.cli import main
from netwatch.config import load_site
from netwatch.control.leases import LeaseBook, LeaseKind, Who
from netwatch.control.overrides import listing
from netwatch.control.server import ControlServer
from netwatch.controller.decision import (
    OperatorOverrides,
    SessionSummary,
    initial_state,
    step,
    what_if,
)
from netwatch.controller.overrides import overrides_of
from netwatch.controller.params import params_from_site
from netwatch.controller.plan import NO_OVERRIDES, Overrides, mode_of
from netwatch.core.vocabulary import Family

PICTURES = [
    {},
    {"fail": "t2"},
    {"fail": "t2,t3"},
    {"fail": "t2,t3,t4"},  # the interlock keeps one of them
    {"degrade": "t3"},
    {"fail": "t2", "degrade": "t3", "session-down": "t1"},
    {"session-down": "t1,t2,t3"},
]


def simulate(capsys, site: Path, *argv: str) -> tuple[int, str, str]:
    code = main(["simulate", "--config", str(site), *argv])
    out, err = capsys.readouterr()
    return code, out, err


def argv_of(picture: dict[str, str]) -> list[str]:
    return [x for flag, names in picture.items() for x in (f"--{flag}", names)]


def expected_plan(site: Path, picture: dict[str, str], overrides: Overrides = NO_OVERRIDES):
    """The plan the pure decision makes for `picture`: every session up, every upstream
    healthy, then what_if."""
    params = params_from_site(load_site(site))
    state = initial_state(params)
    up = {(u.name, f): True for u in params.upstreams for f in u.families}
    state, _ = step(state, SessionSummary(up), 0.0)
    state, _ = step(state, OperatorOverrides(overrides), 0.0)

    def names(flag: str) -> frozenset[str]:
        return frozenset(n for n in picture.get(flag, "").split(",") if n)

    plan = what_if(state, failed=names("fail"), degraded=names("degrade"),
                   sessions_down=names("session-down"))
    return params, plan


def shown(result: dict) -> dict[tuple[str, str], tuple[str, list[int], list[str]]]:
    """{(upstream, prefix): (mode, AS path, communities)} from simulate's JSON."""
    return {(u["name"], a["prefix"]): (a["mode"], a["as_path"], a["communities"])
            for u in result["upstreams"] for a in u["announcements"]}


def planned(params, plan, prefixes) -> dict[tuple[str, str], tuple[str, list[int], list[str]]]:
    out = {}
    for (name, fam), ann in plan.desired.items():
        for prefix in prefixes:
            if Family(prefix.version) is fam:
                path = [] if ann is None else (list(ann.as_path) or [params.asn])
                comms = [] if ann is None else list(ann.communities)
                out[(name, str(prefix))] = (mode_of(params, name, ann).value, path, comms)
    return out


@pytest.mark.parametrize("picture", PICTURES, ids=lambda p: ",".join(
    f"{k}={v}" for k, v in p.items()) or "all-healthy")
def test_the_output_is_the_plan_of_the_pure_decision(capsys, lab_site, picture):
    code, out, _ = simulate(capsys, lab_site, "--json", "--no-overrides", *argv_of(picture))
    assert code == exitcodes.OK
    result = json.loads(out)
    params, plan = expected_plan(lab_site, picture)
    prefixes = load_site(lab_site).prefixes
    assert shown(result) == planned(params, plan, prefixes)
    for fam in Family:
        assert result["announcing"][fam.label] == plan.announcing(fam)
        assert result["egress"][fam.label] == dict(plan.egress[fam])
    assert result["safety_holds"] == [{"family": h.family.label, "kept": list(h.kept)}
                                      for h in plan.holds]


def test_three_failed_keeps_two_announced_and_says_why(capsys, lab_site):
    code, out, _ = simulate(capsys, lab_site, "--no-overrides", "--fail", "t2,t3,t4")
    assert code == exitcodes.OK
    assert "ipv4 announced through 2: t1, t2" in out
    assert "ipv6 announced through 2: t1, t2" in out
    assert "safety hold: ipv4 kept announced to t2" in out
    t2 = next(line for line in out.splitlines() if line.startswith("  t2 "))
    assert "failed: policy.failed.action withdraw" in t2
    assert "safety hold (ipv4, ipv6)" in t2 and "prepend x3" in t2
    assert "egress ipv4: t1 (weight 10)" in out  # a held upstream carries no traffic out


def test_unknown_or_contradictory_upstreams_are_a_usage_error(capsys, lab_site):
    code, _, err = simulate(capsys, lab_site, "--fail", "t9")
    assert code == exitcodes.USAGE and "no upstream t9 (known: t1, t2, t3, t4)" in err
    code, _, err = simulate(capsys, lab_site, "--fail", "t2", "--degrade", "t2")
    assert code == exitcodes.USAGE and "t2: failed or degraded, not both" in err


def test_without_a_controller_it_plans_without_overrides(capsys, site_copy, tmp_path):
    site = site_copy(control={"agent": str(tmp_path / "a.sock"),
                              "controller": str(tmp_path / "nobody.sock")})
    code, out, err = simulate(capsys, site, "--json", "--fail", "t1")
    assert code == exitcodes.OK
    assert "planning without the overrides in force" in err and "no such socket" in err
    result = json.loads(out)
    assert result["overrides"] == [] and result["overrides_source"].startswith("none")


@pytest.fixture
def controller_socket():
    """serve(book) -> socket path: a control server answering `overrides` from `book`, as
    the controller would, on its own loop in a thread; closed after the test."""
    where = Path(tempfile.mkdtemp(prefix="nwsim", dir="/tmp"))
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    servers = []

    class Handler:
        def __init__(self, book):
            self.book = book

        async def handle(self, request, peer):
            return listing(self.book, time.time())

    def serve(book: LeaseBook) -> str:
        server = ControlServer(where / "controller.sock", "controller", Handler(book))
        asyncio.run_coroutine_threadsafe(server.start(), loop).result(5)
        servers.append(server)
        return str(server.path)

    try:
        yield serve
    finally:
        for server in servers:
            asyncio.run_coroutine_threadsafe(server.close(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()
        shutil.rmtree(where, ignore_errors=True)


def test_the_overrides_in_force_are_planned_with(capsys, lab_site, controller_socket):
    now = time.time()
    root = Who(0, "root")
    book = LeaseBook("c")
    book = book.add(LeaseKind.DRAIN, "t1", root, "CHG-1 linecard swap", now - 120, 3600,
                    graceful_s=60).book  # past its graceful stage: withdrawn
    book = book.add(LeaseKind.DRAIN, "t3", root, "CHG-2", now - 1, 3600, graceful_s=600).book
    book = book.add(LeaseKind.PREPEND, "t4", root, "CHG-3", now, 3600, count=2).book
    sock = controller_socket(book)
    picture = {"fail": "t2"}
    code, out, _ = simulate(capsys, lab_site, "--json", "--socket", sock, *argv_of(picture))
    assert code == exitcodes.OK
    result = json.loads(out)
    assert [x["id"] for x in result["overrides"]] == ["c1", "c2", "c3"]
    params, plan = expected_plan(lab_site, picture, overrides_of(book.leases, now, 60))
    assert shown(result) == planned(params, plan, load_site(lab_site).prefixes)
    by = {u["name"]: u for u in result["upstreams"]}
    # t2 failed, t1 drained: the interlock keeps one of them; t3 is draining gracefully
    assert {a["mode"] for a in by["t3"]["announcements"]} == {"graceful_shutdown"}
    assert by["t3"]["egress"] == {"ipv4": None, "ipv6": None}
    assert any(w.startswith("override c3: prepend x2") for w in by["t4"]["why"])
    assert any("override c1: drain: withdrawn (CHG-1 linecard swap)" in w
               for w in by["t1"]["why"])
    code, out, _ = simulate(capsys, lab_site, "--socket", sock, *argv_of(picture))
    assert "overrides: 3 from the controller on" in out
    assert "override c2: drain t3, graceful 600 s" in out


def test_a_lease_that_expires_after_the_answer_is_planned_at_the_answers_time(
        capsys, lab_site, controller_socket, monkeypatch):
    """The controller lists a drain live at its `now`; by the CLI's own clock (here 100 s
    later) it has expired. The plan is made at the answer's time, the drain in it."""
    from types import SimpleNamespace

    from netwatch.commands import simulate_cmd

    now = time.time()
    book = LeaseBook("c").add(LeaseKind.DRAIN, "t1", Who(0, "root"), "CHG-7", now - 10, 60,
                              graceful_s=0).book
    sock = controller_socket(book)
    monkeypatch.setattr(simulate_cmd, "time", SimpleNamespace(time=lambda: time.time() + 100))
    code, out, _ = simulate(capsys, lab_site, "--json", "--socket", sock)
    assert code == exitcodes.OK
    by = {u["name"]: u for u in json.loads(out)["upstreams"]}
    assert any("override c1: drain: withdrawn (CHG-7)" in w for w in by["t1"]["why"])
