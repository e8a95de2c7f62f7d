"""BIRD 2 configs for the transits and inet, and the birdc calls the lab makes.

Rendering is pure. Facts pinned by tests/lab: BIRD 2 needs `protocol device {}` to see
interfaces, and RFC 8212 makes eBGP without explicit filters import/export nothing.
Transits: eBGP to edge with `import all; export none;` on both families, as graceful-restart
helpers, with TCP-MD5 and GTSM where the site file asks for them; BGP routes into their kernel
table, only our prefixes exported on to inet. inet (AS 64510) imports our
prefixes from every transit and exports nothing, so a withdrawal or prepend at a transit moves
inet's return traffic.
"""

from __future__ import annotations

import ipaddress
import subprocess
from pathlib import Path

from netwatch.lab.topology import INET_ASN, Topology, Transit

# Fast timers: the lab is rehearsal, not production; `lab up` and heal wait on these.
_TIMERS = "connect delay time 1; connect retry time 2; error wait time 1, 4;"
# A transit's full table (`lab fault full-table`): /32s from here, inside 100.64.0.0/10 but
# away from the lab's links (100.64.0.0/16) and the scale bench's prefixes (100.100.0.0/14).
FULL_TABLE_BASE = ipaddress.IPv4Address("100.112.0.0")
FULL_TABLE_MAX = 1 << 20  # 100.112.0.0/12


def _prefix_set(prefixes: list[str], version: int) -> str:
    nets = [p for p in prefixes if ipaddress.ip_network(p).version == version]
    return "[ " + ", ".join(f"{p}+" for p in nets) + " ]" if nets else "[ ]"


def _kernel(name: str) -> str:
    return (
        "protocol kernel k4 { ipv4 { import none; export where source = RTS_BGP; }; "
        "merge paths on; }\n"
        "protocol kernel k6 { ipv6 { import none; export where source = RTS_BGP; }; "
        "merge paths on; }\n"
    )


def _edge_session(transit: Transit, password: str | None) -> str:
    """What both sessions to edge share: graceful restart, TCP-MD5, GTSM, debug logging.

    `graceful restart on`: BIRD 2.0.12's default (`aware`) is already the helper that keeps a
    restarting peer's routes as stale; `on` says it and also advertises BIRD's own restart
    capability. The restart time that counts is the one ExaBGP advertises. `debug { states,
    events }` logs "Neighbor graceful restart detected/done" and every state change, which
    the lab tests read.
    """
    lines = ["graceful restart on;", "debug { states, events };"]
    if transit.md5:
        if password is None:
            raise ValueError(f"transit {transit.name} uses TCP-MD5 but no password was given")
        lines.append(f'password "{password}";')
    if transit.ttl_security:
        lines.append("ttl security on;")
    return " ".join(lines)


def full_table_routes(count: int) -> list[str]:
    """`count` IPv4 /32s for a transit's full table (see FULL_TABLE_BASE)."""
    if not 0 <= count <= FULL_TABLE_MAX:
        raise ValueError(f"a full table of {count} routes: 0..{FULL_TABLE_MAX}")
    base = int(FULL_TABLE_BASE)
    return [f"{ipaddress.IPv4Address(base + i)}/32" for i in range(count)]


def transit_config(
    topo: Topology,
    transit: Transit,
    log_file: Path,
    password: str | None = None,
    full_table: int = 0,
) -> str:
    """BIRD config text of `transit`: eBGP to edge (both families) and to inet.

    `password`: the TCP-MD5 password when the transit uses one (required then). `full_table`:
    that many static IPv4 routes, exported to edge as a transit's full table would be.
    Raises ValueError."""
    ours4 = _prefix_set(topo.prefixes, 4)
    ours6 = _prefix_set(topo.prefixes, 6)
    t = transit
    session = _edge_session(t, password)
    export4 = "none"
    static = ""
    if full_table:
        export4 = "where source = RTS_STATIC"
        routes = "\n".join(f"  route {net} blackhole;" for net in full_table_routes(full_table))
        static = f"protocol static fulltable4 {{\n  ipv4;\n{routes}\n}}\n"
    return f"""# netwatch lab: transit {t.name} (AS{t.asn}). Generated; do not edit.
log "{log_file}" all;
router id {t.peer4};
protocol device {{ scan time 5; }}
{_kernel(t.name)}
{static}protocol bgp edge4 {{
  local {t.peer4} as {t.asn}; neighbor {t.edge4} as {topo.asn}; {_TIMERS}
  {session}
  ipv4 {{ import all; export {export4}; }};
}}
protocol bgp edge6 {{
  local {t.peer6} as {t.asn}; neighbor {t.edge6} as {topo.asn}; {_TIMERS}
  {session}
  ipv6 {{ import all; export none; }};
}}
protocol bgp inet4 {{
  local {t.inet_side4} as {t.asn}; neighbor {t.inet_peer4} as {INET_ASN}; {_TIMERS}
  ipv4 {{ import none; export where net ~ {ours4}; }};
}}
protocol bgp inet6 {{
  local {t.inet_side6} as {t.asn}; neighbor {t.inet_peer6} as {INET_ASN}; {_TIMERS}
  ipv6 {{ import none; export where net ~ {ours6}; }};
}}
"""


