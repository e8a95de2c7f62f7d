"""`netwatch config validate|show`: check site files and print the effective configuration."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

from netwatch import exitcodes
from netwatch.commands import site_or_fail
from netwatch.config import ConfigError, load_site, load_targets
from netwatch.config.yamldoc import read_yaml


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("config", help="validate and show site files")
    sub = parser.add_subparsers(dest="config_command", metavar="ACTION", required=True)

    validate = sub.add_parser(
        "validate",
        help="check site files and target catalogues; print every problem as FILE:LINE: path: msg",
    )
    validate.add_argument("files", nargs="+", metavar="FILE")
    validate.add_argument("-q", "--quiet", action="store_true", help="print problems only")
    validate.set_defaults(func=cmd_validate)

    show = sub.add_parser("show", help="print the effective site config, every default filled in")
    show.add_argument("file", metavar="FILE")
    show.add_argument("--json", action="store_true", help="JSON instead of YAML")
    show.set_defaults(func=cmd_show)


def _is_catalogue(path: str) -> bool:
    """A target catalogue is a file whose only top-level key is `targets`."""
    try:
        data = read_yaml(Path(path), path).data  # the same guarded reader as load_site
    except ConfigError:
        return False  # load_site reports it properly
    return set(data) == {"targets"}


def cmd_validate(args: argparse.Namespace) -> int:
    worst = exitcodes.OK
    for path in args.files:
        try:
            if _is_catalogue(path):
                targets = load_targets(path)
                summary = f"{len(targets)} targets"
            else:
                site = load_site(path)
                roles = [r for r in ("agent", "controller") if getattr(site, r) is not None]
                summary = (
                    f"site {site.site}, AS{site.asn}, {', '.join(roles) or 'no daemon sections'}"
                )
        except ConfigError as exc:
            for line in exc.errors:
                print(line, file=sys.stderr)
            missing = exc.missing
            worst = max(worst, exitcodes.NOINPUT if missing else exitcodes.DATAERR)
            continue
        if not args.quiet:
            print(f"{path}: ok ({summary})")
    return worst


def cmd_show(args: argparse.Namespace) -> int:
    data = site_or_fail(args.file).model_dump(mode="json")
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        print(yaml.safe_dump(data, sort_keys=False, default_flow_style=False), end="")
    return exitcodes.OK
