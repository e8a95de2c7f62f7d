"""The Alertmanager silence of an operator's override (netwatch.observability.silences): what
it matches, how it is found again, extended and expired; first on a recording fake of the
port, then against a real Alertmanager, where an alert it matches is silenced and one it does
not match is not."""

from __future__ import annotations

import datetime
import socket
import time

import pytest

from netwatch.adapters.alertmanager import AlertmanagerError, HttpAlertmanager
from netwatch.control.leases import LeaseBook, LeaseKind, Who
from netwatch.observability import silences

NOW = 1_800_000_000.0
OPERATOR = Who(uid=1000, user="alice")


def lease(kind: LeaseKind, target: str, for_s: float = 3600.0, book=None):
    book = book or LeaseBook("c" if kind is not LeaseKind.FAILOVER else "a")
    return book.add(kind, target, OPERATOR, "CHG-42 transit maintenance", NOW, for_s).lease


class FakeAlertmanager:
    """The port, in memory: silences as Alertmanager's API lists them."""

    def __init__(self):
        self.stored: dict[str, dict] = {}
        self.calls: list[str] = []

    def silences(self) -> list[dict]:
        self.calls.append("list")
        return list(self.stored.values())

    def create(self, body) -> str:
        silence_id = body.get("id") or f"s{len(self.stored) + 1}"
        self.calls.append(f"create {silence_id}")
        self.stored[silence_id] = {**body, "id": silence_id, "status": {"state": "active"}}
        return silence_id

    def expire(self, silence_id: str) -> None:
        self.calls.append(f"expire {silence_id}")
        self.stored[silence_id]["status"] = {"state": "expired"}


def matchers(body: dict) -> dict[str, tuple[str, bool]]:
    return {m["name"]: (m["value"], m["isRegex"]) for m in body["matchers"]}


def test_a_drain_silences_the_upstreams_own_alerts_until_the_lease_expires():
    drain = lease(LeaseKind.DRAIN, "t1", for_s=1800)
    body = silences.silence_for(drain, site="par1", instance="edge1:9111", now=NOW,
                                audit_id="r17").to_json()
    assert matchers(body) == {
        "site": ("par1", False), "upstream": ("t1", False),
        "alertname": ("NetwatchUpstreamDegraded|NetwatchUpstreamFailed|"
                      "NetwatchUpstreamNotProbed|NetwatchBgpSessionDown", True)}
    assert body["startsAt"] == "2027-01-15T08:00:00.000Z"
    assert body["endsAt"] == "2027-01-15T08:30:00.000Z"
    assert body["createdBy"] == "netwatch"
    assert body["comment"] == ("CHG-42 transit maintenance (drain t1 by alice, audit r17) "
                               "[netwatch edge1:9111 lease c1]")


def test_a_failover_to_the_secondary_silences_that_servers_primary_alerts():
    failover = lease(LeaseKind.FAILOVER, "secondary")
    body = silences.silence_for(failover, site="par1", instance="srv1:9110", now=NOW).to_json()
    assert matchers(body) == {
        "site": ("par1", False), "instance": ("srv1:9110", False),
        "alertname": ("NetwatchPrimaryUplinkDown|NetwatchFailbackOverdue", True)}
    assert body["comment"].endswith("(failover to secondary by alice) [netwatch srv1:9110 "
                                    "lease a1]")


@pytest.mark.parametrize("kind, target", [(LeaseKind.PREPEND, "t1"),
                                          (LeaseKind.FAILOVER, "primary")])
def test_a_prepend_or_a_failover_to_the_primary_silences_nothing(kind, target):
    book = LeaseBook("c")
    if kind is LeaseKind.PREPEND:
        made = book.add(kind, target, OPERATOR, "CHG-42", NOW, count=2).lease
    else:
        made = book.add(kind, target, OPERATOR, "CHG-42", NOW).lease
    assert silences.silence_for(made, site="par1", instance="x:1", now=NOW) is None
    am = FakeAlertmanager()
    assert silences.open_or_extend(am, made, site="par1", instance="x:1", now=NOW) is None
    assert am.calls == []


def test_an_expired_lease_opens_no_silence():
    drain = lease(LeaseKind.DRAIN, "t1", for_s=60)
    with pytest.raises(ValueError, match="expired"):
        silences.silence_for(drain, site="par1", instance="edge1:9111", now=NOW + 61)


def test_extend_moves_the_end_of_the_same_silence_and_close_expires_it():
    book = LeaseBook("c")
    added = book.add(LeaseKind.DRAIN, "t1", OPERATOR, "CHG-42", NOW, 600)
    am = FakeAlertmanager()
    first = silences.open_or_extend(am, added.lease, site="par1", instance="edge1:9111",
                                    now=NOW)
    renewed = added.book.extend(added.lease.id, 3600, NOW + 300, "CHG-42 takes longer").lease
    second = silences.open_or_extend(am, renewed, site="par1", instance="edge1:9111",
                                     now=NOW + 300)
    assert second == first
    stored = am.stored[first]
    assert stored["endsAt"] == silences.rfc3339(NOW + 300 + 3600)
    assert stored["startsAt"] == silences.rfc3339(NOW), "an active silence keeps its start"
    # Another daemon's lease with the same id is not ours to close.
    other = silences.silence_for(added.lease, site="par1", instance="edge2:9111", now=NOW)
    am.create(other.to_json())
    assert silences.close(am, instance="edge1:9111", lease_id="c1") == [first]
    assert am.stored[first]["status"]["state"] == "expired"
    assert silences.close(am, instance="edge1:9111", lease_id="c1") == []
    assert [s["status"]["state"] for s in am.stored.values()] == ["expired", "active"]


