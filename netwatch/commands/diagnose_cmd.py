"""`netwatch diagnose upstream NAME --config FILE [--json]`: where traffic through one transit
stops.

A traceroute through NAME (ICMP, marked with NAME's probe fwmark so the kernel routes it by
the controller's probe table for NAME) to a few of the site's probe targets, side by side with
one through a healthy upstream: hop, address, RTT, loss, and the hop where loss starts
(netwatch.diagnose). Run it on the border, as root, while the controller runs: the controller
installs the probe tables, and the command checks that the mark leads via NAME's next hop
before it traces.

Exit codes: 0 the diagnosis ran (the verdict is in the report, whatever it says), 64 no such
upstream or option, 65/66 the site file, 69 the mark does not lead through the upstream (no
controller here), 71 the kernel refused a socket, 77 not root.
"""

from __future__ import annotations

import argparse
import json

from netwatch import exitcodes
from netwatch.commands import CommandError, site_or_fail


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("diagnose", help="per-transit path diagnosis (traceroute)")
    sub = parser.add_subparsers(dest="diagnose_command", metavar="WHAT", required=True)
    upstream = sub.add_parser(
        "upstream", help="traceroute through one upstream beside a healthy one",
    )
    upstream.add_argument("name", metavar="NAME", help="the upstream (as in the site file)")
    upstream.add_argument("--config", required=True, metavar="FILE",
                          help="site file: the upstreams, their probe marks and targets")
    upstream.add_argument("--compare", metavar="NAME",
                          help="the upstream to trace beside it (default: a healthy one)")
    upstream.add_argument("--family", choices=("ipv4", "ipv6"),
                          help="default: IPv4 when the upstream has an IPv4 probe path")
    upstream.add_argument("--targets", type=int, default=3, choices=range(1, 11),
                          metavar="N", help="how many of the site's probe targets (default 3)")
    upstream.add_argument("--json", action="store_true", help="the report as JSON")
    upstream.set_defaults(func=cmd_upstream)


def run_diagnosis(site, name: str, compare: str | None = None, family: int | None = None,
                  targets: int = 3):
    """The report (netwatch.diagnose.analysis.Report) with the real tracer, routes and
    controller. Raises CommandError with the exit code the failure means."""
    from netwatch.diagnose.run import DiagnoseError, NoProbeRoute, diagnose_here

    try:
        return diagnose_here(site, name, compare=compare, family=family, targets=targets)
    except NoProbeRoute as exc:
        raise CommandError(f"netwatch diagnose: {exc}", exitcodes.UNAVAILABLE) from None
    except DiagnoseError as exc:
        raise CommandError(f"netwatch diagnose: {exc}", exitcodes.USAGE) from None
    except PermissionError as exc:
        raise CommandError(f"netwatch diagnose: raw sockets and SO_MARK need root ({exc})",
                           exitcodes.NOPERM) from None
    except OSError as exc:
        raise CommandError(f"netwatch diagnose: {exc}", exitcodes.OSERR) from None


def cmd_upstream(args: argparse.Namespace) -> int:
    from netwatch.diagnose.analysis import render_text

    site = site_or_fail(args.config, needs="controller")
    family = {"ipv4": 4, "ipv6": 6}.get(args.family or "")
    report = run_diagnosis(site, args.name, args.compare, family, args.targets)
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print(render_text(report))
    return exitcodes.OK
