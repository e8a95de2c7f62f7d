"""The agent's raw-socket probes: ARP (IPv4 gateway), neighbour solicitation (IPv6 gateway)
and ICMP echo (targets beyond the gateway, through a marked socket). I/O only.

Every prober owns one non-blocking raw socket and keeps one probe in flight, and at most one
held (a suspect probe still waiting for its deadline, netwatch.core.pacing). Two ways to use
it:
- batched (the agent): `prober.send()` sends a probe now and returns False when the kernel
  refused it; nothing reads the socket until `prober.result(timeout_s) -> float | None`, the
  round trip in seconds, or None (no answer within `timeout_s` of the send, or the send
  failed). `result()` reads the queued replies, and the kernel's receive stamp of the first
  matching one (SO_TIMESTAMPNS) is its arrival: a reply costs no wake-up, and the RTT is the
  network's, not the loop's latency. One timer wake-up per tick sends every probe and judges
  the previous tick's: no future, timer, task or socket callback per probe.
- one at a time: `await prober.probe(timeout_s)` (send, wait on a reader, result).
A classic BPF filter on every socket (netwatch.adapters.probes.bpf) keeps foreign packets
(other hosts' ARP, other probers' echo replies) out of the queue. Measured on the dev machine
(8 streams at 20 Hz): a task, a `wait_for` and a future per probe cost 6.5..8 % of a core;
batched with a reader callback per socket, 1.7..2.2 %; read at result(), filtered, about
0.25 % less (see docs/agent.md, Cost).

- ArpProber: AF_PACKET socket for ETH_P_ARP on the interface, who-has sent to broadcast. The
  sender address is the interface's own IPv4 address when it has one, else 0.0.0.0 (an RFC 5227
  probe, which Linux and conforming routers answer without learning anything).
- NdProber: ICMPv6 raw socket bound to the interface (SO_BINDTODEVICE), hop limit 255, an
  ICMP6_FILTER letting only neighbour advertisements in; the solicitation goes to the target's
  solicited-node multicast group, so it does not depend on the kernel's neighbour cache.

A socket bound to an interface that vanished keeps failing; it is reopened on the next probe.
One bound to an interface that was renamed keeps working, through the new name: `close()` it
(the agent does when another interface, or none, has the configured name) and the next probe
opens a socket on whatever has the name then.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import ipaddress
import os
import socket
import struct
import time

from netwatch.adapters.probes import bpf
from netwatch.adapters.probes.icmp import echo_request, open_echo_socket, parse_echo_reply

ETH_P_ARP = 0x0806
ETH_P_IP = 0x0800
ARPOP_REQUEST, ARPOP_REPLY = 1, 2
ICMPV6_NS, ICMPV6_NA = 135, 136
ICMP6_FILTER = 1
SIOCGIFHWADDR = 0x8927
BROADCAST = b"\xff" * 6
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # SCM_TIMESTAMPNS: the same number
_TIMESPEC = struct.Struct("@qq")  # struct timespec on a 64-bit kernel: the stamp
STAMP_SPACE = socket.CMSG_SPACE(_TIMESPEC.size)  # recvmsg room for the receive stamp


def kernel_arrival(ancillary, sent: float, wall_offset: float) -> float | None:
    """A reply's arrival on the monotonic clock, from the kernel's wall-clock stamp in
    `ancillary` (SO_TIMESTAMPNS), or None when it arrived before the send. The stamp is
    converted with the wall clock's offset at the send (`wall_offset`), else with its offset
    now: a reply arrives a round trip after its send but is read up to a whole timeout later
    (the controller reads at the deadline), so a step of the wall clock falls between the
    arrival and the read far more often than before the arrival. A stamp that neither offset
    puts between the send and now counts as before it. No stamp: now."""
    now = time.monotonic()
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(data) >= 16:
            seconds, nanoseconds = _TIMESPEC.unpack_from(data)
            stamp = seconds + nanoseconds * 1e-9
            break
    else:
        return now
    for offset in (wall_offset, time.time() - now):
        arrival = stamp - offset
        if sent <= arrival <= now:
            return arrival
    return None

class _RawProber:
    """A socket opened lazily, reopened after errors, and one probe in flight at a time.

    Batched, nothing reads the socket between `send()` and `result()`: `result()` reads what
    queued meanwhile, and the kernel's receive timestamp (SO_TIMESTAMPNS) of the first
    matching reply gives its arrival, so a reply costs no wake-up of its own. A BPF filter
    (`_filter()`) keeps every other packet out of the queue. A probe may be held (`hold()`)
    and judged later (`held_result()`) while the next ones are sent."""

    _seq = 0  # the echo sequence of the probe in flight (EchoProber's; 0 for ARP and ND)
    _identified = False  # a reply names its request (echo: by sequence); ARP and ND: no
    _timed = True  # the probe in flight's answer is its own (see `timed`)
    _held_timed = True

    def __init__(self, ifname: str):
        self.ifname = ifname
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reading: int | None = None  # the fd with a reader, while probe() waits
        self._sent: float | None = None  # the probe in flight: its send time (monotonic)
        self._wall_offset = 0.0  # time.time() - time.monotonic() at that send
        self._answered: float | None = None  # and its first matching reply's arrival
        # A held probe (`hold()`): [send time, wall offset, arrival or None, sequence, timed]
        self._held: list | None = None
        self._request_cache: tuple[bytes, object] | None = None

    def _open(self) -> socket.socket:
        raise NotImplementedError

    def _filter(self) -> bytes | None:
        """The BPF program for the socket (netwatch.adapters.probes.bpf), None for none."""
        return None

    def _request(self) -> tuple[bytes, object]:
        raise NotImplementedError

    def _matches(self, data: bytes) -> bool:
        raise NotImplementedError

    def _matches_held(self, data: bytes, seq: int) -> bool:
        """A reply to the held probe: for ARP and ND any reply of the gateway (their
        requests carry nothing to tell them apart; `_drain` decides whose it is by when it
        came)."""
        return self._matches(data)

    def _ensure(self) -> socket.socket:
        if self._sock is None:
            sock = self._open()
            try:
                sock.setblocking(False)
                sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
                program = self._filter()
                if program is not None:
                    bpf.attach(sock, program)
            except BaseException:
                sock.close()
                raise
            self._sock = sock
        return self._sock

    def _waiting(self) -> bool:
        held = self._held
        return ((self._sent is not None and self._answered is None)
                or (held is not None and held[2] is None))

    def _drain(self) -> None:
        """Read what queued until the first reply to each probe in flight (the held one
        too), and note its arrival; a packet stamped before a probe's send (a late reply to
        an earlier probe) is no reply to it. Nothing is read once they are answered: one
        read per answered probe. A read error closes the socket (reopened on the next send)."""
        sock = self._sock
        while sock is not None and self._waiting():
            try:
                data, ancillary, _flags, _address = sock.recvmsg(2048, STAMP_SPACE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.close()
                return
            if self._sent is not None and self._matches(data):
                arrival = kernel_arrival(ancillary, self._sent, self._wall_offset)
                if arrival is not None:
                    held = self._held
                    if not self._identified and held is not None and held[2] is None:
                        # ARP and ND replies name no request: this one may be the held
                        # probe's or the next one's. The gateway spoke within both: both are
                        # answered, and neither round trip is known (Karn's rule).
                        held[2], held[4] = kernel_arrival(ancillary, held[0], held[1]), False
                        if self._answered is None:
                            self._answered, self._timed = arrival, False
                        continue
                    if self._answered is None:
                        self._answered = arrival
                    if not self._identified:
                        continue  # after the next request left: that request's
            held = self._held
            if held is not None and held[2] is None and self._matches_held(data, held[3]):
                held[2] = kernel_arrival(ancillary, held[0], held[1])

    def _mark_sent(self) -> None:
        self._sent = time.monotonic()
        self._wall_offset = time.time() - self._sent

    def send(self, copies: int = 1) -> bool:
        """Send one probe now (forgetting any previous one), as `copies` identical requests
        back to back (any answer answers it); False when the kernel refused it (link down,
        interface gone: the socket is reopened on the next send)."""
        self._sent = self._answered = None
        self._timed = True
        try:
            sock = self._ensure()
            if self._request_cache is None:
                # Built once: the request never changes while the socket lives.
                self._request_cache = self._request()
            packet, address = self._request_cache
            self._mark_sent()
            for _ in range(copies):
                sock.sendto(packet, address)
        except OSError:
            self._sent = None
            self.close()
            return False
        return True

    def result(self, timeout_s: float) -> float | None:
        """The last `send()`'s round trip in seconds, or None (unanswered within timeout_s)."""
        if self._sent is not None and self._answered is None:
            self._drain()
        sent, answered = self._sent, self._answered
        if sent is None or answered is None or answered - sent > timeout_s:
            return None
        return answered - sent

    def hold(self) -> None:
        """Keep the probe in flight as the held one (netwatch.core.pacing: a suspect probe
        waits for its own deadline while confirmations are sent): replies to it still count,
        to `held_result()`. A probe held before is forgotten."""
        self._held = None if self._sent is None else [
            self._sent, self._wall_offset, self._answered, self._seq, self._timed]
        self._sent = self._answered = None
        self._timed = True

    def held_result(self, timeout_s: float) -> float | None:
        """The held probe's round trip, or None (unanswered within timeout_s); it is then
        forgotten."""
        if self._held is not None and self._held[2] is None:
            self._drain()
        held, self._held = self._held, None
        self._held_timed = held is None or held[4]
        if held is None or held[2] is None or held[2] - held[0] > timeout_s:
            return None
        return held[2] - held[0]

    def timed(self, held: bool = False) -> bool:
        """Whether the last `result()` (`held`: `held_result()`) is a measured round trip:
        False for an ARP or ND reply that may have answered either of two requests (it
        answers both, and its round trip is no sample: Karn's rule)."""
        return self._held_timed if held else self._timed

    async def probe(self, timeout_s: float) -> float | None:
        """Send one request; the RTT in seconds, or None (no answer in time, or send failed)."""
        if not self.send():
            # ENETDOWN, ENXIO (interface gone), ENODEV: reopen next time; carrier events say why.
            return None
        loop = self._loop = asyncio.get_running_loop()
        waiter = loop.create_future()

        def readable() -> None:
            self._drain()
            if (self._answered is not None or self._sock is None) and not waiter.done():
                waiter.set_result(None)

        self._reading = self._sock.fileno()
        loop.add_reader(self._reading, readable)
        try:
            # asyncio.timeout: wait_for (3.11) can swallow a cancellation racing the reply.
            async with asyncio.timeout(timeout_s):
                await waiter
        except TimeoutError:
            pass
        finally:
            self._stop_reading()
        return self.result(timeout_s)

    def _stop_reading(self) -> None:
        if self._reading is not None:
            if self._loop is not None and not self._loop.is_closed():
                with contextlib.suppress(Exception):
                    self._loop.remove_reader(self._reading)
            self._reading = None

    def close(self) -> None:
        self._stop_reading()
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._request_cache = None


