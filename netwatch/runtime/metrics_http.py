"""Serve a daemon's own Prometheus registry over HTTP, with one policy for both daemons.

The policy: a metrics listener that cannot start (the port is taken, the address is not
local) is logged at ERROR and the daemon goes on protecting without it. Protection comes
first: an agent that exited would leave its server's routes unwatched, and a controller that
exited would be respawned by ExaBGP until ExaBGP itself gives up. The missing scrape is what
tells the operator (the daemon-down alert fires on `up == 0`).
"""

from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry, start_http_server

from netwatch.runtime.logs import kv


def parse_listen(listen: str) -> tuple[str, int]:
    """'127.0.0.1:9110' or '[::1]:9110' -> (host, port). The config has validated the form."""
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


def serve_metrics(listen: str, registry: CollectorRegistry, log: logging.Logger):
    """Start the /metrics endpoint in a daemon thread; returns the server (call .shutdown()),
    or None when it could not start (logged as `metrics_unavailable`)."""
    host, port = parse_listen(listen)
    try:
        server, _thread = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        log.error(kv("metrics_unavailable", listen=listen, error=exc,
                     note="running without a metrics listener"))
        return None
    log.info(kv("metrics", listen=listen))
    return server
