"""Which request a reply answers, when a held probe (netwatch.core.pacing, early suspicion)
and its confirmation are both in flight: the raw probers on a fake socket and a fake clock.
ARP and ND replies name no request: one that came after the confirmation left answers both,
with no round-trip sample (Karn's rule); an echo reply answers its own sequence number."""

from __future__ import annotations

import ipaddress
import socket
import struct

import pytest

from netwatch.adapters.probes import raw
from netwatch.adapters.probes.icmp import ICMPV6_ECHO_REPLY

WALL = 5e8  # the fake wall clock runs this far ahead of the monotonic one


def approx(value):
    return pytest.approx(value, abs=1e-6)  # the stamps go through nanoseconds


class Clock:
    now = 1000.0
    wall = WALL  # a test steps the wall clock by changing this

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return self.now + self.wall


class FakeSocket:
    """Replies queued with their arrival times; read once the clock has passed them, with
    the kernel's receive stamp as SO_TIMESTAMPNS."""

    def __init__(self, clock: Clock):
        self.clock, self.queue = clock, []

    def sendto(self, packet, address) -> None:
        pass

    def recvmsg(self, size, ancillary_size):
        ready = [r for r in self.queue if r[0] <= self.clock.now]
        if not ready:
            raise BlockingIOError
        self.queue.remove(ready[0])
        stamp = ready[0][0] + WALL
        data = struct.pack("@qq", int(stamp), round((stamp % 1) * 1e9))
        return ready[0][1], [(socket.SOL_SOCKET, raw.SO_TIMESTAMPNS, data)], 0, None

    def close(self) -> None:
        pass


@pytest.fixture
def clock(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(raw, "time", clock)
    return clock


def arp(clock):
    prober = raw.ArpProber("eth0", ipaddress.IPv4Address("192.0.2.1"))
    prober._mac = b"\x02" * 6
    prober._sock, prober._request_cache = FakeSocket(clock), (b"", None)
    reply = b"\0" * 20 + b"\x00\x02" + b"\0" * 6 + prober._gw + prober._mac + b"\0" * 4
    return prober, reply


def held_and_confirmed(clock, prober, replies):
    """Routine probe at 0, suspect at 30 ms (held, a confirmation of two requests sent), the
    confirmation judged at 40 ms, the held probe at 50: ((held rtt, timed), (rtt, timed))."""
    start = clock.now
    prober.send()
    prober._sock.queue += [(start + at, data) for at, data in replies]
    clock.now = start + 0.030
    assert prober.result(float("inf")) is None  # suspect
    prober.hold()
    prober.send(copies=2)
    clock.now = start + 0.040
    current = (prober.result(float("inf")), prober.timed())
    clock.now = start + 0.050
    held = (prober.held_result(float("inf")), prober.timed(held=True))
    return held, current


def test_an_arp_reply_after_the_confirmation_answers_both_untimed(clock):
    """The gateway slowed to 35 ms: its reply to the held probe comes after the confirmation
    left. It answers both (the gateway spoke within each one's time), timing neither."""
    prober, reply = arp(clock)
    held, current = held_and_confirmed(clock, prober, [(0.035, reply)])
    assert held == (approx(0.035), False)
    assert current == (approx(0.005), False)


def test_an_arp_reply_before_the_confirmation_left_is_the_held_probes(clock):
    # A late reply to the held probe that came before the confirmation left: its own, timed;
    # the confirmation's reply is the confirmation's, timed too.
    prober2, reply2 = arp(clock)
    start = clock.now
    prober2.send()
    prober2._sock.queue.append((start + 0.020, reply2))
    clock.now = start + 0.025
    prober2.hold()  # (a suspicion at 25 ms that had not read it yet)
    clock.now = start + 0.026
    prober2.send(copies=2)
    prober2._sock.queue.append((start + 0.0263, reply2))
    clock.now = start + 0.036
    assert (prober2.result(float("inf")), prober2.timed()) == (approx(0.0003), True)
    assert (prober2.held_result(float("inf")), prober2.timed(held=True)) == (
        approx(0.020), True)


def test_an_echo_reply_answers_its_own_sequence(clock):
    prober = raw.EchoProber(["2001:db8::1"])
    prober._sock = FakeSocket(clock)

    def reply(seq: int) -> bytes:
        return struct.pack("!BBHHH", ICMPV6_ECHO_REPLY, 0, 0, prober._ident, seq) + prober._token

    first = prober._seq + 1
    held, current = held_and_confirmed(clock, prober, [(0.035, reply(first))])
    assert held == (approx(0.035), True)
    assert current == (None, True)


def stamp(wall_time: float) -> list:
    """recvmsg's ancillary data for a reply the kernel stamped at `wall_time`."""
    data = struct.pack("@qq", int(wall_time), round((wall_time % 1) * 1e9))
    return [(socket.SOL_SOCKET, raw.SO_TIMESTAMPNS, data)]


def test_a_step_of_the_wall_clock_after_the_arrival_keeps_the_round_trip(clock):
    """The controller reads a reply up to a timeout after it came: a step of the wall clock
    between the arrival and the read (far likelier than one within the round trip) must not
    move the arrival. The offset at the send converts the stamp, the one now only when that
    puts it outside the send and now. A stamp before the send is no reply to it."""
    sent = clock.now
    arrived = sent + 0.002
    ancillary = stamp(arrived + WALL)
    clock.now = sent + 0.5
    assert raw.kernel_arrival(ancillary, sent, WALL) == approx(arrived)
    clock.wall = WALL - 0.3  # stepped back after the arrival, before the read
    assert raw.kernel_arrival(ancillary, sent, WALL) == approx(arrived)
    clock.wall = WALL + 0.3  # and forward
    assert raw.kernel_arrival(ancillary, sent, WALL) == approx(arrived)
    # Stepped back 1 s between the send and the arrival: the offset at the send puts the
    # stamp before the send, the one now converts it.
    clock.wall = WALL - 1.0
    assert raw.kernel_arrival(stamp(arrived + WALL - 1.0), sent, WALL) == approx(arrived)
    clock.wall = WALL
    assert raw.kernel_arrival(stamp(sent - 0.010 + WALL), sent, WALL) is None
