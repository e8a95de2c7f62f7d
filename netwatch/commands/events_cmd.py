"""`netwatch events [--follow] [--json] [--since DURATION] [--limit N]`: the audit trail.

Reads each daemon's audit log through its control socket (both daemons merged by time):
every operator request, accepted or refused, and every automatic action (transitions,
failovers, withdrawals, safety holds, lease expiries). `--follow` goes on printing new events
as they happen until Ctrl-C, or until every daemon has closed its stream (exit 69).
`--json` prints one JSON object per line, with the daemon it came from.
"""

from __future__ import annotations

import argparse
import json
import queue
import sys
import threading
import time
from typing import Any

from netwatch import exitcodes
from netwatch.commands import (
    Daemon,
    add_control_options,
    ask_each,
    control_daemons,
    duration_arg,
    error_text,
    exit_code_of,
    local_time,
    worst_exit,
)
from netwatch.control.client import DaemonUnreachable, follow_events
from netwatch.control.protocol import MAX_EVENTS, Command, ControlError
from netwatch.runtime.logs import kv

DAEMONS = ("agent", "controller")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "events", help="the audit log: operator requests and automatic actions",
    )
    parser.add_argument("--follow", "-f", action="store_true", help="go on printing new events")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.add_argument(
        "--since", type=duration_arg, metavar="DURATION",
        help="only the events of the last DURATION (90, 30s, 5m, 1h, 2d)",
    )
    parser.add_argument(
        "--limit", type=_limit, default=100, metavar="N",
        help=f"at most N past events per daemon (default 100, at most {MAX_EVENTS})",
    )
    add_control_options(parser)
    parser.set_defaults(func=cmd_events)


def _limit(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_EVENTS:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number from 1 to {MAX_EVENTS}")
    return value


def cmd_events(args: argparse.Namespace) -> int:
    daemons = control_daemons(args, DAEMONS)
    since = None if args.since is None else time.time() - args.since
    if args.follow:
        return _follow(daemons, since, args)
    request = {"since": since, "limit": args.limit}
    answers = ask_each(daemons, Command.EVENTS, request, args.timeout)
    merged = []
    for daemon, result, error in answers:
        if error is not None:
            print(error_text(daemon, error), file=sys.stderr)
            continue
        for event in (result or {}).get("events", []):
            if isinstance(event, dict):
                merged.append((daemon, event))
        if (result or {}).get("skipped"):
            print(f"netwatch: {daemon.label}: {result['skipped']} damaged audit line(s) skipped",
                  file=sys.stderr)
    merged.sort(key=lambda item: _ts(item[1]))
    for daemon, event in merged:
        print(event_line(daemon, event, args.json))
    return worst_exit(answers)


def _follow(daemons: list[Daemon], since: float | None, args: argparse.Namespace) -> int:
    """Print every daemon's stream as events come; one thread per daemon feeds a queue."""
    inbox: queue.Queue = queue.Queue()

    def pump(daemon: Daemon) -> None:
        try:
            for event in follow_events(daemon.socket, since=since, limit=args.limit,
                                       timeout_s=args.timeout):
                inbox.put((daemon, event, None))
            inbox.put((daemon, None, DaemonUnreachable(f"{daemon.socket}: stream closed")))
        except (ControlError, DaemonUnreachable) as exc:
            inbox.put((daemon, None, exc))

    for daemon in daemons:
        threading.Thread(target=pump, args=(daemon,), daemon=True).start()
    live, first_error = len(daemons), None
    while live:
        daemon, event, error = inbox.get()
        if error is not None:
            live -= 1
            first_error = first_error or error
            print(error_text(daemon, error), file=sys.stderr)
            continue
        print(event_line(daemon, event, args.json), flush=True)
    return exit_code_of(first_error) if first_error else exitcodes.UNAVAILABLE


def event_line(daemon: Daemon, event: dict, as_json: bool) -> str:
    """One event: JSON with its daemon, or `TIME DAEMON WHAT`."""
    if as_json:
        return json.dumps({"daemon": daemon.label, **event}, sort_keys=True)
    when = local_time(_ts(event)) if _ts(event) else "?"
    return f"{when}  {daemon.label:<10}  {_what(event)}"


def _what(event: dict) -> str:
    fields = {k: v for k, v in event.items() if k not in ("ts", "kind")}
    if event.get("kind") != "request":
        return kv(str(event.get("kind", "?")), **fields).removeprefix("event=")
    args = fields.get("args") if isinstance(fields.get("args"), dict) else {}
    shown = {k: v for k, v in args.items() if k != "reason" and v not in (None, False)}
    outcome = _outcome(fields)
    who = f"{fields.get('user', '?')}({fields.get('uid', '?')})"
    request = kv(str(fields.get("cmd", "?")), **shown).removeprefix("event=")
    return f"{who} {request} reason={json.dumps(fields.get('reason'))} -> {outcome}"


def _outcome(fields: dict[str, Any]) -> str:
    if fields.get("ok"):
        result = fields.get("result")
        message = result.get("message") if isinstance(result, dict) else None
        return f"ok: {message}" if message else "ok"
    error = fields.get("error") if isinstance(fields.get("error"), dict) else {}
    return f"{error.get('code', 'error')}: {error.get('message', '')}"


def _ts(event: dict) -> float:
    ts = event.get("ts")
    return float(ts) if isinstance(ts, int | float) and not isinstance(ts, bool) else 0.0