def inet_config(topo: Topology, log_file: Path) -> str:
    """BIRD config text of inet: eBGP to every transit, our prefixes in, nothing out."""
    ours4 = _prefix_set(topo.prefixes, 4)
    ours6 = _prefix_set(topo.prefixes, 6)
    parts = [
        "# netwatch lab: inet (AS64510), beyond every transit. Generated; do not edit.",
        f'log "{log_file}" all;',
        "router id 100.64.100.1;",
        "protocol device { scan time 5; }",
        _kernel("inet"),
    ]
    for t in topo.transits:
        parts.append(
            f"protocol bgp {t.name}_4 {{\n"
            f"  local {t.inet_peer4} as {INET_ASN}; neighbor {t.inet_side4} as {t.asn}; "
            f"{_TIMERS}\n"
            f"  ipv4 {{ import where net ~ {ours4}; export none; }};\n}}\n"
            f"protocol bgp {t.name}_6 {{\n"
            f"  local {t.inet_peer6} as {INET_ASN}; neighbor {t.inet_side6} as {t.asn}; "
            f"{_TIMERS}\n"
            f"  ipv6 {{ import where net ~ {ours6}; export none; }};\n}}\n"
        )
    return "\n".join(parts)


def birdc(namespace: str, socket: Path, command: str, timeout_s: float = 5.0) -> str:
    """Output of `birdc -s SOCKET COMMAND` run in `namespace`. Raises CalledProcessError."""
    proc = subprocess.run(
        ["ip", "netns", "exec", namespace, "birdc", "-s", str(socket), *command.split()],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=True,
    )
    return proc.stdout


def parse_protocols(output: str) -> dict[str, dict[str, str]]:
    """`birdc show protocols` output -> {name: {proto, state, info}}."""
    result: dict[str, dict[str, str]] = {}
    for line in output.splitlines():
        fields = line.split()
        if len(fields) < 4 or fields[0] in ("BIRD", "Name") or line.startswith(" "):
            continue
        if fields[1] not in ("BGP", "Kernel", "Device", "Direct", "Static"):
            continue
        info = " ".join(fields[5:]) if len(fields) > 5 else ""
        result[fields[0]] = {"proto": fields[1], "state": fields[3], "info": info}
    return result


def parse_routes(output: str) -> dict[str, list[dict[str, str]]]:
    """`birdc show route all` output -> {prefix: [{as_path, communities, from, ...}]}.

    One entry per path BIRD holds; `as_path` is the BGP.as_path attribute text (may be "").
    """
    routes: dict[str, list[dict[str, str]]] = {}
    current: dict[str, str] | None = None
    prefix = None
    for line in output.splitlines():
        if not line.strip() or line.startswith(("BIRD ", "Table ")):
            continue
        if not line[0].isspace():
            prefix = line.split()[0]
            current = {"as_path": "", "communities": "", "large_communities": "", "via": line}
            routes.setdefault(prefix, []).append(current)
        elif (
            line.lstrip().startswith(("unicast", "via"))
            and current is not None
            and line[:2] != "\t"
            and "BGP." not in line
            and current.get("via")
            and prefix
        ):
            # A second path for the same prefix starts with spaces and "unicast [...]".
            if "[" in line and "unicast" in line:
                current = {
                    "as_path": "",
                    "communities": "",
                    "large_communities": "",
                    "via": line.strip(),
                }
                routes[prefix].append(current)
        elif current is not None:
            text = line.strip()
            for key, attr in (
                ("as_path", "BGP.as_path:"),
                ("communities", "BGP.community:"),
                ("large_communities", "BGP.large_community:"),
            ):
                if text.startswith(attr):
                    current[key] = text[len(attr) :].strip()
    return routes
