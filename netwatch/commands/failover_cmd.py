"""`netwatch failover --to primary|secondary | --auto --reason TEXT [--for DURATION]`.

Forces the server's default routes (IPv4 and IPv6) onto one uplink through the agent's control
socket, as an override that expires by itself (default 1 h, at most 7 days); `--auto` ends it
at once and the agent decides again (back to a healthy primary without a new hold-down).
Exit codes: see netwatch.exitcodes (0 done, 3 refused, 69 agent unreachable, 77 permission).
"""

from __future__ import annotations

import argparse

from netwatch import exitcodes
from netwatch.commands import (
    add_control_options,
    call,
    control_daemons,
    lease_duration_arg,
    print_change,
    reason_arg,
)
from netwatch.control.protocol import FAILOVER_AUTO, Command


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "failover", help="force the default routes onto one uplink (an expiring override)",
        description="Force this server's default routes onto one uplink, with a reason and an "
                    "expiry; --auto ends a forced failover.",
    )
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--to", choices=["primary", "secondary"], help="the uplink to use")
    target.add_argument(
        "--auto", action="store_true", help="end the forced failover now: the agent decides"
    )
    parser.add_argument("--reason", required=True, type=reason_arg, help="why (one line)")
    parser.add_argument(
        "--for", dest="for_s", type=lease_duration_arg, metavar="DURATION",
        help="how long it holds: 90, 30s, 5m, 1h, 2d (default 1h, at most 7d)",
    )
    parser.add_argument("--json", action="store_true", help="print the daemon's answer as JSON")
    add_control_options(parser)
    parser.set_defaults(func=cmd_failover, parser=parser)


def cmd_failover(args: argparse.Namespace) -> int:
    if args.auto and args.for_s is not None:
        args.parser.error("--for goes with --to (--auto ends the forced failover now)")
    daemon = control_daemons(args, ("agent",))[0]
    request = {"to": FAILOVER_AUTO if args.auto else args.to, "reason": args.reason}
    if args.for_s is not None:
        request["for_s"] = args.for_s
    print_change(daemon, call(daemon, Command.FAILOVER, request, args.timeout), args.json)
    return exitcodes.OK
