"""`netwatch controller --config FILE`: the transit controller, run by ExaBGP as its API process."""

from __future__ import annotations

import argparse
import sys

from netwatch import exitcodes
from netwatch.commands import site_or_fail


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "controller",
        help="transit controller (ExaBGP API process: JSON on stdin, commands on stdout)",
    )
    parser.add_argument("--config", required=True, metavar="FILE", help="site file")
    parser.set_defaults(func=cmd_controller)


def cmd_controller(args: argparse.Namespace) -> int:
    site = site_or_fail(args.config, needs="controller")
    from netwatch.controller.daemon import run_controller

    try:
        return run_controller(site)
    except ValueError as exc:  # a site the controller cannot run (tcp probes without a port)
        print(f"{args.config}: {exc}", file=sys.stderr)
        return exitcodes.DATAERR
