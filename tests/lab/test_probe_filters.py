"""The agent's raw probers and their BPF filters against a real kernel, in a throwaway pair
of network namespaces (`netns_pair`, tests/conftest.py: a veth from a to b; b holds
100.64.99.2 and 2001:db8:99::2, and here also .7 and ::7, the "other" hosts). Needs root.

A filtered socket must let our reply in and keep a foreign one out: the ARP reply of another
host, the echo reply to another prober's request; and the probers still measure the round trip
(from the kernel's receive stamp) with nothing reading their sockets in between."""

from __future__ import annotations

import asyncio
import socket
import subprocess
from ipaddress import IPv4Address, IPv6Address

import pytest

from netwatch.adapters.probes import bpf
from netwatch.adapters.probes.icmp import echo_request, open_echo_socket, parse_echo_reply
from netwatch.adapters.probes.raw import ETH_P_ARP, ArpProber, EchoProber, NdProber

GW4, OTHER4, GW6, OTHER6 = "100.64.99.2", "100.64.99.7", "2001:db8:99::2", "2001:db8:99::7"
TOKEN = b"netwatch"


def _drain(sock: socket.socket) -> list[bytes]:
    packets = []
    while True:
        try:
            packets.append(sock.recv(2048))
        except BlockingIOError:
            return packets


async def _answered(prober, tries: int = 20) -> float | None:
    """The first answered round trip (a fresh veth may need a moment for ND)."""
    for _ in range(tries):
        prober.send()
        await asyncio.sleep(0.1)
        rtt = prober.result(0.1)
        if rtt is not None:
            return rtt
    return None


async def _scenario() -> dict:
    seen: dict = {}
    arp = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP))
    arp.bind(("va", ETH_P_ARP))
    arp.setblocking(False)
    bpf.attach(arp, bpf.equal_program([(20, b"\x00\x02"), (28, IPv4Address(GW4).packed)]))
    echo = {family: open_echo_socket(family, only=(0x4E57, TOKEN))
            for family in (socket.AF_INET, socket.AF_INET6)}
    plain = {family: open_echo_socket(family) for family in echo}
    probers = {"arp": ArpProber("va", IPv4Address(GW4)), "nd": NdProber("va", IPv6Address(GW6)),
               "echo4": EchoProber([GW4]), "echo6": EchoProber([GW6]),
               "arp_other": ArpProber("va", IPv4Address(OTHER4)),
               "nd_other": NdProber("va", IPv6Address(OTHER6))}
    try:
        for name, prober in probers.items():
            seen[name] = await _answered(prober)
        _drain(arp)
        for sock in echo.values():
            _drain(sock)
        # Ours and foreign, each once: the other host's ARP reply, and echo replies to
        # another identifier and to our identifier with another token.
        probers["arp"].send()
        probers["arp_other"].send()
        for family, sock in plain.items():
            target = GW4 if family == socket.AF_INET else GW6
            for ident, token in ((0x4E57, TOKEN), (0x1111, TOKEN), (0x4E57, b"stranger")):
                sock.sendto(echo_request(family, ident, 1, token), (target, 0))
        await asyncio.sleep(0.3)
        seen["arp_senders"] = [str(IPv4Address(p[28:32])) for p in _drain(arp)]
        for family, sock in echo.items():
            replies = [parse_echo_reply(family, p) for p in _drain(sock)]
            seen[f"echo_{family.name}"] = [(r[0], r[2]) for r in replies]
    finally:
        for prober in probers.values():
            prober.close()
        for sock in (arp, *echo.values(), *plain.values()):
            sock.close()
    return seen


def test_filters_keep_foreign_replies_out_and_probers_measure(netns_pair, in_netns):
    a, b = netns_pair
    for address in (f"{OTHER4}/24", f"{OTHER6}/64"):
        subprocess.run(["ip", "-n", b, "addr", "add", address, "dev", "vb", "nodad"], check=True)
    seen = in_netns(a, _scenario)
    for name in ("arp", "nd", "echo4", "echo6", "arp_other", "nd_other"):
        assert seen[name] is not None and 0 < seen[name] < 0.1, (name, seen[name])
    assert seen["arp_senders"] == [GW4]
    for family in ("AF_INET", "AF_INET6"):
        assert seen[f"echo_{family}"] == [(0x4E57, TOKEN)], seen


def test_program_rejects_what_it_cannot_load():
    assert len(bpf.equal_program([(0, b"\x00")])) == 4 * 8  # load, jeq, accept, drop
    with pytest.raises(ValueError):
        bpf.equal_program([])  # it would accept everything
