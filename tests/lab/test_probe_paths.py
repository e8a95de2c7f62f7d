"""The probe paths against a real kernel, in a throwaway pair of network namespaces
(`netns_pair`, tests/conftest.py: a veth from a to b; a is 2001:db8:99::1, b 2001:db8:99::2).
Needs root."""

from __future__ import annotations

import subprocess
from ipaddress import IPv6Address

from netwatch.adapters.netlink import Netlink
from netwatch.adapters.policy_routing import ProbePath

MARK, TABLE, TARGET = 77, 1000, "2001:db8:100::1"


def _ip(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *argv], capture_output=True, text=True, check=False)


def test_a_failed_ipv6_gateway_entry_does_not_keep_the_path_unreachable(netns_pair, in_netns):
    """A host (forwarding off) skips a route whose gateway's neighbour entry is FAILED: the
    probe table's unreachable default wins, no probe reaches the neighbour layer again, and
    the kernel retries the router only after a minute. Checking the path forgets the entry,
    and the route is taken again."""
    a, b = netns_pair
    _ip("netns", "exec", a, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=0")
    _ip("-n", b, "addr", "add", "fe80::1/64", "dev", "vb", "nodad")
    _ip("-n", b, "addr", "add", f"{TARGET}/128", "dev", "lo")
    path = ProbePath(MARK, TABLE, IPv6Address("fe80::1"), "va", IPv6Address("2001:db8:99::1"))

    async def install() -> bool:
        netlink = Netlink()
        await netlink.open()
        try:
            await netlink.links(["va"])
            return await netlink.ensure_probe_path(path)
        finally:
            netlink.close()

    def route_get() -> str:
        out = _ip("-n", a, "-6", "route", "get", TARGET, "mark", str(MARK))
        return (out.stdout or out.stderr).strip()

    in_netns(a, install)
    assert "via fe80::1 dev va" in route_get()
    _ip("-n", a, "-6", "neigh", "replace", "fe80::1", "dev", "va", "nud", "failed")
    assert "No route to host" in route_get(), "the kernel did not skip the FAILED gateway"
    in_netns(a, install)
    assert "via fe80::1 dev va" in route_get(), route_get()
    assert "FAILED" not in _ip("-n", a, "-6", "neigh", "show", "dev", "va").stdout
