"""TCP SYN probes on the asyncio loop. I/O only.

`TcpProber(family, mark)` opens one non-blocking socket per probe, with SO_MARK so policy
routing sends the SYN through one chosen upstream, and `await prober.ping((address, port),
timeout_s)` starts a connect(): a SYN-ACK (connected) or an RST (ECONNREFUSED) within the
timeout means the target answered through that path, and the RTT is the connect time. A
timeout, or an error that means the SYN did not get through (EHOSTUNREACH, ENETUNREACH), is
a lost probe: None. The socket is closed with SO_LINGER 0 (an RST, no TIME_WAIT per probe).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import struct
import time


class TcpProber:
    def __init__(self, family: int, mark: int | None = None):
        if family not in (socket.AF_INET, socket.AF_INET6):
            raise ValueError(f"family must be AF_INET or AF_INET6, got {family!r}")
        self.family = family
        self.mark = mark

    async def ping(self, target, timeout_s: float) -> float | None:
        """Connect to `target` = (address, port); RTT in seconds, None when lost.

        Raises ValueError for an address of the wrong family or a bad port.
        """
        address, port = target
        address = ipaddress.ip_address(str(address))
        want = 4 if self.family == socket.AF_INET else 6
        if address.version != want:
            raise ValueError(f"{address} is not an IPv{want} address")
        if not 0 < int(port) < 65536:
            raise ValueError(f"bad port {port!r}")
        sock = socket.socket(self.family, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            if self.mark is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, self.mark)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            loop = asyncio.get_running_loop()
            start = time.monotonic()
            try:
                async with asyncio.timeout(timeout_s):  # not wait_for: see icmp.py
                    await loop.sock_connect(sock, (str(address), int(port)))
            except ConnectionRefusedError:
                pass  # an RST: the target answered
            except (TimeoutError, OSError):
                return None
            return time.monotonic() - start
        finally:
            with contextlib.suppress(OSError):
                sock.close()

    def close(self) -> None:
        """Nothing to release: one socket per probe."""
