"""Alertmanager silences for operator overrides. Pure: it builds Alertmanager's API v2 requests
and reads its answers through the `Alertmanager` port; `netwatch.adapters.alertmanager` is the
HTTP side.

An operator who drains an upstream, or forces a server onto its secondary uplink, expects
some alerts for as long as the override's lease (`netwatch.control.leases`) lasts. The
silence mirrors the lease:

- matchers: the site, the upstream (a drain) or the server's `instance` (a failover), and
  only the alerts the override makes expected (`DRAIN_SILENCES`, `FAILOVER_SILENCES`). Never
  NetwatchTooFewUpstreamsAnnouncing, NetwatchSafetyHold or NetwatchBothUplinksDown: an
  override can cause them, and they must page all the same;
- startsAt now, endsAt the lease's expiry; extending the lease moves endsAt (the same
  silence when Alertmanager allows it, see `open_or_extend`);
- createdBy "netwatch", comment: the reason, who, the audit id, and a marker naming the
  daemon (`instance`) and the lease id. The marker is how the silence is found again, to
  extend or expire it: Alertmanager keeps no other field of ours, and the daemon keeps no
  silence id, so a restarted daemon still finds its silences.

A prepend, and a failover to the primary, make no alert expected: they open no silence.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from netwatch.control.leases import Lease, LeaseKind

CREATED_BY = "netwatch"
# The upstream alerts a drain makes expected (grafana/alerts/netwatch-transit.yml).
DRAIN_SILENCES = ("NetwatchUpstreamDegraded", "NetwatchUpstreamFailed",
                  "NetwatchUpstreamNotProbed", "NetwatchBgpSessionDown")
# The alerts a forced failover to the secondary makes expected: the primary is taken out of
# service on purpose (grafana/alerts/netwatch-agent.yml).
FAILOVER_SILENCES = ("NetwatchPrimaryUplinkDown", "NetwatchFailbackOverdue")
LIVE_STATES = ("active", "pending")  # Alertmanager's silence states that still silence


class Alertmanager(Protocol):
    """Alertmanager's API v2, the three calls a daemon needs. Each raises
    `AlertmanagerError` (netwatch.adapters.alertmanager) when Alertmanager cannot be reached
    or refuses."""

    def silences(self) -> list[dict[str, Any]]:
        """GET /api/v2/silences: every silence, expired ones included."""

    def create(self, body: Mapping[str, Any]) -> str:
        """POST /api/v2/silences: create (or, with "id", update) one; returns its id."""

    def expire(self, silence_id: str) -> None:
        """DELETE /api/v2/silence/{id}."""


@dataclass(frozen=True)
class Matcher:
    name: str
    value: str
    is_regex: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "value": self.value, "isRegex": self.is_regex,
                "isEqual": True}


@dataclass(frozen=True)
class Silence:
    """One silence to create: what `to_json` posts."""

    matchers: tuple[Matcher, ...]
    starts_at: float  # wall-clock seconds
    ends_at: float
    comment: str

    def to_json(self, silence_id: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "matchers": [m.to_json() for m in self.matchers],
            "startsAt": rfc3339(self.starts_at),
            "endsAt": rfc3339(self.ends_at),
            "createdBy": CREATED_BY,
            "comment": self.comment,
        }
        if silence_id is not None:
            body["id"] = silence_id
        return body


def rfc3339(ts: float) -> str:
    """Wall-clock seconds as Alertmanager's time format: 2025-01-02T03:04:05.678Z."""
    text = datetime.fromtimestamp(ts, tz=UTC).isoformat(timespec="milliseconds")
    return text.replace("+00:00", "Z")


def marker(instance: str, lease_id: str) -> str:
    """The comment's tag that finds a lease's silence again: `[netwatch srv1:9110 lease a3]`."""
    return f"[netwatch {instance} lease {lease_id}]"


def silence_for(lease: Lease, *, site: str, instance: str, now: float,
                audit_id: str | None = None) -> Silence | None:
    """The silence `lease` opens, or None when it makes no alert expected (a prepend, a
    failover to the primary). `site` is the site file's `site` (the alerts' `site` label),
    `instance` the `instance` label Prometheus gives the daemon holding the lease; `now`
    wall-clock seconds. Raises ValueError for a lease that has already expired."""
    if lease.expired(now):
        raise ValueError(f"lease {lease.id} expired at {rfc3339(lease.expires_at)}")
    if lease.kind is LeaseKind.DRAIN:
        matchers = (Matcher("site", site), Matcher("upstream", lease.target),
                    Matcher("alertname", "|".join(DRAIN_SILENCES), is_regex=True))
    elif lease.kind is LeaseKind.FAILOVER and lease.target == "secondary":
        matchers = (Matcher("site", site), Matcher("instance", instance),
                    Matcher("alertname", "|".join(FAILOVER_SILENCES), is_regex=True))
    else:
        return None
    audit = f", audit {audit_id}" if audit_id else ""
    comment = (f"{lease.reason} ({lease.describe()} by {lease.who.user}{audit}) "
               f"{marker(instance, lease.id)}")
    return Silence(matchers, now, lease.expires_at, comment)


def ours(silences: Iterable[Mapping[str, Any]], *, instance: str,
         lease_id: str) -> list[Mapping[str, Any]]:
    """The live (active or pending) silences netwatch created for that lease, oldest first
    (by startsAt)."""
    tag = marker(instance, lease_id)
    found = [s for s in silences
             if s.get("createdBy") == CREATED_BY and str(s.get("comment", "")).endswith(tag)
             and s.get("status", {}).get("state") in LIVE_STATES]
    return sorted(found, key=lambda s: str(s.get("startsAt", "")))


