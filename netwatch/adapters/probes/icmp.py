"""ICMP echo over one raw socket, on the asyncio loop. I/O only.

`IcmpProber(family, mark)` owns one raw socket (SOCK_RAW, IPPROTO_ICMP or IPPROTO_ICMPV6),
optionally with SO_MARK so policy routing sends its probes through one chosen path.
`await prober.ping(target, timeout_s)` returns the round-trip time in seconds, or None when no
reply came in time (or the kernel refused to send: no route, link down). Any number of pings
may be in flight at once: replies are matched to their futures by (identifier, sequence), and
the identifier plus an 8-byte random token in the payload tell our replies from those of every
other raw socket in the namespace (a raw socket receives *every* echo reply).

Raises OSError from the constructor when raw sockets are not allowed (needs CAP_NET_RAW).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import socket
import struct
import time

from netwatch.adapters.probes import bpf

ICMP_ECHO_REQUEST = 8
ICMP_ECHO_REPLY = 0
ICMPV6_ECHO_REQUEST = 128
ICMPV6_ECHO_REPLY = 129
SOL_RAW = 255
ICMP_FILTER = 1  # linux/icmp.h: a bitmask of ICMP types to *drop* in the kernel
ICMPV6_FILTER = 1  # linux/icmpv6.h: ICMP6_FILTER, 256 bits, set = block
_HEADER = struct.Struct("!BBHHH")


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


# The echo wire format, shared by this prober and the agent's batched EchoProber (raw.py).


def echo_filter(family: int, ident: int, token: bytes) -> bytes:
    """A BPF program (netwatch.adapters.probes.bpf) accepting only echo replies carrying
    `ident` and a payload that starts with `token`: the replies to one prober's requests."""
    kind = ICMP_ECHO_REPLY if family == socket.AF_INET else ICMPV6_ECHO_REPLY
    checks = [(0, bytes([kind])), (4, ident.to_bytes(2, "big")), (8, token)]
    return bpf.equal_program(checks, after_ipv4_header=family == socket.AF_INET)


def open_echo_socket(family: int, mark: int | None = None,
                     only: tuple[int, bytes] | None = None) -> socket.socket:
    """A non-blocking raw ICMP/ICMPv6 socket that lets only echo replies in (fewer wake-ups),
    with SO_MARK=`mark` when given; with `only=(ident, token)`, only the echo replies to
    requests carrying that identifier and payload prefix (`echo_filter`). Raises OSError
    without CAP_NET_RAW."""
    proto = socket.IPPROTO_ICMP if family == socket.AF_INET else socket.IPPROTO_ICMPV6
    sock = socket.socket(family, socket.SOCK_RAW, proto)
    try:
        sock.setblocking(False)
        if mark is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)
        if family == socket.AF_INET:
            blocked = ~(1 << ICMP_ECHO_REPLY) & 0xFFFFFFFF
            sock.setsockopt(SOL_RAW, ICMP_FILTER, struct.pack("=I", blocked))
        else:
            words = [0xFFFFFFFF] * 8
            words[ICMPV6_ECHO_REPLY >> 5] &= ~(1 << (ICMPV6_ECHO_REPLY & 31)) & 0xFFFFFFFF
            sock.setsockopt(socket.IPPROTO_ICMPV6, ICMPV6_FILTER, struct.pack("=8I", *words))
        if only is not None:
            bpf.attach(sock, echo_filter(family, *only))
        # A big receive buffer: replies arrive in bursts, and every raw socket of the
        # namespace sees every reply.
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    except BaseException:
        sock.close()
        raise
    return sock


def echo_request(family: int, ident: int, seq: int, payload: bytes) -> bytes:
    """An echo request; the kernel fills in the ICMPv6 checksum, not the ICMP one."""
    kind = ICMP_ECHO_REQUEST if family == socket.AF_INET else ICMPV6_ECHO_REQUEST
    header = _HEADER.pack(kind, 0, 0, ident, seq)
    if family == socket.AF_INET6:
        return header + payload
    return _HEADER.pack(kind, 0, _checksum(header + payload), ident, seq) + payload


