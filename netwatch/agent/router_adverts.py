"""IPv6 router advertisements that would fight the agent over the IPv6 default route.

A kernel that accepts router advertisements on an uplink installs a default route of its own
(`proto ra`) at metric 1024, the metric the agent writes at: the next advertisement of the
failed primary's router puts a default through it back, the agent repairs it at its next
route read (every 2 s), and so on for as long as that router advertises. `ra_defaults` tells
which uplinks would learn such a route; the agent logs it once at start (docs/agent.md,
"Before you deploy").

The kernel's rule (Documentation/networking/ip-sysctl.rst): advertisements are accepted when
`accept_ra` is 2, or 1 with `forwarding` 0; a default router is learnt from them when
`accept_ra_defrtr` is 1 too.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

CONF = Path("/proc/sys/net/ipv6/conf")  # the sysctls of the namespace the agent runs in


def _read(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None  # no such interface yet, IPv6 disabled: nothing learnt


def learns_default_router(ifname: str, conf: Path = CONF) -> bool:
    """True when `ifname` accepts router advertisements and takes a default route from them.
    False when it does not, or when its sysctls cannot be read (no such interface, no IPv6)."""
    accept_ra = _read(conf / ifname / "accept_ra")
    forwarding = _read(conf / ifname / "forwarding")
    defrtr = _read(conf / ifname / "accept_ra_defrtr")
    accepted = accept_ra == 2 or (accept_ra == 1 and forwarding == 0)
    return accepted and defrtr == 1


def ra_defaults(ifnames: Iterable[str], conf: Path = CONF) -> list[str]:
    """The interfaces of `ifnames` that learn a default router from advertisements."""
    return [name for name in ifnames if learns_default_router(name, conf)]
