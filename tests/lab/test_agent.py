"""The uplink agent in the lab, IPv4 and IPv6: each fault on the primary moves the default
routes to the secondary and traffic from srv to inet flows again; heal brings them back after
the hold-down; both uplinks dead keeps the routes, unless the active one's link is gone and
the other's is up (then they move to it); ICMP gateway probes; manual failback by SIGUSR1.
The metrics endpoint shows every change.

One agent process (`netwatch agent --netns <srv>`, the conftest's `agent` fixture) serves
the module; a test that needs another site file (`method: icmp`, `failback.mode: manual`)
stops it, runs its own (`own_agent`), and starts it again. Every agent is stopped by its PID
whatever happens. About 60 s in all.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from netwatch.lab import faults

pytestmark = pytest.mark.timeout(240)

TARGETS = ("203.0.113.1", "2001:db8:203::1")  # inet, IPv4 and IPv6
ROLES = ("primary", "secondary")
UP = 'netwatch_agent_uplink_up{{uplink="{}"}}'
ACTIVE = 'netwatch_agent_active_uplink{{uplink="{}"}}'
CARRIER = 'netwatch_agent_uplink_carrier{{uplink="{}"}}'
BOTH_DOWN = "netwatch_agent_both_uplinks_down"


def default_routes(lab) -> dict[str, str | None]:
    """The interfaces of srv's default routes: {"IPv4": ifname or None, "IPv6": ...}."""
    return {"IPv4": lab.default_dev("srv", 4), "IPv6": lab.default_dev("srv", 6)}


def routes_on(lab, dev: str) -> bool:
    return default_routes(lab) == {"IPv4": dev, "IPv6": dev}


def unreached(lab) -> list[str]:
    """The inet targets from which srv gets no echo reply."""
    return [target for target in TARGETS if lab.ping("srv", target) != 1]


def picked(samples: dict[str, float], want: dict[str, float]) -> dict[str, float | None]:
    """The samples `want` names, None where absent: compared with `want` in one assert."""
    return {key: samples.get(key) for key in want}


def failovers(agent, reason: str) -> float:
    return agent.metrics().get(f'netwatch_agent_failovers_total{{reason="{reason}"}}', 0.0)


def moved(lab, agent, dev: str, within_s: float, after: str) -> str:
    """The failure message of a wait for srv's default routes to be on `dev`."""
    return (f"{after}: srv's default routes are on {default_routes(lab)}, expected both on "
            f"{dev} within {within_s} s\n{agent.tail()}")


@pytest.mark.parametrize(
    "fault, reason",
    [
        (("link-down",), "carrier"),
        (("gateway-silent",), "gateway"),
        (("gateway-blackhole",), "beyond"),
        (("loss", "100"), None),  # ARP or the beyond probes, whichever notices first
    ],
    ids=["link-down", "gateway-silent", "gateway-blackhole", "loss-100"],
)
def test_fault_on_primary_moves_routes_and_heal_brings_them_back(agent, lab, wait_for, fault,
                                                                  reason):
    name = " ".join(fault) + " on gwa"
    assert wait_for(lambda: routes_on(lab, "eth0"), 10) is not None, \
        moved(lab, agent, "eth0", 10, "at the start")
    before = agent.metrics()
    faults.apply(lab, fault[0], "gwa", *fault[1:])
    try:
        assert wait_for(lambda: routes_on(lab, "eth1"), 3) is not None, \
            moved(lab, agent, "eth1", 3, name)
        lost = unreached(lab)
        assert lost == [], f"{name}, routes on eth1: srv gets no reply from {lost}"
        want = {ACTIVE.format("secondary"): 1.0, UP.format("primary"): 0.0}
        if reason:
            key = f'netwatch_agent_failovers_total{{reason="{reason}"}}'
            want[key] = before.get(key, 0) + 1
        seen = picked(agent.metrics(), want)
        assert seen == want, f"{name}: the agent's metrics say {seen}, expected {want}"
    finally:
        faults.heal(lab, "gwa")
    healed_at = time.monotonic()
    assert wait_for(lambda: routes_on(lab, "eth0"), 15) is not None, \
        moved(lab, agent, "eth0", 15, f"heal of {name}")
    # Not sooner than the hold-down (5 s in the lab site) after the primary recovered.
    back_after = time.monotonic() - healed_at
    assert back_after >= 5.0, \
        f"routes back on eth0 {back_after:.2f} s after heal of {name}, within the 5 s hold-down"
    lost = unreached(lab)
    assert lost == [], f"heal of {name}, routes back on eth0: srv gets no reply from {lost}"
    active = agent.metrics().get(ACTIVE.format("primary"))
    assert active == 1.0, f"heal of {name}: active_uplink{{primary}} is {active}, expected 1"


