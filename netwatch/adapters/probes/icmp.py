"""ICMP echo on raw sockets: the socket, the request and the reply, shared by the agent's
probers (netwatch.adapters.probes.raw) and the controller's (netwatch.adapters.probes.batch).
I/O only.

`open_echo_socket(family, mark, only)` opens a raw socket (SOCK_RAW, IPPROTO_ICMP or
IPPROTO_ICMPV6), optionally with SO_MARK so policy routing sends its probes through one chosen
path, and with a filter letting in only echo replies (and, with `only=(ident, token)`, only
those carrying that identifier and token: a raw socket receives *every* echo reply of its
namespace). Raises OSError when raw sockets are not allowed (needs CAP_NET_RAW).
"""

from __future__ import annotations

import contextlib
import socket
import struct

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
