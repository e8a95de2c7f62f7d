"""`netwatch exabgp-config FILE`: print the ExaBGP 5 configuration for a site file."""

from __future__ import annotations

import argparse
import shlex
import sys

from netwatch import exitcodes
from netwatch.commands import site_or_fail


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "exabgp-config", help="print the ExaBGP 5 configuration for a site file"
    )
    parser.add_argument("file", metavar="FILE")
    parser.add_argument(
        "--process",
        default=None,
        help="API process command line (default: `netwatch controller --config FILE`)",
    )
    parser.set_defaults(func=cmd_exabgp_config)


def cmd_exabgp_config(args) -> int:
    from pathlib import Path

    from netwatch.exabgp.config import render_exabgp_config

    site = site_or_fail(args.file, needs="controller")
    if args.process:
        argv = shlex.split(args.process)
    else:
        argv = [
            sys.executable,
            "-m",
            "netwatch.cli",
            "controller",
            "--config",
            str(Path(args.file).resolve()),
        ]
    try:
        sys.stdout.write(render_exabgp_config(site, argv))
    except ValueError as exc:
        print(f"netwatch exabgp-config: {exc}", file=sys.stderr)
        return exitcodes.DATAERR
    return exitcodes.OK
