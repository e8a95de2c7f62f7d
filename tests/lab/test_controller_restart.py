"""Restarts in the lab, with real ExaBGP and BIRD: ExaBGP restarted while a withdrawal is in
force, and the controller killed (ExaBGP respawns it). Checked in the transits' own BIRD."""

from __future__ import annotations

import os
import signal
import subprocess
import time

from netwatch.config import load_site
from netwatch.lab import faults
from netwatch.lab import lifecycle as lab_module

PREFIXES = ("198.51.100.0/24", "2001:db8:100::/48")
TRANSITS = ("t1", "t2", "t3", "t4")
NORMAL = dict.fromkeys(PREFIXES, "64500")


def controller_pids(lab) -> list[int]:
    exabgp = lab.pidfile("exabgp").read_text().strip()
    out = subprocess.run(["pgrep", "-P", exabgp, "-f", "controller"], capture_output=True,
                         text=True).stdout.split()
    return [int(p) for p in out]


def sessions_from_edge_down(lab, node: str) -> dict[str, str]:
    """{session: BIRD's info} for `node`'s BGP sessions with edge that are not Established."""
    return {name: s["info"] for name, s in lab.bgp_sessions(node).items()
            if name.startswith("edge") and "Established" not in s["info"]}


def held_at(held, transits) -> dict[str, dict[str, str]]:
    """{transit: {our prefix: AS path}} for `transits`."""
    return {t: held(t) for t in transits}


def holders(held) -> dict[str, frozenset[str]]:
    """{our prefix: the transits whose BIRD holds it}."""
    per_transit = held_at(held, TRANSITS)
    return {p: frozenset(t for t in TRANSITS if p in per_transit[t]) for p in PREFIXES}


def test_exabgp_restart_keeps_the_withdrawal_from_persisted_state(announced, held, wait_for):
    lab = announced
    faults.apply(lab, "transit-blackhole", "t2")
    assert wait_for(lambda: held("t2") == {}, 10, 0.1) is not None, \
        f"t2 still holds {held('t2')} 10 s after its blackhole, expected {{}}"
    pid = int(lab.pidfile("exabgp").read_text())
    os.kill(pid, signal.SIGKILL)  # a crash: no goodbye to the peers, no state written
    try:  # the sessions died; graceful restart: the others keep our routes, as stale
        assert wait_for(lambda: all(len(sessions_from_edge_down(lab, t)) == 2
                                    for t in TRANSITS), 15, 0.1) is not None, \
            "15 s after ExaBGP was killed, sessions still up at some transit"
        assert held_at(held, ("t1", "t3", "t4")) == dict.fromkeys(("t1", "t3", "t4"), NORMAL)
    finally:  # even after a failure: every later test shares this lab and its ExaBGP
        lab_module.start_exabgp(lab, load_site(lab.site_file))

    # From here on t2 must never hold our prefixes: the controller sends the persisted
    # withdrawal before the sessions are up, not ~2 s later after new probes.
    def others_back() -> bool:
        seen = held("t2")
        assert seen == {}, f"t2 was re-announced after the restart: it holds {seen}"
        return all(held(t) == NORMAL for t in ("t1", "t3", "t4"))

    assert wait_for(others_back, 30, 0.1) is not None, (
        f"30 s after the restart t1, t3, t4 hold {held_at(held, ('t1', 't3', 't4'))},"
        f" expected {NORMAL} each"
    )
    for _ in range(20):  # and it stays so for 2 s (the first probe window)
        seen = held("t2")
        assert seen == {}, f"t2 was re-announced within 2 s of the others: it holds {seen}"
        time.sleep(0.1)


def test_killed_controller_is_respawned_without_a_flap(announced, held):
    lab = announced

    def nothing_lost() -> None:  # every transit keeps every route all along
        for t in TRANSITS:
            seen = held(t)
            assert seen == NORMAL, f"{t} holds {seen} after the kill, expected {NORMAL}"
            down = sessions_from_edge_down(lab, t)
            assert not down, f"{t}: BGP sessions with edge not Established: {down}"

    respawned, _ = kill_controller_and_watch(lab, nothing_lost)
    print(f"controller respawned after {respawned:.2f} s, no route lost")


def kill_controller_and_watch(lab, check, watch_s: float = 8.0) -> tuple[float, int]:
    """SIGKILL the controller, then run `check()` every 0.1 s for `watch_s` seconds while
    ExaBGP respawns it. Returns (seconds until a new controller PID appeared, polls).
    Fails when ExaBGP did not respawn it."""
    (old,) = controller_pids(lab)
    os.kill(old, signal.SIGKILL)
    start, respawned, polls = time.monotonic(), None, 0
    while time.monotonic() - start < watch_s:
        check()
        polls += 1
        pids = controller_pids(lab)
        if respawned is None and pids and old not in pids:
            respawned = time.monotonic() - start
        time.sleep(0.1)
    assert respawned is not None, (
        f"ExaBGP did not respawn the controller (PID {old}) within {watch_s} s:"
        f" controllers now {controller_pids(lab)}"
    )
    return respawned, polls


def test_killed_controller_keeps_the_safety_hold_where_it_was(announced, held, wait_for):
    """Three transits blackholed: the interlock keeps t4 and one held transit announced. A
    respawned controller must keep exactly those: it does not know the sessions for a moment
    (UNKNOWN is not down), and it restores which upstream the hold kept (no hold migration)."""
    lab = announced
    for t in ("t1", "t2", "t3"):
        faults.apply(lab, "transit-blackhole", t)
    assert wait_for(lambda: all(len(h) == 2 for h in holders(held).values()), 15, 0.1) \
        is not None, f"15 s after t1-t3 blackholed, held by {holders(held)}, expected 2 each"
    time.sleep(1)  # settled: the hold and its state file are written
    before = holders(held)
    assert all(len(h) == 2 and "t4" in h for h in before.values()), \
        f"held by {before}, expected t4 and one other for each prefix"

    def hold_unchanged() -> None:
        now = holders(held)
        for prefix, h in now.items():
            assert len(h) >= 2, f"{prefix} held by {sorted(h)} only after the kill"
        assert now == before, f"the hold moved: {before} -> {now}"

    respawned, polls = kill_controller_and_watch(lab, hold_unchanged)
    print(f"controller respawned after {respawned:.2f} s; {polls} polls, hold unchanged")
