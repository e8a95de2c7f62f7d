"""What the transit decision is made of: the upstream states, and the parameters it takes
from the site file (`params_from_site`). Pure.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from netwatch.core.vocabulary import Family

HOUR_S = 3600.0
# FAILED looks back at least this many probes per path. With 3, a path losing 51 % of its
# probes crossed failed_loss 0.8 over 10 targets (30 probes) with p ~ 4e-4 per judgement (a
# simulation of the verdict); with 5 (50 probes) p ~ 1e-5, with 20 targets (100 probes) ~ 1e-9,
# while a blackhole still needs only 4 lost probes per path (0.8 s at 200 ms).
FAILED_LOOKBACK_PROBES = 5


class TransitState(enum.Enum):
    HEALTHY = "healthy"
    DEGRADED = "degraded"
    FAILED = "failed"

    @property
    def severity(self) -> int:
        return _SEVERITY[self]

_SEVERITY = {TransitState.HEALTHY: 0, TransitState.DEGRADED: 1, TransitState.FAILED: 2}


class SessionState(enum.Enum):
    UNKNOWN = "unknown"  # possibly up: the interlock never withdraws through it on a guess
    UP = "up"
    DOWN = "down"


# --- parameters -----------------------------------------------------------------------------


class TreatmentAction(enum.Enum):
    ANNOUNCE = "announce"
    PREPEND = "prepend"
    COMMUNITIES = "communities"
    WITHDRAW = "withdraw"


@dataclass(frozen=True)
class Treatment:
    """What a verdict level does to the announcements: announce, prepend, tag or withdraw."""

    action: TreatmentAction
    prepend: int = 0
    communities: tuple[str, ...] = ()


@dataclass(frozen=True)
class UpstreamParams:
    name: str
    families: frozenset[Family]  # the families this upstream has a BGP session for
    communities: tuple[str, ...] = ()


@dataclass(frozen=True)
class Params:
    """Everything the decision needs from the site file (see `params_from_site`)."""

    asn: int
    upstreams: tuple[UpstreamParams, ...]
    degraded_loss: float
    degraded_latency_s: float | None
    failed_loss: float
    failed_latency_s: float | None
    degraded: Treatment
    failed: Treatment
    fall: int = 3
    rise: int = 5
    min_announcing_upstreams: int = 2
    recovery_hold_s: float = 600.0
    max_actions_per_hour: int = 6
    min_targets: int = 3
    egress_weight: int = 10  # a healthy upstream's next-hop weight in the default route
    egress_degraded_weight: int = 1  # a DEGRADED upstream's

    @property
    def recent_probes(self) -> int:
        """How many of each path's latest probes FAILED is judged on (see the module doc)."""
        return max(self.fall, FAILED_LOOKBACK_PROBES)

    def upstream(self, name: str) -> UpstreamParams:
        for up in self.upstreams:
            if up.name == name:
                return up
        raise KeyError(name)


def params_from_site(site) -> Params:
    """Build Params from a validated `netwatch.config.Site` with a controller section."""
    ctl = site.controller
    pol = ctl.policy

    def treatment(v) -> Treatment:
        return Treatment(TreatmentAction(v.action), v.prepend or 0, tuple(v.communities))

    ups = []
    for u in ctl.upstreams:
        fams = {Family(u.neighbor.version)}
        if u.neighbor6 is not None:
            fams.add(Family.V6)
        ups.append(UpstreamParams(u.name, frozenset(fams), tuple(u.communities)))
    return Params(
        asn=site.asn,
        upstreams=tuple(ups),
        degraded_loss=pol.degraded.loss_ratio,
        degraded_latency_s=pol.degraded.latency_ms / 1000 if pol.degraded.latency_ms else None,
        failed_loss=pol.failed.loss_ratio,
        failed_latency_s=pol.failed.latency_ms / 1000 if pol.failed.latency_ms else None,
        degraded=treatment(pol.degraded),
        failed=treatment(pol.failed),
        fall=pol.fall,
        rise=pol.rise,
        min_announcing_upstreams=pol.min_announcing_upstreams,
        recovery_hold_s=pol.recovery_hold_s,
        max_actions_per_hour=pol.max_actions_per_hour,
        min_targets=ctl.probe.min_targets,
        egress_weight=ctl.outbound.weight,
        egress_degraded_weight=ctl.outbound.degraded_weight,
    )

