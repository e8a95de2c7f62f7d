"""The `Tracer` port, and its adapter: a marked ICMP traceroute with scapy. I/O only.

`ScapyTracer.trace(requests, ...)` sends, for every request (an upstream's name, its probe
fwmark, a target), `probes` ICMP echo requests per TTL from 1 to `max_ttl`, and returns one
`netwatch.diagnose.analysis.Reply` per probe. scapy builds the echo requests and dissects
what comes back (time exceeded, destination unreachable, echo reply, and the probe quoted
in an ICMP error); the packets leave through raw ICMP sockets that carry the request's
SO_MARK, so the kernel routes them by the upstream's probe table, exactly like the
controller's own probes. (scapy's own sockets route by scapy's copy of the main table, which
knows no fwmark rule.)

All the TTLs of a round leave at once, one round every `spacing_s`: a router limits its
time-exceeded messages per destination (Linux: a burst of 6, then one a second), so spread
rounds lose fewer answers to that. Echo requests carry a random identifier per run: the
controller's own ICMP probes from the same host are never taken for ours.

Needs CAP_NET_RAW and CAP_NET_ADMIN (SO_MARK): root on the border.
"""

from __future__ import annotations

import random
import select
import socket
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from netwatch.diagnose.analysis import Reply

SO_MARK = getattr(socket, "SO_MARK", 36)
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # also the SCM type of its cmsg
_TIMESPEC = struct.Struct("@qq")
IPV6_UNICAST_HOPS = getattr(socket, "IPV6_UNICAST_HOPS", 16)
PAYLOAD = b"netwatch-diagnose"


@dataclass(frozen=True)
class TraceRequest:
    path: str  # the upstream's name
    family: int  # 4 or 6
    mark: int
    target: str


class Tracer(Protocol):
    def trace(self, requests: Sequence[TraceRequest], *, max_ttl: int, probes: int,
              timeout_s: float, spacing_s: float) -> list[Reply]:
        """One Reply per probe sent (`address` None for an unanswered one). Raises OSError
        when a socket cannot be opened or marked."""
        ...


@dataclass
class _Sent:
    request: TraceRequest
    ttl: int
    at: float
    reply: Reply | None = None


class ScapyTracer:
    def __init__(self, clock=time.monotonic, wall=time.time):
        self.clock = clock
        self.wall = wall

    def trace(self, requests: Sequence[TraceRequest], *, max_ttl: int = 16, probes: int = 3,
              timeout_s: float = 1.0, spacing_s: float = 0.35) -> list[Reply]:
        ident = random.randrange(1, 0xFFFF)
        receivers: dict[int, socket.socket] = {}
        senders: dict[tuple[int, int], socket.socket] = {}
        sent: dict[int, _Sent] = {}
        try:
            for r in requests:
                if r.family not in receivers:
                    receivers[r.family] = _icmp_socket(r.family)
                    receivers[r.family].setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
                if (r.family, r.mark) not in senders:
                    sock = _icmp_socket(r.family)
                    sock.setsockopt(socket.SOL_SOCKET, SO_MARK, r.mark)
                    senders[(r.family, r.mark)] = sock
            rounds = []  # every packet built before the first leaves
            seq = 0
            for _ in range(probes):
                batch = []
                for r in requests:
                    for ttl in range(1, max_ttl + 1):
                        seq += 1
                        batch.append((seq, r, ttl, _echo(r.family, ident, seq)))
                rounds.append(batch)
            for batch in rounds:
                for seq, r, ttl, packet in batch:
                    sock = senders[(r.family, r.mark)]
                    _set_ttl(sock, r.family, ttl)
                    # Before sendto: on a veth the answer can be in before sendto returns.
                    sent[seq] = _Sent(r, ttl, self.wall())
                    sock.sendto(packet, (r.target, 0))
                self._collect(receivers, ident, sent, self.clock() + spacing_s, early=False)
            self._collect(receivers, ident, sent, self.clock() + timeout_s, early=True)
        finally:
            for sock in (*receivers.values(), *senders.values()):
                sock.close()
        return [
            s.reply or Reply(s.request.path, s.request.target, s.ttl, None, None)
            for s in sent.values()
        ]

    def _collect(self, receivers: dict[int, socket.socket], ident: int,
                 sent: dict[int, _Sent], until: float, early: bool) -> None:
        """Take answers until `until`, or (`early`) until every probe has one."""
        socks = list(receivers.values())
        while (left := until - self.clock()) > 0:
            if early and all(s.reply is not None for s in sent.values()):
                return
            ready, _, _ = select.select(socks, [], [], left)
            for sock in ready:
                data, ancillary, _, peer = sock.recvmsg(65535, 64)
                now = _arrival(ancillary) or self.wall()
                family = 4 if sock.family == socket.AF_INET else 6
                parsed = _parse(family, data, peer[0], ident)
                if parsed is None:
                    continue
                seq, address, reached = parsed
                probe = sent.get(seq)
                if probe is None or probe.reply is not None:
                    continue
                probe.reply = Reply(probe.request.path, probe.request.target, probe.ttl,
                                    address, (now - probe.at) * 1000.0, reached)


