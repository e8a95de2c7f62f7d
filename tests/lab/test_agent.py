"""The uplink agent in the lab, IPv4 and IPv6: each fault on the primary moves the default
routes to the secondary and traffic from srv to inet flows again; heal brings them back after
the hold-down; both uplinks dead keeps the routes, unless the active one's link is gone and
the other's is up (then they move to it); ICMP gateway probes; manual failback by SIGUSR1.
The metrics endpoint shows every change.

One agent process (`netwatch agent --netns <srv>`) serves the module; a test that needs
another site file (`method: icmp`, `failback.mode: manual`) stops it, runs its own, and starts
it again. Every agent is stopped by its PID whatever happens. About 60 s in all.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import yaml

from netwatch.lab import faults

pytestmark = pytest.mark.timeout(240)

V4_TARGET, V6_TARGET = "203.0.113.1", "2001:db8:203::1"


def default_dev(lab, family: str) -> str | None:
    out = lab.exec("srv", "ip", family, "route", "show", "default").stdout
    found = re.search(r"dev (\S+)", out)
    return found.group(1) if found else None


def routes_on(lab, dev: str) -> bool:
    return default_dev(lab, "-4") == dev and default_dev(lab, "-6") == dev


def wait_for(check, timeout_s: float, step_s: float = 0.05) -> float | None:
    """Seconds until check() held, or None after timeout_s."""
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if check():
            return time.monotonic() - start
        time.sleep(step_s)
    return None


def reaches(lab, target: str) -> bool:
    argv = ["ping", "-c", "1", "-W", "1", target]
    return lab.exec("srv", *argv).returncode == 0


def metrics(lab) -> dict[str, float]:
    text = lab.exec("srv", "curl", "-sf", "http://127.0.0.1:9110/metrics").stdout
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


class AgentProcess:
    """`netwatch agent --config SITE --netns <srv>`, logging to `log_path`; stopped by PID."""

    def __init__(self, lab, site_file, log_path):
        self.lab, self.site_file, self.log_path = lab, site_file, log_path
        self.proc: subprocess.Popen | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def tail(self) -> str:
        return self.log_path.read_text()[-3000:]

    def start(self) -> None:
        """Start it and wait until both uplinks are judged UP (a fresh process)."""
        with open(self.log_path, "a") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "netwatch.cli", "agent", "--config",
                 str(self.site_file), "--netns", self.lab.ns("srv")],
                stdout=log, stderr=subprocess.STDOUT,
            )
        up = 'netwatch_agent_uplink_up{{uplink="{}"}}'
        assert wait_for(lambda: self.proc.poll() is None and all(
            metrics(self.lab).get(up.format(role)) == 1.0 for role in ("primary", "secondary")),
            10, 0.2), self.tail()

    def stop(self) -> None:
        """SIGTERM, and it must exit 0; SIGKILL if it did not exit at all."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            assert proc is None or proc.returncode == 0, self.tail()
            return
        os.kill(proc.pid, signal.SIGTERM)
        try:
            assert proc.wait(10) == 0, self.tail()
        finally:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(5)


@pytest.fixture(scope="module")
def agent(lab, tmp_path_factory):
    shared = AgentProcess(lab, lab.site_file, tmp_path_factory.mktemp("agent") / "agent.log")
    try:
        shared.start()
        yield shared
    finally:
        shared.stop()


@contextlib.contextmanager
def own_agent(shared: AgentProcess, lab, tmp_path, **agent_section):
    """Replace the shared agent, for the block, by one running a copy of the lab's site file
    whose `agent` section is updated with `agent_section` (one level deep)."""
    raw = yaml.safe_load(lab.site_file.read_text())
    for key, value in agent_section.items():
        raw["agent"][key] = {**raw["agent"].get(key, {}), **value}
    site_file = tmp_path / "site.yaml"
    site_file.write_text(yaml.safe_dump(raw, sort_keys=False))
    mine = AgentProcess(lab, site_file, tmp_path / "agent.log")
    shared.stop()
    try:
        mine.start()
        yield mine
    finally:
        try:
            mine.stop()
        finally:
            shared.start()