def test_operator_route_change_is_repaired(agent, lab, wait_for):
    assert wait_for(lambda: routes_on(lab, "eth0"), 10) is not None, \
        moved(lab, agent, "eth0", 10, "at the start")
    key = 'netwatch_agent_route_changes_total{cause="repair",family="ipv4"}'
    repairs = agent.metrics().get(key, 0.0)
    lab.exec("srv", "ip", "route", "replace", "default", "via", "100.64.2.1", "dev", "eth1")
    assert wait_for(lambda: lab.default_dev("srv", 4) == "eth0", 3) is not None, (
        f"srv's IPv4 default route is on {lab.default_dev('srv', 4)} 3 s after an operator "
        f"moved it to eth1, expected repaired to eth0\n{agent.tail()}"
    )
    after = agent.metrics().get(key)
    assert after == repairs + 1, f"{key} is {after} after the repair, expected {repairs + 1}"


def test_admin_down_flushes_routes_and_tables_and_both_come_back(agent, lab, wait_for):
    """Admin-down on srv's own eth0 makes the kernel delete every route through it (the main
    default and the probe table 1000); the agent fails over, then restores both."""
    assert wait_for(lambda: routes_on(lab, "eth0"), 10) is not None, \
        moved(lab, agent, "eth0", 10, "at the start")
    lab.exec("srv", "ip", "link", "set", "eth0", "down")
    try:
        assert wait_for(lambda: routes_on(lab, "eth1"), 2) is not None, \
            moved(lab, agent, "eth1", 2, "srv's eth0 set down")
    finally:
        lab.exec("srv", "ip", "link", "set", "eth0", "up")
    assert wait_for(lambda: routes_on(lab, "eth0"), 15) is not None, \
        moved(lab, agent, "eth0", 15, "srv's eth0 set up again")
    table = lab.exec("srv", "ip", "route", "show", "table", "1000").stdout
    assert "default via 100.64.1.1 dev eth0" in table, \
        f"srv's probe table 1000 lacks 'default via 100.64.1.1 dev eth0' after eth0 up: {table!r}"


def test_both_uplinks_dead_keeps_the_routes_and_heal_restores_service(agent, lab, wait_for):
    """Both gateways silent at once: no uplink to go to, so the default routes (v4 and v6) stay
    where they are and the metrics say both are down; heal brings normal service back."""
    assert wait_for(lambda: routes_on(lab, "eth0"), 10) is not None, \
        moved(lab, agent, "eth0", 10, "at the start")
    faults.apply(lab, "gateway-silent", "gwa")
    faults.apply(lab, "gateway-silent", "gwb")
    try:
        assert wait_for(lambda: agent.metrics().get(BOTH_DOWN) == 1.0, 5) is not None, (
            f"gwa and gwb silent: {BOTH_DOWN} is {agent.metrics().get(BOTH_DOWN)} after 5 s,"
            f" expected 1\n{agent.tail()}"
        )
        # Usually still via eth0 (the secondary was failing too when the primary went
        # DOWN); via eth1 if gwb's fault landed a probe round later. Never removed.
        dev = lab.default_dev("srv", 4)
        assert dev in ("eth0", "eth1") and routes_on(lab, dev), \
            f"gwa and gwb silent: srv's default routes are on {default_routes(lab)}, expected " \
            f"both kept on eth0 or both on eth1\n{agent.tail()}"
        role = "primary" if dev == "eth0" else "secondary"
        want = {ACTIVE.format(role): 1.0, UP.format("primary"): 0.0, UP.format("secondary"): 0.0}
        seen = picked(agent.metrics(), want)
        assert seen == want, f"gwa and gwb silent, routes on {dev}: metrics {seen}, want {want}"
        time.sleep(1.0)  # twenty more probe rounds, all lost: still the same routes
        assert routes_on(lab, dev), \
            f"gwa and gwb silent: srv's default routes moved from {dev} to {default_routes(lab)}"
        both_down = agent.metrics().get(BOTH_DOWN)
        assert both_down == 1.0, f"gwa and gwb silent: {BOTH_DOWN} is {both_down} 1 s on"
    finally:
        faults.heal(lab, "gwa")
        faults.heal(lab, "gwb")
    assert wait_for(lambda: agent.metrics().get(BOTH_DOWN) == 0.0 and routes_on(lab, "eth0"),
                    15) is not None, (
        f"heal of gwa and gwb: after 15 s {BOTH_DOWN} is {agent.metrics().get(BOTH_DOWN)} and "
        f"srv's default routes are on {default_routes(lab)}, expected 0 and both on eth0\n"
        f"{agent.tail()}"
    )
    lost = unreached(lab)
    assert lost == [], f"heal of gwa and gwb: srv gets no reply from {lost}"


