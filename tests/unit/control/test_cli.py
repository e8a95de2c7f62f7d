"""The operator commands as a user runs them: `.venv/bin/python -m netwatch.cli ...` against
real control servers, checking what is printed and the exit code a script would test."""

from __future__ import annotations

import contextlib
import io
import json
import signal
import subprocess
import sys

import pytest

from netwatch import exitcodes
from netwatch.cli import main
from netwatch.control import client
from netwatch.control.protocol import Command

NOBODY = 65534


@pytest.fixture
def both(serve, site_copy, agent_status, controller_status):
    """An agent and a controller answering with the lab-like statuses, and a site file that
    names their sockets."""
    agent = serve(daemon="agent")
    controller = serve(daemon="controller")
    agent.handler.statuses["agent"] = agent_status
    controller.handler.statuses["controller"] = controller_status
    agent.handler.now = controller.handler.now = controller_status["now"]
    site = site_copy(control={"agent": agent.path, "controller": controller.path})
    return agent, controller, str(site)


def test_status_prints_a_table_of_both_daemons(both, netwatch):
    agent, _, site = both
    client.request(agent.path, Command.FAILOVER,
                   {"to": "secondary", "reason": "CHG-42 optics", "for_s": 3000})
    result = netwatch("status", "--config", site)
    assert result.returncode == exitcodes.OK, result.stderr
    lines = result.stdout.splitlines()
    row = {line.split()[0]: line.split() for line in lines if line.startswith("  ")}
    assert row["primary"][:5] == ["primary", "eth0", "100.64.1.1", "down", "up"]
    assert "gateway 100.64.1.1 silent" in lines[2]
    assert row["secondary"][7] == "*"  # the active uplink
    assert row["t2"][2] == "failed" and "healthy in 4m10s" in " ".join(row["t2"])
    assert "drain: withdraw in 20s" in " ".join(row["t4"])
    assert row["198.51.100.0/24"][1:] == ["normal", "withdrawn", "prepend", "x3",
                                           "graceful_shutdown"]
    assert "safety hold: ipv4 kept announced to t3" in result.stdout
    override = next(line for line in lines if line.startswith("  a1 "))
    assert row["a1"][1:5] == ["agent", "failover", "to", "secondary"]
    assert "50m00s" in row["a1"] and override.endswith("CHG-42 optics")


def test_status_shows_what_answered_when_one_daemon_is_down(serve, site_copy, agent_status,
                                                           netwatch, ctl_dir):
    agent = serve(daemon="agent")
    agent.handler.statuses["agent"] = agent_status
    site = site_copy(control={"agent": agent.path, "controller": str(ctl_dir / "gone.sock")})
    result = netwatch("status", "--config", str(site))
    assert result.returncode == exitcodes.OK
    assert "agent on srv (site lab)" in result.stdout
    assert "controller: unreachable:" in result.stdout and "gone.sock" in result.stdout
    shown = json.loads(netwatch("status", "--json", "--config", str(site)).stdout)
    assert shown["agent"]["mode"] == "on_secondary"
    assert shown["controller"]["error"]["code"] == "unreachable"


def test_nothing_answering_is_unavailable(netwatch, ctl_dir):
    result = netwatch("status", "--socket", str(ctl_dir / "none.sock"))
    assert result.returncode == exitcodes.UNAVAILABLE == 69
    result = netwatch("failover", "--to", "secondary", "--reason", "x",
                      "--socket", str(ctl_dir / "none.sock"))
    assert result.returncode == 69
    assert "no such socket (is the daemon running?)" in result.stderr


def test_failover_and_back(both, netwatch):
    agent, _, site = both
    result = netwatch("failover", "--to", "secondary", "--reason", "CHG-42", "--for", "30m",
                      "--config", site)
    assert result.returncode == exitcodes.OK, result.stderr
    assert result.stdout.startswith("agent: a1: failover to secondary")
    lease = agent.handler.book.leases[0]
    assert (lease.target, lease.expires_at - lease.created_at, lease.reason) == (
        "secondary", 1800, "CHG-42")
    result = netwatch("failover", "--auto", "--reason", "done", "--config", site)
    assert result.returncode == exitcodes.OK
    assert "ended forced failover a1" in result.stdout
    assert agent.handler.book.leases == ()


def test_a_refused_drain_exits_3_with_the_reason_and_force_overrides(both, netwatch):
    _, controller, site = both
    controller.handler.interlocked = frozenset({"t1"})
    result = netwatch("upstream", "drain", "t1", "--reason", "CHG-7", "--config", site)
    assert result.returncode == exitcodes.REFUSED == 3
    assert result.stderr.startswith("netwatch: controller: refused: draining t1 would leave")
    result = netwatch("upstream", "drain", "t1", "--reason", "CHG-7", "--force",
                      "--graceful-s", "2", "--config", site)
    assert result.returncode == exitcodes.OK, result.stderr
    assert "c1: drain t1, graceful 2 s (forced)" in result.stdout


def test_upstream_prepend_restore_and_override_commands(both, netwatch):
    _, controller, site = both
    assert netwatch("upstream", "prepend", "t3", "3", "--reason", "lossy", "--config",
                    site).returncode == 0
    assert controller.handler.book.leases[0].count == 3
    result = netwatch("override", "extend", "c1", "--for", "2h", "--reason", "longer",
                      "--config", site)
    assert result.returncode == 0 and "c1 (prepend t3 x3) renewed" in result.stdout
    listing = json.loads(netwatch("overrides", "--json", "--config", site).stdout)
    assert [x["id"] for x in listing["controller"]["overrides"]] == ["c1"]
    assert listing["agent"]["overrides"] == []
    result = netwatch("upstream", "restore", "t3", "--reason", "fixed", "--config", site)
    assert result.returncode == 0 and "ended c1 (prepend t3 x3)" in result.stdout
    result = netwatch("override", "delete", "c1", "--reason", "again", "--config", site)
    assert result.returncode == exitcodes.FAILURE
    assert "not_found: no override c1" in result.stderr
    result = netwatch("upstream", "restore", "t9", "--reason", "x", "--config", site)
    assert result.returncode == exitcodes.FAILURE and "no upstream t9" in result.stderr