def failovers(lab, reason: str) -> float:
    return metrics(lab).get(f'netwatch_agent_failovers_total{{reason="{reason}"}}', 0.0)


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
def test_fault_on_primary_moves_routes_and_heal_brings_them_back(agent, lab, fault, reason):
    log_path = agent.log_path
    assert wait_for(lambda: routes_on(lab, "eth0"), 10), "not on the primary at the start"
    before = metrics(lab)
    faults.apply(lab, fault[0], "gwa", *fault[1:])
    try:
        took = wait_for(lambda: routes_on(lab, "eth1"), 3)
        assert took is not None, log_path.read_text()[-3000:]
        assert reaches(lab, V4_TARGET) and reaches(lab, V6_TARGET)
        after = metrics(lab)
        assert after['netwatch_agent_active_uplink{uplink="secondary"}'] == 1.0
        assert after['netwatch_agent_uplink_up{uplink="primary"}'] == 0.0
        if reason:
            key = f'netwatch_agent_failovers_total{{reason="{reason}"}}'
            assert after.get(key, 0) == before.get(key, 0) + 1
    finally:
        faults.heal(lab, "gwa")
    healed_at = time.monotonic()
    assert wait_for(lambda: routes_on(lab, "eth0"), 15), log_path.read_text()[-3000:]
    # Not sooner than the hold-down (5 s in the lab site) after the primary recovered.
    assert time.monotonic() - healed_at >= 5.0
    assert reaches(lab, V4_TARGET) and reaches(lab, V6_TARGET)
    assert metrics(lab)['netwatch_agent_active_uplink{uplink="primary"}'] == 1.0


def test_operator_route_change_is_repaired(agent, lab):
    assert wait_for(lambda: routes_on(lab, "eth0"), 10)
    repairs = metrics(lab).get('netwatch_agent_route_changes_total{cause="repair",family="ipv4"}',
                               0.0)
    lab.exec("srv", "ip", "route", "replace", "default", "via", "100.64.2.1", "dev", "eth1")
    assert wait_for(lambda: default_dev(lab, "-4") == "eth0", 3)
    after = metrics(lab)['netwatch_agent_route_changes_total{cause="repair",family="ipv4"}']
    assert after == repairs + 1


def test_admin_down_flushes_routes_and_tables_and_both_come_back(agent, lab):
    """Admin-down on srv's own eth0 makes the kernel delete every route through it (the main
    default and the probe table 1000); the agent fails over, then restores both."""
    log_path = agent.log_path
    assert wait_for(lambda: routes_on(lab, "eth0"), 10)
    lab.exec("srv", "ip", "link", "set", "eth0", "down")
    try:
        assert wait_for(lambda: routes_on(lab, "eth1"), 2), log_path.read_text()[-3000:]
    finally:
        lab.exec("srv", "ip", "link", "set", "eth0", "up")
    assert wait_for(lambda: routes_on(lab, "eth0"), 15), log_path.read_text()[-3000:]
    table = lab.exec("srv", "ip", "route", "show", "table", "1000").stdout
    assert "default via 100.64.1.1 dev eth0" in table


def test_both_uplinks_dead_keeps_the_routes_and_heal_restores_service(agent, lab):
    """Both gateways silent at once: no uplink to go to, so the default routes (v4 and v6) stay
    where they are and the metrics say both are down; heal brings normal service back."""
    both = "netwatch_agent_both_uplinks_down"
    assert wait_for(lambda: routes_on(lab, "eth0"), 10)
    faults.apply(lab, "gateway-silent", "gwa")
    faults.apply(lab, "gateway-silent", "gwb")
    try:
        assert wait_for(lambda: metrics(lab).get(both) == 1.0, 5), agent.tail()
        # Usually still via eth0 (the secondary was failing too when the primary went
        # DOWN); via eth1 if gwb's fault landed a probe round later. Never removed.
        dev = default_dev(lab, "-4")
        assert dev in ("eth0", "eth1") and routes_on(lab, dev), agent.tail()
        role = "primary" if dev == "eth0" else "secondary"
        after = metrics(lab)
        assert after[f'netwatch_agent_active_uplink{{uplink="{role}"}}'] == 1.0
        assert after['netwatch_agent_uplink_up{uplink="primary"}'] == 0.0
        assert after['netwatch_agent_uplink_up{uplink="secondary"}'] == 0.0
        time.sleep(1.0)  # twenty more probe rounds, all lost: still the same routes
        assert routes_on(lab, dev) and metrics(lab).get(both) == 1.0
    finally:
        faults.heal(lab, "gwa")
        faults.heal(lab, "gwb")
    assert wait_for(lambda: metrics(lab).get(both) == 0.0 and routes_on(lab, "eth0"), 15), \
        agent.tail()
    assert reaches(lab, V4_TARGET) and reaches(lab, V6_TARGET)


