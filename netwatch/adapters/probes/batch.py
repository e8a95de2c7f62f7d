"""The controller's batched ICMP echo: one raw socket per probe path, no task per probe. I/O only.

`EchoBatch(family, mark)` owns one raw ICMP / ICMPv6 socket carrying SO_MARK=`mark` (policy
routing sends its probes through one upstream). The controller keeps at most one probe in
flight per (path, target):

    batch.send(address, wait_s)        # now; the kernel refusing it (no route) is a loss
    ...
    batch.result(address, math.inf)    # at its deadline or later: RTT in seconds, or None

Nothing reads the socket between `send()` and `result()` (no future, timer, task or reader
callback per probe): `result()` reads every reply queued meanwhile, each stamped with the
kernel's receive time (SO_TIMESTAMPNS), so a reply costs no wake-up of its own. (With a
reader, each reply arriving on its own woke the loop: nothing in the lab, where the veth
queues the reply within the send, but on a real network 80 targets every 200 ms answer
spread over their round trips, up to 400 wake-ups a second.) Replies are matched by
identifier (random, per socket), sequence (per probe: an answer to an older probe of the same
target is no answer to this one) and an 8-byte random token in the payload.

A raw socket receives *every* echo reply of its namespace: with four upstreams, each reply
would wake four sockets of its family, and three would read it only to drop it. The socket's
BPF filter (`icmp.open_echo_socket(only=...)`, netwatch.adapters.probes.bpf) lets only replies
carrying its own identifier and token in: measured in the lab (8 sockets, 80 probes every
200 ms), 2.2 % of a core without it, 2.0 % with it (docs/controller.md).

Raises OSError from the constructor without CAP_NET_RAW.
"""

from __future__ import annotations

import os
import socket
import struct
import time

from netwatch.adapters.probes.icmp import (
    ICMP_ECHO_REQUEST,
    ICMPV6_ECHO_REQUEST,
    open_echo_socket,
    parse_echo_reply,
)
from netwatch.adapters.probes.raw import SO_TIMESTAMPNS, STAMP_SPACE, kernel_arrival

_HEADER = struct.Struct("!HHHH")  # type << 8 | code, checksum, identifier, sequence


class EchoBatch:
    """ICMP echo to any number of targets of one family through one raw socket, one probe in
    flight per target (see the module doc)."""

    def __init__(self, family: int, mark: int | None = None):
        if family not in (socket.AF_INET, socket.AF_INET6):
            raise ValueError(f"family must be AF_INET or AF_INET6, got {family!r}")
        self.family = family
        self._ident = int.from_bytes(os.urandom(2), "big")
        self._token = os.urandom(8)
        self._sock = open_echo_socket(family, mark, only=(self._ident, self._token))
        self._sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        self._seq = 0
        # The request differs only in its sequence: the ICMP checksum (IPv4; the kernel sums
        # ICMPv6) is the constant part's sum plus the sequence.
        kind = ICMP_ECHO_REQUEST if family == socket.AF_INET else ICMPV6_ECHO_REQUEST
        self._kind = kind << 8
        self._sum = (self._kind + self._ident
                     + sum(struct.unpack(f"!{len(self._token) // 2}H", self._token)))
        # address -> [sequence, sent at, answered at or None, wall clock - monotonic at the
        # send]; sequence -> address
        self._probes: dict[str, list] = {}
        self._by_seq: dict[int, str] = {}
        self._closed = False

    def send(self, address: str, wait_s: float = 0.0) -> bool:
        """One echo request to `address` now, forgetting any earlier probe to it. False when
        the kernel refused it (ENETUNREACH: no route in the path's table; ENOBUFS): a lost
        probe, as the verdict should see it. Raises RuntimeError after close()."""
        if self._closed:
            raise RuntimeError("send on a closed EchoBatch")
        old = self._probes.get(address)
        if old is not None:
            self._by_seq.pop(old[0], None)
        self._seq = seq = (self._seq + 1) & 0xFFFF
        self._by_seq[seq] = address
        sent = time.monotonic()
        probe = [seq, sent, None, time.time() - sent]
        self._probes[address] = probe
        try:
            self._sock.sendto(self._request(seq), (address, 0))
        except OSError:
            probe[1] = None
            return False
        return True

    def _request(self, seq: int) -> bytes:
        """`icmp.echo_request(family, ident, seq, token)`, without summing it all again."""
        checksum = 0
        if self.family == socket.AF_INET:
            total = self._sum + seq
            total = (total & 0xFFFF) + (total >> 16)
            checksum = ~((total & 0xFFFF) + (total >> 16)) & 0xFFFF
        return _HEADER.pack(self._kind, checksum, self._ident, seq) + self._token

    def result(self, address: str, wait_s: float) -> float | None:
        """The last probe to `address`: its round trip in seconds, or None (refused, no
        answer by now, or one that measured more than `wait_s`). The round trip is the
        kernel's receive stamp minus the send: a caller that judges at the deadline or later
        passes math.inf (any answer that arrived counts, however late the loop reads it)."""
        probe = self._probes.get(address)
        if probe is None:
            return None
        if probe[1] is not None and probe[2] is None:
            self._drain()
        seq, sent, answered, _ = probe
        self._by_seq.pop(seq, None)
        if sent is None or answered is None or answered - sent > wait_s:
            return None
        return answered - sent

    def _drain(self) -> None:
        """Read every reply queued since the last read, and stamp the probes they answer."""
        recvmsg = self._sock.recvmsg
        while True:
            try:
                data, ancillary, _flags, _address = recvmsg(2048, STAMP_SPACE)
            except OSError:  # EAGAIN: all read (another error: the next send says it)
                return
            reply = parse_echo_reply(self.family, data)
            if reply is None:
                continue
            ident, seq, payload = reply
            if ident != self._ident or not payload.startswith(self._token):
                continue
            address = self._by_seq.get(seq)
            if address is None:
                continue
            probe = self._probes[address]
            if probe[0] == seq and probe[2] is None and probe[1] is not None:
                probe[2] = kernel_arrival(ancillary, probe[1], probe[3])

    def close(self) -> None:
        """Stop reading and close the socket. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._sock.close()
