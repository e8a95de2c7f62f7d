"""Pure: the ExaBGP 5 configuration for a site's border speaker.

`render_exabgp_config(site, process_argv)` returns the config text: one `process` block that
runs `process_argv` (`netwatch controller --config FILE`) and
one neighbor per upstream and address family (IPv4 session on `neighbor`, IPv6 session on
`neighbor6`), each with local-as, router-id, hold-time and the API process.

Restart behaviour (ExaBGP 5.0.15, read in reactor/api/processes.py and measured in the lab,
docs/controller.md): `respawn true;` with `exabgp_api_respawn=true` restarts a dead API
process at once; the new controller re-sends the desired state, which ExaBGP already holds,
so the peers see no UPDATE and the sessions stay up (no flap). More than 5 deaths inside one
64 s window (aligned to the wall clock) make ExaBGP exit ("Too many death"), and the
supervisor (systemd `Restart=always`) restarts ExaBGP and the controller together.
`exabgp_api_terminate=true` makes ExaBGP exit instead of stopping its peers for good when a
write to a dead API process fails (EPIPE) before it noticed the death: its `_broken` list is
never cleared, so without `terminate` every peer would stay stopped with ExaBGP still running.
Raises ValueError for a value that cannot go into the config safely.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

PROCESS_NAME = "netwatch"
# `\Z`, not `$`: `$` also matches before a final newline, which would end a config statement.
_SAFE_TOKEN = re.compile(r"\A[A-Za-z0-9_./:@=+,-]+\Z")


def _token(value: object) -> str:
    text = str(value)
    if not _SAFE_TOKEN.match(text):
        raise ValueError(f"unsafe value for the ExaBGP config: {text!r}")
    return text


def _neighbor(peer: str, local: str, peer_as: int, site, family: str, name: str) -> str:
    bgp = site.controller.bgp
    return (
        f"neighbor {_token(peer)} {{\n"
        f"    description {_token(name)};\n"
        f"    router-id {_token(bgp.router_id)};\n"
        f"    local-address {_token(local)};\n"
        f"    local-as {int(site.asn)};\n"
        f"    peer-as {int(peer_as)};\n"
        f"    hold-time {int(bgp.hold_time_s)};\n"
        f"    family {{\n        {family} unicast;\n    }}\n"
        f"    api {{\n        processes [ {PROCESS_NAME} ];\n        neighbor-changes;\n    }}\n"
        f"}}\n"
    )


def render_exabgp_config(site, process_argv: Sequence[str]) -> str:
    """ExaBGP 5 config text for `site`, with `process_argv` (absolute program path) as the API
    process. Raises ValueError when an argv element or a site value is not a plain token."""
    if not process_argv or not str(process_argv[0]).startswith("/"):
        raise ValueError("the API process needs an absolute program path")
    run = " ".join(_token(a) for a in process_argv)
    parts = [
        "# netwatch: ExaBGP 5 configuration, generated from the site file. Do not edit.",
        f"process {PROCESS_NAME} {{\n    run {run};\n    encoder json;\n    respawn true;\n}}\n",
    ]
    for up in site.controller.upstreams:
        if getattr(up, "neighbor", None):
            parts.append(
                _neighbor(up.neighbor, up.local_address, up.asn, site, "ipv4", f"{up.name}-v4")
            )
        if getattr(up, "neighbor6", None):
            parts.append(
                _neighbor(up.neighbor6, up.local_address6, up.asn, site, "ipv6", f"{up.name}-v6")
            )
    return "\n".join(parts)


def exabgp_environment(log_file: Path | None = None) -> dict[str, str]:
    """Environment variables ExaBGP needs to run under netwatch (no daemonizing, root, acks,
    no CLI pipe; respawn the controller, exit when that fails: see the module doc)."""
    env = {
        "exabgp_daemon_user": "root",
        "exabgp_daemon_daemonize": "false",
        "exabgp_api_ack": "true",
        "exabgp_api_respawn": "true",
        "exabgp_api_terminate": "true",
        "exabgp_api_cli": "false",
        "exabgp_log_level": "INFO",
        "exabgp_log_statistics": "false",  # one line per keepalive otherwise
    }
    if log_file is not None:
        env["exabgp_log_destination"] = str(log_file)
    return env
