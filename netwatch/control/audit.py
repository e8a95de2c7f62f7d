"""The audit log: one JSON line per operator request and per automatic action, fsynced.

`AuditLog(path)` appends to `audit-<daemon>.jsonl` in the daemon's state_dir (see
`audit_path`). Each record is one line, `{"ts": <wall-clock s>, "kind": ..., ...fields}`,
written with O_APPEND and fsynced before `record` returns, so what an operator was told
happened is on disk. When the file would pass `max_bytes` it is rotated: `.1` is the previous
file, up to `.<keep>`; older ones are deleted.

Kinds the control server writes: `request` (every write request, accepted or refused: uid,
user, pid, cmd, args, reason, ok, result or error). The daemons add their automatic actions
with `record(kind, **fields)`: a transition, a failover, a withdrawal, a safety hold, a lease
expiry; their fields should name the uplink or upstream.

`read(since, limit)` returns the latest records (oldest first) with the number of damaged
lines it skipped (a torn last line after a crash, a hand edit): those are counted, never
fatal. `follow(since, limit)` is an async iterator for `events --follow`: the latest records,
then every new one as it is recorded.

`record` never raises for I/O: a full disk must not stop a daemon from acting. It logs the
error and counts it in `write_errors`. It may be called from any thread; it blocks for one
fsync (about a millisecond on an SSD, seconds on a stalled disk), so the control server calls
it from a worker thread, and a daemon's automatic actions go through an `AuditWriter`:

    writer = AuditWriter(audit_log)
    writer.record("transition", upstream="t2", ...)   # never blocks: queued, stamped now
    supervise({..., "audit": writer.run()}, stop)     # the worker: in order, in a thread
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from netwatch.runtime.logs import kv

log = logging.getLogger("netwatch.control")

MAX_BYTES = 10 * 1024 * 1024
KEEP = 3  # rotated files kept beside the live one
WRITER_QUEUE = 1000  # records an AuditWriter holds for a stalled disk; beyond, counted, dropped
FOLLOW_QUEUE = 1000  # records a follower may lag behind before it is told it lost some
SECRET_KEYS = frozenset({"password", "secret", "token", "key", "passphrase"})


def audit_path(state_dir: str | Path, daemon: str) -> Path:
    """Where `daemon` ("agent", "controller") keeps its audit log."""
    return Path(state_dir) / f"audit-{daemon}.jsonl"


def without_secrets(args: dict[str, Any]) -> dict[str, Any]:
    """`args` with any secret-looking value replaced by "***" (none of today's commands has
    one; a future device password must never reach the log)."""
    return {k: "***" if k.lower() in SECRET_KEYS else v for k, v in args.items()}


@dataclass(eq=False)  # hashed by identity: one per follower
class _Follower:
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue = field(default_factory=lambda: asyncio.Queue(FOLLOW_QUEUE))
    lost: int = 0

    def offer(self, record: dict) -> None:  # runs on the follower's loop
        try:
            self.queue.put_nowait(record)
        except asyncio.QueueFull:
            self.lost += 1


class AuditLog:
    def __init__(
        self, path: str | Path, *, max_bytes: int = MAX_BYTES, keep: int = KEEP,
        clock: Callable[[], float] = time.time,
    ):
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.keep = keep
        self.clock = clock
        self.write_errors = 0
        self._fd: int | None = None
        self._lock = threading.Lock()
        self._followers: set[_Follower] = set()

    # --- writing ---

    def record(self, kind: str, **fields: Any) -> dict:
        """Append one record `{"ts": now, "kind": kind, **fields}` and fsync it (a `ts` in
        `fields`, the time a record was queued at, is kept). Returns the record as a reader
        will see it (values that are not JSON become strings). Never raises OSError (see the
        module doc)."""
        data = {"ts": self.clock(), "kind": kind, **fields}
        line = json.dumps(data, ensure_ascii=True, separators=(",", ":"), default=str) + "\n"
        record = json.loads(line)
        encoded = line.encode("ascii")
        with self._lock:
            try:
                fd = self._open()
                if os.fstat(fd).st_size + len(encoded) > self.max_bytes:
                    fd = self._rotate()
                os.write(fd, encoded)
                os.fsync(fd)
            except OSError as exc:
                self.write_errors += 1
                self._close_fd()
                log.error(kv("audit_write_failed", path=self.path, error=exc, record_kind=kind))
            followers = list(self._followers)
        for follower in followers:
            with contextlib.suppress(RuntimeError):  # its loop has closed
                follower.loop.call_soon_threadsafe(follower.offer, record)
        return record

    def close(self) -> None:
        with self._lock:
            self._close_fd()

    def _open(self) -> int:
        if self._fd is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
            # A torn last line (a crash mid-write) must not swallow the next record too.
            size = os.fstat(fd).st_size
            if size:
                with open(self.path, "rb") as handle:
                    handle.seek(size - 1)
                    if handle.read(1) != b"\n":
                        os.write(fd, b"\n")
            self._fd = fd
        return self._fd

    def _close_fd(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None

    def _rotate(self) -> int:
        self._close_fd()
        oldest = self._rotated(self.keep)
        with contextlib.suppress(FileNotFoundError):
            oldest.unlink()
        for n in range(self.keep - 1, 0, -1):
            with contextlib.suppress(FileNotFoundError):
                os.replace(self._rotated(n), self._rotated(n + 1))
        if self.keep:
            os.replace(self.path, self._rotated(1))
        else:
            self.path.unlink()
        dir_fd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return self._open()

    def _rotated(self, n: int) -> Path:
        return self.path.with_name(f"{self.path.name}.{n}")

    # --- reading ---

    def read(self, since: float | None = None, limit: int = 100) -> tuple[list[dict], int]:
        """(the last `limit` records at or after `since`, oldest first; damaged lines skipped).

        Reads the live file first and older rotated ones only as far as it needs to."""
        found: list[dict] = []
        skipped = 0
        for path in [self.path] + [self._rotated(n) for n in range(1, self.keep + 1)]:
            records, bad, older = _read_file(path, since)
            found = records + found
            skipped += bad
            if len(found) >= limit or older:
                break
        return found[-limit:] if limit else [], skipped

    async def follow(self, since: float | None = None, limit: int = 100) -> AsyncIterator[dict]:
        """The records `read(since, limit)` gives, then every new one as it is recorded, until
        the consumer stops iterating. A follower more than FOLLOW_QUEUE records behind gets a
        `{"kind": "follow_lost", "count": n}` record in place of what it missed."""
        follower = _Follower(asyncio.get_running_loop())
        with self._lock:
            self._followers.add(follower)
        try:
            backlog, _ = await asyncio.to_thread(self.read, since, limit)
            for record in backlog:
                yield record
            last_ts = backlog[-1]["ts"] if backlog else -math.inf
            while True:
                if follower.lost:
                    lost, follower.lost = follower.lost, 0
                    yield {"ts": self.clock(), "kind": "follow_lost", "count": lost}
                record = await follower.queue.get()
                if record["ts"] <= last_ts and record in backlog:
                    continue  # recorded while the backlog was read: already sent
                yield record
        finally:
            with self._lock:
                self._followers.discard(follower)


class AuditWriter:
    """A daemon's automatic actions to `audit`, off its event loop.

    `record(kind, **fields)` never blocks: the record is stamped with the time it happened
    and queued; `run()`, a worker the daemon supervises, writes the queue in order, each
    record fsynced in a thread, so a stalled disk never delays a failover, a probe or the
    control socket. A full queue (`maxsize` records behind a stalled disk) drops the record,
    counts it in `dropped` and logs it to `logger`: the daemon's job comes first.

    While no worker runs (before the daemon serves, after it stopped, in tests driving a
    daemon's methods), `record` writes at once: nothing waits on the loop then. When the
    worker stops, it writes what is left in the queue first."""

    def __init__(self, audit: AuditLog, *, maxsize: int = WRITER_QUEUE,
                 logger: logging.Logger = log):
        self.audit = audit
        self.dropped = 0
        self._log = logger
        self._queue: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue(maxsize)
        self._running = False

    @property
    def pending(self) -> int:
        """Records queued and not written yet."""
        return self._queue.qsize()

    def record(self, kind: str, **fields: Any) -> None:
        """Queue one record (see the class doc); never blocks, never raises for I/O."""
        fields = {"ts": self.audit.clock(), **fields}
        if not self._running:
            self.audit.record(kind, **fields)
            return
        try:
            self._queue.put_nowait((kind, fields))
        except asyncio.QueueFull:
            self.dropped += 1
            self._log.error(kv("audit_dropped", record_kind=kind, dropped=self.dropped,
                               path=self.audit.path))

    async def run(self) -> None:
        """The worker: every queued record, in order, written in a thread. Runs until
        cancelled; then, once the record in flight is written, writes what is left (the
        daemon is stopping: its loop has nothing else to do)."""
        self._running = True
        write: asyncio.Future | None = None
        try:
            while True:
                kind, fields = await self._queue.get()
                write = asyncio.ensure_future(
                    asyncio.to_thread(self.audit.record, kind, **fields))
                await asyncio.shield(write)
        finally:
            self._running = False
            if write is not None and not write.done():
                with contextlib.suppress(Exception):
                    await write  # keeps the order: the rest goes after it
            while not self._queue.empty():
                kind, fields = self._queue.get_nowait()
                self.audit.record(kind, **fields)


def _read_file(path: Path, since: float | None) -> tuple[list[dict], int, bool]:
    """(records at or after `since`, damaged lines, whether the file has older records)."""
    try:
        handle = open(path, "rb")  # noqa: SIM115 (closed below, whatever happens)
    except FileNotFoundError:
        return [], 0, False
    records, bad, older = [], 0, False
    with handle:
        for raw in handle:
            if not raw.strip():
                continue
            try:
                record = json.loads(raw)
            except (UnicodeDecodeError, ValueError, RecursionError):
                bad += 1
                continue
            ts = record.get("ts") if isinstance(record, dict) else None
            if isinstance(ts, bool) or not isinstance(ts, int | float) or not math.isfinite(ts):
                bad += 1
                continue
            if since is not None and ts < since:
                older = True
                continue
            records.append(record)
    return records, bad, older
