"""Checks across fields, run once every field of a site file is valid. Pure.

Each returns `(location, message)` pairs; the loader turns them into FILE:LINE problems.
docs/config.md lists every rule.
"""

from __future__ import annotations

from netwatch.config.errors import Loc
from netwatch.config.schema import AgentSection, ControllerSection, Site
from netwatch.core.pacing import MIN_CONFIRM_S


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
        found += _agent_checks(site.agent)
    if site.controller is not None:
        found += _controller_checks(site, site.controller)
    return found


# Routing tables the kernel reserves: 0 (unspec), 253 (default), 254 (main), 255 (local). A
# probe table there would put the probe route into a real table (main: the default route).
RESERVED_TABLES = frozenset({0, 253, 254, 255})


def _tables(base: int, count: int, where: Loc, what: str) -> list[tuple[Loc, str]]:
    clash = sorted(RESERVED_TABLES & set(range(base, base + count)))
    if clash:
        return [(where, f"{base}..{base + count - 1} ({what}) includes the kernel's reserved "
                        f"table {clash[0]} (0, 253-255): pick another base")]
    return []


def _agent_checks(agent: AgentSection) -> list[tuple[Loc, str]]:
    """Settings that would leave the agent unable to protect something it is told to."""
    found: list[tuple[Loc, str]] = []
    up = agent.uplinks
    base = ("agent",)
    if (up.primary.gateway6 is None) != (up.secondary.gateway6 is None):
        missing = "secondary" if up.secondary.gateway6 is None else "primary"
        found.append(((*base, "uplinks", missing, "gateway6"),
                      "required when the other uplink has one: the IPv6 default route is "
                      "managed only when both uplinks have an IPv6 gateway"))
    elif up.primary.gateway6 is None:
        for i, target in enumerate(agent.probe.beyond):
            if target.version == 6:
                found.append(((*base, "probe", "beyond", i),
                              f"'{target}' is IPv6 but the uplinks have no gateway6: it would "
                              "be probed through the main table on both, so both look alike"))
    probe = agent.probe
    if probe.timeout_ms is not None and probe.timeout_ms > probe.interval_ms:
        found.append(((*base, "probe", "timeout_ms"),
                      f"{probe.timeout_ms} ms is longer than interval_ms ({probe.interval_ms}): "
                      "one probe in flight per path at a time"))
    found += _confirm_checks(probe, (*base, "probe"))
    found += _tables(agent.route_table_base, 2, (*base, "route_table_base"), "one per uplink")
    return found


def _confirm_checks(probe, base: Loc) -> list[tuple[Loc, str]]:
    """`confirm_interval_ms`: 0 (off), or from MIN_CONFIRM_S up to the probe timeout."""
    confirm = probe.confirm_interval_ms
    if not confirm:
        return []
    floor_ms = round(MIN_CONFIRM_S * 1000)
    timeout_ms = probe.timeout_ms or probe.interval_ms
    if confirm < floor_ms:
        return [((*base, "confirm_interval_ms"),
                 f"{confirm} ms is under {floor_ms} ms: a round trip on a busy link takes "
                 "that long, so every confirmation would be lost (0 turns confirmation off)")]
    if confirm > timeout_ms:
        return [((*base, "confirm_interval_ms"),
                 f"{confirm} ms is longer than the probe timeout ({timeout_ms} ms): "
                 "confirmations would be slower than the probes they confirm")]
    return []


