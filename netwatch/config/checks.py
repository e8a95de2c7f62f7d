"""Checks across fields, run once every field of a site file is valid. Pure.

Each returns `(location, message)` pairs; the loader turns them into FILE:LINE problems.
docs/config.md lists every rule.
"""

from __future__ import annotations

from netwatch.config.errors import Loc
from netwatch.config.schema import ControllerSection, Site


def cross_checks(site: Site) -> list[tuple[Loc, str]]:
    found: list[tuple[Loc, str]] = []
    seen_prefix: dict = {}
    for i, prefix in enumerate(site.prefixes):
        if prefix in seen_prefix:
            found.append((("prefixes", i), f"'{prefix}' is listed twice"))
        seen_prefix[prefix] = i
    # One site file serves both daemons on one host: they must not share a port or a socket.
    if site.metrics.agent == site.metrics.controller:
        found.append((("metrics", "controller"), "must differ from metrics.agent (one per daemon)"))
    if site.control.agent == site.control.controller:
        found.append((("control", "controller"), "must differ from control.agent (one per daemon)"))
    if site.agent is not None:
        up = site.agent.uplinks
        if up.primary.interface == up.secondary.interface:
            found.append(
                (("agent", "uplinks", "secondary", "interface"), "must differ from the primary's")
            )
    if site.controller is not None:
        found += _controller_checks(site, site.controller)
    return found


def _controller_checks(site: Site, ctl: ControllerSection) -> list[tuple[Loc, str]]:
    found: list[tuple[Loc, str]] = []
    ups = ("controller", "upstreams")
    seen: dict[str, dict] = {"name": {}, "asn": {}, "neighbor": {}}
    for i, upstream in enumerate(ctl.upstreams):
        for key in ("name", "asn", "neighbor"):
            value = getattr(upstream, key)
            if value in seen[key]:
                first = seen[key][value]
                found.append(((*ups, i, key), f"'{value}' is already used by upstreams[{first}]"))
            seen[key].setdefault(value, i)
        if upstream.neighbor6 is not None:
            if upstream.neighbor6 in seen["neighbor"]:
                first = seen["neighbor"][upstream.neighbor6]
                found.append(
                    (
                        (*ups, i, "neighbor6"),
                        f"'{upstream.neighbor6}' is already used by upstreams[{first}]",
                    )
                )
            seen["neighbor"].setdefault(upstream.neighbor6, i)
        version = upstream.neighbor.version
        for key in ("local_address", "nexthop"):
            value = getattr(upstream, key)
            if value is not None and value.version != version:
                found.append(
                    (
                        (*ups, i, key),
                        f"'{value}' is IPv{value.version} but neighbor is IPv{version}",
                    )
                )
        if (upstream.neighbor6 is None) != (upstream.local_address6 is None):
            missing = "local_address6" if upstream.local_address6 is None else "neighbor6"
            found.append(
                ((*ups, i, missing), "required when the other of neighbor6/local_address6 is set")
            )
        if version == 6 and upstream.neighbor6 is not None:
            found.append(((*ups, i, "neighbor6"), "the neighbor is already IPv6"))
    policy = ctl.policy
    deg, fail = policy.degraded, policy.failed
    if deg.loss_ratio >= fail.loss_ratio:
        found.append(
            (
                ("controller", "policy", "degraded", "loss_ratio"),
                f"{deg.loss_ratio} must be below failed.loss_ratio ({fail.loss_ratio})",
            )
        )
    if (
        deg.latency_ms is not None
        and fail.latency_ms is not None
        and deg.latency_ms >= fail.latency_ms
    ):
        found.append(
            (
                ("controller", "policy", "degraded", "latency_ms"),
                f"{deg.latency_ms} must be below failed.latency_ms ({fail.latency_ms})",
            )
        )
    for name, verdict in (("degraded", deg), ("failed", fail)):
        if verdict.action == "prepend" and verdict.prepend is None:
            found.append(
                (("controller", "policy", name, "prepend"), "required when action is prepend")
            )
        if verdict.action == "communities" and not verdict.communities:
            found.append(
                (
                    ("controller", "policy", name, "communities"),
                    "required when action is communities",
                )
            )
    if policy.min_announcing_upstreams >= len(ctl.upstreams):
        found.append(
            (
                ("controller", "policy", "min_announcing_upstreams"),
                f"{policy.min_announcing_upstreams} must be below the number of upstreams "
                f"({len(ctl.upstreams)})",
            )
        )
    probe = ctl.probe
    if bool(probe.targets) == (probe.targets_file is not None):
        found.append(
            (("controller", "probe", "targets"), "give exactly one of targets and targets_file")
        )
    if probe.method == "tcp":
        for i, target in enumerate(probe.targets):
            if target.port is None:
                found.append(
                    (("controller", "probe", "targets", i, "port"), "required when method is tcp")
                )
    if probe.window_s * 1000 < probe.interval_ms:
        found.append(
            (
                ("controller", "probe", "window_s"),
                f"{probe.window_s} s is shorter than one interval",
            )
        )
    v6_sessions = any(u.neighbor6 is not None or u.neighbor.version == 6 for u in ctl.upstreams)
    v4_sessions = any(u.neighbor.version == 4 for u in ctl.upstreams)
    for i, prefix in enumerate(site.prefixes):
        if (prefix.version == 6 and not v6_sessions) or (prefix.version == 4 and not v4_sessions):
            found.append(
                (
                    ("prefixes", i),
                    f"no upstream has an IPv{prefix.version} session to announce it on",
                )
            )
    return found


