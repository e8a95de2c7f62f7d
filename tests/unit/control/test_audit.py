"""The audit log: one fsynced JSON line per record, rotated by size, read past damage, and
followed live."""

from __future__ import annotations

import asyncio
import json
import os

import pytest

from netwatch.control.audit import AuditLog, audit_path


@pytest.fixture
def audit(tmp_path, clock):
    log = AuditLog(audit_path(tmp_path, "controller"), clock=clock)
    yield log
    log.close()


def test_records_are_json_lines_read_back_oldest_first(audit, clock):
    audit.record("transition", upstream="t1", to="failed")
    clock.now += 1
    audit.record("request", cmd="drain", args={"upstream": "t2"}, ok=True)
    lines = audit.path.read_text().splitlines()
    assert [json.loads(x)["kind"] for x in lines] == ["transition", "request"]
    events, skipped = audit.read()
    assert [e["kind"] for e in events] == ["transition", "request"] and skipped == 0
    assert events[0] == {"ts": 1000.0, "kind": "transition", "upstream": "t1", "to": "failed"}


def test_every_record_is_fsynced(audit, monkeypatch):
    synced = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real(fd)))
    audit.record("failover", uplink="secondary")
    audit.record("failover", uplink="primary")
    assert len(synced) == 2


def test_since_and_limit(audit, clock):
    for n in range(10):
        audit.record("tick", n=n)
        clock.now += 10
    events, _ = audit.read(since=1050)
    assert [e["n"] for e in events] == [5, 6, 7, 8, 9]
    events, _ = audit.read(limit=3)
    assert [e["n"] for e in events] == [7, 8, 9]


def test_rotation_keeps_the_newest_files(tmp_path, clock):
    log = AuditLog(tmp_path / "audit.jsonl", max_bytes=400, keep=2, clock=clock)
    for n in range(40):
        log.record("tick", n=n, pad="x" * 40)
        clock.now += 1
    log.close()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["audit.jsonl", "audit.jsonl.1", "audit.jsonl.2"]
    assert all(p.stat().st_size <= 400 for p in tmp_path.iterdir())
    events, _ = log.read(limit=1000)
    numbers = [e["n"] for e in events]
    assert numbers == list(range(numbers[0], 40))  # contiguous, newest kept
    assert 10 < len(numbers) < 40
    assert [e["n"] for e in log.read(limit=2)[0]] == [38, 39]


def test_damaged_lines_are_skipped_and_counted(audit, clock):
    audit.record("first")
    audit.close()
    with open(audit.path, "ab") as handle:
        handle.write(b'not json\n[1]\n{"kind": "no ts"}\n\xff\n{"ts": "x"}\n')
        handle.write(b'{"ts": 5, "kind": "torn')
    audit.record("after the crash")  # a torn last line does not swallow this one
    events, skipped = audit.read()
    assert [e["kind"] for e in events] == ["first", "after the crash"]
    assert skipped == 6


def test_record_is_never_fatal(tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("")
    log = AuditLog(blocker / "audit.jsonl")  # its directory is a file
    record = log.record("failover", uplink="secondary")
    assert record["kind"] == "failover" and log.write_errors == 1
    assert "audit_write_failed" in caplog.text


def test_values_that_are_not_json_become_text(audit):
    record = audit.record("odd", path=audit.path, pair=(1, 2))
    assert record["path"] == str(audit.path) and record["pair"] == [1, 2]


def test_follow_gives_the_backlog_then_live_records_once(audit, clock):
    audit.record("old", n=0)

    async def scenario():
        seen = []
        stream = audit.follow()

        async def consume():
            async for event in stream:
                seen.append(event["kind"])
                if len(seen) == 3:
                    return

        task = asyncio.ensure_future(consume())
        await asyncio.sleep(0.05)
        clock.now += 1
        audit.record("new", n=1)
        await asyncio.sleep(0.01)
        await asyncio.to_thread(audit.record, "from a thread", n=2)
        await asyncio.wait_for(task, 2)
        await stream.aclose()
        return seen

    assert asyncio.run(scenario()) == ["old", "new", "from a thread"]
    assert audit._followers == set()  # the follower is gone with its stream


def test_a_follower_that_lags_is_told_what_it_lost(audit, monkeypatch):
    from netwatch.control import audit as audit_module

    monkeypatch.setattr(audit_module, "FOLLOW_QUEUE", 2)

    async def scenario():
        stream = audit.follow()
        first = asyncio.ensure_future(stream.__anext__())
        await asyncio.sleep(0.05)
        for n in range(5):
            audit.record("burst", n=n)
        await asyncio.sleep(0.05)
        got = [await first]
        while len(got) < 3:
            got.append(await asyncio.wait_for(stream.__anext__(), 1))
        await stream.aclose()
        return got

    got = asyncio.run(scenario())
    # Two records fit in its queue; the three that did not are reported, not silently gone.
    assert [(g["kind"], g.get("n", g.get("count"))) for g in got] == [
        ("burst", 0), ("follow_lost", 3), ("burst", 1),
    ]
