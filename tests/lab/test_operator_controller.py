"""Operators' drains, restores and prepends in the lab: real ExaBGP, real BIRD, the CLI as an
operator runs it (a subprocess on the controller's control socket). Checked in the transits'
own BIRD tables: a drain is the community (65535,0) on our routes, then no route at all.
Every test ends every override it made and waits for every transit to hold our prefixes
normally again (the `announced` fixture)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from netwatch import exitcodes
from netwatch.config import load_site
from netwatch.control import client
from netwatch.control.protocol import Command
from netwatch.lab import lifecycle

PREFIXES = ("198.51.100.0/24", "2001:db8:100::/48")
TRANSITS = ("t1", "t2", "t3", "t4")
GSHUT = "(65535,0)"


class Operator:
    """The CLI as an operator runs it against the lab's controller: `op(*argv)` ->
    CompletedProcess of `python -m netwatch.cli *argv --socket <the controller's socket>`."""

    def __init__(self, lab):
        self.lab = lab
        self.socket = load_site(lab.site_file).control.controller

    def __call__(self, *argv: str, timeout_s: float = 30) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "netwatch.cli", *argv, "--socket", self.socket],
            capture_output=True, text=True, timeout=timeout_s)


@pytest.fixture
def operator(announced):
    """An `Operator` on the lab. Every override still in force is ended afterwards, before
    the `announced` fixture waits for the normal state."""
    op = Operator(announced)
    try:
        yield op
    finally:
        deadline = time.monotonic() + 20  # a controller just restarted may not answer yet
        while True:
            try:
                listing = client.request(op.socket, Command.OVERRIDES, timeout_s=5)
                for lease in listing["overrides"]:
                    client.request(op.socket, Command.OVERRIDE_DELETE,
                                   {"id": lease["id"], "reason": "test cleanup"}, timeout_s=5)
                break
            except client.DaemonUnreachable:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)


def routes_of(lab, node: str) -> dict[str, list[dict[str, str]]]:
    """{our prefix: [{as_path, communities, ...}]} as `node`'s BIRD holds them."""
    routes = lab.routes(node)
    return {p: routes[p] for p in PREFIXES if p in routes}


def communities_at(lab, node: str) -> dict[str, str]:
    """{our prefix: its communities} at `node` ("" for none)."""
    return {p: " | ".join(r["communities"] for r in rs) for p, rs in routes_of(lab, node).items()}


def as_paths_at(lab, node: str) -> dict[str, str]:
    return {p: " | ".join(r["as_path"] for r in rs) for p, rs in routes_of(lab, node).items()}


