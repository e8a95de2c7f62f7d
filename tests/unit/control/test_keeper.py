"""The lease keeper: what a daemon's overrides do across requests, time and restarts."""

from __future__ import annotations

import json

import pytest

from netwatch.control.audit import AuditLog
from netwatch.control.keeper import LeaseKeeper
from netwatch.control.protocol import Peer, Refused, Unavailable, parse_request
from netwatch.control.store import LeaseStore

ROOT = Peer(uid=0, gid=0, pid=1, user="root", may_write=True)


def request(cmd: str, **args):
    return parse_request(json.dumps({"v": 1, "id": 1, "cmd": cmd, "args": args}).encode())


@pytest.fixture
def audit(tmp_path, clock):
    log = AuditLog(tmp_path / "audit.jsonl", clock=clock)
    yield log
    log.close()


def keeper_at(tmp_path, audit, clock, daemon="agent") -> LeaseKeeper:
    return LeaseKeeper(LeaseStore(tmp_path, daemon), audit, clock=clock)


def test_an_override_survives_a_restart(tmp_path, audit, clock):
    keeper = keeper_at(tmp_path, audit, clock)
    keeper.apply(request("failover", to="secondary", reason="CHG-1", for_s=600), ROOT)
    clock.now += 300
    again = keeper_at(tmp_path, audit, clock)
    assert [(x.id, x.target) for x in again.book.leases] == [("a1", "secondary")]
    assert again.live()[0]["expires_at"] == 1600


def test_a_lease_that_expired_while_the_daemon_was_down_is_gone_and_audited(
        tmp_path, audit, clock):
    keeper = keeper_at(tmp_path, audit, clock, "controller")
    keeper.apply(request("drain", upstream="t1", reason="CHG-2", for_s=60), ROOT)
    clock.now += 61
    again = keeper_at(tmp_path, audit, clock, "controller")
    assert again.book.leases == ()
    assert LeaseStore(tmp_path, "controller").load().book.leases == ()  # saved so
    events, _ = audit.read()
    assert [(e["kind"], e["id"], e["forces"]) for e in events] == [
        ("lease_expired", "c1", "drain t1")]


def test_expire_in_the_loop_returns_what_ended(tmp_path, audit, clock):
    keeper = keeper_at(tmp_path, audit, clock)
    keeper.apply(request("failover", to="secondary", reason="CHG-3", for_s=3), ROOT)
    clock.now += 2.9
    assert keeper.expire() == ()
    clock.now += 0.1
    assert [x.target for x in keeper.expire()] == ["secondary"]
    assert keeper.book.leases == () and keeper.live() == []


def test_a_refusing_check_changes_nothing(tmp_path, audit, clock):
    keeper = keeper_at(tmp_path, audit, clock, "controller")

    def interlock(change):
        raise Refused("would leave ipv4 announced to 1 upstream")

    with pytest.raises(Refused):
        keeper.apply(request("drain", upstream="t1", reason="r"), ROOT, check=interlock)
    assert keeper.book.leases == ()
    assert not (tmp_path / "overrides-controller.json").exists()


def test_a_book_that_cannot_be_saved_is_not_applied(tmp_path, audit, clock, caplog):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    keeper = LeaseKeeper(LeaseStore(blocker, "agent"), audit, clock=clock)
    with pytest.raises(Unavailable, match="cannot save the overrides"):
        keeper.apply(request("failover", to="secondary", reason="r"), ROOT)
    assert keeper.book.leases == ()
    assert "overrides_save_failed" in caplog.text


def test_a_damaged_file_is_audited_and_the_daemon_starts_empty(tmp_path, audit, clock):
    (tmp_path / "overrides-agent.json").write_text('{"version": 1, "leases": 5}')
    keeper = keeper_at(tmp_path, audit, clock)
    assert keeper.book.leases == ()
    events, _ = audit.read()
    assert events[0]["kind"] == "overrides_damaged" and "prefix" in events[0]["problem"]


def test_unknown_upstreams_are_not_found(tmp_path, audit, clock):
    from netwatch.control.protocol import NotFound

    keeper = keeper_at(tmp_path, audit, clock, "controller")
    with pytest.raises(NotFound, match="no upstream t9"):
        keeper.apply(request("prepend", upstream="t9", count=2, reason="r"), ROOT,
                     upstreams=("t1", "t2"))


def _unreadable(monkeypatch, path, times: int) -> list[int]:
    """Reading `path` fails with EIO the next `times` times; returns the count of reads."""
    from pathlib import Path

    from netwatch.control import store

    monkeypatch.setattr(store, "READ_RETRY_S", 0.0)
    real = Path.read_text
    reads = [0]

    def flaky(self, *args, **kwargs):
        if self == path:
            reads[0] += 1
            if reads[0] <= times:
                raise OSError(5, "Input/output error", str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", flaky)
    return reads


def test_an_unreadable_lease_file_is_left_in_place_and_not_overwritten(
        tmp_path, audit, clock, monkeypatch, caplog):
    """An I/O error is not damage: the drain in the file survives. The daemon serves with no
    overrides and refuses new ones (a save would replace the drain on disk); a restart that
    reads the file has the drain again."""
    first = keeper_at(tmp_path, audit, clock)
    first.apply(request("failover", to="secondary", reason="maintenance"), ROOT)
    path = tmp_path / "overrides-agent.json"
    saved = path.read_bytes()
    _unreadable(monkeypatch, path, times=100)
    keeper = keeper_at(tmp_path, audit, clock)
    assert keeper.book.leases == ()
    assert path.read_bytes() == saved and not path.with_name(path.name + ".damaged").exists()
    assert "overrides_unreadable" in caplog.text
    with pytest.raises(Unavailable, match="could not be read at start"):
        keeper.apply(request("failover", to="primary", reason="r"), ROOT)
    assert path.read_bytes() == saved
    monkeypatch.undo()
    again = keeper_at(tmp_path, audit, clock)
    assert [lease.reason for lease in again.book.leases] == ["maintenance"]


def test_a_transient_read_error_is_read_again(tmp_path, audit, clock, monkeypatch):
    first = keeper_at(tmp_path, audit, clock)
    first.apply(request("failover", to="secondary", reason="maintenance"), ROOT)
    reads = _unreadable(monkeypatch, tmp_path / "overrides-agent.json", times=1)
    keeper = keeper_at(tmp_path, audit, clock)
    assert reads[0] == 2
    assert [lease.reason for lease in keeper.book.leases] == ["maintenance"]


def test_a_lease_written_while_the_clock_was_ahead_is_rebased_at_the_next_tick(
        tmp_path, audit, clock):
    """An RTC an hour ahead before NTP: the lease, written then, would last an hour longer.
    Once the clock is right, the next tick re-bases it: the same 10 minutes from now."""
    keeper = keeper_at(tmp_path, audit, clock)
    clock.now += 3600  # the clock ahead
    keeper.apply(request("failover", to="secondary", reason="CHG-4", for_s=600), ROOT)
    clock.now -= 3600  # NTP steps it back
    assert keeper.expire() == ()
    [lease] = keeper.book.leases
    assert (lease.renewed_at, lease.expires_at) == (clock.now, clock.now + 600)
    assert LeaseStore(tmp_path, "agent").load().book.leases[0].expires_at == clock.now + 600
    events, _ = audit.read()
    assert [e["kind"] for e in events if e["kind"] == "lease_rebased"] == ["lease_rebased"]
    clock.now += 601
    assert [x.target for x in keeper.expire()] == ["secondary"]
