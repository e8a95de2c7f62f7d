"""Serve a daemon's own Prometheus registry over HTTP. I/O only."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, start_http_server


def parse_listen(listen: str) -> tuple[str, int]:
    """'127.0.0.1:9110' or '[::1]:9110' -> (host, port). The config has validated the form."""
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


def serve_metrics(listen: str, registry: CollectorRegistry):
    """Start the /metrics endpoint in a daemon thread; returns the server (call .shutdown()).

    Raises OSError when the address is taken or not local.
    """
    host, port = parse_listen(listen)
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return server