def _beyond_checks(site: Site) -> list[tuple[Loc, str]]:
    """Beyond targets are inside our network: in `prefixes` or `agent.probe.internal_prefixes`,
    and never one of the controller's probe targets (those are on the internet, reached
    through whichever transit the border picks: a transit failure would fail servers over)."""
    agent = site.agent
    if agent is None:
        return []
    found: list[tuple[Loc, str]] = []
    for i, net in enumerate(agent.probe.internal_prefixes):
        widest = 8 if net.version == 4 else 16
        if net.prefixlen < widest:  # 0.0.0.0/0 would let every internet target in
            found.append((("agent", "probe", "internal_prefixes", i),
                          f"'{net}' is wider than /{widest}: not a range of ours"))
    if found:
        return found
    inside = [*site.prefixes, *agent.probe.internal_prefixes]
    external = set()
    if site.controller is not None:
        external = {t.address for t in site.controller.probe.targets}
    for i, target in enumerate(agent.probe.beyond):
        where = ("agent", "probe", "beyond", i)
        if target in external:
            found.append((where, f"'{target}' is one of the controller's probe targets (on the "
                                 "internet): beyond targets are inside our network, past the "
                                 "gateways (the border routers' addresses)"))
        elif not any(target.version == net.version and target in net for net in inside):
            found.append((where, f"'{target}' is outside our prefixes and "
                                 "agent.probe.internal_prefixes: an internet target makes a "
                                 "transit failure look like an uplink failure"))
    return found


def _overlap_checks(site: Site) -> list[tuple[Loc, str]]:
    """An agent and a controller on one host (one site file): their probe tables and fwmarks
    must not overlap, or one's policy routes would send the other's probes."""
    if site.agent is None or site.controller is None:
        return []
    agent, ctl = site.agent, site.controller
    n = 2 * len(ctl.upstreams)
    found = []
    for key, mine, theirs in (
        ("route_table_base", agent.route_table_base, ctl.route_table_base),
        ("fwmark_base", agent.fwmark_base, ctl.fwmark_base),
    ):
        if set(range(mine, mine + 2)) & set(range(theirs, theirs + n)):
            found.append((("agent", key), f"{mine}..{mine + 1} overlaps the controller's "
                                          f"{theirs}..{theirs + n - 1}"))
    return found


def probe_checks(site: Site) -> list[tuple[Loc, str]]:
    """Checks that need the controller's targets (from `targets_file` too): beyond targets
    are ours, every session of every upstream can be judged, and a lost probe is counted
    inside the window."""
    found = _beyond_checks(site) + _overlap_checks(site)
    ctl = site.controller
    if ctl is None:
        return found
    probe = ctl.probe
    per_family = {v: sum(1 for t in probe.targets if t.address.version == v) for v in (4, 6)}
    announced = {p.version for p in site.prefixes}
    for i, upstream in enumerate(ctl.upstreams):
        families = {upstream.neighbor.version} | ({6} if upstream.neighbor6 else set())
        for version in sorted(families & announced):
            if per_family[version] < probe.min_targets:
                found.append((("controller", "upstreams", i, "name"),
                              f"{upstream.name} has an IPv{version} session but there are "
                              f"{per_family[version]} IPv{version} targets, fewer than "
                              f"min_targets ({probe.min_targets}): it could never be judged"))
    found += _confirm_checks(probe, ("controller", "probe"))
    timeout_ms = probe.timeout_ms or probe.interval_ms
    if timeout_ms >= probe.window_s * 1000:
        found.append((("controller", "probe", "timeout_ms" if probe.timeout_ms else "window_s"),
                      f"a probe times out after {timeout_ms} ms, not within window_s "
                      f"({probe.window_s} s): a lost probe would never be counted"))
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
    if ctl.bgp.router_id is None and not any(
            u.local_address is not None and u.local_address.version == 4 for u in ctl.upstreams):
        found.append((("controller", "bgp", "router_id"),
                      "required: no upstream has an IPv4 local_address to default to"))
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
    # Per family: with 4 upstreams of which 2 have IPv6 and a minimum of 2, a failed IPv6
    # upstream could never be withdrawn (a permanent safety hold).
    for version in sorted({p.version for p in site.prefixes}):
        carriers = sum(1 for u in ctl.upstreams
                       if u.neighbor.version == version or (version == 6 and u.neighbor6))
        if carriers and policy.min_announcing_upstreams >= carriers:
            found.append((("controller", "policy", "min_announcing_upstreams"),
                          f"{policy.min_announcing_upstreams} must be below the number of "
                          f"upstreams with an IPv{version} session ({carriers}), or a failed "
                          "one could never be withdrawn"))
    found += _tables(ctl.route_table_base, 2 * len(ctl.upstreams),
                     ("controller", "route_table_base"), "two per upstream")
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


