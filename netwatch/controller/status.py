"""The controller's answer to `netwatch status`: its decision state as a `ControllerStatus`
(netwatch.control.protocol). Pure.

`controller_status(...)` takes everything as arguments: the site, the decision `State`, the
probe window's statistics, the live leases, both clocks and the host's name. The decision
runs on the monotonic clock, the answer speaks the wall clock (every time in it is seconds
since the epoch): a monotonic time t is shown as `wall_now - (mono_now - t)`.

Loss and RTT are each upstream's own over the window (loss: the mean over its targets; RTT:
the median of its targets' median RTTs) beside the median of the *other* upstreams' values,
as the verdict compares them; None where an upstream has no probe result yet.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping

from netwatch.control.leases import Lease
from netwatch.controller import overrides as operator_overrides
from netwatch.controller.decision import State, UpstreamState
from netwatch.controller.params import Params
from netwatch.controller.plan import Announcement, mode_of
from netwatch.controller.verdict import ProbeStats
from netwatch.core.vocabulary import Family


def quality(stats: ProbeStats, names: Iterable[str]) -> dict[str, dict[str, float | None]]:
    """{upstream: {loss_ratio, median_loss_ratio, rtt_ms, median_rtt_ms}} over the window;
    the medians are of the other upstreams (see the module doc)."""
    losses: dict[str, list[float]] = {}
    rtts: dict[str, list[float]] = {}
    for (name, _target), ps in stats.paths.items():
        if ps.sent:
            losses.setdefault(name, []).append(ps.loss)
        if ps.rtt_s is not None:
            rtts.setdefault(name, []).append(ps.rtt_s * 1000)
    loss = {n: statistics.fmean(v) for n, v in losses.items()}
    rtt = {n: statistics.median(v) for n, v in rtts.items()}

    def median_of_others(values: Mapping[str, float], name: str) -> float | None:
        others = [v for n, v in values.items() if n != name]
        return statistics.median(others) if others else None

    return {
        name: {
            "loss_ratio": loss.get(name),
            "median_loss_ratio": median_of_others(loss, name),
            "rtt_ms": rtt.get(name),
            "median_rtt_ms": median_of_others(rtt, name),
        }
        for name in names
    }


def announcement_json(
    params: Params, upstream: str, prefix: str, family: Family, ann: Announcement | None,
) -> dict:
    """An AnnouncementStatus: the AS path as the peer receives it (our ASN once when the
    plan leaves it to ExaBGP), empty when withdrawn."""
    if ann is None:
        as_path, communities = [], []
    else:
        as_path = list(ann.as_path) or [params.asn]
        communities = list(ann.communities)
    return {"prefix": prefix, "family": family.label,
            "mode": mode_of(params, upstream, ann).value, "as_path": as_path,
            "communities": communities}


def reason_of(state: State, u: UpstreamState) -> str:
    """Why an upstream is in its state, in a few words, from its last verdict."""
    a = u.last
    if state.local_fault:
        return "local fault: every upstream looks bad, verdicts frozen"
    if a.level is None:
        return (f"no verdict: {a.targets} usable target(s), fewer than min_targets "
                f"{state.params.min_targets}")
    rtt = "-" if a.rtt_excess_s is None else f"{a.rtt_excess_s * 1000:+.1f}ms"
    return (f"loss {a.loss_excess * 100:+.1f}% (recent {a.recent_loss_excess * 100:+.1f}%), "
            f"rtt {rtt} against the others over {a.targets} targets")


def controller_status(
    *, site, state: State, stats: ProbeStats, leases: Iterable[Lease], wall_now: float,
    mono_now: float, host: str, version: str, default_graceful_s: float,
) -> dict:
    """The `ControllerStatus` of `state` (see the module doc). `site` is the validated site
    file the controller runs (its upstreams' ASNs and our prefixes)."""
    params = state.params
    leases = operator_overrides.live(leases, wall_now)
    drains = operator_overrides.drains(leases, wall_now, default_graceful_s)
    plan = state.plan
    asn_of = {u.name: u.asn for u in site.controller.upstreams}
    measured = quality(stats, state.upstreams)

    def wall(t: float | None) -> float | None:
        return None if t is None else wall_now - (mono_now - t)

    upstreams = []
    for up in params.upstreams:
        u = state.upstreams[up.name]
        recovery = None
        if u.candidate.severity < u.state.severity:
            hold_s = u.recovery.hold_s
            served = 0.0 if u.recovery.since is None else mono_now - u.recovery.since
            recovery = {"towards": u.candidate.value, "hold_s": hold_s,
                        "left_s": max(0.0, hold_s - served)}
        announcements = [
            announcement_json(params, up.name, str(prefix), Family(prefix.version),
                              plan.desired.get((up.name, Family(prefix.version))))
            for prefix in site.prefixes if Family(prefix.version) in up.families
        ]
        stage = drains.get(up.name)
        upstreams.append({
            "name": up.name,
            "asn": asn_of.get(up.name),
            "state": u.state.value,
            "since": wall(u.changed_at),
            "reason": reason_of(state, u),
            **measured[up.name],
            "sessions": {fam.label: state.sessions[(up.name, fam)].value
                         for fam in sorted(up.families)},
            "announcements": announcements,
            "egress": any(up.name in chosen for chosen in plan.egress.values()),
            "recovery": recovery,
            "drain": None if stage is None else stage.to_json(wall_now),
        })
    return {
        "daemon": "controller",
        "site": site.site,
        "host": host,
        "version": version,
        "now": wall_now,
        "local_fault": state.local_fault,
        "safety_holds": [{"family": h.family.label, "kept": list(h.kept)} for h in plan.holds],
        "budget": {
            "max_actions_per_hour": params.max_actions_per_hour,
            "used": params.max_actions_per_hour - state.budget.available(mono_now),
            "exhausted": state.budget_exhausted,
        },
        "upstreams": upstreams,
        "overrides": [lease.to_json() for lease in leases],
    }
