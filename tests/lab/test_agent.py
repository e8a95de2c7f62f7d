"""The uplink agent in the lab, IPv4 and IPv6: each fault on the primary moves the default
routes to the secondary and traffic from srv to inet flows again; heal brings them back after
the hold-down; the metrics endpoint shows every change.

One agent process (`netwatch agent --netns <srv>`) serves the whole module; it is stopped by
its PID whatever happens. About 60 s in all (the lab's hold_down_s is 5).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest

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


@pytest.fixture(scope="module")
def agent(lab, tmp_path_factory):
    log_path = tmp_path_factory.mktemp("agent") / "agent.log"
    log = open(log_path, "w")  # noqa: SIM115 - closed in the finally below
    proc = subprocess.Popen(
        [sys.executable, "-m", "netwatch.cli", "agent", "--config", str(lab.site_file),
         "--netns", lab.ns("srv")],
        stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        assert wait_for(lambda: metrics(lab).get('netwatch_agent_uplink_up{uplink="primary"}')
                        == 1.0, 10, 0.2), log_path.read_text()
        yield proc, log_path
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            assert proc.wait(10) == 0, log_path.read_text()
        finally:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
            log.close()


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
    _, log_path = agent
    assert wait_for(lambda: routes_on(lab, "eth0"), 10), "not on the primary at the start"
    before = metrics(lab)
    lab.fault(fault[0], "gwa", *fault[1:])
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
        lab.heal("gwa")
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
    _, log_path = agent
    assert wait_for(lambda: routes_on(lab, "eth0"), 10)
    lab.exec("srv", "ip", "link", "set", "eth0", "down")
    try:
        assert wait_for(lambda: routes_on(lab, "eth1"), 2), log_path.read_text()[-3000:]
    finally:
        lab.exec("srv", "ip", "link", "set", "eth0", "up")
    assert wait_for(lambda: routes_on(lab, "eth0"), 15), log_path.read_text()[-3000:]
    table = lab.exec("srv", "ip", "route", "show", "table", "1000").stdout
    assert "default via 100.64.1.1 dev eth0" in table
