"""The ICMP prober against a real kernel, in a throwaway pair of network namespaces.

Needs root (raw sockets, netns); skipped otherwise. Two namespaces `nwct-<random>-a/-b` joined
by a veth; b answers pings on 100.64.99.2 and 2001:db8:99::2; always removed in a finally.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import traceback
import uuid

import pytest
from pyroute2 import netns

from netwatch.adapters.probes.icmp import IcmpProber

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for netns and raw sockets")


def _ip(*argv: str) -> None:
    subprocess.run(["ip", *argv], check=True, capture_output=True)


@pytest.fixture
def pair():
    name = f"nwct-{uuid.uuid4().hex[:6]}"
    a, b = f"{name}-a", f"{name}-b"
    try:
        _ip("netns", "add", a)
        _ip("netns", "add", b)
        _ip("-n", a, "link", "add", "va", "type", "veth", "peer", "name", "vb", "netns", b)
        for ns, dev, v4, v6 in (
            (a, "va", "100.64.99.1/24", "2001:db8:99::1/64"),
            (b, "vb", "100.64.99.2/24", "2001:db8:99::2/64"),
        ):
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", ns, "addr", "add", v4, "dev", dev)
            _ip("-n", ns, "addr", "add", v6, "dev", dev, "nodad")
            _ip("-n", ns, "link", "set", dev, "up")
        yield a, b
    finally:
        for ns in (a, b):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def _in_netns(ns: str, coro_fn):
    """Run `coro_fn()` in a child process that has entered `ns`; return its exit status."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            netns.setns(ns)
            code = 0 if asyncio.run(coro_fn()) else 3
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def test_many_concurrent_pings_both_families_and_timeouts(pair):
    a, _ = pair

    async def scenario() -> bool:
        with IcmpProber(socket.AF_INET, mark=0x4E581) as v4, IcmpProber(socket.AF_INET6) as v6:
            # Warm-up until both families answer: on a veth that came up a moment ago, IPv6
            # neighbour discovery has been seen to need more than the 1 s of a single ping
            # (always on a busy machine), and the burst below must measure the prober only.
            for prober, target in ((v4, "100.64.99.2"), (v6, "2001:db8:99::2")):
                for _ in range(10):
                    if await prober.ping(target, 1.0) is not None:
                        break
            replies = await asyncio.gather(
                *[v4.ping("100.64.99.2", 1.0) for _ in range(50)],
                *[v6.ping("2001:db8:99::2", 1.0) for _ in range(50)],
            )
            lost = await asyncio.gather(v4.ping("100.64.99.3", 0.3), v6.ping("2001:db8:99::3", 0.3))
            return all(r is not None and r < 0.5 for r in replies) and lost == [None, None]

    assert _in_netns(a, scenario) == 0


def test_mark_selects_the_policy_table(pair):
    """A marked probe follows its fwmark rule; a table without a route loses the probe."""
    a, _ = pair
    # table 77 routes 100.64.98.0/24 via b; table 78 has nothing for it; main has nothing either.
    _ip("-n", a, "addr", "add", "100.64.98.9/32", "dev", "lo")
    subprocess.run(["ip", "-n", pair[1], "addr", "add", "100.64.98.2/32", "dev", "lo"], check=True)
    _ip("-n", a, "route", "add", "100.64.98.0/24", "via", "100.64.99.2", "table", "77")
    _ip("-n", a, "rule", "add", "fwmark", "77", "table", "77", "priority", "100")
    _ip("-n", a, "rule", "add", "fwmark", "78", "table", "78", "priority", "101")

    async def scenario() -> bool:
        good, bad = IcmpProber(socket.AF_INET, mark=77), IcmpProber(socket.AF_INET, mark=78)
        with good, bad:
            ok = await good.ping("100.64.98.2", 1.0)
            lost = await bad.ping("100.64.98.2", 0.3)
            return ok is not None and lost is None

    assert _in_netns(a, scenario) == 0