def test_duplicates_left_by_a_race_are_expired():
    drain = lease(LeaseKind.DRAIN, "t1")
    am = FakeAlertmanager()
    wanted = silences.silence_for(drain, site="par1", instance="edge1:9111", now=NOW)
    am.create(wanted.to_json())
    am.create(wanted.to_json())
    kept = silences.open_or_extend(am, drain, site="par1", instance="edge1:9111", now=NOW)
    assert kept == "s1"
    assert {k: v["status"]["state"] for k, v in am.stored.items()} == {
        "s1": "active", "s2": "expired"}


def test_the_http_adapter_refuses_what_is_not_an_http_url():
    for url in ("file:///etc/passwd", "alertmanager:9093", "http://"):
        with pytest.raises(ValueError):
            HttpAlertmanager(url)


def test_an_alertmanager_that_is_not_there_is_an_error_within_the_timeout():
    with socket.socket() as bound:  # bound, never listening: connections are refused
        bound.bind(("127.0.0.1", 0))
        port = bound.getsockname()[1]
        am = HttpAlertmanager(f"http://127.0.0.1:{port}", timeout_s=1)
        started = time.monotonic()
        with pytest.raises(AlertmanagerError, match=f"GET http://127.0.0.1:{port}"):
            am.silences()
        assert time.monotonic() - started < 2


def test_against_a_real_alertmanager(alertmanager, wait_for):
    """Drain t1 at site par1 (lease c1 of edge1): t1's failed alert is silenced, t2's is not,
    nor t1's at another site; extending keeps the silence; restore expires it and the alert
    is active again."""
    am = HttpAlertmanager(alertmanager.url)
    now = time.time()
    book = LeaseBook("c")
    added = book.add(LeaseKind.DRAIN, "t1", OPERATOR, "CHG-42 transit maintenance", now, 600)
    silence_id = silences.open_or_extend(am, added.lease, site="silence-par1",
                                         instance="edge1:9111", now=now, audit_id="r3")
    starts = datetime.datetime.now(datetime.UTC)
    ends = starts + datetime.timedelta(minutes=10)

    def firing(**labels):
        return {"labels": {"alertname": "NetwatchUpstreamFailed", "severity": "critical",
                           **labels},
                "startsAt": starts.isoformat(), "endsAt": ends.isoformat()}

    t1 = firing(site="silence-par1", upstream="t1", instance="edge1:9111")
    t2 = firing(site="silence-par1", upstream="t2", instance="edge1:9111")
    elsewhere = firing(site="silence-ams1", upstream="t1", instance="edge1.ams1:9111")
    alertmanager.post_alerts([t1, t2, elsewhere])

    def state(a):
        found = alertmanager.alerts(**a["labels"])
        return found[0]["status"]["state"], found[0]["status"]["silencedBy"]

    assert wait_for(lambda: state(t1) == ("suppressed", [silence_id]), 10, 0.1) is not None, \
        f"t1 at par1: {state(t1)}, expected silenced by {silence_id}"
    assert state(t2) == ("active", [])
    assert state(elsewhere) == ("active", [])

    renewed = added.book.extend(added.lease.id, 3600, now + 5, "longer").lease
    again = silences.open_or_extend(am, renewed, site="silence-par1", instance="edge1:9111",
                                    now=now + 5)
    live = silences.ours(am.silences(), instance="edge1:9111", lease_id="c1")
    assert [s["id"] for s in live] == [again]
    assert live[0]["endsAt"].startswith(silences.rfc3339(now + 5 + 3600)[:19])
    assert live[0]["createdBy"] == "netwatch"
    assert "CHG-42 transit maintenance" in live[0]["comment"]

    assert silences.close(am, instance="edge1:9111", lease_id="c1") == [again]
    assert wait_for(lambda: state(t1) == ("active", []), 10, 0.1) is not None, \
        f"t1 after restore: {state(t1)}"
    assert silences.ours(am.silences(), instance="edge1:9111", lease_id="c1") == []


def test_a_book_change_closes_the_ended_leases_silences_then_opens_the_new_one():
    book = LeaseBook("c")
    old = book.add(LeaseKind.DRAIN, "t2", OPERATOR, "CHG-1", NOW, 600)
    new = old.book.add(LeaseKind.DRAIN, "t2", OPERATOR, "CHG-2", NOW, 600).lease
    to_primary = lease(LeaseKind.FAILOVER, "primary")  # silences nothing
    jobs = silences.jobs_for(new, replaced=(old.lease,), removed=(to_primary,))
    assert [(j.lease.id, j.opens) for j in jobs] == [(old.lease.id, False), (new.id, True)]


def test_the_keeper_survives_a_failing_alertmanager_and_logs_once_per_episode():
    am = FakeAlertmanager()
    failing = {"on": True}

    def silences_or_fail():
        if failing["on"]:
            raise AlertmanagerError("GET /api/v2/silences: connection refused")
        return list(am.stored.values())

    am.silences = silences_or_fail
    keeper = silences.SilenceKeeper(am, site="par1", instance="edge1:9111", wall=lambda: NOW,
                                    survives=(AlertmanagerError, OSError))
    job = silences.SilenceJob(lease(LeaseKind.DRAIN, "t2"), opens=True)
    first, second = keeper.run(job), keeper.run(job)
    assert first.error is not None and first.log_failure
    assert second.error is not None and not second.log_failure
    failing["on"] = False
    back = keeper.run(job)
    assert back.error is None and back.recovered and back.silence_id in am.stored
    assert [e for _, e, _ in silences.log_lines(back)] == ["silence_recovered", "silence"]
