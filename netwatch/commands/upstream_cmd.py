"""`netwatch upstream drain|restore|prepend NAME ...`: force a transit provider's treatment.

Through the controller's control socket, as overrides that expire by themselves:

- `drain NAME --reason TEXT [--for DURATION] [--graceful-s N] [--force]`: announce to NAME
  with GRACEFUL_SHUTDOWN (65535:0) for N seconds (default from the site file), then withdraw.
  Refused (exit 3) when a prefix family would be announced to fewer than
  min_announcing_upstreams upstreams, unless --force;
- `restore NAME --reason TEXT`: end NAME's drain and prepend now and announce normally at once;
- `prepend NAME COUNT --reason TEXT [--for DURATION]`: prepend our ASN COUNT (1-10) times.

Exit codes: see netwatch.exitcodes (0 done, 1 no such upstream, 3 refused, 69 controller
unreachable, 77 permission).
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
    upstream_arg,
)
from netwatch.control import leases
from netwatch.control.protocol import Command


def _count(text: str) -> int:
    try:
        return leases.check_count(int(text))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a count from 1 to {leases.MAX_PREPEND}"
        ) from None


def _graceful_s(text: str) -> float:
    try:
        return leases.check_graceful_s(float(text))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a number of seconds from 0 to {leases.MAX_GRACEFUL_S:g}"
        ) from None


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "upstream", help="drain, restore or prepend a transit provider (expiring overrides)",
    )
    sub = parser.add_subparsers(dest="upstream_command", metavar="ACTION", required=True)

    def action(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("name", type=upstream_arg, metavar="NAME", help="the upstream (site file)")
        return p

    def common(p: argparse.ArgumentParser, func, lasts: bool = True) -> None:
        p.add_argument("--reason", required=True, type=reason_arg, help="why (one line)")
        if lasts:
            p.add_argument(
                "--for", dest="for_s", type=lease_duration_arg, metavar="DURATION",
                help="how long it holds: 90, 30s, 5m, 1h, 2d (default 1h, at most 7d)",
            )
        p.add_argument("--json", action="store_true", help="print the daemon's answer as JSON")
        add_control_options(p)
        p.set_defaults(func=func)

    drain = action("drain", "graceful shutdown towards NAME, then withdraw from it")
    drain.add_argument(
        "--graceful-s", type=_graceful_s, metavar="N",
        help="seconds of GRACEFUL_SHUTDOWN before the withdrawal (default: the site file's)",
    )
    drain.add_argument(
        "--force", action="store_true",
        help="drain even below min_announcing_upstreams (logged as forced)",
    )
    common(drain, cmd_drain)

    restore = action("restore", "end NAME's drain or prepend; announce normally now")
    common(restore, cmd_restore, lasts=False)

    prepend = action("prepend", "prepend our ASN COUNT times towards NAME")
    prepend.add_argument("count", type=_count, metavar="COUNT", help="1 to 10")
    common(prepend, cmd_prepend)


def _send(args: argparse.Namespace, cmd: Command, request: dict) -> int:
    if getattr(args, "for_s", None) is not None:
        request["for_s"] = args.for_s
    daemon = control_daemons(args, ("controller",))[0]
    print_change(daemon, call(daemon, cmd, request, args.timeout), args.json)
    return exitcodes.OK


def cmd_drain(args: argparse.Namespace) -> int:
    request = {"upstream": args.name, "reason": args.reason, "force": args.force}
    if args.graceful_s is not None:
        request["graceful_s"] = args.graceful_s
    return _send(args, Command.DRAIN, request)


def cmd_restore(args: argparse.Namespace) -> int:
    return _send(args, Command.RESTORE, {"upstream": args.name, "reason": args.reason})


def cmd_prepend(args: argparse.Namespace) -> int:
    request = {"upstream": args.name, "count": args.count, "reason": args.reason}
    return _send(args, Command.PREPEND, request)