def ok(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == exitcodes.OK, (
        f"{' '.join(done.args[3:])} exited {done.returncode}: {done.stderr.strip()}")
    return done.stdout


def normal_elsewhere(lab, *drained: str) -> None:
    """Fail unless every transit but `drained` holds both prefixes with our AS path alone and
    no community."""
    for t in TRANSITS:
        if t in drained:
            continue
        paths, comms = as_paths_at(lab, t), communities_at(lab, t)
        assert paths == dict.fromkeys(PREFIXES, "64500"), (
            f"{t} holds {paths} while only {', '.join(drained)} is drained, expected 64500 each")
        assert not any(comms.values()), f"{t} holds our prefixes with communities {comms}"


def status_of(operator) -> dict:
    """The controller's status answer (what `netwatch status --json` shows of it)."""
    return client.request(operator.socket, Command.STATUS, timeout_s=10)


def drain_of(operator, name: str) -> dict | None:
    return next(u for u in status_of(operator)["upstreams"] if u["name"] == name)["drain"]


def controller_pids(lab) -> list[int]:
    exabgp = lab.pidfile("exabgp").read_text().strip()
    out = subprocess.run(["pgrep", "-P", exabgp, "-f", "controller"], capture_output=True,
                         text=True).stdout.split()
    return [int(p) for p in out]


def test_a_drain_announces_graceful_shutdown_then_withdraws(operator, wait_for):
    lab = operator.lab
    start = time.monotonic()
    out = ok(operator("upstream", "drain", "t1", "--graceful-s", "2", "--reason", "test"))
    assert "drain t1, graceful 2 s" in out, f"drain t1 answered {out!r}"

    def tagged() -> bool:
        comms = communities_at(lab, "t1")
        return set(comms) == set(PREFIXES) and all(GSHUT in c for c in comms.values())

    took = wait_for(tagged, 5, 0.05)
    assert took is not None, (
        f"t1 holds {communities_at(lab, 't1')} 5 s into the drain, expected {GSHUT} on "
        f"{', '.join(PREFIXES)}")
    stage = drain_of(operator, "t1")
    assert stage["stage"] == "graceful", f"t1's drain is {stage} while t1 holds (65535,0)"
    normal_elsewhere(lab, "t1")
    gone = wait_for(lambda: routes_of(lab, "t1") == {}, 8, 0.05)
    assert gone is not None, f"t1 still holds {communities_at(lab, 't1')} 8 s into the drain"
    graceful_s = time.monotonic() - start
    assert graceful_s >= 1.8, f"t1 lost our prefixes {graceful_s:.2f} s into a 2 s graceful drain"
    stage = drain_of(operator, "t1")
    assert stage["stage"] == "withdrawn", f"t1's drain is {stage} once t1 holds nothing"
    normal_elsewhere(lab, "t1")
    print(f"community at t1 after {took:.2f} s; withdrawn from t1 {graceful_s:.2f} s after the "
          "drain command")


def test_a_drain_below_the_interlock_is_refused_and_force_goes_through(operator, wait_for):
    lab = operator.lab
    for t in ("t1", "t2"):
        ok(operator("upstream", "drain", t, "--graceful-s", "0", "--reason", "test"))
    assert wait_for(lambda: not routes_of(lab, "t1") and not routes_of(lab, "t2"), 8, 0.1), (
        f"t1 holds {as_paths_at(lab, 't1')}, t2 {as_paths_at(lab, 't2')} after their drains")
    refused = operator("upstream", "drain", "t3", "--graceful-s", "0", "--reason", "too many")
    assert refused.returncode == exitcodes.REFUSED, (
        f"a third drain exited {refused.returncode}, expected {exitcodes.REFUSED}: "
        f"{refused.stderr.strip()}")
    assert "min_announcing_upstreams" in refused.stderr and "--force" in refused.stderr, (
        f"the refusal of t3's drain does not say why: {refused.stderr.strip()}")
    time.sleep(1)
    normal_elsewhere(lab, "t1", "t2")  # t3 and t4 untouched

    out = ok(operator("upstream", "drain", "t3", "--graceful-s", "0", "--force",
                      "--reason", "forced test"))
    assert "FORCED past the interlock" in out, f"a forced drain of t3 answered {out!r}"
    assert wait_for(lambda: not routes_of(lab, "t3"), 8, 0.1), (
        f"t3 still holds {as_paths_at(lab, 't3')} 8 s after a forced drain")
    # t1 and t2 were not forced: the interlock keeps one of them, GRACEFUL_SHUTDOWN still on
    assert wait_for(lambda: [t for t in ("t1", "t2") if routes_of(lab, t)], 8, 0.1), (
        "with t3 forced away, neither t1 nor t2 is held by the interlock")
    held = [t for t in ("t1", "t2") if routes_of(lab, t)]
    assert len(held) == 1 and all(GSHUT in c for c in communities_at(lab, held[0]).values()), (
        f"the interlock holds {held}: communities {[communities_at(lab, t) for t in held]}")
    events = [json.loads(line) for line in ok(operator("events", "--json", "--since", "5m"))
              .splitlines()]
    forced = [e for e in events if e["kind"] == "interlock_overridden" and e["upstream"] == "t3"]
    assert forced and forced[-1]["reason"] == "forced test", f"no interlock_overridden in {events}"
    requests = [(e["args"]["upstream"], e["args"]["force"], e["ok"]) for e in events
                if e["kind"] == "request" and e["cmd"] == "drain"]
    assert requests[-2:] == [("t3", False, False), ("t3", True, True)], requests


def test_an_active_drain_survives_controller_and_exabgp_restarts(operator, wait_for):
    lab = operator.lab
    ok(operator("upstream", "drain", "t1", "--graceful-s", "0", "--for", "10m",
                "--reason", "restart test"))
    assert wait_for(lambda: not routes_of(lab, "t1"), 8, 0.1), (
        f"t1 still holds {as_paths_at(lab, 't1')} after its drain")

    def t1_stays_withdrawn(when: str) -> None:
        seen = as_paths_at(lab, "t1")
        assert seen == {}, f"t1 was re-announced {when}: it holds {seen}"

    (old,) = controller_pids(lab)
    os.kill(old, signal.SIGKILL)
    start, respawned = time.monotonic(), None
    while time.monotonic() - start < 8:
        t1_stays_withdrawn("while ExaBGP respawned the controller")
        pids = controller_pids(lab)
        if respawned is None and pids and old not in pids:
            respawned = time.monotonic() - start
        time.sleep(0.1)
    assert respawned is not None, f"ExaBGP did not respawn the controller (PID {old}) in 8 s"
    stage = drain_of(operator, "t1")
    assert stage["stage"] == "withdrawn", f"t1's drain is {stage} after the controller's respawn"

    restart = lifecycle.restart_exabgp(lab)
    start = time.monotonic()
    while time.monotonic() - start < 10:
        t1_stays_withdrawn("across an ExaBGP restart")
        time.sleep(0.1)
    assert wait_for(lambda: all(as_paths_at(lab, t) == dict.fromkeys(PREFIXES, "64500")
                                for t in ("t2", "t3", "t4")), 20, 0.2), (
        f"after the ExaBGP restart t2-t4 hold {[as_paths_at(lab, t) for t in TRANSITS[1:]]}")
    t1_stays_withdrawn("after the ExaBGP restart")
    stage = drain_of(operator, "t1")
    assert stage["stage"] == "withdrawn", f"t1's drain is {stage} after the ExaBGP restart"
    print(f"controller respawned after {respawned:.2f} s; ExaBGP restart {restart}: "
          "t1 withdrawn all along")


def test_restore_brings_it_back_at_once(operator, wait_for):
    lab = operator.lab
    ok(operator("upstream", "drain", "t2", "--graceful-s", "0", "--reason", "test"))
    assert wait_for(lambda: not routes_of(lab, "t2"), 8, 0.1), (
        f"t2 still holds {as_paths_at(lab, 't2')} after its drain")
    start = time.monotonic()
    out = ok(operator("upstream", "restore", "t2", "--reason", "test done"))
    assert "ended c" in out, f"restore t2 answered {out!r}"
    back = wait_for(lambda: as_paths_at(lab, "t2") == dict.fromkeys(PREFIXES, "64500"), 8, 0.05)
    assert back is not None, f"t2 holds {as_paths_at(lab, 't2')} 8 s after restore"
    took = time.monotonic() - start
    # recovery_hold_s is 10 in the lab: an operator's restore does not wait for it
    assert took < 5, f"t2 was announced again {took:.2f} s after restore, expected at once"
    assert not any(communities_at(lab, "t2").values()), (
        f"t2 holds our prefixes with communities {communities_at(lab, 't2')} after restore")
    print(f"t2 announced again {took:.2f} s after `upstream restore` (CLI start included)")


def test_the_lease_expiring_restores_it(operator, wait_for):
    lab = operator.lab
    ok(operator("upstream", "drain", "t4", "--graceful-s", "0", "--for", "4s",
                "--reason", "short"))
    start = time.monotonic()
    assert wait_for(lambda: not routes_of(lab, "t4"), 4, 0.05), (
        f"t4 still holds {as_paths_at(lab, 't4')} after its drain")
    back = wait_for(lambda: as_paths_at(lab, "t4") == dict.fromkeys(PREFIXES, "64500"), 10, 0.1)
    assert back is not None, f"t4 holds {as_paths_at(lab, 't4')} 10 s after its 4 s lease"
    took = time.monotonic() - start
    assert took >= 3.5, f"t4 was announced again {took:.2f} s into a 4 s drain"
    events = [json.loads(line) for line in ok(operator("events", "--json", "--since", "1m"))
              .splitlines()]
    assert any(e["kind"] == "lease_expired" and "drain t4" in e["forces"] for e in events), (
        f"no lease_expired for t4's drain among {[e['kind'] for e in events]}")
    left = ok(operator("overrides"))
    assert left.startswith("no overrides"), f"overrides after t4's lease expired: {left}"


def test_prepend_lengthens_the_path_at_that_transit(operator, wait_for):
    lab = operator.lab
    ok(operator("upstream", "prepend", "t3", "2", "--reason", "test"))
    want = dict.fromkeys(PREFIXES, "64500 64500 64500")
    assert wait_for(lambda: as_paths_at(lab, "t3") == want, 8, 0.1), (
        f"t3 holds {as_paths_at(lab, 't3')} after prepend 2, expected {want}")
    normal_elsewhere(lab, "t3")
    table = ok(operator("status"))
    assert "prepend x2" in table and "prepend t3 x2" in table, f"status shows:\n{table}"
    print(table)