def _arrival(ancillary: list) -> float | None:
    """The kernel's receive time (wall clock) from a recvmsg's ancillary data."""
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(data) >= _TIMESPEC.size:
            seconds, nanoseconds = _TIMESPEC.unpack_from(data)
            return seconds + nanoseconds / 1e9
    return None


def _icmp_socket(family: int) -> socket.socket:
    if family == 4:
        return socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    return socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)


def _set_ttl(sock: socket.socket, family: int, ttl: int) -> None:
    if family == 4:
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, ttl)
    else:
        sock.setsockopt(socket.IPPROTO_IPV6, IPV6_UNICAST_HOPS, ttl)


def _echo(family: int, ident: int, seq: int) -> bytes:
    if family == 4:
        from scapy.layers.inet import ICMP

        return bytes(ICMP(type=8, id=ident, seq=seq) / PAYLOAD)
    from scapy.layers.inet6 import ICMPv6EchoRequest

    # The kernel fills in an ICMPv6 checksum on a raw ICMPv6 socket (it needs the addresses).
    return bytes(ICMPv6EchoRequest(id=ident, seq=seq, data=PAYLOAD, cksum=0))


def _parse(family: int, data: bytes, sender: str, ident: int) -> tuple[int, str, bool] | None:
    """(seq, who answered, whether it is the target's echo reply) for an answer to one of our
    probes; None for any other ICMP message."""
    if family == 4:
        from scapy.layers.inet import ICMP, IP, ICMPerror

        packet = IP(data)
        icmp = packet.getlayer(ICMP)
        if icmp is None:
            return None
        if icmp.type == 0 and icmp.id == ident:
            return icmp.seq, packet.src, True
        quoted = packet.getlayer(ICMPerror)
        if icmp.type in (3, 11) and quoted is not None and quoted.type == 8 and (
                quoted.id == ident):
            return quoted.seq, packet.src, False
        return None
    from scapy.layers.inet6 import (
        ICMPv6DestUnreach,
        ICMPv6EchoReply,
        ICMPv6EchoRequest,
        ICMPv6TimeExceeded,
    )

    kind = data[0] if data else None
    if kind == 129:
        reply = ICMPv6EchoReply(data)
        return (reply.seq, sender, True) if reply.id == ident else None
    if kind in (1, 3):
        error = (ICMPv6DestUnreach if kind == 1 else ICMPv6TimeExceeded)(data)
        quoted = error.getlayer(ICMPv6EchoRequest)
        if quoted is not None and quoted.id == ident:
            return quoted.seq, sender, False
    return None


class KernelRoutes:
    """The `RouteLookup` port (netwatch.diagnose.run) over pyroute2: `ip route get TARGET
    mark MARK`."""

    def route(self, family: int, mark: int, target: str) -> tuple[str | None, str | None]:
        from pyroute2.iproute.linux import IPRoute
        from pyroute2.netlink.exceptions import NetlinkError

        with IPRoute() as ipr:
            try:
                found = ipr.route("get", dst=target, mark=mark)
            except NetlinkError:  # ENETUNREACH: no route at all
                return None, None
            if not found:
                return None, None
            gateway = found[0].get_attr("RTA_GATEWAY")
            oif = found[0].get_attr("RTA_OIF")
            links = ipr.get_links(oif) if oif else []
            ifname = links[0].get_attr("IFLA_IFNAME") if links else None
        return gateway, ifname
