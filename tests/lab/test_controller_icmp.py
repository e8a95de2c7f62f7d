"""The controller's batched ICMP echo (`EchoBatch`) against a real kernel, in a throwaway
pair of network namespaces.

Needs root (raw sockets, netns); skipped otherwise. The pair (`netns_pair`, `fwmark_tables`,
see tests/conftest.py): a veth from a to b, which answers pings on 100.64.99.2 and
2001:db8:99::2; always removed.
"""

from __future__ import annotations

import asyncio
import math
import socket

from netwatch.adapters.probes.batch import EchoBatch

V4, V6 = "100.64.99.2", "2001:db8:99::2"
ABSENT = ("100.64.99.3", "2001:db8:99::3")  # on the link, nobody there
ROUNDS = 20


async def _rounds(batches: dict[str, EchoBatch], targets: list[tuple[str, str]]) -> dict:
    """ROUNDS rounds of one probe to every (family, target), judged 50 ms later."""
    seen: dict[str, list] = {target: [] for _, target in targets}
    for _ in range(ROUNDS):
        for family, target in targets:
            batches[family].send(target)
        await asyncio.sleep(0.05)
        for family, target in targets:
            seen[target].append(batches[family].result(target, math.inf))
    return seen


def test_both_families_answer_and_an_absent_target_is_lost(netns_pair, in_netns):
    a, _ = netns_pair

    async def scenario() -> dict:
        batches = {"v4": EchoBatch(socket.AF_INET, mark=0x4E581), "v6": EchoBatch(socket.AF_INET6)}
        try:
            # Warm-up until both families answer: on a veth that came up a moment ago, IPv6
            # neighbour discovery has been seen to need more than a second on a busy machine.
            for family, target in (("v4", V4), ("v6", V6)):
                for _ in range(20):
                    batches[family].send(target)
                    await asyncio.sleep(0.1)
                    if batches[family].result(target, math.inf) is not None:
                        break
            return await _rounds(batches, [("v4", V4), ("v6", V6), ("v4", ABSENT[0]),
                                           ("v6", ABSENT[1])])
        finally:
            for batch in batches.values():
                batch.close()

    seen = in_netns(a, scenario)
    for target in (V4, V6):
        bad = [r for r in seen[target] if r is None or r >= 0.05]
        assert not bad, f"{len(bad)} of {ROUNDS} probes to {target} lost (None) or late: {bad}"
    for target in ABSENT:
        assert seen[target] == [None] * ROUNDS, f"the absent {target} answered: {seen[target]}"


def test_mark_selects_the_policy_table(fwmark_tables, in_netns):
    """A marked probe follows its fwmark rule; a table without a route loses the probe."""
    a, _ = fwmark_tables

    async def scenario() -> tuple:
        good, bad = EchoBatch(socket.AF_INET, mark=77), EchoBatch(socket.AF_INET, mark=78)
        try:
            for _ in range(10):
                good.send("100.64.98.2")
                bad.send("100.64.98.2")
                await asyncio.sleep(0.1)
                via_77 = good.result("100.64.98.2", math.inf)
                via_78 = bad.result("100.64.98.2", math.inf)
                if via_77 is not None:
                    break
            return via_77, via_78
        finally:
            good.close()
            bad.close()

    via_77, via_78 = in_netns(a, scenario)
    assert via_77 is not None, "a ping to 100.64.98.2 marked 77 (table 77, via b) was lost"
    assert via_78 is None, (
        f"a ping to 100.64.98.2 marked 78 (table 78, no route) was answered after {via_78} s"
    )
