"""The transit controller in the lab: real ExaBGP, real BIRD, both families, checked in the
transits' own BIRD tables. Every test heals what it faulted and waits for the normal state."""

from __future__ import annotations

import time
from pathlib import Path

from netwatch.lab import faults, lifecycle

PREFIXES = ("198.51.100.0/24", "2001:db8:100::/48")
TRANSITS = ("t1", "t2", "t3", "t4")
NORMAL = dict.fromkeys(PREFIXES, "64500")
PREPENDED = dict.fromkeys(PREFIXES, "64500 64500 64500 64500")


def test_blackhole_withdraws_from_that_transit_only(announced, held, wait_for):
    lab = announced
    faults.apply(lab, "transit-blackhole", "t2")
    took = wait_for(lambda: held("t2") == {}, 10, 0.1)
    assert took is not None, f"t2 still holds {held('t2')} 10 s after its blackhole, expected {{}}"
    for t in ("t1", "t3", "t4"):
        seen = held(t)
        assert seen == NORMAL, f"{t} holds {seen}, expected {NORMAL} (only t2 is blackholed)"
    print(f"blackhole t2 -> withdrawn at t2 after {took:.2f} s")
    faults.heal(lab)
    back = wait_for(lambda: held("t2") == NORMAL, 30, 0.1)
    assert back is not None, f"t2 holds {held('t2')} 30 s after heal, expected {NORMAL}"
    assert back >= 10, f"t2 got {NORMAL} back {back:.2f} s after heal, before recovery_hold_s 10"


def test_random_loss_prepends(announced, held, wait_for):
    lab = announced
    faults.apply(lab, "loss", "t3", "30")
    took = wait_for(lambda: held("t3") == PREPENDED, 15, 0.1)
    assert took is not None, f"t3 holds {held('t3')} 15 s into 30 % loss, expected {PREPENDED}"
    for t in ("t1", "t2", "t4"):
        seen = held(t)
        assert seen == NORMAL, f"{t} holds {seen}, expected {NORMAL} (only t3 loses packets)"


def test_three_blackholed_keep_two_announced(announced, held, wait_for):
    lab = announced

    def holding() -> list[str]:
        return [t for t in TRANSITS if held(t)]

    for t in ("t1", "t2", "t3"):
        faults.apply(lab, "transit-blackhole", t)
    took = wait_for(lambda: len(holding()) == 2, 15, 0.1)
    assert took is not None, (
        f"transits holding our prefixes 15 s after t1-t3 blackholed: {holding()}, expected two"
    )
    time.sleep(2)  # and it stays so
    now = holding()
    assert len(now) == 2 and "t4" in now, f"{now} hold our prefixes, expected t4 and one other"


def test_internet_unreachable_through_all_withdraws_nothing(announced, held, wait_for):
    """One cause darkens every transit at once (`internet-blackhole`: inet drops all but BGP
    and ND from the transits): the all-bad guard trips and nothing is sent. Four
    transit-blackholes ~0.1 s apart would not do: the first is FAILED, rightly, in 0.5 s,
    before the last one lands (docs/controller.md, the guard's onset)."""
    lab = announced

    def local_fault() -> float:
        return lab.metrics("edge", "127.0.0.1:9111").get("netwatch_transit_local_fault", -1.0)

    # No restart first: after the transits have failed and recovered (the tests above), their
    # probe streams may run tens of ms apart, and the verdict compares probes sent at the
    # same time (docs/controller.md, "Same time, not the same count").
    settled = wait_for(lambda: local_fault() == 0.0
                       and all(set(held(t)) == set(PREFIXES) for t in TRANSITS), 30, 0.2)
    assert settled is not None, "the lab did not settle back to every transit announcing"

    faults.apply(lab, "internet-blackhole", "inet")
    tripped = wait_for(lambda: local_fault() == 1.0, 10, 0.1)
    assert tripped is not None, (
        f"netwatch_transit_local_fault is {local_fault()} 10 s into the internet blackhole, "
        "expected 1 (the targets are dark through every transit)"
    )
    time.sleep(3)  # and it holds
    for t in TRANSITS:
        seen = held(t)
        assert set(seen) == set(PREFIXES), f"{t} holds only {seen} with every transit blackholed"
    print(f"local fault declared {tripped:.2f} s into the internet blackhole; nothing withdrawn")


def test_the_controller_runs_in_a_fresh_image_without_the_cli(announced):
    """`netwatch controller` execs a fresh image once the site file is read
    (netwatch.runtime.lean): ExaBGP's child is the controller (it announced), its command
    line still names its site file, and the CLI's pydantic is not in its memory."""
    children = lifecycle.exabgp_children(announced)
    assert len(children) == 1, f"ExaBGP runs {children}, expected one controller"
    cmdline = Path(f"/proc/{children[0]}/cmdline").read_bytes().split(b"\0")
    assert b"controller" in cmdline and b"--config" in cmdline, cmdline
    maps = Path(f"/proc/{children[0]}/maps").read_text()
    assert "_pydantic_core" not in maps, "the controller still holds pydantic"