def test_primary_link_lost_while_secondary_silent_moves_to_the_live_link(agent, lab, wait_for):
    """The secondary's gateway silent (eth1's carrier up), then eth0 loses its carrier: both
    uplinks are DOWN, but a route through a dead link carries nothing, so the default routes
    (v4 and v6) go to eth1 and stay there; they work as soon as gwb answers again. Once eth0
    is back, the primary returns by failback, after its hold-down."""
    # Both UP first: a secondary still rising from an earlier test could turn UP between the
    # check below and the fault, and the routes would then move to an UP uplink.
    both_up = dict.fromkeys(ROLES, 1.0)
    assert wait_for(lambda: routes_on(lab, "eth0") and agent.uplinks_up() == both_up, 10) \
        is not None, (
        f"at the start: srv's default routes are on {default_routes(lab)} and uplink_up is "
        f"{agent.uplinks_up()}, expected both on eth0 and {both_up}\n{agent.tail()}"
    )
    carrier_before, failback_before = failovers(agent, "carrier"), failovers(agent, "failback")
    faults.apply(lab, "gateway-silent", "gwb")
    back = None
    try:
        assert wait_for(lambda: agent.uplinks_up()["secondary"] == 0.0, 5) is not None, \
            f"gwb silent: uplink_up is {agent.uplinks_up()} after 5 s, expected secondary 0"
        # the secondary is no place to go while eth0 works
        assert routes_on(lab, "eth0"), \
            f"gwb silent, eth0 fine: srv's default routes moved to {default_routes(lab)}"
        faults.apply(lab, "link-down", "gwa")
        assert wait_for(lambda: routes_on(lab, "eth1"), 3) is not None, \
            moved(lab, agent, "eth1", 3, "gwb silent, then eth0's link down")
        assert wait_for(lambda: agent.metrics().get(BOTH_DOWN) == 1.0, 3) is not None, (
            f"gwb silent and eth0's link down: {BOTH_DOWN} is "
            f"{agent.metrics().get(BOTH_DOWN)} after 3 s, expected 1\n{agent.tail()}"
        )
        want = {ACTIVE.format("secondary"): 1.0, CARRIER.format("primary"): 0.0}
        seen = picked(agent.metrics(), want)
        assert seen == want, f"gwb silent and eth0's link down: metrics {seen}, expected {want}"
        carrier = failovers(agent, "carrier")
        assert carrier == carrier_before + 1, \
            f"failovers_total{{carrier}} is {carrier}, expected {carrier_before + 1}"
        time.sleep(1.0)  # twenty more probe rounds, all lost: still on eth1
        assert routes_on(lab, "eth1"), \
            f"1 s on, srv's default routes left eth1 for {default_routes(lab)}\n{agent.tail()}"
        faults.heal(lab, "gwb")
        assert wait_for(lambda: agent.uplinks_up()["secondary"] == 1.0, 5) is not None, (
            f"heal of gwb: uplink_up is {agent.uplinks_up()} after 5 s, expected secondary 1"
            f"\n{agent.tail()}"
        )
        assert routes_on(lab, "eth1"), \
            f"gwb healed, eth0 still down: srv's default routes are on {default_routes(lab)}"
        lost = unreached(lab)
        assert lost == [], f"gwb healed, routes on eth1: srv gets no reply from {lost}"
    finally:
        faults.heal(lab, "gwb")
        faults.heal(lab, "gwa")
        # Waited for here too, so that a failure above leaves the next test on the primary.
        back = wait_for(lambda: routes_on(lab, "eth0"), 15)
    assert back is not None, moved(lab, agent, "eth0", 15, "heal of gwa and gwb")
    # The secondary was UP by then: the way back is a failback, held down like any other.
    failback, carrier = failovers(agent, "failback"), failovers(agent, "carrier")
    assert (failback, carrier) == (failback_before + 1, carrier_before + 1), (
        f"failovers_total failback, carrier: {failback}, {carrier}; expected "
        f"{failback_before + 1}, {carrier_before + 1}"
    )
    lost = unreached(lab)
    assert lost == [], f"back on eth0: srv gets no reply from {lost}"


