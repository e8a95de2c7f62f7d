"""The transit controller in the lab: real ExaBGP, real BIRD, both families, checked in the
transits' own BIRD tables. Every test heals what it faulted and waits for the normal state."""

from __future__ import annotations

import re
import time

import pytest

from netwatch.lab import faults

PREFIXES = ("198.51.100.0/24", "2001:db8:100::/48")
TRANSITS = ("t1", "t2", "t3", "t4")
NORMAL = "64500"
PREPENDED = "64500 64500 64500 64500"


def held(lab, node: str) -> dict[str, str]:
    """{our prefix: AS path} as `node`'s BIRD holds it."""
    out, current = {}, None
    for line in lab.birdc(node, "show route all").splitlines():
        m = re.match(r"^(\S+)\s+unicast", line)
        if m:
            current = m.group(1)
        m = re.search(r"BGP\.as_path:\s*(.*)$", line)
        if m and current in PREFIXES:
            out[current] = m.group(1).strip()
    return out


def wait_for(predicate, timeout_s: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if predicate():
            return time.monotonic() - start
        time.sleep(0.1)
    raise AssertionError(f"not reached within {timeout_s} s")


def all_normal(lab) -> bool:
    return all(held(lab, t) == dict.fromkeys(PREFIXES, NORMAL) for t in TRANSITS)


@pytest.fixture
def clean(lab):
    wait_for(lambda: all_normal(lab), 30)
    try:
        yield lab
    finally:
        faults.heal(lab)
        wait_for(lambda: all_normal(lab), 30)  # recovery hold 10 s + rise


def test_blackhole_withdraws_from_that_transit_only(clean):
    lab = clean
    faults.apply(lab, "transit-blackhole", "t2")
    took = wait_for(lambda: held(lab, "t2") == {}, 10)
    for t in ("t1", "t3", "t4"):
        assert held(lab, t) == dict.fromkeys(PREFIXES, NORMAL)
    print(f"blackhole t2 -> withdrawn at t2 after {took:.2f} s")
    faults.heal(lab)
    back = wait_for(lambda: held(lab, "t2") == dict.fromkeys(PREFIXES, NORMAL), 30)
    assert back >= 10  # not before recovery_hold_s


def test_random_loss_prepends(clean):
    lab = clean
    faults.apply(lab, "loss", "t3", "30")
    wait_for(lambda: held(lab, "t3") == dict.fromkeys(PREFIXES, PREPENDED), 15)
    for t in ("t1", "t2", "t4"):
        assert held(lab, t) == dict.fromkeys(PREFIXES, NORMAL)


def test_three_blackholed_keep_two_announced(clean):
    lab = clean
    for t in ("t1", "t2", "t3"):
        faults.apply(lab, "transit-blackhole", t)
    wait_for(lambda: sum(bool(held(lab, t)) for t in TRANSITS) == 2, 15)
    time.sleep(2)  # and it stays so
    holding = [t for t in TRANSITS if held(lab, t)]
    assert len(holding) == 2 and "t4" in holding


def test_internet_unreachable_through_all_withdraws_nothing(clean):
    lab = clean
    for t in TRANSITS:
        faults.apply(lab, "transit-blackhole", t)
    time.sleep(5)  # two windows plus fall
    for t in TRANSITS:
        assert set(held(lab, t)) == set(PREFIXES)
