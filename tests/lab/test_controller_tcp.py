"""The TCP SYN prober against a real kernel, in the throwaway namespace pair of the ICMP test
(`netns_pair`, `fwmark_tables`): a listening port answers (SYN-ACK), a closed port answers
(RST), a silent address is lost, and the mark picks the policy table."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys

from netwatch.adapters.probes.tcp import TcpProber

OPEN4, OPEN6 = ("100.64.99.2", 8443), ("2001:db8:99::2", 8443)
CLOSED4 = ("100.64.99.2", 9)
SILENT4 = ("100.64.99.3", 8443)  # on the link, nobody there


def test_syn_ack_and_rst_answer_silence_is_lost_both_families(netns_pair, in_netns):
    a, b = netns_pair
    server = subprocess.Popen(["ip", "netns", "exec", b, sys.executable, "-c",
                               "import socket,time\n"
                               "s=socket.socket(socket.AF_INET6);"
                               "s.setsockopt(socket.IPPROTO_IPV6,socket.IPV6_V6ONLY,0);"
                               "s.bind(('::',8443));s.listen(64);time.sleep(30)"])
    try:
        async def scenario() -> dict:
            v4, v6 = TcpProber(socket.AF_INET, mark=0x4E581), TcpProber(socket.AF_INET6)
            for _ in range(20):  # the listener and neighbour discovery may need a moment
                if None not in await asyncio.gather(v4.ping(OPEN4, 0.5), v6.ping(OPEN6, 0.5)):
                    break
                await asyncio.sleep(0.1)
            open4, open6, refused, lost = await asyncio.gather(
                v4.ping(OPEN4, 1.0), v6.ping(OPEN6, 1.0),
                v4.ping(CLOSED4, 1.0), v4.ping(SILENT4, 0.3))
            return {OPEN4: open4, OPEN6: open6, CLOSED4: refused, SILENT4: lost}

        seen = in_netns(a, scenario)
    finally:
        server.kill()
        server.wait()
    for port, address in (("listening", OPEN4), ("listening", OPEN6), ("closed", CLOSED4)):
        rtt = seen[address]
        assert rtt is not None and rtt < 0.5, \
            f"{port} {address}: answered after {rtt} s, expected within 0.5 s (None: lost)"
    assert seen[SILENT4] is None, f"silent {SILENT4} answered after {seen[SILENT4]} s"


def test_mark_selects_the_policy_table(fwmark_tables, in_netns):
    a, _ = fwmark_tables

    async def scenario() -> tuple:
        ok = await TcpProber(socket.AF_INET, mark=77).ping(("100.64.98.2", 9), 1.0)  # RST
        lost = await TcpProber(socket.AF_INET, mark=78).ping(("100.64.98.2", 9), 0.3)
        return ok, lost

    via_77, via_78 = in_netns(a, scenario)
    assert via_77 is not None, "a SYN to 100.64.98.2:9 marked 77 (table 77, via b) got no RST"
    assert via_78 is None, \
        f"a SYN to 100.64.98.2:9 marked 78 (table 78, no route) was answered after {via_78} s"
