"""The `netwatch` command: one argparse tree, one module per command group.

Each command group lives in its own module with a `register(subparsers)` function that adds
its parser and sets `func` on it; `func(args) -> int` returns an exit code from
`netwatch.exitcodes`. Errors that a user can fix are printed as one line on stderr.
"""

from __future__ import annotations

import argparse
import sys

from netwatch import __version__, exitcodes
from netwatch.commands import (
    CommandError,
    agent_cmd,
    config_cmd,
    controller_cmd,
    diagnose_cmd,
    events_cmd,
    exabgp_cmd,
    failover_cmd,
    lab_cmd,
    overrides_cmd,
    playbook_cmd,
    simulate_cmd,
    status_cmd,
    upstream_cmd,
)

# Command groups, in the order `netwatch --help` lists them: the daemons and their tools,
# then what an operator runs against them.
COMMAND_GROUPS = [
    agent_cmd, config_cmd, controller_cmd, exabgp_cmd, lab_cmd,
    status_cmd, failover_cmd, upstream_cmd, overrides_cmd, events_cmd, simulate_cmd,
    playbook_cmd, diagnose_cmd,
]


class _Parser(argparse.ArgumentParser):
    """argparse, exiting with EX_USAGE (64) on a wrong command line, as the exit codes say
    (argparse's own is 2). Every subparser inherits the class."""

    def error(self, message: str):
        self.print_usage(sys.stderr)
        self.exit(exitcodes.USAGE, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="netwatch",
        description="Network and BGP failover monitor: uplink agent, transit controller, lab.",
    )
    parser.add_argument("--version", action="version", version=f"netwatch {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for group in COMMAND_GROUPS:
        group.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help(sys.stderr)
        return exitcodes.USAGE
    try:
        return args.func(args)
    except CommandError as exc:
        print(exc, file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
