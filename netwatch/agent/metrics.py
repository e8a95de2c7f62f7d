"""The agent's Prometheus metrics, on a registry passed in (never the global one).

Names follow the Prometheus conventions: base units (`_seconds`), `_total` for counters,
`_ratio` for 0..1 fractions. Labels: `uplink` (primary, secondary), `kind` (a `ProbeKind`
value: gateway, gateway6, beyond4, beyond6), `reason` for failovers (carrier, gateway, beyond,
failback, operator): a small, fixed set, so no label can grow without bound.

The counters whose label values are known in advance start at 0 for each of them: `rate()` and
`increase()` need a sample before the first event, or the first failover of a process would
never show in a dashboard or an alert. Every metric is listed, with the alerts and panels that
read it, in docs/metrics.md.
"""

from __future__ import annotations

from collections import deque

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

from netwatch import __version__
from netwatch.agent.decision import FailoverCause, ProbeKind
from netwatch.core.vocabulary import Family, Health, UplinkRole

# Gateway RTTs on a LAN are 50 us .. 1 ms; beyond targets a few ms; timeouts are not observed.
RTT_BUCKETS_S = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                 0.5, 1.0)
LOSS_WINDOW = 20  # probes per uplink and kind in netwatch_agent_probe_loss_ratio (1 s at 20 Hz)
ROUTE_CAUSES = ("failover", "repair")  # netwatch_agent_route_changes_total{cause}
NETLINK_OPS = ("events", "snapshot")  # netwatch_agent_netlink_errors_total{op}


class StreamMetrics:
    """The labelled children of one probe stream (uplink, kind), looked up once: `labels()`
    per probe (a lock and a dict lookup each, four per probe) was a tenth of the agent's CPU."""

    __slots__ = ("_lost", "_no_verdict", "_ok", "_rtt", "rtts", "window")

    def __init__(self, window: deque[bool], ok, lost, rtt, no_verdict):
        self.window, self._ok, self._lost, self._rtt = window, ok, lost, rtt
        self._no_verdict = no_verdict
        self.rtts: deque[float] = deque(maxlen=window.maxlen)  # the last answers (status)

    def no_verdict(self) -> None:
        """Count an unanswered probe that says nothing (sent from a tentative address): not
        a loss, so it stays out of the loss ratio."""
        self._no_verdict.inc()

    def count(self, rtt_s: float | None, timed: bool = True) -> None:
        """Count one probe (and observe its RTT when answered and `timed`: not a reply that
        may have been another request's)."""
        self.window.append(rtt_s is None)
        if rtt_s is None:
            self._lost.inc()
        else:
            self._ok.inc()
            if timed:
                self._rtt.observe(rtt_s)
                self.rtts.append(rtt_s)


