"""Outbound steering in the lab: edge's default routes belong to the controller (the lab site's
`controller.outbound.mode: kernel`; the lab installs none of its own) and follow its decisions,
so a failed transit stops carrying our outgoing traffic too. Real kernel, ExaBGP and BIRD,
both families: edge's routes read with `ip -j route`, and srv pinging every one of the 20
targets. Every test heals what it faulted and waits for the normal state again."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from netwatch.config import load_site
from netwatch.lab import faults

TRANSITS = ("t1", "t2", "t3", "t4")
OURS = "253"  # the lab site's outbound.protocol (the default)
EVERY = dict.fromkeys(TRANSITS, 10)  # outbound.weight, the default


def edge_default(lab, family: int) -> tuple[str | None, dict[str, int]]:
    """(proto, {interface: weight}) of edge's default route of IP version `family` in the
    main table at the kernel's default metric, or (None, {}) when there is none. A route with
    one next hop has no weight: 1."""
    out = lab.exec("edge", "ip", "-j", f"-{family}", "route", "show", "default").stdout
    routes = [r for r in json.loads(out or "[]")
              if r.get("metric", 1024 if family == 6 else 0) == (1024 if family == 6 else 0)]
    if not routes:
        return None, {}
    route = routes[0]
    hops = route.get("nexthops") or [{"dev": route.get("dev"), "weight": 1}]
    return str(route.get("protocol")), {h["dev"]: h.get("weight", 1) for h in hops}


def egress(lab) -> dict[int, dict[str, int] | str]:
    """{4: {transit: weight}, 6: ...} of the controller's defaults on edge; a family whose
    default is missing or not the controller's says so in words."""
    seen: dict[int, dict[str, int] | str] = {}
    for family in (4, 6):
        proto, hops = edge_default(lab, family)
        seen[family] = (hops if proto == OURS else
                        "no default route" if proto is None else f"proto {proto}: {hops}")
    return seen


def targets(lab) -> list[str]:
    return [str(t.address) for t in load_site(lab.site_file).controller.probe.targets]


def silent(lab, addresses: list[str]) -> list[str]:
    """The targets that answer none of 3 pings from srv (in parallel: one slow target does not
    hold up the others)."""
    with ThreadPoolExecutor(len(addresses)) as pool:
        answers = list(pool.map(lambda a: lab.ping("srv", a, count=3), addresses))
    return [a for a, n in zip(addresses, answers, strict=True) if n == 0]


def repairs(lab) -> int:
    """How many `egress_repaired` lines the lab's controllers have logged so far."""
    return (Path(lab.run_dir) / "exabgp.out").read_text(errors="replace").count(
        "event=egress_repaired")


def controller_pids(lab) -> list[int]:
    exabgp = lab.pidfile("exabgp").read_text().strip()
    out = subprocess.run(["pgrep", "-P", exabgp, "-f", "controller"], capture_output=True,
                         text=True).stdout.split()
    return [int(p) for p in out]


@pytest.fixture
def steady(lab, wait_for):
    """The lab with both of edge's defaults the controller's, over all four transits, before
    the test; after it every fault healed and that state waited for again (30 s: recovery
    hold 10 s, then rise)."""

    def settle(when: str) -> None:
        if wait_for(lambda: egress(lab) == {4: EVERY, 6: EVERY}, 30, 0.1) is None:
            pytest.fail(f"{when}: edge's defaults are {egress(lab)}, expected {EVERY} for both "
                        "families (30 s)")

    settle("before the test")
    try:
        yield lab
    finally:
        faults.heal(lab)
        settle("after the test and heal")


def test_the_lab_comes_up_with_the_controllers_defaults_and_every_target_answers(steady):
    lab = steady
    lost = silent(lab, targets(lab))
    assert lost == [], f"targets not answering srv with every transit healthy: {lost}"


def test_a_blackholed_transit_leaves_the_defaults_and_every_target_answers_again(
        steady, wait_for):
    lab = steady
    everything = targets(lab)
    faults.apply(lab, "transit-blackhole", "t2")
    took = wait_for(lambda: all("t2" not in hops for hops in egress(lab).values()), 10, 0.05)
    assert took is not None, f"edge's defaults 10 s after t2's blackhole: {egress(lab)}, " \
                             "expected t2 out of both"
    expected = dict.fromkeys(("t1", "t3", "t4"), 10)
    assert egress(lab) == {4: expected, 6: expected}, "only t2 is blackholed"
    lost = silent(lab, everything)
    assert lost == [], f"targets not answering srv after t2 left edge's defaults: {lost}"
    print(f"t2 out of edge's defaults {took:.2f} s after its blackhole; all "
          f"{len(everything)} targets answer")
    faults.heal(lab)
    back = wait_for(lambda: egress(lab) == {4: EVERY, 6: EVERY}, 30, 0.1)
    assert back is not None, f"edge's defaults 30 s after heal: {egress(lab)}, expected {EVERY}"
    assert back >= 10, f"t2 back in edge's defaults {back:.2f} s after heal, before the " \
                       f"recovery hold (recovery_hold_s 10)"
    print(f"t2 back in edge's defaults {back:.2f} s after heal")


