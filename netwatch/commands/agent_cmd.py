"""`netwatch agent --config FILE [--netns NS]`: run the uplink agent in the foreground.

systemd-friendly: logs go to stderr as key=value lines, SIGTERM stops it cleanly (routes are
left as they are), and a fatal error exits non-zero so `Restart=always` brings it back.
Exit codes: 0 stopped by SIGTERM or SIGINT, 65 invalid config (or no `agent` section), 66
config file missing, 71 the namespace or the kernel refused (netlink, raw sockets, the
control socket or state_dir), 77 not allowed (needs CAP_NET_ADMIN and CAP_NET_RAW), 70 an
internal error; the same whether the agent fails while it is built or while it runs. A
metrics listener that cannot start is logged and the agent runs without it
(netwatch.runtime.metrics_http).
"""

from __future__ import annotations

import argparse
import logging
import os

from netwatch import exitcodes
from netwatch.commands import site_or_fail
from netwatch.runtime.logs import kv, setup_logging


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "agent", help="run the uplink agent (failover between a server's two uplinks)"
    )
    parser.add_argument("--config", required=True, metavar="FILE", help="site file")
    parser.add_argument(
        "--netns",
        metavar="NS",
        help="run inside network namespace NS (everything: sockets, routes, the metrics listener)",
    )
    parser.add_argument(
        "--metrics-listen",
        metavar="ADDR",
        help="override metrics.agent (e.g. 127.0.0.1:9110); 'none' disables",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logs")
    parser.set_defaults(func=cmd_agent)


def cmd_agent(args: argparse.Namespace) -> int:
    setup_logging(args.verbose)
    log = logging.getLogger("netwatch.agent")
    site = site_or_fail(args.config, needs="agent")
    if args.netns:
        try:
            _enter_netns(args.netns)
        except OSError as exc:
            log.error(kv("fatal", netns=args.netns, error=exc, note="cannot enter the namespace"))
            return exitcodes.OSERR

    # The agent runs in a fresh image without the CLI and pydantic (netwatch.runtime.lean);
    # pyroute2 and the raw sockets come after setns.
    from netwatch.runtime.lean import exec_daemon, freeze

    return exec_daemon("netwatch.agent.main:run", site=freeze(site), config_path=args.config,
                       metrics_listen=args.metrics_listen, verbose=args.verbose)


def _enter_netns(name: str) -> None:
    """Move this whole process into /var/run/netns/NAME (never creating it)."""
    path = name if name.startswith("/") else f"/var/run/netns/{name}"
    from pyroute2 import netns

    fd = os.open(path, os.O_RDONLY)
    try:
        netns.setns(fd)
    finally:
        os.close(fd)
