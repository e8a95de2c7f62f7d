"""`netwatch controller --config FILE`: the transit controller, run by ExaBGP as its API process."""

from __future__ import annotations

import argparse

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
    # In a fresh image without the CLI and pydantic (netwatch.runtime.lean).
    from netwatch.runtime.lean import exec_daemon, freeze

    return exec_daemon("netwatch.controller.daemon:serve", site=freeze(site),
                       config_path=args.config)
