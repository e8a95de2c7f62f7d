"""AuditWriter: a daemon's automatic actions reach the audit log in order, stamped when they
happened, written off the event loop; a disk that stalls costs records, never the loop."""

from __future__ import annotations

import asyncio
import logging
import threading

from netwatch.control.audit import AuditLog, AuditWriter


class WatchedLog(AuditLog):
    """An AuditLog that notes the thread of each write and waits for `disk` first."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.threads: list[int] = []
        self.disk = threading.Event()
        self.disk.set()

    def record(self, kind, **fields):
        self.threads.append(threading.get_ident())
        self.disk.wait(5)
        return super().record(kind, **fields)


class Clock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_records_are_written_in_order_off_the_loop_with_the_time_they_happened(tmp_path):
    clock = Clock()
    log = WatchedLog(tmp_path / "audit.jsonl", clock=clock)
    writer = AuditWriter(log)
    loop_thread = threading.get_ident()

    async def scenario():
        task = asyncio.create_task(writer.run())
        await asyncio.sleep(0)
        for i in range(5):
            writer.record("transition", upstream=f"t{i}")
            clock.now += 1  # the disk is slow: written later than recorded
        while writer.pending:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(scenario())
    records, _ = log.read()
    assert [(r["upstream"], r["ts"]) for r in records] == [
        (f"t{i}", 1000.0 + i) for i in range(5)]
    assert loop_thread not in log.threads


def test_a_stalled_disk_drops_what_overflows_and_the_rest_lands_at_stop(tmp_path, caplog):
    log = WatchedLog(tmp_path / "audit.jsonl", clock=Clock())
    writer = AuditWriter(log, maxsize=3)
    log.disk.clear()  # the disk stalls

    async def scenario():
        task = asyncio.create_task(writer.run())
        await asyncio.sleep(0)
        for i in range(6):  # one taken by the worker (hanging), three queued, two dropped
            writer.record("transition", upstream=f"t{i}")
            await asyncio.sleep(0.01)
        assert writer.dropped == 2
        log.disk.set()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    caplog.set_level(logging.ERROR, logger="netwatch.control")
    asyncio.run(scenario())
    records, _ = log.read()
    assert [r["upstream"] for r in records] == ["t0", "t1", "t2", "t3"]
    assert len([r for r in caplog.records if "audit_dropped" in r.getMessage()]) == 2


def test_without_its_worker_a_record_is_written_at_once(tmp_path):
    log = AuditLog(tmp_path / "audit.jsonl", clock=Clock())
    AuditWriter(log).record("local_fault", active=True)
    records, _ = log.read()
    assert [r["kind"] for r in records] == ["local_fault"]