class AgentMetrics:
    """Every metric the agent exports; methods take the values the daemon already has."""

    def __init__(self, registry: CollectorRegistry):
        self.build_info = Gauge(
            "netwatch_build_info", "Always 1: the netwatch version and which daemon serves it",
            ["version", "daemon"], registry=registry)
        self.build_info.labels(__version__, "agent").set(1)
        # process_start_time_seconds (restarts: NetwatchDaemonRestarting), CPU and memory.
        ProcessCollector(registry=registry)
        self.uplink_up = Gauge(
            "netwatch_agent_uplink_up", "1 when the uplink is judged UP, 0 when DOWN or unknown",
            ["uplink"], registry=registry)
        self.uplink_state = Gauge(
            "netwatch_agent_uplink_state", "1 for the uplink's current verdict (up, down, unknown)",
            ["uplink", "state"], registry=registry)
        self.family_up = Gauge(
            "netwatch_agent_uplink_family_up",
            "1 when the uplink is judged UP for the family, 0 when DOWN or unknown",
            ["uplink", "family"], registry=registry)
        self.carrier = Gauge(
            "netwatch_agent_uplink_carrier", "1 when the uplink's interface is up with carrier",
            ["uplink"], registry=registry)
        self.active = Gauge(
            "netwatch_agent_active_uplink",
            "1 for each uplink that carries at least one family's default route",
            ["uplink"], registry=registry)
        self.route_uplink = Gauge(
            "netwatch_agent_default_route_uplink",
            "1 for the uplink that carries the family's default route", ["family", "uplink"],
            registry=registry)
        self.rtt = Histogram(
            "netwatch_agent_probe_rtt_seconds", "Round-trip time of answered probes",
            ["uplink", "kind"], buckets=RTT_BUCKETS_S, registry=registry)
        self.loss = Gauge(
            "netwatch_agent_probe_loss_ratio",
            f"Unanswered fraction of the last {LOSS_WINDOW} probes", ["uplink", "kind"],
            registry=registry)
        self.probes = Counter(
            "netwatch_agent_probes_total",
            "Probes sent, by result (ok, lost; no_verdict: unanswered while the IPv6 source "
            "address was tentative)", ["uplink", "kind", "result"], registry=registry)
        self.failovers = Counter(
            "netwatch_agent_failovers_total",
            "Default routes moved to the other uplink, by reason (families moved in one "
            "decision count once)", ["reason"], registry=registry)
        self.route_changes = Counter(
            "netwatch_agent_route_changes_total",
            "Default routes written, by family and cause (failover, repair)",
            ["family", "cause"], registry=registry)
        self.route_errors = Counter(
            "netwatch_agent_route_errors_total", "Default route writes the kernel refused",
            ["family"], registry=registry)
        self.netlink_errors = Counter(
            "netwatch_agent_netlink_errors_total",
            "Netlink errors retried, by operation (events: the event socket, reopened; "
            "snapshot: a read of the default routes)", ["op"], registry=registry)
        self.silence_errors = Counter(
            "netwatch_agent_silence_errors_total",
            "Alertmanager requests for a forced failover's silence that failed (the override"
            " is in force all the same)", registry=registry)
        self.both_down = Gauge(
            "netwatch_agent_both_uplinks_down",
            "1 while both uplinks are DOWN in some family (its route kept)", registry=registry)
        # Wall-clock by definition (dashboards show "last failover at"); never read back.
        self.last_failover = Gauge(
            "netwatch_agent_last_failover_timestamp_seconds", "Unix time of the last failover",
            registry=registry)
        self._streams: dict[tuple[UplinkRole, ProbeKind], StreamMetrics] = {}
        for role in UplinkRole:
            self.set_health(role, Health.UNKNOWN)
            self.active.labels(role.value).set(0)
            self.carrier.labels(role.value).set(0)
        self.both_down.set(0)
        for cause in FailoverCause:
            self.failovers.labels(cause.value)
        for family in Family:
            self.route_errors.labels(family.label)
            for route_cause in ROUTE_CAUSES:
                self.route_changes.labels(family.label, route_cause)
        for op in NETLINK_OPS:
            self.netlink_errors.labels(op)

    def stream(self, uplink: UplinkRole, kind: ProbeKind) -> StreamMetrics:
        """The counters of one probe stream; the agent keeps it beside the stream's prober."""
        found = self._streams.get((uplink, kind))
        if found is None:
            labels = (uplink.value, kind.value)
            found = StreamMetrics(deque(maxlen=LOSS_WINDOW), self.probes.labels(*labels, "ok"),
                                  self.probes.labels(*labels, "lost"), self.rtt.labels(*labels),
                                  self.probes.labels(*labels, "no_verdict"))
            self._streams[(uplink, kind)] = found
        return found

    def probe(self, uplink: UplinkRole, kind: ProbeKind, rtt_s: float | None) -> None:
        """Count one probe (and observe its RTT when answered). The loss-ratio gauges are
        only recomputed by `update_loss()`, which the agent calls once a second."""
        self.stream(uplink, kind).count(rtt_s)

    def update_loss(self) -> None:
        """Set netwatch_agent_probe_loss_ratio from each stream's last LOSS_WINDOW probes."""
        for (uplink, kind), stream in self._streams.items():
            if stream.window:
                self.loss.labels(uplink.value, kind.value).set(
                    sum(stream.window) / len(stream.window))

    def set_health(self, uplink: UplinkRole, health: Health) -> None:
        """The verdict on the whole uplink (UP only when every family is)."""
        self.uplink_up.labels(uplink.value).set(1 if health is Health.UP else 0)
        for state in Health:
            self.uplink_state.labels(uplink.value, state.value).set(1 if state is health else 0)

    def set_family_health(self, uplink: UplinkRole, family: Family, health: Health) -> None:
        self.family_up.labels(uplink.value, family.label).set(1 if health is Health.UP else 0)

    def set_routes(self, routes: dict[Family, UplinkRole | None]) -> None:
        """Where each managed family's default route is (None: not decided yet)."""
        for family, uplink in routes.items():
            for role in UplinkRole:
                self.route_uplink.labels(family.label, role.value).set(1 if role is uplink else 0)
        carrying = set(routes.values())
        for role in UplinkRole:
            self.active.labels(role.value).set(1 if role in carrying else 0)
