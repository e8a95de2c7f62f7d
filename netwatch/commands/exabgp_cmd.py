"""`netwatch exabgp-config FILE [--output PATH]`: the ExaBGP 5 configuration for a site file.

With TCP-MD5 (`upstreams[].md5_password_file`) the configuration holds the passwords (ExaBGP
has no password file): `--output` writes it with mode 0600 from its creation, replacing the
old file atomically, and is what the shipped systemd unit uses.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from netwatch import exitcodes
from netwatch.commands import CommandError, site_or_fail


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "exabgp-config", help="print (or write) the ExaBGP 5 configuration for a site file"
    )
    parser.add_argument("file", metavar="FILE")
    parser.add_argument(
        "--process",
        default=None,
        help="API process command line (default: `netwatch controller --config FILE`)",
    )
    parser.add_argument(
        "--output",
        "-o",
        metavar="PATH",
        default=None,
        help="write the config to PATH (mode 0600, replaced atomically) instead of stdout",
    )
    parser.set_defaults(func=cmd_exabgp_config)


def cmd_exabgp_config(args) -> int:
    from netwatch.config import ConfigError
    from netwatch.config.secrets import read_md5_passwords, write_private
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
        passwords = read_md5_passwords(args.file, site)
    except ConfigError as exc:
        # A missing password file is a wrong site file (exit 65), not a missing input.
        raise CommandError("\n".join(exc.errors), exitcodes.DATAERR) from None
    try:
        text = render_exabgp_config(site, argv, passwords)
    except ValueError as exc:
        print(f"netwatch exabgp-config: {exc}", file=sys.stderr)
        return exitcodes.DATAERR
    if args.output is None:
        sys.stdout.write(text)
        return exitcodes.OK
    try:
        write_private(Path(args.output), text)
    except OSError as exc:
        raise CommandError(
            f"netwatch exabgp-config: cannot write {args.output}: {exc.strerror}",
            exitcodes.CANTCREAT,
        ) from None
    return exitcodes.OK