def test_icmp_gateway_probes_move_the_routes(agent, own_agent, lab, tmp_path, wait_for):
    """`method: icmp`: echo to the gateways (v4 and v6) instead of ARP/ND catches a silent
    gateway too."""
    with own_agent(tmp_path, probe={"method": "icmp"},
                   failback={"hold_down_s": 1}) as icmp:
        assert "method=icmp" in icmp.log_path.read_text(), \
            f"the agent with probe.method icmp does not log method=icmp\n{icmp.tail()}"
        assert routes_on(lab, "eth0"), \
            f"icmp agent started: srv's default routes are on {default_routes(lab)}, want eth0"
        faults.apply(lab, "gateway-silent", "gwa")
        try:
            assert wait_for(lambda: routes_on(lab, "eth1"), 3) is not None, \
                moved(lab, icmp, "eth1", 3, "gwa silent, icmp probes")
            lost = unreached(lab)
            assert lost == [], f"gwa silent, routes on eth1: srv gets no reply from {lost}"
            key = 'netwatch_agent_failovers_total{reason="gateway"}'
            gateway = icmp.metrics().get(key)
            assert gateway == 1.0, f"gwa silent, icmp probes: {key} is {gateway}, expected 1"
        finally:
            faults.heal(lab, "gwa")
        assert wait_for(lambda: routes_on(lab, "eth0"), 15) is not None, \
            moved(lab, icmp, "eth0", 15, "heal of gwa, icmp probes")


def test_manual_failback_waits_for_sigusr1(agent, own_agent, lab, tmp_path, wait_for):
    """`failback.mode: manual`: after heal the routes stay on the secondary, the primary UP
    for several hold-downs, until the operator sends SIGUSR1."""
    with own_agent(tmp_path, failback={"mode": "manual", "hold_down_s": 1}) as man:
        faults.apply(lab, "gateway-silent", "gwa")
        try:
            assert wait_for(lambda: routes_on(lab, "eth1"), 3) is not None, \
                moved(lab, man, "eth1", 3, "gwa silent, manual failback")
        finally:
            faults.heal(lab, "gwa")
        assert wait_for(lambda: man.uplinks_up()["primary"] == 1.0, 10) is not None, \
            f"heal of gwa: uplink_up is {man.uplinks_up()} after 10 s, expected primary 1" \
            f"\n{man.tail()}"
        time.sleep(3.0)  # three hold-downs: an automatic failback would have happened
        assert routes_on(lab, "eth1"), (
            f"manual failback, no SIGUSR1: srv's default routes are on {default_routes(lab)}, "
            f"expected both kept on eth1\n{man.tail()}"
        )
        active = man.metrics().get(ACTIVE.format("secondary"))
        assert active == 1.0, f"manual failback: active_uplink{{secondary}} is {active}, want 1"
        os.kill(man.pid, signal.SIGUSR1)
        assert wait_for(lambda: routes_on(lab, "eth0"), 3) is not None, \
            moved(lab, man, "eth0", 3, "SIGUSR1 (manual failback)")
        want = {'netwatch_agent_failovers_total{reason="operator"}': 1.0,
                'netwatch_agent_failovers_total{reason="failback"}': 0.0}
        after = man.metrics()
        seen = {key: after.get(key, 0.0) for key in want}
        assert seen == want, f"after SIGUSR1: {seen}, expected {want}"
        lost = unreached(lab)
        assert lost == [], f"after SIGUSR1, routes on eth0: srv gets no reply from {lost}"


def test_the_agent_runs_in_a_fresh_image_without_the_cli(agent):
    """`netwatch agent` execs a fresh image once the site file is read (netwatch.runtime.lean):
    the PID it was started as is the running agent (the fixture saw both uplinks UP through
    its metrics), its command line still names its site file, and the CLI's config
    validation (pydantic, 15 MB of RSS) is not in its memory."""
    cmdline = Path(f"/proc/{agent.pid}/cmdline").read_bytes().split(b"\0")
    assert b"agent" in cmdline and str(agent.site_file).encode() in cmdline, cmdline
    maps = Path(f"/proc/{agent.pid}/maps").read_text()
    assert "_pydantic_core" not in maps, "the agent still holds pydantic"
    assert agent.uplinks_up() == dict.fromkeys(ROLES, 1.0)
