"""Overrides are leases: they expire by themselves, at most 7 days on, one per slot, and they
survive a restart (or, damaged, are set aside without stopping the daemon)."""

from __future__ import annotations

import json

import pytest

from netwatch.control import overrides
from netwatch.control.leases import (
    MAX_FOR_S,
    Lease,
    LeaseBook,
    LeaseKind,
    LeaseNotFound,
    Who,
)
from netwatch.control.protocol import NotFound, Request, parse_request
from netwatch.control.store import LeaseStore

ROOT = Who(0, "root")
ALICE = Who(1001, "alice")


def request(cmd: str, **args) -> Request:
    return parse_request(json.dumps({"v": 1, "id": 1, "cmd": cmd, "args": args}).encode())


def test_a_failover_lease_expires_by_itself(clock):
    book = LeaseBook("a").add(LeaseKind.FAILOVER, "secondary", ROOT, "CHG-1", clock.now, 30).book
    clock.now += 29.9
    assert book.expire(clock.now) == (book, ())
    assert book.leases[0].left_s(clock.now) == pytest.approx(0.1)
    clock.now += 0.1
    remaining, expired = book.expire(clock.now)
    assert remaining.leases == () and [x.target for x in expired] == ["secondary"]


def test_a_lease_defaults_to_one_hour_and_never_lasts_more_than_a_week(clock):
    book = LeaseBook("c")
    lease = book.add(LeaseKind.DRAIN, "t1", ROOT, "maintenance", clock.now).lease
    assert lease.expires_at - lease.created_at == 3600
    with pytest.raises(ValueError, match="at most 7 days"):
        book.add(LeaseKind.DRAIN, "t1", ROOT, "maintenance", clock.now, MAX_FOR_S + 1)


def test_a_new_failover_replaces_the_old_one_and_says_so(clock):
    book = LeaseBook("a")
    first = overrides.apply(book, request("failover", to="secondary", reason="one"), ROOT,
                            clock.now)
    second = overrides.apply(first.book, request("failover", to="primary", reason="two"),
                             ALICE, clock.now)
    assert [x.id for x in second.book.leases] == ["a2"]
    assert [x.id for x in second.replaced] == ["a1"]
    assert "replaces a1" in second.message
    assert second.book.leases[0].who == ALICE


def test_one_lease_per_upstream_and_kind(clock):
    book = LeaseBook("c")
    book = book.add(LeaseKind.DRAIN, "t1", ROOT, "a", clock.now).book
    book = book.add(LeaseKind.PREPEND, "t1", ROOT, "b", clock.now, count=3).book
    book = book.add(LeaseKind.DRAIN, "t2", ROOT, "c", clock.now).book
    added = book.add(LeaseKind.DRAIN, "t1", ROOT, "d", clock.now, graceful_s=5, forced=True)
    assert added.replaced.id == "c1"
    assert sorted((x.kind.value, x.target) for x in added.book.leases) == [
        ("drain", "t1"), ("drain", "t2"), ("prepend", "t1"),
    ]
    assert added.lease.describe() == "drain t1, graceful 5 s (forced)"


def test_extend_renews_from_now_and_is_capped(clock):
    book = LeaseBook("a").add(LeaseKind.FAILOVER, "secondary", ROOT, "r", clock.now, 60).book
    clock.now += 50
    renewed = overrides.apply(book, request("override_extend", id="a1", for_s=MAX_FOR_S,
                                            reason="longer"), ROOT, clock.now)
    assert renewed.lease.expires_at == clock.now + MAX_FOR_S
    assert renewed.lease.renewed_at == clock.now
    assert renewed.lease.created_at == clock.now - 50
    with pytest.raises(ValueError, match="at most 7 days"):
        renewed.book.extend("a1", MAX_FOR_S + 1, clock.now, "too long")


