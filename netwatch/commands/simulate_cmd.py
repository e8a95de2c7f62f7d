"""`netwatch simulate --config FILE [--fail A,B] [--degrade C] [--session-down D] [--json]`:
what the controller would announce to whom, and why, if these upstreams failed now.

Runs the controller's pure decision (`netwatch.controller.decision.what_if`) on a
hypothetical picture: every upstream healthy with its sessions up, but those named failed,
degraded or with their sessions down; plus the operators' overrides in force, asked from
the controller (`overrides` on its socket: the site file's `control.controller`, or
`--socket`) when it answers. It prints, per upstream, the announcement of each prefix
(mode, AS path, communities) and why; the safety holds; the egress set. It touches
nothing: no socket is written to but the one read-only question, no route, no ExaBGP.

It answers "what happens if t2 and t3 fail now?" before a maintenance window. The picture
is taken as settled: hysteresis and recovery holds are skipped, as if the states had held
long enough.

Exit codes: 0 (the plan is printed, with or without the controller's overrides), 64 an
unknown upstream or one named twice, 65/66 a bad or missing site file.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from typing import Any

from netwatch import exitcodes
from netwatch.commands import CommandError, format_table, local_time, site_or_fail
from netwatch.control import leases as lease_rules
from netwatch.control.client import DEFAULT_TIMEOUT_S, DaemonUnreachable, request
from netwatch.control.leases import Lease, LeaseKind
from netwatch.control.protocol import Command, ControlError, format_duration
from netwatch.controller import overrides as operator
from netwatch.controller.decision import (
    OperatorOverrides,
    SessionSummary,
    State,
    initial_state,
    step,
    what_if,
)
from netwatch.controller.params import Params, SessionState, TransitState, params_from_site
from netwatch.controller.plan import Plan
from netwatch.controller.status import announcement_json
from netwatch.core.vocabulary import Family


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "simulate", help="what would be announced to whom if these upstreams failed (dry run)",
        description="Run the controller's decision on a hypothetical picture (these upstreams "
                    "failed, degraded, sessions down) plus the overrides in force, and print "
                    "what would be announced to whom and why. Touches nothing.",
    )
    parser.add_argument("--config", required=True, metavar="FILE", help="the site file")
    for flag, dest, what in (("--fail", "fail", "FAILED"), ("--degrade", "degrade", "DEGRADED"),
                             ("--session-down", "session_down", "with their sessions down")):
        parser.add_argument(flag, dest=dest, type=_names, default=(), metavar="A,B",
                            help=f"upstreams {what} in the picture (comma-separated)")
    parser.add_argument("--json", action="store_true", help="the plan as JSON")
    parser.add_argument(
        "--socket", metavar="PATH",
        help="ask this socket for the overrides in force (default: the site file's "
             "control.controller)",
    )
    parser.add_argument("--no-overrides", action="store_true",
                        help="plan without the overrides in force (do not ask the controller)")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, metavar="S",
                        help=f"seconds to wait for the controller (default {DEFAULT_TIMEOUT_S:g})")
    parser.set_defaults(func=cmd_simulate)


def _names(text: str) -> tuple[str, ...]:
    """argparse type: comma-separated upstream names."""
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    try:
        return tuple(lease_rules.check_upstream(n) for n in names)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def cmd_simulate(args: argparse.Namespace) -> int:
    site = site_or_fail(args.config, "controller")
    params = params_from_site(site)
    picture = _picture(args, params)
    leases, source, now = [], "not asked (--no-overrides)", None
    if not args.no_overrides:
        leases, source, now = asked_overrides(args.socket or site.control.controller,
                                              args.timeout)
    known = {u.name for u in params.upstreams}
    ignored = [x for x in leases if x.target not in known]
    if ignored:
        print(f"netwatch: simulate: ignoring override(s) on upstreams the site file does not "
              f"have: {', '.join(f'{x.id} ({x.describe()})' for x in ignored)}", file=sys.stderr)
    leases = [x for x in leases if x.target in known]
    # The controller's clock when it answered: the leases it listed are live then (a lease
    # that expired since would be in the plan with no drain stage at our own time.time()).
    now = time.time() if now is None else now
    result = simulate(params, site.prefixes, site.controller.drain_graceful_s, leases, now,
                      **picture)
    result = {"site": site.site, **result, "overrides_source": source}
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
    else:
        print("\n".join(render(result, now)))
    return exitcodes.OK


def _picture(args: argparse.Namespace, params: Params) -> dict[str, frozenset[str]]:
    known = [u.name for u in params.upstreams]
    picture = {"failed": frozenset(args.fail), "degraded": frozenset(args.degrade),
               "sessions_down": frozenset(args.session_down)}
    for name in sorted(set().union(*picture.values())):
        if name not in known:
            raise CommandError(f"netwatch: simulate: no upstream {name} (known: "
                               f"{', '.join(known)})", exitcodes.USAGE)
    both = picture["failed"] & picture["degraded"]
    if both:
        raise CommandError(f"netwatch: simulate: {', '.join(sorted(both))}: failed or "
                           "degraded, not both", exitcodes.USAGE)
    return picture


def asked_overrides(path: str, timeout_s: float) -> tuple[list[Lease], str, float | None]:
    """The controller's live leases, where they came from, and the controller's wall clock
    when it answered (None without an answer); none (and why) when it does not answer.
    Never raises for the controller: the plan is printed either way."""
    try:
        answer = request(path, Command.OVERRIDES, timeout_s=timeout_s)
        leases = [Lease.from_json(x, f"overrides[{i}]")
                  for i, x in enumerate(answer.get("overrides", []))]
        now = answer.get("now")
        if isinstance(now, bool) or not isinstance(now, int | float) or not math.isfinite(now):
            raise ValueError(f"now: {now!r} is not a time")
    except (ControlError, DaemonUnreachable, ValueError, AttributeError) as exc:
        print(f"netwatch: simulate: planning without the overrides in force: {exc}",
              file=sys.stderr)
        return [], f"none: the controller did not answer ({exc})", None
    return leases, f"the controller on {path}", float(now)


def picture_state(params: Params, overrides) -> State:
    """Every upstream healthy, every session up, `overrides` in force: the base of a picture."""
    state = initial_state(params)
    up = {(u.name, fam): True for u in params.upstreams for fam in u.families}
    state, _ = step(state, SessionSummary(up), 0.0)
    state, _ = step(state, OperatorOverrides(overrides), 0.0)
    return state


def simulate(
    params: Params, prefixes: list, default_graceful_s: float, leases: list[Lease],
    now: float, *,
    failed: frozenset[str] = frozenset(), degraded: frozenset[str] = frozenset(),
    sessions_down: frozenset[str] = frozenset(),
) -> dict:
    """The plan for the picture as a JSON-able dict (what --json prints, without "site"):
    `prefixes` are ours (ipaddress networks), `leases` the overrides in force at wall-clock
    `now`. Raises ValueError for an unknown upstream in the picture."""
    overrides = operator.overrides_of(leases, now, default_graceful_s)
    state = picture_state(params, overrides)
    plan = what_if(state, failed=failed, degraded=degraded, sessions_down=sessions_down)
    drains = operator.drains(leases, now, default_graceful_s)
    upstreams = []
    for up in params.upstreams:
        level = (TransitState.FAILED if up.name in failed
                 else TransitState.DEGRADED if up.name in degraded else TransitState.HEALTHY)
        session = SessionState.DOWN if up.name in sessions_down else SessionState.UP
        fams = sorted(up.families)
        upstreams.append({
            "name": up.name,
            "state": level.value,
            "sessions": {fam.label: session.value for fam in fams},
            "announcements": [
                announcement_json(params, up.name, str(prefix), Family(prefix.version),
                                  plan.desired[(up.name, Family(prefix.version))])
                for prefix in prefixes if Family(prefix.version) in up.families
            ],
            "egress": {fam.label: plan.egress.get(fam, {}).get(up.name) for fam in fams},
            "why": why(params, plan, up.name, level, session, leases, drains, now),
        })
    return {
        "picture": {"failed": sorted(failed), "degraded": sorted(degraded),
                    "sessions_down": sorted(sessions_down)},
        "overrides": [x.to_json() for x in leases],
        "upstreams": upstreams,
        "announcing": {fam.label: plan.announcing(fam) for fam in Family
                       if any(fam in u.families for u in params.upstreams)},
        "safety_holds": [{"family": h.family.label, "kept": list(h.kept)} for h in plan.holds],
        "egress": {fam.label: dict(sorted(w.items())) for fam, w in plan.egress.items()},
    }


def why(params: Params, plan: Plan, name: str, level: TransitState, session: SessionState,
        leases: list[Lease], drains: dict, now: float) -> list[str]:
    """Why `name` is announced as the plan says, a reason per cause, in the order they apply:
    its state's treatment, the operators' overrides, the interlock, its session."""
    reasons = []
    if level is TransitState.HEALTHY:
        reasons.append("healthy (announced as configured)")
    else:
        treatment = params.degraded if level is TransitState.DEGRADED else params.failed
        extra = {"prepend": f" x{treatment.prepend}",
                 "communities": f" {' '.join(treatment.communities)}"}.get(
                     treatment.action.value, "")
        reasons.append(f"{level.value}: policy.{level.value}.action {treatment.action.value}"
                       f"{extra}")
    for lease in leases:
        if lease.target != name:
            continue
        if lease.kind is LeaseKind.PREPEND:
            reasons.append(f"override {lease.id}: prepend x{lease.count} ({lease.reason})")
        elif lease.kind is LeaseKind.DRAIN:
            stage = drains[name]
            when = ("withdrawn" if stage.withdrawn(now)
                    else f"graceful shutdown (65535:0) until {local_time(stage.withdraw_at)}, "
                         "then withdrawn")
            forced = ", forced past the interlock" if lease.forced else ""
            reasons.append(f"override {lease.id}: drain{forced}: {when} ({lease.reason})")
    held = [hold.family.label for hold in plan.holds if name in hold.kept]
    if held:
        reasons.append(f"safety hold ({', '.join(held)}): kept announced all the same, so that "
                       f"min_announcing_upstreams ({params.min_announcing_upstreams}) announce")
    if session is SessionState.DOWN:
        reasons.append("sessions down: nothing reaches this upstream, and it counts for no "
                       "interlock")
    return reasons


# --- the human output ---------------------------------------------------------------------------


def _mode(ann: dict) -> str:
    mode = ann["mode"]
    if mode == "prepend":
        mode += f" x{len(ann['as_path']) - 1}"
    return mode


def render(result: dict[str, Any], now: float) -> list[str]:
    """The plan for people: the picture, a row per upstream, holds, egress, what goes where."""
    pic = result["picture"]
    listed = "; ".join(f"{k.replace('_', ' ')} {', '.join(v) or '-'}" for k, v in pic.items())
    lines = [f"simulate (site {result.get('site', '?')}): {listed}",
             f"  overrides: {len(result['overrides'])} from {result['overrides_source']}",
             "  nothing is changed: the controller's decision on this picture, taken as settled",
             ""]
    rows = []
    for up in result["upstreams"]:
        modes = {a["family"]: _mode(a) for a in up["announcements"]}
        anns = ", ".join(f"{fam.removeprefix('ip')} {mode}" for fam, mode in modes.items())
        egress = ", ".join(f"{fam.removeprefix('ip')} {w}" for fam, w in up["egress"].items()
                           if w is not None) or "-"
        sessions = ", ".join(f"{f.removeprefix('ip')} {s}" for f, s in up["sessions"].items())
        rows.append([up["name"], up["state"], sessions, anns, egress, "; ".join(up["why"])])
    lines += format_table(["UPSTREAM", "STATE", "SESSIONS", "ANNOUNCED", "EGRESS", "WHY"], rows)
    lines.append("")
    details = []
    for up in result["upstreams"]:
        for a in up["announcements"]:
            if a["mode"] == "withdrawn":
                path = "-"
            else:
                path = " ".join(map(str, a["as_path"]))
                if a["communities"]:
                    path += f"  community {' '.join(a['communities'])}"
            details.append([a["prefix"], up["name"], _mode(a), path])
    order = list(dict.fromkeys(row[0] for row in details))
    details.sort(key=lambda row: order.index(row[0]))  # stable: upstreams in site order
    lines += format_table(["PREFIX", "TO", "MODE", "AS PATH, COMMUNITIES"], details)
    lines.append("")
    for fam, names in result["announcing"].items():
        lines.append(f"  {fam} announced through {len(names)}: {', '.join(names) or 'NONE'}")
    for hold in result["safety_holds"]:
        lines.append(f"  safety hold: {hold['family']} kept announced to "
                     f"{', '.join(hold['kept'])} against their verdict or drain")
    for fam, weights in result["egress"].items():
        shown = ", ".join(f"{n} (weight {w})" for n, w in weights.items()) or "none"
        lines.append(f"  egress {fam}: {shown}")
    for lease in result["overrides"]:
        left = format_duration(lease["expires_at"] - now)
        lines.append(f"  override {lease['id']}: {Lease.from_json(lease).describe()}, {left} "
                     f"left, by {lease['who']['user']}: {lease['reason']}")
    return lines