def open_or_extend(am: Alertmanager, lease: Lease, *, site: str, instance: str, now: float,
                   audit_id: str | None = None) -> str | None:
    """Create the lease's silence, or move the end of the one it has (after `extend`).
    Returns the silence id, or None for a lease that opens none. A silence that is already
    active keeps its startsAt, so that Alertmanager updates it in place instead of replacing
    it; extra ones (two daemons' retries racing) are expired. Raises AlertmanagerError."""
    wanted = silence_for(lease, site=site, instance=instance, now=now, audit_id=audit_id)
    if wanted is None:
        return None
    existing = ours(am.silences(), instance=instance, lease_id=lease.id)
    if not existing:
        return am.create(wanted.to_json())
    first, extra = existing[0], existing[1:]
    body = wanted.to_json(str(first["id"]))
    if first.get("status", {}).get("state") == "active":
        body["startsAt"] = first["startsAt"]
    silence_id = am.create(body)
    for other in extra:
        am.expire(str(other["id"]))
    return silence_id


def close(am: Alertmanager, *, instance: str, lease_id: str) -> list[str]:
    """Expire the live silences of that lease (restore, delete, expiry). Returns their ids;
    none is fine (the lease opened none, or someone expired it by hand). Raises
    AlertmanagerError."""
    ids = [str(s["id"]) for s in ours(am.silences(), instance=instance, lease_id=lease_id)]
    for silence_id in ids:
        am.expire(silence_id)
    return ids


@dataclass(frozen=True)
class SilenceJob:
    """One thing to do to a lease's silence: open (or extend) it, or close it."""

    lease: Lease
    opens: bool


def jobs_for(lease: Lease | None, replaced: Iterable[Lease] = (),
             removed: Iterable[Lease] = ()) -> list[SilenceJob]:
    """What a change of the lease book does to the silences: the leases it ended (`replaced`
    by `lease`, `removed` by the command, or expired) close theirs, then `lease` (created or
    extended) opens or extends its own. Leases that open none are left out."""
    jobs = [SilenceJob(x, opens=False) for x in (*replaced, *removed) if _silenced(x)]
    if lease is not None and _silenced(lease):
        jobs.append(SilenceJob(lease, opens=True))
    return jobs


def _silenced(lease: Lease) -> bool:
    return lease.kind is LeaseKind.DRAIN or (
        lease.kind is LeaseKind.FAILOVER and lease.target == "secondary")


@dataclass(frozen=True)
class SilenceOutcome:
    """What `SilenceKeeper.run` did: the silence id opened or extended (None: closed, none
    to open, or failed), the error it survived, and whether the daemon should log it: the
    first failure of an episode (`log_failure`), the first success after one (`recovered`)."""

    job: SilenceJob
    silence_id: str | None = None
    error: BaseException | None = None
    log_failure: bool = False
    recovered: bool = False


class SilenceKeeper:
    """Carries out SilenceJobs against one Alertmanager. Blocking (the port is): a daemon runs
    `run` in a worker thread, one job at a time, in order.

    An operator's override never fails because Alertmanager does: the errors named in
    `survives` (the adapter's AlertmanagerError, OSError) come back in the outcome, flagged
    for the log once per episode; the job is dropped (the lease is in force all the same,
    its alerts are not silenced). Anything else raises."""

    def __init__(self, am: Alertmanager, *, site: str, instance: str,
                 wall: Callable[[], float], survives: tuple[type[BaseException], ...]):
        self.am = am
        self.site = site
        self.instance = instance
        self.wall = wall
        self.survives = survives
        self._failing = False

    def run(self, job: SilenceJob, audit_id: str | None = None) -> SilenceOutcome:
        lease = job.lease
        try:
            silence_id = None
            if job.opens and not lease.expired(self.wall()):  # expired while queued: none
                silence_id = open_or_extend(self.am, lease, site=self.site,
                                            instance=self.instance, now=self.wall(),
                                            audit_id=audit_id)
            elif not job.opens:
                close(self.am, instance=self.instance, lease_id=lease.id)
        except self.survives as exc:
            first, self._failing = not self._failing, True
            return SilenceOutcome(job, error=exc, log_failure=first)
        recovered, self._failing = self._failing, False
        return SilenceOutcome(job, silence_id, recovered=recovered)


def instance_label(configured: str | None, fqdn: str, metrics_listen: str) -> str:
    """The `instance` label of a daemon's alerts: the site file's `alertmanager.instance.*`,
    or this host's FQDN and the daemon's metrics port (what Prometheus calls a target it
    scrapes by name)."""
    return configured or f"{fqdn}:{metrics_listen.rsplit(':', 1)[1]}"


def log_lines(outcome: SilenceOutcome) -> list[tuple[int, str, dict[str, Any]]]:
    """What a daemon logs for `outcome`: (level, event, fields) for its key=value logger.
    Each silence opened or closed, a failure once per episode, the recovery."""
    lease = outcome.job.lease
    action = "open" if outcome.job.opens else "close"
    if outcome.error is not None:
        if not outcome.log_failure:
            return []
        return [(logging.ERROR, "silence_failed", dict(
            lease=lease.id, forces=lease.describe(), action=action, error=outcome.error,
            note="the override is in force; its alerts are not silenced"))]
    lines = [(logging.INFO, "silence_recovered", dict(lease=lease.id))] if outcome.recovered \
        else []
    lines.append((logging.INFO, "silence", dict(lease=lease.id, forces=lease.describe(),
                                                action=action, silence=outcome.silence_id)))
    return lines