def test_an_expired_or_unknown_lease_cannot_be_extended_or_deleted(clock):
    book = LeaseBook("a").add(LeaseKind.FAILOVER, "secondary", ROOT, "r", clock.now, 60).book
    clock.now += 60
    with pytest.raises(LeaseNotFound, match="a1 has expired"):
        book.extend("a1", 60, clock.now, "late")
    with pytest.raises(NotFound, match="no override a9"):
        overrides.apply(book, request("override_delete", id="a9", reason="x"), ROOT, clock.now)


def test_delete_and_failover_auto_end_the_lease(clock):
    book = overrides.apply(LeaseBook("a"), request("failover", to="secondary", reason="r"),
                           ROOT, clock.now).book
    ended = overrides.apply(book, request("failover", to="auto", reason="done"), ROOT, clock.now)
    assert ended.book.leases == () and [x.id for x in ended.removed] == ["a1"]
    again = overrides.apply(ended.book, request("failover", to="auto", reason="done"), ROOT,
                            clock.now)
    assert again.removed == () and "automatic already" in again.message
    deleted = overrides.apply(book, request("override_delete", id="a1", reason="r"), ROOT,
                              clock.now)
    assert deleted.book.leases == ()


def test_restore_ends_every_lease_on_the_upstream_only(clock):
    book = LeaseBook("c")
    for kind, name in ((LeaseKind.DRAIN, "t1"), (LeaseKind.PREPEND, "t1"),
                       (LeaseKind.DRAIN, "t2")):
        book = book.add(kind, name, ROOT, "r", clock.now, count=2).book
    change = overrides.apply(book, request("restore", upstream="t1", reason="back"), ROOT,
                             clock.now, upstreams=["t1", "t2"])
    assert [x.target for x in change.book.leases] == ["t2"]
    assert len(change.removed) == 2


def test_an_unknown_upstream_is_not_found(clock):
    with pytest.raises(NotFound, match=r"no upstream t9 \(known: t1, t2\)"):
        overrides.apply(LeaseBook("c"), request("drain", upstream="t9", reason="r"), ROOT,
                        clock.now, upstreams=["t2", "t1"])


def test_apply_leaves_the_book_it_was_given_alone(clock):
    book = LeaseBook("c")
    overrides.apply(book, request("drain", upstream="t1", reason="r"), ROOT, clock.now)
    assert book.leases == () and book.next_seq == 1


def test_listing_shows_live_leases_only(clock):
    book = LeaseBook("a").add(LeaseKind.FAILOVER, "secondary", ROOT, "r", clock.now, 10).book
    assert len(overrides.listing(book, clock.now)["overrides"]) == 1
    assert overrides.listing(book, clock.now + 10)["overrides"] == []


# --- persistence ---------------------------------------------------------------------------


def test_the_book_round_trips_through_its_file(tmp_path, clock):
    book = LeaseBook("c")
    book = book.add(LeaseKind.DRAIN, "t1", ALICE, "CHG-7", clock.now, 600, graceful_s=30).book
    book = book.add(LeaseKind.PREPEND, "t2", ROOT, "lossy", clock.now, count=3).book
    store = LeaseStore(tmp_path, "controller")
    store.save(book)
    loaded = LeaseStore(tmp_path, "controller").load()
    assert loaded.problem is None and loaded.book == book
    next_lease = loaded.book.add(LeaseKind.DRAIN, "t3", ROOT, "r", clock.now).lease
    assert next_lease.id == "c3"  # ids go on after a restart


def test_no_file_is_an_empty_book(tmp_path):
    loaded = LeaseStore(tmp_path, "agent").load()
    assert loaded.book == LeaseBook("a") and loaded.problem is None


def _saved(clock) -> dict:
    book = LeaseBook("a").add(LeaseKind.FAILOVER, "secondary", ROOT, "r", clock.now).book
    return book.to_json()


