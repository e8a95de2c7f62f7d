"""Pure: the ExaBGP 5 configuration for a site's border speaker.

`render_exabgp_config(site, process_argv, md5_passwords)` returns the config text: one
`process` block that runs `process_argv` (`netwatch controller --config FILE`) and one
neighbor per upstream and address family (IPv4 session on `neighbor`, IPv6 session on
`neighbor6`), each with local-as, router-id (`controller.bgp.router_id`, by default the first
upstream's IPv4 local_address: `router_id`), hold-time and the API process, and:

* `capability { graceful-restart N; }` (RFC 4724, `controller.bgp.graceful_restart_s`, none
  when 0): ExaBGP 5.0.15 sends no NOTIFICATION when it is stopped by any signal (it closes
  the sockets), so the peers keep our routes, as stale, for N seconds while it restarts;
* `manual-eor true;`: ExaBGP would otherwise send End-of-RIB as soon as a session is up,
  before the restarted controller announced anything, and the peers would flush the stale
  routes at once (measured: our prefixes gone until the controller's announcements arrived).
  The controller sends each neighbor's End-of-RIB after its full desired state;
* `adj-rib-in false;` and an `api` block that subscribes to no received message: ExaBGP then
  does not even decode the UPDATEs a transit sends (measured with 100,000 routes from one
  peer: RSS 30.2 -> 30.3 MB instead of 82.8 MB, CPU not measurable instead of ~1.1 s);
* `md5-password "...";` (TCP-MD5) for an upstream with `md5_password_file`, from
  `md5_passwords` (read by `netwatch.config.secrets`): ExaBGP has no password file, so the
  rendered config holds the secret and must be written 0600;
* `outgoing-ttl 255; incoming-ttl 255;` for an upstream with `ttl_security` (GTSM).

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

import ipaddress
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from netwatch.config.secrets import check_md5_password

PROCESS_NAME = "netwatch"
# `\Z`, not `$`: `$` also matches before a final newline, which would end a config statement.
_SAFE_TOKEN = re.compile(r"\A[A-Za-z0-9_./:@=+,-]+\Z")


def _token(value: object) -> str:
    """`value` (a str, an IP address or an int) as one plain config token. Raises ValueError
    for anything else (None would render as `None`, which ExaBGP may read as a name) and for
    a text that is not one plain token."""
    if isinstance(value, bool) or not isinstance(
            value, str | int | ipaddress.IPv4Address | ipaddress.IPv6Address):
        raise ValueError(f"not a value for the ExaBGP config: {type(value).__name__} "
                         f"{str(value)[:40]!r}")
    text = str(value)
    if not _SAFE_TOKEN.match(text):
        raise ValueError(f"unsafe value for the ExaBGP config: {text!r}")
    return text


def router_id(site) -> ipaddress.IPv4Address:
    """`controller.bgp.router_id`, or by default the first upstream's IPv4 local_address.
    Raises ValueError when neither exists (the site file's validation refuses that)."""
    ctl = site.controller
    if ctl.bgp.router_id is not None:
        return ctl.bgp.router_id
    for up in ctl.upstreams:
        if up.local_address is not None and up.local_address.version == 4:
            return up.local_address
    raise ValueError("controller.bgp.router_id is not set and no upstream has an IPv4 "
                     "local_address to default to")


GTSM_TTL = 255  # RFC 5082: the only TTL a directly connected peer's packets can arrive with


def _neighbor(
    peer: str, local: str, upstream, site, family: str, name: str, password: str | None
) -> str:
    bgp = site.controller.bgp
    lines = [
        f"neighbor {_token(peer)} {{",
        f"    description {_token(name)};",
        f"    router-id {_token(router_id(site))};",
        f"    local-address {_token(local)};",
        f"    local-as {int(site.asn)};",
        f"    peer-as {int(upstream.asn)};",
        f"    hold-time {int(bgp.hold_time_s)};",
        "    manual-eor true;",
        "    adj-rib-in false;",
    ]
    if password is not None:
        # Quoted: ExaBGP reads a quoted string literally (the rule in check_md5_password
        # keeps out what would end it).
        lines.append(f'    md5-password "{check_md5_password(password)}";')
    if upstream.ttl_security:
        lines += [f"    outgoing-ttl {GTSM_TTL};", f"    incoming-ttl {GTSM_TTL};"]
    if int(bgp.graceful_restart_s) > 0:
        lines.append(
            f"    capability {{\n        graceful-restart {int(bgp.graceful_restart_s)};\n    }}"
        )
    lines += [
        f"    family {{\n        {family} unicast;\n    }}",
        # No `receive` section: nothing received is decoded or sent to the controller.
        f"    api {{\n        processes [ {PROCESS_NAME} ];\n        neighbor-changes;\n    }}",
        "}",
    ]
    return "\n".join(lines) + "\n"


def render_exabgp_config(
    site, process_argv: Sequence[str], md5_passwords: Mapping[str, str] | None = None
) -> str:
    """ExaBGP 5 config text for `site`, with `process_argv` (absolute program path) as the API
    process and `md5_passwords` ({upstream name: password}, netwatch.config.secrets) for the
    upstreams that have `md5_password_file`. Raises ValueError when an argv element or a site
    value is not a plain token, or a password is missing or unfit (never showing it)."""
    if not process_argv or not str(process_argv[0]).startswith("/"):
        raise ValueError("the API process needs an absolute program path")
    md5_passwords = md5_passwords or {}
    run = " ".join(_token(a) for a in process_argv)
    parts = [
        "# netwatch: ExaBGP 5 configuration, generated from the site file. Do not edit.",
        f"process {PROCESS_NAME} {{\n    run {run};\n    encoder json;\n    respawn true;\n}}\n",
    ]
    for up in site.controller.upstreams:
        password = None
        if up.md5_password_file is not None:
            password = md5_passwords.get(up.name)
            if password is None:
                raise ValueError(f"upstream {up.name}: md5_password_file is set but no password "
                                 "was read")
        # `neighbor` may be an IPv6 session of its own (then there is no neighbor6).
        v = up.neighbor.version
        parts.append(
            _neighbor(up.neighbor, up.local_address, up, site, f"ipv{v}", f"{up.name}-v{v}",
                      password)
        )
        if up.neighbor6 is not None:
            parts.append(
                _neighbor(up.neighbor6, up.local_address6, up, site, "ipv6", f"{up.name}-v6",
                          password)
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
        # Logging received routes would make ExaBGP decode every UPDATE a transit sends (a
        # full table) even with `adj-rib-in false` (ExaBGP 5.0.15). The default; pinned.
        "exabgp_log_routes": "false",
        # Prefix scale (docs/controller.md), profiled with py-spy at 10,000 prefixes x 4
        # neighbors: the `processes` log category is one INFO line per route of every API
        # command ("route added to ...", ~22 % of ExaBGP's CPU); its error lines are logged at
        # a level ExaBGP 5.0.15 never enables ("ERR"), so nothing else is lost.
        "exabgp_log_processes": "false",
        # The reactor runs 50 steps (one route each) of an API command per loop and then
        # polls for up to speed/100 s: 10 ms by default, so a 1,000-prefix line waited ~0.2 s
        # in poll. 0.1 (1 ms, the shortest that still sleeps) took announcing 10,000 prefixes
        # to 4 neighbors from ~18 s to ~10 s in the lab; idle CPU 9 % of a core instead of 3 %.
        "exabgp_reactor_speed": "0.1",
    }
    if log_file is not None:
        env["exabgp_log_destination"] = str(log_file)
    return env
