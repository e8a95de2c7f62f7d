"""The TCP SYN prober against a real kernel, in the throwaway namespace pair of the ICMP test:
a listening port answers (SYN-ACK), a closed port answers (RST), a silent address is lost,
and the mark picks the policy table."""

from __future__ import annotations

import socket
import subprocess
import sys

from netwatch.adapters.probes.tcp import TcpProber

from .test_controller_icmp import _in_netns, _ip, pair, pytestmark  # noqa: F401


def test_syn_ack_and_rst_answer_silence_is_lost_both_families(pair):  # noqa: F811
    a, b = pair
    server = subprocess.Popen(["ip", "netns", "exec", b, sys.executable, "-c",
                               "import socket,time\n"
                               "s=socket.socket(socket.AF_INET6);"
                               "s.setsockopt(socket.IPPROTO_IPV6,socket.IPV6_V6ONLY,0);"
                               "s.bind(('::',8443));s.listen(64);time.sleep(30)"])
    try:
        async def scenario() -> bool:
            v4, v6 = TcpProber(socket.AF_INET, mark=0x4E581), TcpProber(socket.AF_INET6)
            import asyncio
            for _ in range(20):  # the listener and neighbour discovery may need a moment
                if None not in await asyncio.gather(v4.ping(("100.64.99.2", 8443), 0.5),
                                                    v6.ping(("2001:db8:99::2", 8443), 0.5)):
                    break
                await asyncio.sleep(0.1)
            open4, open6, refused, lost = await asyncio.gather(
                v4.ping(("100.64.99.2", 8443), 1.0), v6.ping(("2001:db8:99::2", 8443), 1.0),
                v4.ping(("100.64.99.2", 9), 1.0), v4.ping(("100.64.99.3", 8443), 0.3))
            return (all(r is not None and r < 0.5 for r in (open4, open6, refused))
                    and lost is None)

        assert _in_netns(a, scenario) == 0
    finally:
        server.kill()
        server.wait()


def test_mark_selects_the_policy_table(pair):  # noqa: F811
    a, b = pair
    _ip("-n", a, "addr", "add", "100.64.98.9/32", "dev", "lo")
    _ip("-n", b, "addr", "add", "100.64.98.2/32", "dev", "lo")
    _ip("-n", a, "route", "add", "100.64.98.0/24", "via", "100.64.99.2", "table", "77")
    _ip("-n", a, "rule", "add", "fwmark", "77", "table", "77", "priority", "100")
    _ip("-n", a, "rule", "add", "fwmark", "78", "table", "78", "priority", "101")

    async def scenario() -> bool:
        ok = await TcpProber(socket.AF_INET, mark=77).ping(("100.64.98.2", 9), 1.0)  # RST
        lost = await TcpProber(socket.AF_INET, mark=78).ping(("100.64.98.2", 9), 0.3)
        return ok is not None and lost is None

    assert _in_netns(a, scenario) == 0