class ArpProber(_RawProber):
    """ARP who-has `gateway` on `ifname`; a reply counts when its sender IP is the gateway
    and its target MAC is ours."""

    def __init__(self, ifname: str, gateway: ipaddress.IPv4Address,
                 sender: ipaddress.IPv4Address | None = None):
        super().__init__(ifname)
        self.gateway = gateway
        self.sender = sender  # None: 0.0.0.0
        self._mac = b""
        self._gw = gateway.packed

    def _open(self) -> socket.socket:
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP))
        try:
            sock.bind((self.ifname, ETH_P_ARP))
            self._mac = sock.getsockname()[4][:6]
        except BaseException:
            sock.close()
            raise
        return sock

    def _filter(self) -> bytes:
        # Every ARP frame of the segment reaches an ARP socket (replies to other hosts too, on
        # a veth, a bridge port or a flooding switch): only the gateway's replies to us are
        # let in (op at 20, sender IP at 28, target MAC at 32, as `_matches` reads them).
        return bpf.equal_program([(20, b"\x00\x02"), (28, self._gw), (32, self._mac)])

    def _request(self) -> tuple[bytes, object]:
        sender = self.sender.packed if self.sender else b"\0\0\0\0"
        arp = struct.pack("!HHBBH6s4s6s4s", 1, ETH_P_IP, 6, 4, ARPOP_REQUEST,
                          self._mac, sender, b"\0" * 6, self._gw)
        frame = BROADCAST + self._mac + struct.pack("!H", ETH_P_ARP) + arp
        return frame, (self.ifname, ETH_P_ARP)

    def _matches(self, data: bytes) -> bool:
        # Ethernet header (14) + ARP: op at 20..22, sender IP at 28..32, target MAC at 32..38.
        # A reply of the gateway to another host is no answer to us: a gateway that stopped
        # answering us (one-way failure) but answers others must not look alive.
        return (len(data) >= 42 and data[20:22] == b"\x00\x02" and data[28:32] == self._gw
                and data[32:38] == self._mac)