def test_with_three_transits_blackholed_the_healthy_one_carries_everything(steady, wait_for):
    lab = steady
    for t in ("t1", "t2", "t3"):
        faults.apply(lab, "transit-blackhole", t)
    alone = {"t4": 1}  # one next hop: the kernel keeps no weight
    took = wait_for(lambda: egress(lab) == {4: alone, 6: alone}, 15, 0.1)
    assert took is not None, f"edge's defaults 15 s after t1-t3 blackholed: {egress(lab)}, " \
                             f"expected {alone} for both families"
    lost = silent(lab, targets(lab))
    assert lost == [], f"targets not answering srv through t4 alone: {lost}"
    time.sleep(2)  # and it stays so
    assert egress(lab) == {4: alone, 6: alone}, "the egress set moved on its own"


def test_a_default_deleted_or_replaced_by_hand_is_put_back(steady, wait_for):
    lab = steady
    for family in (4, 6):
        lab.exec("edge", "ip", f"-{family}", "route", "del", "default")
        took = wait_for(lambda f=family: egress(lab)[f] == EVERY, 5, 0.02)
        assert took is not None, f"edge's IPv{family} default 5 s after it was deleted by " \
                                 f"hand: {egress(lab)[family]}, expected {EVERY}"
        print(f"IPv{family} default deleted by hand, back after {took:.3f} s")
    lab.exec("edge", "ip", "-4", "route", "replace", "default", "via", "192.0.2.5", "dev", "t2")
    took = wait_for(lambda: egress(lab)[4] == EVERY, 5, 0.02)
    assert took is not None, f"edge's IPv4 default 5 s after a static one replaced it: " \
                             f"{egress(lab)[4]}, expected {EVERY}"


def test_a_heal_that_puts_edges_routes_back_does_not_fight_the_controller(steady, wait_for):
    """Healing a link-down of one of edge's own interfaces applies edge's static routes again
    (`ip route replace` of each): none of them is a default route, so the controller's stay
    and nothing needs repairing."""
    lab = steady
    before = repairs(lab)
    faults.apply(lab, "link-down", "gwa-edge")
    faults.heal(lab)
    time.sleep(3)
    assert egress(lab) == {4: EVERY, 6: EVERY}, "edge's defaults after healing a link-down"
    assert repairs(lab) == before, "the heal replaced the controller's default route"


def test_a_controller_restart_leaves_the_default_in_place_throughout(steady, wait_for):
    """t2 blackholed and out; the controller killed (ExaBGP respawns it). edge's defaults,
    polled every ~50 ms from the kill until 8 s after it, are always there and never carry
    t2 again; the respawned controller finds them right and writes nothing."""
    lab = steady
    faults.apply(lab, "transit-blackhole", "t2")
    expected = dict.fromkeys(("t1", "t3", "t4"), 10)
    took = wait_for(lambda: egress(lab) == {4: expected, 6: expected}, 10, 0.05)
    assert took is not None, f"edge's defaults 10 s after t2's blackhole: {egress(lab)}"
    log = Path(lab.run_dir) / "exabgp.out"
    since = log.stat().st_size
    (old,) = controller_pids(lab)
    os.kill(old, signal.SIGKILL)
    start, respawned, polls, wrong = time.monotonic(), None, 0, []
    while time.monotonic() - start < 8:
        seen = egress(lab)
        polls += 1
        if seen != {4: expected, 6: expected}:
            wrong.append(f"{time.monotonic() - start:.2f} s: {seen}")
        pids = controller_pids(lab)
        if respawned is None and pids and old not in pids:
            respawned = time.monotonic() - start
        time.sleep(0.05)
    assert respawned is not None, f"ExaBGP did not respawn the controller (PID {old}) in 8 s"
    assert wrong == [], f"edge's defaults during the restart, expected {expected}: {wrong}"
    after = log.read_bytes()[since:].decode("utf-8", "replace")
    assert "event=start " in after, "no new controller started"
    rewritten = [line for line in after.splitlines() if "event=egress " in line]
    assert rewritten == [], f"the respawned controller rewrote the defaults: {rewritten}"
    print(f"controller respawned after {respawned:.2f} s; defaults right in all {polls} polls")