def test_primary_link_lost_while_secondary_silent_moves_to_the_live_link(agent, lab):
    """The secondary's gateway silent (eth1's carrier up), then eth0 loses its carrier: both
    uplinks are DOWN, but a route through a dead link carries nothing, so the default routes
    (v4 and v6) go to eth1 and stay there; they work as soon as gwb answers again. Once eth0
    is back, the primary returns by failback, after its hold-down."""
    up = 'netwatch_agent_uplink_up{{uplink="{}"}}'
    # Both UP first: a secondary still rising from an earlier test could turn UP between the
    # check below and the fault, and the routes would then move to an UP uplink.
    assert wait_for(lambda: routes_on(lab, "eth0") and all(
        metrics(lab).get(up.format(role)) == 1.0 for role in ("primary", "secondary")), 10), \
        agent.tail()
    carrier_before, failback_before = failovers(lab, "carrier"), failovers(lab, "failback")
    faults.apply(lab, "gateway-silent", "gwb")
    back = None
    try:
        assert wait_for(lambda: metrics(lab).get(up.format("secondary")) == 0.0, 5), agent.tail()
        assert routes_on(lab, "eth0")  # the secondary is no place to go while eth0 works
        faults.apply(lab, "link-down", "gwa")
        assert wait_for(lambda: routes_on(lab, "eth1"), 3), agent.tail()
        assert wait_for(lambda: metrics(lab).get("netwatch_agent_both_uplinks_down") == 1.0,
                        3), agent.tail()
        after = metrics(lab)
        assert after['netwatch_agent_active_uplink{uplink="secondary"}'] == 1.0
        assert after['netwatch_agent_uplink_carrier{uplink="primary"}'] == 0.0
        assert failovers(lab, "carrier") == carrier_before + 1
        time.sleep(1.0)  # twenty more probe rounds, all lost: still on eth1
        assert routes_on(lab, "eth1"), agent.tail()
        faults.heal(lab, "gwb")
        assert wait_for(lambda: metrics(lab).get(up.format("secondary")) == 1.0, 5), agent.tail()
        assert routes_on(lab, "eth1")
        assert reaches(lab, V4_TARGET) and reaches(lab, V6_TARGET)
    finally:
        faults.heal(lab, "gwb")
        faults.heal(lab, "gwa")
        # Waited for here too, so that a failure above leaves the next test on the primary.
        back = wait_for(lambda: routes_on(lab, "eth0"), 15)
    assert back is not None, agent.tail()
    # The secondary was UP by then: the way back is a failback, held down like any other.
    assert failovers(lab, "failback") == failback_before + 1
    assert failovers(lab, "carrier") == carrier_before + 1
    assert reaches(lab, V4_TARGET) and reaches(lab, V6_TARGET)


def test_icmp_gateway_probes_move_the_routes(agent, lab, tmp_path):
    """`method: icmp`: echo to the gateways (v4 and v6) instead of ARP/ND catches a silent
    gateway too."""
    with own_agent(agent, lab, tmp_path, probe={"method": "icmp"},
                   failback={"hold_down_s": 1}) as icmp:
        assert "method=icmp" in icmp.log_path.read_text()
        assert routes_on(lab, "eth0")
        faults.apply(lab, "gateway-silent", "gwa")
        try:
            assert wait_for(lambda: routes_on(lab, "eth1"), 3), icmp.tail()
            assert reaches(lab, V4_TARGET) and reaches(lab, V6_TARGET)
            key = 'netwatch_agent_failovers_total{reason="gateway"}'
            assert metrics(lab).get(key) == 1.0
        finally:
            faults.heal(lab, "gwa")
        assert wait_for(lambda: routes_on(lab, "eth0"), 15), icmp.tail()


def test_manual_failback_waits_for_sigusr1(agent, lab, tmp_path):
    """`failback.mode: manual`: after heal the routes stay on the secondary, the primary UP
    for several hold-downs, until the operator sends SIGUSR1."""
    with own_agent(agent, lab, tmp_path, failback={"mode": "manual", "hold_down_s": 1}) as man:
        faults.apply(lab, "gateway-silent", "gwa")
        try:
            assert wait_for(lambda: routes_on(lab, "eth1"), 3), man.tail()
        finally:
            faults.heal(lab, "gwa")
        assert wait_for(lambda: metrics(lab).get('netwatch_agent_uplink_up{uplink="primary"}')
                        == 1.0, 10), man.tail()
        time.sleep(3.0)  # three hold-downs: an automatic failback would have happened
        assert routes_on(lab, "eth1")
        assert metrics(lab)['netwatch_agent_active_uplink{uplink="secondary"}'] == 1.0
        os.kill(man.pid, signal.SIGUSR1)
        assert wait_for(lambda: routes_on(lab, "eth0"), 3), man.tail()
        after = metrics(lab)
        assert after.get('netwatch_agent_failovers_total{reason="operator"}') == 1.0
        assert after.get('netwatch_agent_failovers_total{reason="failback"}', 0.0) == 0.0
        assert reaches(lab, V4_TARGET) and reaches(lab, V6_TARGET)