def _solicited_node(target: ipaddress.IPv6Address) -> str:
    return str(ipaddress.IPv6Address(b"\xff\x02" + b"\0" * 9 + b"\x01\xff" + target.packed[13:]))


class NdProber(_RawProber):
    """ICMPv6 neighbour solicitation for `gateway` on `ifname`; the advertisement answers."""

    def __init__(self, ifname: str, gateway: ipaddress.IPv6Address):
        super().__init__(ifname)
        self.gateway = gateway
        self._gw = gateway.packed
        self._mac = b""
        self._dest = _solicited_node(gateway)

    def _open(self) -> socket.socket:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, self.ifname.encode())
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, 255)
            words = [0xFFFFFFFF] * 8  # a set bit blocks that type
            words[ICMPV6_NA >> 5] &= ~(1 << (ICMPV6_NA & 31)) & 0xFFFFFFFF
            sock.setsockopt(socket.IPPROTO_ICMPV6, ICMP6_FILTER, struct.pack("=8I", *words))
            self._mac = _mac_of(sock, self.ifname)
        except BaseException:
            sock.close()
            raise
        return sock

    def _filter(self) -> bytes:
        # Only the gateway's advertisements (the ICMPv6 filter lets every NA in).
        return bpf.equal_program([(0, bytes([ICMPV6_NA])), (8, self._gw)])

    def _request(self) -> tuple[bytes, object]:
        # type, code, checksum (the kernel fills it for ICMPv6 raw sockets), reserved, target,
        # then the source link-layer address option (type 1, length 1 x 8 bytes).
        packet = struct.pack("!BBHI16s", ICMPV6_NS, 0, 0, 0, self._gw)
        packet += struct.pack("!BB6s", 1, 1, self._mac)
        # The index is looked up once per socket (send() caches the request): the lookup was
        # a seventh of the probe loop's samples when done per probe.
        index = socket.if_nametoindex(self.ifname)
        return packet, (self._dest, 0, 0, index)

    def _matches(self, data: bytes) -> bool:
        # Raw ICMPv6 sockets get no IP header: type at 0, target address at 8..24.
        return len(data) >= 24 and data[0] == ICMPV6_NA and data[8:24] == self._gw


