"""`netwatch status [--json]`: what both daemons see and do, at a glance.

Asks the agent and the controller (those the site file has, or the one on --socket) for
`status` (the shapes are in netwatch.control.protocol) and prints a human table per daemon:
uplinks (state, carrier, RTT, loss, active, since); upstreams (state, loss and RTT against
the median of the others, BGP sessions, egress, what comes next), the announcement of each
prefix to each upstream, safety holds and the local-fault flag; then every override with its
time left. A daemon that does not answer gets one line saying why; the exit code is 0 when
any daemon answered (see netwatch.exitcodes). `--json` prints the answers per daemon.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from netwatch.commands import (
    add_control_options,
    ask_each,
    control_daemons,
    error_json,
    error_text,
    format_table,
    worst_exit,
)
from netwatch.commands.overrides_cmd import override_lines, override_row
from netwatch.control.protocol import Command, format_duration

DAEMONS = ("agent", "controller")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "status", help="uplinks, upstreams, announcements and overrides, from both daemons",
    )
    parser.add_argument("--json", action="store_true", help="the daemons' answers as JSON")
    add_control_options(parser)
    parser.set_defaults(func=cmd_status)


def cmd_status(args: argparse.Namespace) -> int:
    answers = ask_each(control_daemons(args, DAEMONS), Command.STATUS, None, args.timeout)
    if args.json:
        shown = {d.label: result if error is None else error_json(error)
                 for d, result, error in answers}
        print(json.dumps(shown, indent=2, sort_keys=True))
    elif any(error is None for _, _, error in answers):
        print("\n".join(render(answers)))
    else:  # nothing to show: only errors, where a script looks for them
        for daemon, _, error in answers:
            print(error_text(daemon, error), file=sys.stderr)
    return worst_exit(answers)


def render(answers: list[tuple[Any, Any, Exception | None]]) -> list[str]:
    """The human status: a block per daemon that answered, the overrides of all, and a line
    per daemon that did not."""
    lines: list[str] = []
    overrides: list[list[str]] = []
    for daemon, status, error in answers:
        if error is not None:
            continue
        if not isinstance(status, dict):
            lines += [f"{daemon.label}: unexpected answer {status!r}", ""]
            continue
        now = _num(status.get("now")) or time.time()
        kind = status.get("daemon", daemon.name)
        if kind == "agent":
            lines += agent_lines(status, now)
        elif kind == "controller":
            lines += controller_lines(status, now)
        else:
            lines.append(f"{daemon.label}: a {kind or 'daemon'} this netwatch does not know")
        lines.append("")
        for lease in status.get("overrides") or []:
            overrides.append(override_row(kind or daemon.label, lease, now))
    if overrides:
        lines += ["overrides", *override_lines(overrides, "  "), ""]
    elif any(error is None for _, _, error in answers):
        lines += ["overrides: none", ""]
    for daemon, _, error in answers:
        if error is not None:
            lines.append(error_text(daemon, error).removeprefix("netwatch: "))
    while lines and not lines[-1]:
        lines.pop()
    return lines


# --- the agent --------------------------------------------------------------------------------


def agent_lines(status: dict, now: float) -> list[str]:
    failback = status.get("failback") if isinstance(status.get("failback"), dict) else {}
    head = _heading("agent", status)
    head.append(f"mode {status.get('mode', '?')}")
    if failback:
        text = f"failback {failback.get('mode', '?')}"
        if _num(failback.get("hold_down_s")) is not None:
            text += f", hold-down {format_duration(failback['hold_down_s'])}"
        stable = _num(failback.get("primary_stable_for_s"))
        if stable is not None:
            text += f" (primary stable {format_duration(stable)})"
        head.append(text)
    if status.get("both_down"):
        head.append("BOTH UPLINKS DOWN: last routes kept")
    rows = []
    for up in _dicts(status.get("uplinks")):
        rows.append([
            str(up.get("role", "?")),
            str(up.get("interface", "?")),
            str(up.get("gateway") or "-"),
            str(up.get("state", "?")),
            str(up.get("carrier") or "-"),
            _ms(up.get("rtt_ms")),
            _percent(up.get("loss_ratio")),
            "*" if up.get("active") else "",
            _ago(up.get("since"), now),
            str(up.get("reason") or ""),
        ])
    headers = ["UPLINK", "IFACE", "GATEWAY", "STATE", "CARRIER", "RTT", "LOSS", "ACTIVE",
               "SINCE", "WHY"]
    return ["  ".join(head), *(format_table(headers, rows) if rows else ["  no uplinks"])]


# --- the controller ---------------------------------------------------------------------------


def controller_lines(status: dict, now: float) -> list[str]:
    head = _heading("controller", status)
    fault = status.get("local_fault")
    head.append("LOCAL FAULT: every upstream looks bad, no BGP action" if fault
                else "local fault: no")
    budget = status.get("budget") if isinstance(status.get("budget"), dict) else {}
    if budget:
        text = f"actions {budget.get('used', '?')}/{budget.get('max_actions_per_hour', '?')} per h"
        head.append(text + (" (EXHAUSTED: holding)" if budget.get("exhausted") else ""))
    upstreams = _dicts(status.get("upstreams"))
    rows = []
    for up in upstreams:
        rows.append([
            str(up.get("name", "?")),
            str(up.get("asn", "?")),
            str(up.get("state", "?")),
            f"{_percent(up.get('loss_ratio'))} ({_percent(up.get('median_loss_ratio'))})",
            f"{_ms(up.get('rtt_ms'))} ({_ms(up.get('median_rtt_ms'))})",
            _sessions(up.get("sessions")),
            {True: "yes", False: "no"}.get(up.get("egress"), "?"),
            _ago(up.get("since"), now),
            _next(up, now),
        ])
    headers = ["UPSTREAM", "ASN", "STATE", "LOSS (MEDIAN)", "RTT (MEDIAN)", "SESSIONS",
               "EGRESS", "SINCE", "NEXT"]
    lines = ["  ".join(head), *(format_table(headers, rows) if rows else ["  no upstreams"])]
    lines += _announcement_lines(upstreams)
    for hold in _dicts(status.get("safety_holds")):
        kept = ", ".join(map(str, hold.get("kept") or [])) or "?"
        lines.append(f"  safety hold: {hold.get('family', '?')} kept announced to {kept} "
                     "against its verdict (min_announcing_upstreams)")
    return lines


def _announcement_lines(upstreams: list[dict]) -> list[str]:
    """A matrix: a row per prefix, a column per upstream, the mode in each cell."""
    names = [str(up.get("name", "?")) for up in upstreams]
    cells: dict[str, dict[str, str]] = {}
    for name, up in zip(names, upstreams, strict=True):
        for ann in _dicts(up.get("announcements")):
            mode = str(ann.get("mode", "?"))
            if mode == "prepend" and ann.get("as_path"):
                mode += f" x{len(ann['as_path']) - 1}"
            cells.setdefault(str(ann.get("prefix", "?")), {})[name] = mode
    if not cells:
        return []
    rows = [[prefix, *(by.get(n, "-") for n in names)] for prefix, by in cells.items()]
    return ["", *format_table(["ANNOUNCED TO", *names], rows)]


def _next(up: dict, now: float) -> str:
    """What happens next to an upstream: its drain's withdrawal, its recovery."""
    drain = up.get("drain") if isinstance(up.get("drain"), dict) else None
    if drain:
        at = _num(drain.get("withdraw_at"))
        if drain.get("stage") == "graceful" and at is not None:
            return f"drain: withdraw in {format_duration(at - now)}"
        return f"drain: {drain.get('stage', '?')}"
    rec = up.get("recovery") if isinstance(up.get("recovery"), dict) else None
    if rec:
        left = _num(rec.get("left_s"))
        when = f" in {format_duration(left)}" if left is not None else ""
        return f"{rec.get('towards', '?')}{when}"
    return "-"


# --- cells ------------------------------------------------------------------------------------


def _heading(kind: str, status: dict) -> list[str]:
    where = " ".join(
        x for x in (f"on {status['host']}" if status.get("host") else "",
                    f"(site {status['site']})" if status.get("site") else "") if x
    )
    return [f"{kind} {where}".rstrip() + ":"]


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _dicts(value: Any) -> list[dict]:
    return [x for x in value if isinstance(x, dict)] if isinstance(value, list) else []


def _ms(value: Any) -> str:
    ms = _num(value)
    if ms is None:
        return "-"
    return f"{ms:.2f}ms" if ms < 10 else f"{ms:.0f}ms"


def _percent(value: Any) -> str:
    ratio = _num(value)
    if ratio is None:
        return "-"
    return f"{ratio * 100:.1f}%" if ratio < 0.1 else f"{ratio * 100:.0f}%"


def _ago(value: Any, now: float) -> str:
    ts = _num(value)
    return "-" if ts is None else f"{format_duration(now - ts)} ago"


def _sessions(value: Any) -> str:
    if not isinstance(value, dict) or not value:
        return "-"
    return ", ".join(f"{family.removeprefix('ip')} {state}" for family, state in value.items())
