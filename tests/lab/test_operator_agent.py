"""The agent's operator control in the lab, as an operator runs it (`netwatch failover` and
`netwatch status`, subprocesses on the agent's control socket): a forced failover moves both
of srv's default routes, returns them by itself when its lease expires, is applied again by
an agent restarted while it holds, and `--auto` ends it at once. (A client of another uid
without group access is refused by the socket: tests/unit/control/test_server.py.)

The module's agent (the conftest's `agent`) is restarted once; every lease is ended after
each test, whatever happened. About 40 s.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from netwatch.config import load_site

pytestmark = pytest.mark.timeout(180)


def routes(lab) -> dict[str, str | None]:
    return {"IPv4": lab.default_dev("srv", 4), "IPv6": lab.default_dev("srv", 6)}


def on(lab, dev: str) -> bool:
    return routes(lab) == {"IPv4": dev, "IPv6": dev}


@pytest.fixture
def netwatch(lab):
    """`netwatch(*argv)`: the CLI on the lab's site file; the CompletedProcess."""

    def run(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "netwatch.cli", *argv, "--config", str(lab.site_file)],
            capture_output=True, text=True, timeout=30,
        )

    return run


@pytest.fixture
def forcing(lab, agent, netwatch, wait_for):
    """The module's agent on the primary before; every forced failover ended after."""
    assert wait_for(lambda: on(lab, "eth0"), 15, 0.2) is not None, \
        f"srv's routes are {routes(lab)} before the test\n{agent.tail()}"

    def served() -> bool:  # the primary's hold-down, so its end is not what a test waits for
        failback = json.loads(ok(netwatch("status", "--json")))["agent"]["failback"]
        return (failback["primary_stable_for_s"] or 0) >= failback["hold_down_s"]

    assert wait_for(served, 15, 0.5) is not None, agent.tail()
    try:
        yield netwatch
    finally:
        netwatch("failover", "--auto", "--reason", "test cleanup")


def ok(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_a_forced_failover_moves_both_routes_and_expires_by_itself(lab, agent, forcing,
                                                                    wait_for):
    started = time.monotonic()
    out = ok(forcing("failover", "--to", "secondary", "--reason", "lab CHG-1", "--for", "3s"))
    assert "failover to secondary" in out
    assert on(lab, "eth1"), f"{routes(lab)} once the failover answered\n{agent.tail()}"
    status = json.loads(ok(forcing("status", "--json")))["agent"]
    assert status["forced"]["uplink"] == "secondary" and status["forced"]["applied"]
    assert [o["target"] for o in status["overrides"]] == ["secondary"]
    back = wait_for(lambda: on(lab, "eth0"), 10, 0.1)
    assert back is not None, f"still {routes(lab)} after the lease\n{agent.tail()}"
    took = time.monotonic() - started
    # The primary served its hold-down while forced away: back at the lease's end, not later.
    assert 2.5 <= took <= 5.0, f"routes back after {took:.1f} s for a 3 s lease"
    assert "lease_expired" in agent.tail()


def test_auto_ends_a_forced_failover_at_once(lab, agent, forcing):
    ok(forcing("failover", "--to", "secondary", "--reason", "lab CHG-2", "--for", "10m"))
    assert on(lab, "eth1")
    out = ok(forcing("failover", "--auto", "--reason", "lab CHG-2 done"))
    assert "ended forced failover" in out
    assert on(lab, "eth0"), f"{routes(lab)} once --auto answered\n{agent.tail()}"


def test_a_forced_failover_survives_an_agent_restart(lab, agent, forcing, wait_for):
    ok(forcing("failover", "--to", "secondary", "--reason", "lab CHG-3", "--for", "10m"))
    assert on(lab, "eth1")
    agent.stop()
    agent.start()  # waits until both uplinks are UP: the hold-down is served by then
    time.sleep(6)  # past the lab's 5 s hold-down: a failback would have happened
    assert on(lab, "eth1"), f"{routes(lab)} after the restart\n{agent.tail()}"
    status = json.loads(ok(forcing("status", "--json")))["agent"]
    assert status["forced"]["uplink"] == "secondary"
    ok(forcing("failover", "--auto", "--reason", "lab CHG-3 done"))
    assert wait_for(lambda: on(lab, "eth0"), 8, 0.1) is not None, agent.tail()


def test_a_marked_probe_never_leaves_through_the_other_uplink(lab, agent, wait_for):
    """With the secondary set admin-down the kernel flushes its probe table's route; a probe
    marked for the secondary then meets the table's unreachable default, instead of falling
    through to the main table and out of eth0 (a false "beyond answers")."""
    site = load_site(lab.site_file).agent
    mark, table = site.fwmark_base + 1, site.route_table_base + 1
    shown = lab.exec("srv", "ip", "route", "show", "table", str(table)).stdout
    assert "unreachable default" in shown and "metric 1000000" in shown, shown
    shown6 = lab.exec("srv", "ip", "-6", "route", "show", "table", str(table)).stdout
    assert "unreachable default" in shown6, shown6
    lab.exec("srv", "ip", "link", "set", "eth1", "down")
    try:
        got = lab.exec("srv", "ip", "route", "get", "198.51.100.1", "mark", str(mark))
        assert got.returncode != 0 and "eth0" not in got.stdout, \
            f"a probe marked for the secondary: {got.stdout or got.stderr}"
    finally:
        lab.exec("srv", "ip", "link", "set", "eth1", "up")
        assert wait_for(lambda: agent.uplinks_up() == {"primary": 1.0, "secondary": 1.0},
                        15, 0.2) is not None, agent.tail()