def test_overrides_table(both, netwatch):
    agent, controller, site = both
    client.request(agent.path, Command.FAILOVER, {"to": "secondary", "reason": "CHG-42"})
    client.request(controller.path, Command.DRAIN, {"upstream": "t4", "reason": "CHG-43"})
    lines = netwatch("overrides", "--config", site).stdout.splitlines()
    assert lines[0].split() == ["ID", "DAEMON", "FORCES", "WHO", "LEFT", "EXPIRES", "REASON"]
    assert lines[1].split()[:4] == ["a1", "agent", "failover", "to"]
    assert lines[2].split()[:4] == ["c1", "controller", "drain", "t4"]
    assert lines[1].endswith("CHG-42") and lines[2].endswith("CHG-43")


@pytest.mark.parametrize("argv", [
    ["failover", "--to", "secondary"],  # no reason
    ["failover", "--to", "secondary", "--reason", ""],
    ["failover", "--to", "sideways", "--reason", "x"],
    ["failover", "--to", "secondary", "--reason", "x", "--for", "5x"],
    ["failover", "--to", "secondary", "--reason", "x", "--for", "8d"],
    ["failover", "--auto", "--reason", "x", "--for", "1h"],
    ["failover", "--to", "primary", "--auto", "--reason", "x"],
    ["upstream", "prepend", "t1", "11", "--reason", "x"],
    ["upstream", "drain", "T1", "--reason", "x"],
    ["override", "delete", "7", "--reason", "x"],
    ["override", "delete", "z7", "--reason", "x"],
    ["events", "--since", "yesterday"],
    ["status", "--config", "a.yaml", "--socket", "b.sock"],
])
def test_a_wrong_command_line_exits_64(netwatch, argv, ctl_dir):
    result = netwatch(*argv, "--timeout", "1") if argv[0] != "status" else netwatch(*argv)
    assert result.returncode == exitcodes.USAGE == 64, result.stderr
    assert result.stderr.strip() and "Traceback" not in result.stderr


def test_a_bad_or_missing_site_file(netwatch, tmp_path):
    missing = netwatch("status", "--config", str(tmp_path / "nope.yaml"))
    assert missing.returncode == exitcodes.NOINPUT
    bad = tmp_path / "bad.yaml"
    bad.write_text("site: Bad Name\n")
    assert netwatch("status", "--config", str(bad)).returncode == exitcodes.DATAERR


def cli_in_process(*argv: str) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `netwatch ARGV` run in this process: for a forked child
    that has dropped to another uid (which may not exec the root-owned interpreter here)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(argv))
        except SystemExit as exc:
            code = exc.code
    return code, out.getvalue(), err.getvalue()


def test_permission_denied_by_the_socket_exits_77(serve, as_user):
    running = serve(daemon="agent", mode=0o660)
    code, _, err = as_user(NOBODY, NOBODY, lambda: cli_in_process(
        "status", "--socket", running.path))
    assert code == exitcodes.NOPERM == 77
    assert "permission denied" in err


def test_a_reader_gets_status_but_a_write_exits_77(serve, as_user, agent_status):
    running = serve(daemon="agent", mode=0o666)
    running.handler.statuses["agent"] = agent_status
    code, out, _ = as_user(NOBODY, NOBODY, lambda: cli_in_process(
        "status", "--socket", running.path))
    assert code == 0 and "secondary  eth1" in out
    code, _, err = as_user(NOBODY, NOBODY, lambda: cli_in_process(
        "failover", "--to", "secondary", "--reason", "x", "--socket", running.path))
    assert code == 77
    assert "permission: nobody (uid 65534) may read but not failover" in err


def test_events_lists_both_daemons_merged_by_time(both, netwatch):
    agent, controller, site = both
    client.request(agent.path, Command.FAILOVER, {"to": "secondary", "reason": "CHG-42"})
    controller.audit.record("transition", upstream="t2", to="failed", reason="blackhole")
    lines = netwatch("events", "--config", site).stdout.splitlines()
    assert len(lines) == 2
    assert "agent" in lines[0] and 'failover to=secondary for_s=3600.0 reason="CHG-42"' in lines[0]
    assert lines[0].endswith("ok: a1: failover to secondary")
    assert "controller  transition upstream=t2 to=failed reason=blackhole" in lines[1]
    as_json = [json.loads(x) for x in netwatch("events", "--json", "--config",
                                                site).stdout.splitlines()]
    assert [(e["daemon"], e["kind"]) for e in as_json] == [
        ("agent", "request"), ("controller", "transition")]
    assert netwatch("events", "--since", "1m", "--config", site).stdout.count("\n") == 2


def test_events_follow_streams_until_interrupted(both):
    agent, _, site = both
    proc = subprocess.Popen(
        [sys.executable, "-m", "netwatch.cli", "events", "--follow", "--config", site],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        agent.audit.record("failover", uplink="secondary", cause="gateway")
        assert "failover uplink=secondary cause=gateway" in proc.stdout.readline()
        agent.audit.record("failover", uplink="primary", cause="failback")
        assert "failover uplink=primary cause=failback" in proc.stdout.readline()
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 130
