"""The temporary ExaBGP API process of the lab: `netwatch lab announce --config FILE`.

Announces every site prefix to every neighbor of the matching family with `next-hop self`,
again whenever a session comes up, and reads stdin until ExaBGP closes it: with
`exabgp_api_ack=true` ExaBGP answers every command with `done`/`error`, and an undrained
stdin stalls ExaBGP. The controller replaces this process.
"""

from __future__ import annotations

import ipaddress
import json
import sys
from collections.abc import Iterable
from typing import TextIO


def announce_lines(site, peers: Iterable[str] | None = None) -> list[str]:
    """API lines announcing every site prefix to every (or each listed) peer of its family."""
    lines = []
    wanted = set(peers) if peers is not None else None
    for up in site.controller.upstreams:
        for peer in (getattr(up, "neighbor", None), getattr(up, "neighbor6", None)):
            if not peer or (wanted is not None and str(peer) not in wanted):
                continue
            version = ipaddress.ip_address(str(peer)).version
            for prefix in site.prefixes:
                net = ipaddress.ip_network(str(prefix))
                if net.version == version:
                    lines.append(f"neighbor {peer} announce route {net} next-hop self")
    for line in lines:
        if any(ord(c) < 32 for c in line):
            raise ValueError(f"control character in API line {line!r}")
    return lines


def peer_that_came_up(line: str) -> str | None:
    """The peer address of a JSON `state: up` event, else None."""
    if not line.startswith("{"):
        return None
    try:
        event = json.loads(line)
    except ValueError:
        return None
    neighbor = event.get("neighbor", {}) if event.get("type") == "state" else {}
    if neighbor.get("state") != "up":
        return None
    return neighbor.get("address", {}).get("peer")


def run_announcer(site, stdin: TextIO, stdout: TextIO, log: TextIO) -> int:
    """Announce, then drain `stdin` until EOF, re-announcing to a peer whose session comes up."""

    def send(lines: list[str]) -> None:
        for line in lines:
            stdout.write(line + "\n")
        stdout.flush()

    send(announce_lines(site))
    for line in stdin:
        line = line.strip()
        if line == "error":
            print("announcer: exabgp answered error", file=log, flush=True)
        peer = peer_that_came_up(line)
        if peer:
            send(announce_lines(site, [peer]))
    return 0


def main(site) -> int:
    return run_announcer(site, sys.stdin, sys.stdout, sys.stderr)
