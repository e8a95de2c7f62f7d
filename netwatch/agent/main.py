"""The agent process once its site file is read: what `netwatch agent` runs, in a fresh image
(netwatch.runtime.lean) or in place. Exit codes are the command's (netwatch.commands.agent_cmd).
"""

from __future__ import annotations

import asyncio
import logging

from netwatch import exitcodes
from netwatch.runtime.logs import kv, setup_logging
from netwatch.runtime.supervise import WorkerDied


def run(site, config_path: str, metrics_listen: str | None, verbose: bool) -> int:
    """Serve metrics and run the agent of `site` (a validated site, or its `Frozen` copy) until
    SIGTERM; every fatal error becomes its exit code."""
    setup_logging(verbose)
    log = logging.getLogger("netwatch.agent")
    from prometheus_client import CollectorRegistry
    from pyroute2.netlink.exceptions import NetlinkError

    from netwatch.agent.daemon import Agent
    from netwatch.runtime.metrics_http import serve_metrics

    registry = CollectorRegistry()
    listen = metrics_listen or site.metrics.agent
    server = None
    if listen != "none":
        server = serve_metrics(listen, registry, log)  # logged and carried on when it fails
    try:
        try:
            agent = Agent(site.agent, registry, site=site)  # site: the control API, its leases
        except ValueError as exc:
            # The decision's Settings refuse what the schema let through.
            log.error(kv("fatal", config=config_path, error=exc, note="invalid agent section"))
            return exitcodes.DATAERR
        asyncio.run(agent.run())
    except Exception as exc:
        # A dead worker's own error says what failed; a worker that returned is a bug.
        cause = exc.error if isinstance(exc, WorkerDied) else exc
        if isinstance(cause, PermissionError):
            log.error(kv("fatal", error=cause, hint="needs CAP_NET_ADMIN and CAP_NET_RAW"))
            return exitcodes.NOPERM
        # NetlinkError is not an OSError, and is as much the kernel refusing as one.
        if isinstance(cause, (OSError, NetlinkError)):
            log.error(kv("fatal", error=cause))
            return exitcodes.OSERR
        log.error(kv("fatal", error="internal error"), exc_info=exc)
        return exitcodes.SOFTWARE
    finally:
        if server is not None:
            server.shutdown()
    return exitcodes.OK