def parse_echo_reply(family: int, data: bytes) -> tuple[int, int, bytes] | None:
    """(identifier, sequence, payload) of an echo reply as a raw socket reads it (IPv4 with
    its IP header), or None for anything else."""
    if family == socket.AF_INET:
        if len(data) < 20:
            return None
        data = data[(data[0] & 0x0F) * 4 :]
        want = ICMP_ECHO_REPLY
    else:
        want = ICMPV6_ECHO_REPLY
    if len(data) < _HEADER.size:
        return None
    kind, _code, _sum, ident, seq = _HEADER.unpack_from(data)
    if kind != want:
        return None
    return ident, seq, data[_HEADER.size :]


class IcmpProber:
    """Echo requests to any number of targets of one family through one raw socket."""

    def __init__(self, family: int, mark: int | None = None):
        if family not in (socket.AF_INET, socket.AF_INET6):
            raise ValueError(f"family must be AF_INET or AF_INET6, got {family!r}")
        self.family = family
        self._sock = open_echo_socket(family, mark)
        self._ident = int.from_bytes(os.urandom(2), "big")
        self._token = os.urandom(8)
        self._seq = 0
        self._pending: dict[int, tuple[asyncio.Future, float]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    def _attach(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
            loop.add_reader(self._sock.fileno(), self._on_readable)
        elif self._loop is not loop:
            raise RuntimeError("an IcmpProber is bound to the event loop of its first ping")

    def _next_seq(self) -> int:
        for _ in range(0x10000):
            self._seq = (self._seq + 1) & 0xFFFF
            if self._seq not in self._pending:
                return self._seq
        raise RuntimeError("65536 pings in flight on one prober")

    def _packet(self, seq: int) -> bytes:
        return echo_request(self.family, self._ident, seq, self._token)

    async def ping(self, target, timeout_s: float) -> float | None:
        """One echo request to `target` (address or string); RTT in seconds, None on timeout.

        Raises ValueError for an address of the wrong family, RuntimeError after close().
        """
        if self._closed:
            raise RuntimeError("ping on a closed IcmpProber")
        address = ipaddress.ip_address(str(target))
        want = 4 if self.family == socket.AF_INET else 6
        if address.version != want:
            raise ValueError(f"{address} is not an IPv{want} address")
        self._attach()
        seq = self._next_seq()
        future = self._loop.create_future()
        sent_at = time.monotonic()
        self._pending[seq] = (future, sent_at)
        try:
            try:
                self._sock.sendto(self._packet(seq), (str(address), 0))
            except OSError:
                # ENETUNREACH (no route in the path's table), ENOBUFS, EAGAIN: the probe is
                # lost, which is exactly what the verdict should see.
                return None
            # asyncio.timeout, not wait_for: in 3.11 wait_for can swallow a cancellation that
            # races the reply, and the daemon then hangs on exit (seen in the agent).
            try:
                async with asyncio.timeout(timeout_s):
                    return await future
            except TimeoutError:
                return None
        finally:
            self._pending.pop(seq, None)

    def _on_readable(self) -> None:
        now = time.monotonic()
        while True:
            try:
                data = self._sock.recv(2048)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            self._dispatch(data, now)

    def _dispatch(self, data: bytes, now: float) -> None:
        reply = parse_echo_reply(self.family, data)
        if reply is None:
            return
        ident, seq, payload = reply
        if ident != self._ident or not payload.startswith(self._token):
            return
        entry = self._pending.get(seq)
        if entry is None:
            return
        future, sent_at = entry
        if not future.done():
            future.set_result(max(0.0, now - sent_at))

    def close(self) -> None:
        """Stop reading, answer pending pings with None (lost), close the socket. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._loop is not None and not self._loop.is_closed():
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self._sock.fileno())
        for future, _ in self._pending.values():
            if not future.done():
                future.set_result(None)
        self._sock.close()

    def __enter__(self) -> IcmpProber:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