class EchoProber(_RawProber):
    """ICMP echo to `targets` (one family) through a raw socket carrying SO_MARK=`mark`, so
    policy routing sends it through one uplink. A round is answered when any target answers
    (one dead target must not condemn the uplink). Replies are told from those of every other
    raw ICMP socket of the namespace by identifier, sequence and an 8-byte random token."""

    _identified = True

    def __init__(self, targets, mark: int | None = None):
        targets = [ipaddress.ip_address(str(t)) for t in targets]
        if not targets or len({t.version for t in targets}) != 1:
            raise ValueError("EchoProber needs targets of one IP version")
        super().__init__(f"mark {mark}")
        self.v4 = targets[0].version == 4
        self.family = socket.AF_INET if self.v4 else socket.AF_INET6
        self.targets = [str(t) for t in targets]
        self.mark = mark
        self._ident = int.from_bytes(os.urandom(2), "big")
        self._token = os.urandom(8)
        self._seq = 0

    def _open(self) -> socket.socket:
        # Every raw ICMP socket of the namespace gets every echo reply: the filter lets in
        # only those carrying this prober's identifier and token.
        return open_echo_socket(self.family, self.mark, only=(self._ident, self._token))

    def send(self, copies: int = 1) -> bool:
        """Send one echo request to every target (one sequence number), `copies` times back
        to back; False when the kernel refused them all (no route in the uplink's table, link
        down)."""
        self._sent = self._answered = None
        self._timed = True
        self._seq = (self._seq + 1) & 0xFFFF
        try:
            sock = self._ensure()
        except OSError:
            return False
        packet = echo_request(self.family, self._ident, self._seq, self._token)
        self._mark_sent()
        sent = False
        for _ in range(copies):
            for target in self.targets:
                try:
                    sock.sendto(packet, (target, 0))
                    sent = True
                except OSError:
                    continue  # ENETUNREACH, ENOBUFS: that target's probe is lost
        if not sent:
            self._sent = None
        return sent

    def _request(self) -> tuple[bytes, object]:
        raise NotImplementedError("EchoProber builds its packet in send()")

    async def probe(self, timeout_s: float) -> float | None:
        raise NotImplementedError("EchoProber is batched only: send() then result()")

    def _matches(self, data: bytes) -> bool:
        return self._matches_held(data, self._seq)

    def _matches_held(self, data: bytes, seq: int) -> bool:
        reply = parse_echo_reply(self.family, data)
        return (
            reply is not None
            and reply[:2] == (self._ident, seq)
            and reply[2].startswith(self._token)
        )


def _mac_of(sock: socket.socket, ifname: str) -> bytes:
    """The interface's MAC through the socket (SIOCGIFHWADDR): /sys shows the namespace that
    mounted it, not the one this process entered with setns."""
    request = struct.pack("256s", ifname.encode()[:15])
    return fcntl.ioctl(sock.fileno(), SIOCGIFHWADDR, request)[18:24]
