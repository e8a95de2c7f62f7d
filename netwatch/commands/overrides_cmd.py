"""`netwatch overrides [--json]` and `netwatch override extend|delete ID ...`.

`overrides` lists the live overrides of every daemon that answers (id, what it forces, who,
time left, reason). `override extend ID --for DURATION --reason TEXT` renews one from now;
`override delete ID --reason TEXT` ends it now. An id names its daemon by its first letter
(`a3`: the agent's, `c7`: the controller's), so extend and delete go to that daemon alone.
Exit codes: see netwatch.exitcodes (1 no such override, 69 unreachable, 77 permission).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from netwatch import exitcodes
from netwatch.commands import (
    CommandError,
    Daemon,
    add_control_options,
    ask_each,
    call,
    control_daemons,
    error_json,
    error_text,
    format_table,
    lease_duration_arg,
    local_time,
    print_change,
    reason_arg,
    worst_exit,
)
from netwatch.control import leases
from netwatch.control.protocol import LEASE_ID_PREFIX, Command, format_duration

DAEMONS = ("agent", "controller")


def register(subparsers: argparse._SubParsersAction) -> None:
    listing = subparsers.add_parser("overrides", help="list the live overrides of both daemons")
    listing.add_argument("--json", action="store_true", help="JSON, per daemon")
    add_control_options(listing)
    listing.set_defaults(func=cmd_overrides)

    parser = subparsers.add_parser("override", help="extend or delete one override")
    sub = parser.add_subparsers(dest="override_command", metavar="ACTION", required=True)
    extend = sub.add_parser("extend", help="renew an override: it now lasts DURATION from now")
    extend.add_argument("id", type=_lease_id, metavar="ID", help="as `netwatch overrides` shows")
    extend.add_argument(
        "--for", dest="for_s", required=True, type=lease_duration_arg, metavar="DURATION",
        help="from now: 90, 30s, 5m, 1h, 2d (at most 7d)",
    )
    delete = sub.add_parser("delete", help="end an override now")
    delete.add_argument("id", type=_lease_id, metavar="ID", help="as `netwatch overrides` shows")
    for p, func in ((extend, cmd_extend), (delete, cmd_delete)):
        p.add_argument("--reason", required=True, type=reason_arg, help="why (one line)")
        p.add_argument("--json", action="store_true", help="print the daemon's answer as JSON")
        add_control_options(p)
        p.set_defaults(func=func)


def _lease_id(text: str) -> str:
    try:
        return leases.check_lease_id(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _owner(args: argparse.Namespace) -> Daemon:
    """The daemon that handed out `args.id` (by its prefix), or the --socket one."""
    if args.socket:
        return control_daemons(args, DAEMONS)[0]
    owner = next((d for d, p in LEASE_ID_PREFIX.items() if args.id.startswith(p)), None)
    if owner is None:
        known = ", ".join(f"{p}... ({d})" for d, p in LEASE_ID_PREFIX.items())
        raise CommandError(f"{args.id}: no daemon hands out such ids ({known})", exitcodes.USAGE)
    daemons = control_daemons(args, (owner,))
    return daemons[0]


def cmd_extend(args: argparse.Namespace) -> int:
    daemon = _owner(args)
    request = {"id": args.id, "for_s": args.for_s, "reason": args.reason}
    print_change(daemon, call(daemon, Command.OVERRIDE_EXTEND, request, args.timeout), args.json)
    return exitcodes.OK


def cmd_delete(args: argparse.Namespace) -> int:
    daemon = _owner(args)
    request = {"id": args.id, "reason": args.reason}
    print_change(daemon, call(daemon, Command.OVERRIDE_DELETE, request, args.timeout), args.json)
    return exitcodes.OK


def cmd_overrides(args: argparse.Namespace) -> int:
    answers = ask_each(control_daemons(args, DAEMONS), Command.OVERRIDES, None, args.timeout)
    if args.json:
        shown = {d.label: result if error is None else error_json(error)
                 for d, result, error in answers}
        print(json.dumps(shown, indent=2, sort_keys=True))
    else:
        rows = []
        for daemon, result, error in answers:
            if error is not None:
                print(error_text(daemon, error), file=sys.stderr)
                continue
            now = result.get("now", time.time()) if isinstance(result, dict) else time.time()
            for lease in (result or {}).get("overrides", []):
                rows.append(override_row(daemon.label, lease, now))
        if rows:
            print("\n".join(override_lines(rows)))
        elif any(error is None for _, _, error in answers):
            print("no overrides: every daemon decides by itself")
    return worst_exit(answers)


# --- shared with `netwatch status` ------------------------------------------------------------

OVERRIDE_HEADERS = ["ID", "DAEMON", "FORCES", "WHO", "LEFT", "EXPIRES", "REASON"]


def override_row(daemon: str, lease: Any, now: float) -> list[str]:
    """One table row for a lease as a daemon sent it (tolerant of fields it does not know)."""
    if not isinstance(lease, dict):
        return ["?", daemon, str(lease), "", "", "", ""]
    try:
        forces = leases.Lease.from_json(lease).describe()
    except ValueError:
        forces = f"{lease.get('kind', '?')} {lease.get('target', '?')}"
    who = lease.get("who") if isinstance(lease.get("who"), dict) else {}
    expires = lease.get("expires_at")
    timed = isinstance(expires, int | float)
    return [
        str(lease.get("id", "?")),
        daemon,
        forces,
        f"{who.get('user', '?')} ({who.get('uid', '?')})",
        format_duration(expires - now) if timed else "?",
        local_time(expires) if timed else "?",
        str(lease.get("reason", "")),
    ]


def override_lines(rows: list[list[str]], indent: str = "") -> list[str]:
    return format_table(OVERRIDE_HEADERS, rows, indent)
