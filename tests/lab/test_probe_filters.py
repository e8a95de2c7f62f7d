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
import sys
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
    assert bpf.equal_program([(k, b"\x00") for k in range(127)])  # the longest jump fits
    with pytest.raises(ValueError):
        bpf.equal_program([])  # it would accept everything
    with pytest.raises(ValueError):
        bpf.equal_program([(k, b"\x00") for k in range(128)])  # a jump beyond 255


ABSENT4 = "100.64.99.9"  # nobody holds it: only the forged replies answer
FORGE = r"""
import socket, struct, sys
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind(("vb", 0))
mac = s.getsockname()[4][:6]
to = bytes.fromhex(sys.argv[3])
arp = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 2, mac, socket.inet_aton(sys.argv[1]),
                  to, socket.inet_aton(sys.argv[2]))
s.send(to + mac + struct.pack("!H", 0x0806) + arp)
"""


def _forged_arp_scenario(b: str):
    """An ARP reply from ABSENT4 sent by b to another host's MAC, then one to ours."""

    async def scenario() -> dict:
        prober = ArpProber("va", IPv4Address(ABSENT4), IPv4Address("100.64.99.1"))
        seen = {}
        try:
            for name, to in (("to_another_host", "020000000099"), ("to_us", None)):
                prober.send()
                mac = to or prober._mac.hex()
                subprocess.run(["ip", "netns", "exec", b, sys.executable, "-c", FORGE,
                                ABSENT4, "100.64.99.1", mac], check=True)
                await asyncio.sleep(0.2)
                seen[name] = prober.result(1.0)
        finally:
            prober.close()
        return seen

    return scenario


def test_an_arp_reply_to_another_host_is_no_answer(netns_pair, in_netns):
    """A gateway that answers others but no longer us (one-way failure, seen on a veth, a
    bridge port or a switch flooding unknown unicast) must not look alive."""
    a, b = netns_pair
    seen = in_netns(a, _forged_arp_scenario(b))
    assert seen["to_another_host"] is None, seen
    assert seen["to_us"] is not None, seen


async def _held_scenario() -> dict:
    seen: dict = {}
    probers = {"arp": ArpProber("va", IPv4Address(GW4)), "nd": NdProber("va", IPv6Address(GW6)),
               "echo4": EchoProber([GW4]), "echo6": EchoProber([GW6]),
               "silent": EchoProber(["100.64.99.9"])}
    try:
        for name, prober in probers.items():
            if name != "silent":
                assert await _answered(prober) is not None, name
        for name, prober in probers.items():
            prober.send()
            await asyncio.sleep(0.02)  # its reply queues, unread
            prober.hold()
            prober.send()  # the confirmation, beside the held probe
            await asyncio.sleep(0.05)
            seen[name] = (prober.held_result(0.1), prober.result(0.1), prober.held_result(0.1),
                          prober.timed())
    finally:
        for prober in probers.values():
            prober.close()
    return seen


def test_a_held_probe_gets_its_own_reply_and_the_next_one_its_own(netns_pair, in_netns):
    """hold() (the agent's early suspicion): the held probe is judged later by its own reply,
    its round trip from its own send (not the 20 ms to the next one), and the next probe by
    the reply to it, not by the held one's (stamped before it left). A held probe is judged
    once; an address that answers nothing leaves both unanswered."""
    a, _ = netns_pair
    seen = in_netns(a, _held_scenario)
    for name in ("arp", "nd", "echo4", "echo6"):
        held, current, again, timed = seen[name]
        assert timed, (name, seen[name])  # its reply came after it left, before any other
        assert held is not None and held < 0.01, (name, seen[name])
        assert current is not None and current < 0.01, (name, seen[name])
        assert again is None, (name, seen[name])
    assert seen["silent"][:3] == (None, None, None)


async def _lost_held_scenario() -> dict:
    seen: dict = {}
    probers = {"arp": ArpProber("va", IPv4Address(GW4)), "nd": NdProber("va", IPv6Address(GW6))}
    try:
        for name, prober in probers.items():
            assert await _answered(prober) is not None, name
        for name, prober in probers.items():
            prober.send()
            await asyncio.sleep(0.02)
            _drain(prober._sock)  # its reply is lost
            prober.hold()
            prober.send(copies=2)  # the confirmation: two requests, two replies
            await asyncio.sleep(0.05)
            current = (prober.result(0.1), prober.timed())
            seen[name] = (prober.held_result(0.1), prober.timed(held=True), *current)
    finally:
        for prober in probers.values():
            prober.close()
    return seen


def test_a_reply_after_the_confirmation_left_answers_both_and_times_neither(netns_pair, in_netns):
    """ARP and ND replies name no request: the replies to a confirmation may be the held
    probe's (a gateway slower than the suspicion time). The gateway spoke within both: both
    are answered, and no round trip is learnt from either (Karn's rule)."""
    a, _ = netns_pair
    seen = in_netns(a, _lost_held_scenario)
    for name in ("arp", "nd"):
        held, held_timed, current, current_timed = seen[name]
        assert held is not None and not held_timed, (name, seen[name])
        assert current is not None and current < 0.01 and not current_timed, (name, seen[name])
