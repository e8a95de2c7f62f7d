"""The controller's Prometheus metrics, on a registry the caller passes in.

Labels: `upstream` (the site file's upstreams), `family` (ipv4, ipv6), `state`, `mode`, `kind`
(enums), `prefix` (the site's prefixes), `target` (the targets file), `where` (the places an
error is survived): each bounded by the site file or by the code. The counters whose label
values are known in advance start at 0 for each, so `rate()` and `increase()` see the first
action and the first error. Every metric is listed, with the alerts and panels that read it,
in docs/metrics.md.
"""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, ProcessCollector

from netwatch import __version__
from netwatch.controller.params import TransitState
from netwatch.controller.plan import AnnouncementMode
from netwatch.core.vocabulary import Family

# netwatch_controller_errors_total{where}: the places the daemon survives an error.
ERROR_SITES = ("state", "send", "sync", "event", "start", "persist", "judge", "probe_path",
               "probe")


class ControllerMetrics:
    def __init__(self, registry: CollectorRegistry):
        self.build_info = Gauge(
            "netwatch_build_info", "Always 1: the netwatch version and which daemon serves it",
            ["version", "daemon"], registry=registry)
        self.build_info.labels(__version__, "controller").set(1)
        # process_start_time_seconds (restarts: NetwatchDaemonRestarting), CPU and memory.
        ProcessCollector(registry=registry)
        self.state = Gauge(
            "netwatch_transit_state", "1 for the upstream's current state",
            ["upstream", "state"], registry=registry,
        )
        self.loss = Gauge(
            "netwatch_transit_loss_ratio", "Probe loss through the upstream over the window",
            ["upstream"], registry=registry,
        )
        self.loss_excess = Gauge(
            "netwatch_transit_loss_excess_ratio",
            "Loss above the median of the other upstreams (the verdict's input)",
            ["upstream"], registry=registry,
        )
        self.rtt_excess = Gauge(
            "netwatch_transit_rtt_excess_seconds",
            "Median probe RTT above the median of the other upstreams (the verdict's input)",
            ["upstream"], registry=registry,
        )
        self.rtt = Gauge(
            "netwatch_transit_rtt_seconds", "Median probe RTT through the upstream",
            ["upstream"], registry=registry,
        )
        self.probed = Gauge(
            "netwatch_transit_probed",
            "1 when the upstream is probed (a probe path and a working prober for at least one"
            " family); 0: judged by nothing, left out of the all-bad guard",
            ["upstream"], registry=registry,
        )
        self.reachable = Gauge(
            "netwatch_transit_target_reachable",
            "1 when the target answers through the upstream (loss below 50 %)",
            ["upstream", "target"], registry=registry,
        )
        self.session = Gauge(
            "netwatch_bgp_session_up", "1 when the BGP session is established",
            ["upstream", "family"], registry=registry,
        )
        self.sessions_unknown = Gauge(
            "netwatch_bgp_sessions_unknown",
            "BGP sessions whose state the controller does not know (no session event, no usable"
            " answer to show neighbor json): the interlock cannot withdraw through them",
            registry=registry,
        )
        self.mode = Gauge(
            "netwatch_announcement_mode", "1 for how the prefix is announced to the upstream",
            ["upstream", "prefix", "mode"], registry=registry,
        )
        self._modes: dict[tuple[str, str], AnnouncementMode] = {}  # what `mode` shows
        self.actions = Counter(
            "netwatch_transit_actions_total",
            "Automatic state changes of an upstream, by the state entered (kind)", ["kind"],
            registry=registry,
        )
        self.safety_hold = Gauge(
            "netwatch_transit_safety_hold",
            "1 while the interlock keeps an upstream announced against its verdict",
            ["family"], registry=registry,
        )
        self.local_fault = Gauge(
            "netwatch_transit_local_fault",
            "1 while every upstream looks bad at once (no BGP action taken)", registry=registry,
        )
        self.budget_exhausted = Gauge(
            "netwatch_transit_action_budget_exhausted",
            "1 while max_actions_per_hour holds back an action", registry=registry,
        )
        self.budget_remaining = Gauge(
            "netwatch_transit_action_budget_remaining",
            "Automatic actions max_actions_per_hour still allows now", registry=registry,
        )
        self.min_announcing = Gauge(
            "netwatch_transit_min_announcing_upstreams",
            "The site's min_announcing_upstreams: the fewest upstreams every prefix stays"
            " announced to", registry=registry,
        )
        self.updates_received = Gauge(
            "netwatch_bgp_updates_received",
            "UPDATE messages ExaBGP counted on the session (asked every 30 s): a transit that"
            " sends a default route or nothing sends a handful, one that sends a full table"
            " thousands",
            ["upstream", "family"], registry=registry,
        )
        self.rejected = Counter(
            "netwatch_exabgp_commands_rejected_total",
            "Commands ExaBGP answered with error or left unacknowledged (ack timeout)",
            registry=registry,
        )
        self.state_stale = Gauge(
            "netwatch_controller_state_file_stale",
            "1 while the last save of the state file failed (a full disk): a restart now would "
            "start from older state", registry=registry,
        )
        self.errors = Counter(
            "netwatch_controller_errors_total", "Errors survived (bad event, failing probe)",
            ["where"], registry=registry,
        )
        for state in TransitState:
            self.actions.labels(state.value)
        for where in ERROR_SITES:
            self.errors.labels(where)

    def set_state(self, upstream: str, state: TransitState) -> None:
        for s in TransitState:
            self.state.labels(upstream, s.value).set(1 if s is state else 0)

    def set_mode(self, upstream: str, prefix: str, mode: AnnouncementMode) -> None:
        """1 for `mode`, 0 for the others; only what changed is written (10,000 prefixes x 4
        upstreams x 5 modes: every series written took 2.5 s of the controller's loop)."""
        key = (upstream, prefix)
        previous = self._modes.get(key)
        if previous is mode:
            return
        if previous is None:
            for m in AnnouncementMode:
                self.mode.labels(upstream, prefix, m.value).set(1 if m is mode else 0)
        else:
            self.mode.labels(upstream, prefix, previous.value).set(0)
            self.mode.labels(upstream, prefix, mode.value).set(1)
        self._modes[key] = mode


class EgressMetrics:
    """netwatch_egress_weight{upstream,family}, on its own: the next-hop weight of the upstream
    in the border's default route of the family, 0 when it carries none of our outgoing
    traffic. With `controller.outbound.mode: kernel` it is what is in the kernel (written or
    adopted by the controller); with `off`, the plan's egress set (what full-table routers are
    told to do with local preference: docs/controller.md). Absent until known."""

    def __init__(self, registry: CollectorRegistry, upstreams: dict[str, frozenset[Family]]):
        """`upstreams`: {name: the families it has a session of}."""
        self.upstreams = upstreams
        self.weight = Gauge(
            "netwatch_egress_weight",
            "Next-hop weight of the upstream in the border's default route (0: carries none of "
            "our outgoing traffic)", ["upstream", "family"], registry=registry,
        )

    def show(self, family: Family, weights: Mapping[str, int]) -> None:
        """The egress set of `family` in effect: {upstream: weight}, the others 0."""
        for name, families in self.upstreams.items():
            if family in families:
                self.weight.labels(name, family.label).set(weights.get(name, 0))
