"""The agent's raw-socket probes: ARP (IPv4 gateway), neighbour solicitation (IPv6 gateway)
and ICMP echo (targets beyond the gateway, through a marked socket). I/O only.

Every prober owns one non-blocking raw socket and keeps at most one probe in flight. Two ways
to use it:
- batched (the agent): `prober.send()` sends a probe now and returns False when the kernel
  refused it; replies are recorded by a `loop.add_reader` callback, nothing else runs; later
  `prober.result(timeout_s) -> float | None` is the round trip in seconds, or None (no answer
  within `timeout_s` of the send, or the send failed). One timer wake-up per tick sends every
  probe and judges the previous tick's: no future, timer or task per probe.
- one at a time: `await prober.probe(timeout_s)` (send, wait, result).
Measured on the dev machine: a task, a `wait_for` and a future per probe cost 6.5..8% of a
core for 8 streams at 20 Hz; the batched form costs under 2% (see docs/agent.md).

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

from netwatch.adapters.probes.icmp import echo_request, open_echo_socket, parse_echo_reply

ETH_P_ARP = 0x0806
ETH_P_IP = 0x0800
ARPOP_REQUEST, ARPOP_REPLY = 1, 2
ICMPV6_NS, ICMPV6_NA = 135, 136
ICMP6_FILTER = 1
SIOCGIFHWADDR = 0x8927
BROADCAST = b"\xff" * 6


class _RawProber:
    """A socket opened lazily, reopened after errors, and one probe in flight at a time."""

    def __init__(self, ifname: str):
        self.ifname = ifname
        self._sock: socket.socket | None = None
        self._waiter: asyncio.Future | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sent: float | None = None  # the batched probe in flight: its send time
        self._answered: float | None = None  # and its first matching reply
        self._request_cache: tuple[bytes, object] | None = None

    def _open(self) -> socket.socket:
        raise NotImplementedError

    def _request(self) -> tuple[bytes, object]:
        raise NotImplementedError

    def _matches(self, data: bytes) -> bool:
        raise NotImplementedError

    def _ensure(self) -> socket.socket:
        if self._sock is None:
            self._loop = asyncio.get_running_loop()
            sock = self._open()
            sock.setblocking(False)
            self._sock = sock
            self._loop.add_reader(sock.fileno(), self._readable)
        return self._sock

    def _readable(self) -> None:
        sock = self._sock
        while sock is not None:
            try:
                data = sock.recv(2048)
            except BlockingIOError:
                return
            except OSError:
                self.close()
                return
            if self._sent is not None and self._answered is None and self._matches(data):
                self._answered = time.monotonic()
            waiter = self._waiter
            if waiter is not None and not waiter.done() and self._matches(data):
                waiter.set_result(time.monotonic())

    def send(self) -> bool:
        """Send one probe now (forgetting any previous one); False when the kernel refused it
        (link down, interface gone: the socket is reopened on the next send)."""
        self._answered = None
        try:
            sock = self._ensure()
            if self._request_cache is None:
                # Built once: the request never changes while the socket lives.
                self._request_cache = self._request()
            packet, address = self._request_cache
            self._sent = time.monotonic()
            sock.sendto(packet, address)
        except OSError:
            self._sent = None
            self.close()
            return False
        return True

    def result(self, timeout_s: float) -> float | None:
        """The last `send()`'s round trip in seconds, or None (unanswered within timeout_s)."""
        sent, answered = self._sent, self._answered
        if sent is None or answered is None or answered - sent > timeout_s:
            return None
        return answered - sent

    async def probe(self, timeout_s: float) -> float | None:
        """Send one request; the RTT in seconds, or None (no answer in time, or send failed)."""
        try:
            sock = self._ensure()
            packet, address = self._request()
            self._waiter = asyncio.get_running_loop().create_future()
            sent = time.monotonic()
            sock.sendto(packet, address)
        except OSError:
            # ENETDOWN, ENXIO (interface gone), ENODEV: reopen next time; carrier events say why.
            self.close()
            return None
        try:
            # asyncio.timeout: wait_for (3.11) can swallow a cancellation racing the reply.
            async with asyncio.timeout(timeout_s):
                answered = await self._waiter
        except TimeoutError:
            return None
        finally:
            self._waiter = None
        return answered - sent

    def close(self) -> None:
        if self._sock is not None:
            if self._loop is not None and not self._loop.is_closed():
                with contextlib.suppress(Exception):
                    self._loop.remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None
        self._request_cache = None


class ArpProber(_RawProber):
    """ARP who-has `gateway` on `ifname`; a reply counts when its sender IP is the gateway."""

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

    def _request(self) -> tuple[bytes, object]:
        sender = self.sender.packed if self.sender else b"\0\0\0\0"
        arp = struct.pack("!HHBBH6s4s6s4s", 1, ETH_P_IP, 6, 4, ARPOP_REQUEST,
                          self._mac, sender, b"\0" * 6, self._gw)
        frame = BROADCAST + self._mac + struct.pack("!H", ETH_P_ARP) + arp
        return frame, (self.ifname, ETH_P_ARP)

    def _matches(self, data: bytes) -> bool:
        # Ethernet header (14) + ARP: op at 20..22, sender IP at 28..32. Any ARP from the
        # gateway (reply or its own request) proves it alive; only replies are asked for.
        return len(data) >= 42 and data[20:22] == b"\x00\x02" and data[28:32] == self._gw


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
        return open_echo_socket(self.family, self.mark)

    def send(self) -> bool:
        """Send one echo request to every target (one sequence number); False when the kernel
        refused them all (no route in the uplink's table, link down)."""
        self._answered = None
        self._seq = (self._seq + 1) & 0xFFFF
        try:
            sock = self._ensure()
        except OSError:
            self._sent = None
            return False
        packet = echo_request(self.family, self._ident, self._seq, self._token)
        self._sent = time.monotonic()
        sent = False
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
        reply = parse_echo_reply(self.family, data)
        return (
            reply is not None
            and reply[:2] == (self._ident, self._seq)
            and reply[2].startswith(self._token)
        )


def _mac_of(sock: socket.socket, ifname: str) -> bytes:
    """The interface's MAC through the socket (SIOCGIFHWADDR): /sys shows the namespace that
    mounted it, not the one this process entered with setns."""
    request = struct.pack("256s", ifname.encode()[:15])
    return fcntl.ioctl(sock.fileno(), SIOCGIFHWADDR, request)[18:24]
