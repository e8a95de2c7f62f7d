"""Classic BPF socket filters (SO_ATTACH_FILTER) for the probe sockets. I/O only at `attach`.

A raw socket receives every packet of its kind: the AF_PACKET ARP socket every ARP frame of
the segment, a raw ICMP socket every echo reply of the namespace (each prober's socket sees
every other's replies). A filter in the kernel drops the foreign ones before they are queued,
so they neither wake the process nor fill the receive buffer between two reads.

`equal_program(checks, after_ipv4_header=False)` builds a program that accepts a packet when
every `(offset, value)` of `checks` matches the packet's bytes at `offset`, and drops anything
else (a packet too short included: a load beyond the end drops it). Offsets count from where
the socket's data starts: the Ethernet header for AF_PACKET SOCK_RAW, the IPv4 header for a
raw IPv4 socket, the ICMPv6 header for a raw ICMPv6 socket. With `after_ipv4_header`, they
count from the end of the IPv4 header (its length read from the packet's IHL).
`attach(sock, program)` attaches it; raises OSError when the kernel refuses it.

The filter only saves work: every reader still checks what it reads (a packet queued before
the filter was attached passes unfiltered).
"""

from __future__ import annotations

import array
import socket
import struct

SO_ATTACH_FILTER = 26
# Opcodes (linux/filter.h): class | size | mode.
_LD_W_ABS, _LD_H_ABS, _LD_B_ABS = 0x20, 0x28, 0x30
_LD_W_IND, _LD_H_IND, _LD_B_IND = 0x40, 0x48, 0x50
_LDX_B_MSH = 0xB1  # X = 4 * (P[k] & 0x0f): the IPv4 header length
_JEQ_K = 0x15
_RET_K = 0x06
_ACCEPT = 0xFFFFFFFF  # keep the whole packet
_INSN = struct.Struct("=HBBI")
_LOADS = {False: {4: _LD_W_ABS, 2: _LD_H_ABS, 1: _LD_B_ABS},
          True: {4: _LD_W_IND, 2: _LD_H_IND, 1: _LD_B_IND}}


def _pieces(offset: int, value: bytes) -> list[tuple[int, int, int]]:
    """(offset, size, big-endian value) loads covering `value`: words, then a half, a byte."""
    out = []
    at = 0
    while at < len(value):
        size = 4 if len(value) - at >= 4 else 2 if len(value) - at >= 2 else 1
        out.append((offset + at, size, int.from_bytes(value[at:at + size], "big")))
        at += size
    return out


def equal_program(checks: list[tuple[int, bytes]], after_ipv4_header: bool = False) -> bytes:
    """The filter accepting a packet whose bytes at each offset equal the value (see the module
    docstring). Raises ValueError for no check, or more than the jumps can span."""
    loads = [piece for offset, value in checks for piece in _pieces(offset, value)]
    # A conditional jump's offset is one byte: the `ret 0` must lie within 255 instructions
    # of the first test, two instructions per load.
    if not loads or len(loads) > 127:
        raise ValueError(f"a filter needs 1..127 loads, got {len(loads)}")
    insns = [(_LDX_B_MSH, 0, 0, 0)] if after_ipv4_header else []
    reject = len(insns) + 2 * len(loads) + 1  # the index of the `ret 0`
    for offset, size, value in loads:
        insns.append((_LOADS[after_ipv4_header][size], 0, 0, offset))
        insns.append((_JEQ_K, 0, reject - len(insns) - 1, value))
    insns += [(_RET_K, 0, 0, _ACCEPT), (_RET_K, 0, 0, 0)]
    return b"".join(_INSN.pack(*insn) for insn in insns)


def attach(sock: socket.socket, program: bytes) -> None:
    """Attach `program` (from equal_program) to `sock`. Raises OSError (EINVAL: invalid)."""
    # struct sock_fprog {unsigned short len; struct sock_filter *filter;}: the kernel copies
    # the instructions during the call, so the buffer only has to live until it returns.
    buffer = array.array("B", program)
    address, _ = buffer.buffer_info()
    fprog = struct.pack("HP", len(program) // _INSN.size, address)
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
