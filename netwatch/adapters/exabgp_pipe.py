"""The pipes between ExaBGP and its API process. I/O only.

ExaBGP writes JSON messages and acknowledgements to our stdin and reads commands from our
stdout. `ExabgpPipe.lines()` yields every line as it arrives: a reader task drains stdin into
an unbounded queue all the time, so ExaBGP never blocks on a full pipe however busy the
controller is. `send(line)` writes exactly one command line (it refuses a line with a control
character: one newline would turn one command into two).

A line longer than LINE_LIMIT is not the end of ExaBGP: it is read to its end and dropped,
and `on_oversized(bytes)` is called (the controller logs and counts it); the lines after it
are delivered as usual. (It used to end the reader, which looked exactly like ExaBGP closing
the pipe: the controller exited 0 and ExaBGP respawned it.)
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
from collections.abc import AsyncIterator, Callable

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
LINE_LIMIT = 64 * 1024 * 1024  # an UPDATE dump for 10,000 prefixes is far below this


class ExabgpPipe:
    def __init__(self, stdin_fd: int | None = None, stdout_fd: int | None = None,
                 on_oversized: Callable[[int], None] | None = None,
                 limit: int = LINE_LIMIT):
        self._in_fd = sys.stdin.fileno() if stdin_fd is None else stdin_fd
        self._out_fd = sys.stdout.fileno() if stdout_fd is None else stdout_fd
        self._queue: asyncio.Queue[str | None] = asyncio.Queue()
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task | None = None
        self._on_oversized = on_oversized or (lambda size: None)
        self._limit = limit

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=self._limit)
        await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(self._in_fd, "rb", 0)
        )
        transport, protocol = await loop.connect_write_pipe(
            asyncio.streams.FlowControlMixin, os.fdopen(self._out_fd, "wb", 0)
        )
        self._writer = asyncio.StreamWriter(transport, protocol, None, loop)
        self._reader_task = asyncio.create_task(self._drain(reader))

    async def _drain(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                try:
                    raw = await reader.readuntil(b"\n")
                except asyncio.IncompleteReadError as exc:
                    raw = exc.partial  # EOF: the last line without its newline, or nothing
                    if not raw:
                        break
                except asyncio.LimitOverrunError as exc:
                    self._on_oversized(await self._discard_line(reader, exc.consumed))
                    continue
                self._queue.put_nowait(raw.decode("utf-8", "replace").rstrip("\r\n"))
        finally:
            self._queue.put_nowait(None)  # EOF: ExaBGP is gone

    async def _discard_line(self, reader: asyncio.StreamReader, consumed: int) -> int:
        """Drop the rest of an over-long line; returns its size in bytes."""
        size = 0
        while True:
            if consumed:
                await reader.readexactly(consumed)
            size += consumed
            try:
                rest = await reader.readuntil(b"\n")
                return size + len(rest)
            except asyncio.LimitOverrunError as exc:
                consumed = exc.consumed

    async def lines(self) -> AsyncIterator[str]:
        """Every line ExaBGP writes, until EOF."""
        while True:
            line = await self._queue.get()
            if line is None:
                return
            yield line

    def send(self, line: str) -> None:
        """Queue one command line. Raises ValueError for a control character."""
        if _CONTROL.search(line):
            raise ValueError(f"refusing a command with a control character: {line[:80]!r}")
        if self._writer is None:
            raise RuntimeError("ExabgpPipe.send before open()")
        self._writer.write(line.encode() + b"\n")

    async def flush(self) -> None:
        if self._writer is not None:
            await self._writer.drain()
