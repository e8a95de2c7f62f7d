"""The control API's metrics, shared by both daemons (labelled `daemon`), on a registry the
caller passes in. Listed with the alerts and panels that read them in docs/metrics.md."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

from netwatch.control.protocol import SERVED_BY, ErrorCode


class ControlMetrics:
    """The control API's metrics, on their own: every live override (its creation and expiry
    time, so a dashboard shows what is forced and for how long, and an alert can fire on one
    about to lapse) and every request served, by command and outcome. Labelled with `daemon`,
    so the agent's and the controller's series read alike.

    `netwatch_override_*_timestamp_seconds{daemon,id,kind,target}`: one series per live lease,
    removed when the lease ends (restored, deleted, replaced, expired): a lease id is never
    reused, so the series stay bounded by the live leases.
    `netwatch_control_requests_total{daemon,cmd,result}`: result ok, refused (a safety rule),
    denied (a write from a peer that may only read) or error (anything else); `cmd` "invalid"
    for a line that is no request. Every (cmd, result) of the daemon's commands starts at 0."""

    RESULTS = ("ok", "refused", "denied", "error")

    def __init__(self, registry: CollectorRegistry, daemon: str):
        self.daemon = daemon
        labels = ["daemon", "id", "kind", "target"]
        self.expiry = Gauge(
            "netwatch_override_expiry_timestamp_seconds",
            "When the operator's override expires by itself (seconds since the epoch)",
            labels, registry=registry,
        )
        self.created = Gauge(
            "netwatch_override_created_timestamp_seconds",
            "When the operator's override was created (seconds since the epoch)",
            labels, registry=registry,
        )
        self.requests = Counter(
            "netwatch_control_requests_total",
            "Control API requests answered, by command and result (ok, refused, denied, error)",
            ["daemon", "cmd", "result"], registry=registry,
        )
        for cmd in sorted(c.value for c in SERVED_BY[daemon]):
            for result in self.RESULTS:
                self.requests.labels(daemon, cmd, result)
        self._shown: set[tuple[str, str, str]] = set()

    def show_leases(self, leases) -> None:
        """The live leases (netwatch.control.leases.Lease) are these: set theirs, remove the
        series of every lease no longer among them."""
        now = set()
        for lease in leases:
            key = (lease.id, lease.kind.value, lease.target)
            now.add(key)
            self.expiry.labels(self.daemon, *key).set(lease.expires_at)
            self.created.labels(self.daemon, *key).set(lease.created_at)
        for key in self._shown - now:
            self.expiry.remove(self.daemon, *key)
            self.created.remove(self.daemon, *key)
        self._shown = now

    def count_request(self, cmd: str, error: ErrorCode | None) -> None:
        """One request answered: `error` None (ok) or the error answer's code."""
        result = ("ok" if error is None else "refused" if error is ErrorCode.REFUSED
                  else "denied" if error is ErrorCode.PERMISSION else "error")
        self.requests.labels(self.daemon, cmd, result).inc()
