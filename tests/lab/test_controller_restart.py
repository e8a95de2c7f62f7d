"""Restarts in the lab, with real ExaBGP and BIRD: ExaBGP restarted while a withdrawal is in
force, and the controller killed (ExaBGP respawns it). Checked in the transits' own BIRD."""

from __future__ import annotations

import os
import signal
import subprocess
import time

from netwatch.config import load_site
from netwatch.lab import bird, faults
from netwatch.lab import lifecycle as lab_module

from .test_controller import NORMAL, PREFIXES, TRANSITS, clean, held, wait_for  # noqa: F401


def controller_pids(lab) -> list[int]:
    exabgp = lab.pidfile("exabgp").read_text().strip()
    out = subprocess.run(["pgrep", "-P", exabgp, "-f", "controller"], capture_output=True,
                         text=True).stdout.split()
    return [int(p) for p in out]


def established(lab, node: str) -> bool:
    protocols = bird.parse_protocols(lab.birdc(node, "show protocols"))
    return all("Established" in p["info"] for name, p in protocols.items()
               if p["proto"] == "BGP" and name.startswith("edge"))


def test_exabgp_restart_keeps_the_withdrawal_from_persisted_state(clean):  # noqa: F811
    lab = clean
    faults.apply(lab, "transit-blackhole", "t2")
    wait_for(lambda: held(lab, "t2") == {}, 10)
    pid = int(lab.pidfile("exabgp").read_text())
    os.kill(pid, signal.SIGKILL)  # a crash: no goodbye to the peers, no state written
    wait_for(lambda: all(held(lab, t) == {} for t in TRANSITS), 15)  # the sessions died
    lab_module.start_exabgp(lab, load_site(lab.site_file))
    # From here on t2 must never hold our prefixes: the controller sends the persisted
    # withdrawal before the sessions are up, not ~2 s later after new probes.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert held(lab, "t2") == {}, "t2 was re-announced after the restart"
        if all(held(lab, t) == dict.fromkeys(PREFIXES, NORMAL) for t in ("t1", "t3", "t4")):
            break
        time.sleep(0.1)
    else:
        raise AssertionError("t1, t3, t4 did not get our prefixes back")
    for _ in range(20):  # and it stays so for 2 s (the first probe window)
        assert held(lab, "t2") == {}
        time.sleep(0.1)


def test_killed_controller_is_respawned_without_a_flap(clean):  # noqa: F811
    lab = clean

    def nothing_lost() -> None:  # every transit keeps every route all along
        for t in TRANSITS:
            assert held(lab, t) == dict.fromkeys(PREFIXES, NORMAL), f"{t} lost our routes"
            assert established(lab, t), f"{t}: BGP session not Established"

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
    assert respawned is not None, "ExaBGP did not respawn the controller"
    return respawned, polls


def holders(lab) -> dict[str, frozenset[str]]:
    """{our prefix: the transits whose BIRD holds it}."""
    per_transit = {t: held(lab, t) for t in TRANSITS}
    return {p: frozenset(t for t in TRANSITS if p in per_transit[t]) for p in PREFIXES}


def test_killed_controller_keeps_the_safety_hold_where_it_was(clean):  # noqa: F811
    """Three transits blackholed: the interlock keeps t4 and one held transit announced. A
    respawned controller must keep exactly those: it does not know the sessions for a moment
    (UNKNOWN is not down), and it restores which upstream the hold kept (no hold migration)."""
    lab = clean
    for t in ("t1", "t2", "t3"):
        faults.apply(lab, "transit-blackhole", t)
    wait_for(lambda: all(len(h) == 2 for h in holders(lab).values()), 15)
    time.sleep(1)  # settled: the hold and its state file are written
    before = holders(lab)
    assert all(len(h) == 2 and "t4" in h for h in before.values()), before

    def hold_unchanged() -> None:
        now = holders(lab)
        for prefix, h in now.items():
            assert len(h) >= 2, f"{prefix} held by {sorted(h)} only after the kill"
        assert now == before, f"the hold moved: {before} -> {now}"

    respawned, polls = kill_controller_and_watch(lab, hold_unchanged)
    print(f"controller respawned after {respawned:.2f} s; {polls} polls, hold unchanged")