@pytest.mark.parametrize(("damage", "field"), [
    (lambda d: d["leases"][0].update(reason=""), "leases[0].reason: must not be empty"),
    (lambda d: d["leases"][0].update(kind="reboot"), "leases[0].kind"),
    (lambda d: d["leases"][0].update(target="eth9"), "leases[0].target"),
    (lambda d: d["leases"][0].update(expires_at="soon"), "leases[0].expires_at"),
    (lambda d: d["leases"][0].update(expires_at=d["leases"][0]["created_at"] + 8 * 86400),
     "leases[0].expires_at: more than 7 days"),
    (lambda d: d["leases"][0].update(expires_at=d["leases"][0]["created_at"] - 1),
     "leases[0].expires_at: must come after"),
    (lambda d: d["leases"][0].update(who={"uid": -1, "user": "x"}), "leases[0].who"),
    (lambda d: d["leases"][0].pop("id"), "leases[0].id: missing"),
    (lambda d: d["leases"][0].update(colour="red"), "leases[0]: unknown field(s) 'colour'"),
    (lambda d: d["leases"].append(dict(d["leases"][0], id="a7")),
     "leases[1]: a second lease for the failover"),
    (lambda d: d["leases"].append(dict(d["leases"][0])), "leases[1].id: a1 appears twice"),
    (lambda d: d.update(version=9), "version"),
    (lambda d: d.update(next_seq=0), "next_seq"),
    (lambda d: d.update(leases={}), "leases: expected a list"),
])
def test_a_damaged_book_names_the_field(clock, damage, field):
    data = _saved(clock)
    damage(data)
    with pytest.raises(ValueError) as info:
        LeaseBook.from_json(data)
    assert field in str(info.value)


@pytest.mark.parametrize("content", [
    b"{not json", b"[]", b"\xff\xfe", b'{"version": 1, "prefix": "a", "next_seq": 1, '
    b'"leases": [{"id": "a1"}]}', b'{"version": 1, "prefix": "c", "next_seq": 1, "leases": []}',
])
def test_a_damaged_file_is_set_aside_and_the_daemon_starts_empty(tmp_path, content, caplog):
    path = tmp_path / "overrides-agent.json"
    path.write_bytes(content)
    loaded = LeaseStore(tmp_path, "agent").load()
    assert loaded.book == LeaseBook("a")
    assert loaded.problem and str(path) in loaded.problem
    assert not path.exists()
    assert (tmp_path / "overrides-agent.json.damaged").read_bytes() == content
    assert "overrides_damaged" in caplog.text


def test_a_lease_from_a_newer_daemon_with_unknown_fields_is_refused_not_guessed(clock):
    data = _saved(clock)["leases"][0]
    assert Lease.from_json(data).target == "secondary"
    with pytest.raises(ValueError, match="unknown field"):
        Lease.from_json({**data, "scope": "all"})


def test_a_lease_written_by_a_clock_in_the_future_is_rebased_keeping_its_duration(clock):
    """An RTC a year ahead before NTP: the drain written then would last a year once the
    clock is right. Re-based to now it lasts what it was given; one within the slack stays."""
    year = 365 * 86400.0
    ahead = LeaseBook("c").add(LeaseKind.DRAIN, "t1", ROOT, "CHG-1", clock.now + year,
                               for_s=600, graceful_s=60).book
    book, changed = ahead.rebase(clock.now)
    [(old, new)] = changed
    assert (new.created_at, new.renewed_at, new.expires_at) == (clock.now, clock.now,
                                                               clock.now + 600)
    assert (new.id, new.graceful_s, new.reason) == (old.id, 60, "CHG-1")
    assert book.leases == (new,)
    near = LeaseBook("c").add(LeaseKind.DRAIN, "t1", ROOT, "r", clock.now + 299).book
    assert near.rebase(clock.now) == (near, ())


def test_a_lease_from_the_future_is_rebased_at_load(tmp_path, clock, caplog):
    year = 365 * 86400.0
    book = LeaseBook("a").add(LeaseKind.FAILOVER, "secondary", ROOT, "r", clock.now + year,
                              for_s=600).book
    LeaseStore(tmp_path, "agent").save(book)
    loaded = LeaseStore(tmp_path, "agent", clock=clock).load()
    [lease] = loaded.book.leases
    assert lease.expires_at == clock.now + 600
    assert "lease_rebased" in caplog.text
