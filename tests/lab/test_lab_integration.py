"""Integration tests on a real lab. They pin the BIRD 2 and ExaBGP 5 behaviour netwatch
depends on (sessions come up, routes are received with our AS path, withdrawals are seen), so
an upgrade that changes it fails here, loudly. Every check is made from outside: ping, ip,
birdc.
"""

from __future__ import annotations

import io
import time
from pathlib import Path

import pytest

from netwatch import exitcodes
from netwatch.lab import bird, faults, handle, netns
from netwatch.lab import lifecycle as lab_module
from netwatch.lab.handle import LabError

pytestmark = pytest.mark.lab

PREFIXES = ("198.51.100.0/24", "2001:db8:100::/48")


def ping(lab, node: str, target: str, *opts: str, count: int = 1) -> int:
    """Replies received by `count` pings from `node`."""
    argv = ["ping", "-n", "-q", "-c", str(count), "-W", "1", *opts, target]
    if count > 1:
        argv[5:5] = ["-i", "0.01"]
    out = lab.exec(node, *argv).stdout
    for line in out.splitlines():
        if "received" in line:
            return int(line.split(",")[1].split()[0])
    return 0


def eventually(check, timeout_s: float = 20.0, step_s: float = 0.2):
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(step_s)


def sessions(lab, node: str) -> dict[str, dict[str, str]]:
    return {
        name: p
        for name, p in bird.parse_protocols(lab.birdc(node, "show protocols")).items()
        if p["proto"] == "BGP"
    }


def inet_paths(lab, prefix: str) -> list[str]:
    return [
        p["as_path"] for p in bird.parse_routes(lab.birdc("inet", "show route all")).get(prefix, [])
    ]


def test_every_transit_holds_our_prefixes_with_our_as_path(lab):
    for transit in ("t1", "t2", "t3", "t4"):
        assert all("Established" in p["info"] for p in sessions(lab, transit).values())
        routes = bird.parse_routes(lab.birdc(transit, "show route all"))
        for prefix in PREFIXES:
            assert [p["as_path"] for p in routes[prefix]] == ["64500"], (transit, prefix)


def test_inet_learns_our_prefixes_through_every_transit(lab):
    for prefix in PREFIXES:
        assert sorted(inet_paths(lab, prefix)) == [f"6450{i} 64500" for i in range(1, 5)]


def test_srv_reaches_every_inet_target_over_both_families(lab):
    targets = [f"203.0.113.{i}" for i in range(1, 11)]
    targets += [f"2001:db8:203::{i:x}" for i in range(1, 11)]
    unreachable = [t for t in targets if ping(lab, "srv", t) != 1]
    assert unreachable == []


def test_birdc_in_exec_uses_the_nodes_socket(lab):
    proc = lab.exec("t1", "birdc", "show", "route")
    assert proc.returncode == 0 and "198.51.100.0/24" in proc.stdout


def test_link_down_on_uplink_drops_carrier_at_srv_and_heal_restores(healed):
    lab = healed
    faults.apply(lab, "link-down", "primary")
    link = lab.exec("srv", "ip", "-o", "link", "show", "eth0").stdout
    assert "NO-CARRIER" in link
    assert ping(lab, "srv", "203.0.113.1") == 0
    faults.heal(lab, "primary")
    assert eventually(lambda: ping(lab, "srv", "203.0.113.1") == 1)
    assert eventually(lambda: ping(lab, "srv", "2001:db8:203::1") == 1)


def test_link_down_on_transit_link_and_heal(healed):
    lab = healed
    faults.apply(lab, "link-down", "t1")
    assert "NO-CARRIER" in lab.exec("edge", "ip", "-o", "link", "show", "t1").stdout
    assert ping(lab, "edge", "203.0.113.1", "-I", "t1") == 0
    faults.heal(lab, "t1")
    assert eventually(lambda: ping(lab, "edge", "203.0.113.1", "-I", "t1") == 1)
    assert eventually(lambda: ping(lab, "edge", "2001:db8:203::1", "-I", "t1") == 1)


def test_gateway_silent_answers_nothing_with_carrier_up(healed):
    lab = healed
    faults.apply(lab, "gateway-silent", "gwa")
    lab.exec("srv", "ip", "neigh", "flush", "dev", "eth0")
    assert "LOWER_UP" in lab.exec("srv", "ip", "-o", "link", "show", "eth0").stdout
    assert ping(lab, "srv", "100.64.1.1") == 0
    assert ping(lab, "srv", "fe80::1%eth0") == 0
    neigh = lab.exec("srv", "ip", "neigh", "show", "100.64.1.1", "dev", "eth0").stdout
    assert "lladdr" not in neigh  # ARP went unanswered
    assert ping(lab, "srv", "100.64.2.1") == 1  # the other gateway is fine
    faults.heal(lab, "gwa")
    assert eventually(lambda: ping(lab, "srv", "100.64.1.1") == 1)
    assert eventually(lambda: ping(lab, "srv", "fe80::1%eth0") == 1)


def test_gateway_blackhole_answers_but_forwards_nothing(healed):
    lab = healed
    faults.apply(lab, "gateway-blackhole", "gwa")
    assert ping(lab, "srv", "100.64.1.1") == 1
    assert ping(lab, "srv", "fe80::1%eth0") == 1
    assert ping(lab, "srv", "203.0.113.2") == 0
    assert ping(lab, "srv", "2001:db8:203::2") == 0
    faults.heal(lab, "gwa")
    assert ping(lab, "srv", "203.0.113.2") == 1


def test_loss_drops_forwarded_traffic_and_keeps_bgp(healed):
    lab = healed
    faults.apply(lab, "loss", "t2", "100")
    assert ping(lab, "edge", "203.0.113.3", "-I", "t2", count=5) == 0
    assert all("Established" in p["info"] for p in sessions(lab, "t2").values())
    faults.heal(lab, "t2")
    faults.apply(lab, "loss", "50", "t2")  # both orders are accepted
    received = ping(lab, "edge", "203.0.113.3", "-I", "t2", count=60)
    # a reply crosses t2 twice: expected 60 * 0.25 = 15
    assert 2 <= received <= 40
    faults.heal(lab, "t2")
    assert ping(lab, "edge", "203.0.113.3", "-I", "t2", count=5) == 5


def test_latency_is_refused_without_netem(lab):
    probe = lab.exec("t3", "tc", "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms")
    if probe.returncode == 0:
        lab.exec("t3", "tc", "qdisc", "del", "dev", "lo", "root")
        pytest.skip("this kernel has netem; the refusal path is not reachable")
    with pytest.raises(LabError) as info:
        faults.apply(lab, "latency", "t3", "50")
    assert info.value.exit_code == exitcodes.UNAVAILABLE
    assert "netem" in str(info.value)
    assert "latency:t3" not in lab.read_state()["faults"]


def test_transit_blackhole_keeps_the_session_and_drops_traffic(healed):
    lab = healed
    faults.apply(lab, "transit-blackhole", "t3")
    assert ping(lab, "edge", "203.0.113.4", "-I", "t3") == 0
    assert ping(lab, "edge", "2001:db8:203::4", "-I", "t3") == 0
    assert ping(lab, "edge", "203.0.113.4", "-I", "t4") == 1
    assert all("Established" in p["info"] for p in sessions(lab, "t3").values())
    faults.heal(lab, "t3")
    assert ping(lab, "edge", "203.0.113.4", "-I", "t3") == 1


def test_session_reset_restarts_the_sessions_and_routes_return(lab):
    def since():
        out = lab.birdc("t4", "show protocols")
        return {
            line.split()[0]: line.split()[4] for line in out.splitlines() if line.startswith("edge")
        }

    before = since()
    time.sleep(0.05)
    faults.apply(lab, "session-reset", "t4")
    assert eventually(
        lambda: (
            since() != before
            and all("Established" in p["info"] for p in sessions(lab, "t4").values())
        )
    )
    assert eventually(
        lambda: all(bird.parse_routes(lab.birdc("t4", "show route all")).get(p) for p in PREFIXES)
    )


def test_transit_down_withdraws_at_inet_and_heal_restores(healed):
    lab = healed
    faults.apply(lab, "transit-down", "t2")
    assert lab.exec("t2", "birdc", "show", "status").returncode != 0
    for prefix in PREFIXES:
        assert eventually(lambda p=prefix: "64502 64500" not in inet_paths(lab, p))
    faults.heal(lab, "t2")
    for prefix in PREFIXES:
        assert eventually(lambda p=prefix: "64502 64500" in inet_paths(lab, p), timeout_s=30)


def test_status_reports_sessions_routes_and_faults(healed):
    lab = healed
    faults.apply(lab, "transit-blackhole", "t1")
    report = lab_module.status(lab)
    assert report["exabgp_running"]
    assert report["faults"]["transit-blackhole:t1"]["node"] == "t1"
    assert report["routes"]["t1"]["198.51.100.0/24"][0]["as_path"] == "64500"
    assert {s["node"] for s in report["sessions"]} == {"t1", "t2", "t3", "t4", "inet"}


def test_up_refuses_a_lab_that_exists(lab):
    with pytest.raises(LabError) as info:
        lab_module.up(lab.name, lab_module.DEFAULT_CONFIG, out=io.StringIO())
    assert info.value.exit_code == exitcodes.CANTCREAT


def _leftovers(name: str) -> list[str]:
    found = netns.list_namespaces(f"nw-{name}-")
    if (handle.RUN_ROOT / name).exists():
        found.append(str(handle.RUN_ROOT / name))
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if f"/run/netwatch/lab/{name}/" in cmdline:
                found.append(cmdline)
    return found


def test_down_leaves_nothing_even_after_a_half_finished_up(new_lab_name):
    name = new_lab_name()
    crashed = handle.Lab(name)
    # A crashed `up`: two namespaces with a veth between them and a run dir, no processes.
    crashed.run_dir.mkdir(parents=True)
    (crashed.run_dir / "t1.pid").write_text("1\n")  # PID 1 is not ours: must not be signalled
    netns.add_namespace(crashed.ns("srv"))
    netns.add_namespace(crashed.ns("gwa"))
    netns.batch(
        None,
        [
            f"link add eth0 netns {crashed.ns('srv')} type veth peer name srv "
            f"netns {crashed.ns('gwa')}"
        ],
    )
    assert lab_module.down(name, quiet=True) == 2
    assert _leftovers(name) == []


def test_a_second_lab_comes_up_beside_and_down_removes_it_all(lab, new_lab_name):
    name = new_lab_name()
    try:
        lab_module.up(name, lab_module.DEFAULT_CONFIG, out=io.StringIO())
        assert _leftovers(name)
        second = handle.Lab(name)
        assert ping(second, "srv", "203.0.113.1") == 1
        # ExaBGP pin: when it stops, its sessions close and every transit withdraws our routes.
        assert handle.stop_pidfile(second.pidfile("exabgp"), "exabgp")
        for transit in ("t1", "t2", "t3", "t4"):
            assert eventually(
                lambda t=transit: not bird.parse_routes(second.birdc(t, "show route all"))
            ), transit
    finally:
        lab_module.down(name, quiet=True)
    assert _leftovers(name) == []
    assert ping(lab, "srv", "203.0.113.1") == 1  # the first lab is untouched


def test_exabgp_respawns_its_api_process_and_keeps_announcing(lab):
    """ExaBGP 5 pin: `respawn true` restarts a killed API process (the lab announcer or the
    controller), which re-announces."""
    import os
    import signal

    def announcers() -> set[int]:
        found = set()
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit():
                try:
                    cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                except OSError:
                    continue
                if (
                    " --config " in cmdline
                    and str(lab.site_file) in cmdline
                    and "netwatch.cli" in cmdline
                ):
                    found.add(int(proc.name))
        return found

    before = announcers()
    assert len(before) == 1
    (old_pid,) = before
    os.kill(old_pid, signal.SIGTERM)
    assert eventually(lambda: len(announcers()) == 1 and old_pid not in announcers())
    assert lab_module.status(lab)["exabgp_running"]
    for transit in ("t1", "t2", "t3", "t4"):
        assert eventually(
            lambda t=transit: all(
                bird.parse_routes(lab.birdc(t, "show route all")).get(p) for p in PREFIXES
            )
        ), transit


def test_cli_status_json_and_exec(lab, capsys):
    import json

    from netwatch.cli import main

    assert main(["lab", "status", "--name", lab.name, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["name"] == lab.name and report["nodes"]["edge"]["present"]
    assert main(["lab", "fault", "--name", lab.name, "transit-down", "t9"]) == exitcodes.USAGE


def test_cli_exec_takes_name_before_or_after_the_node(lab):
    import subprocess
    import sys

    for argv in (
        ["lab", "exec", "--name", lab.name, "srv", "--", "ip", "-4", "addr", "show", "eth0"],
        ["lab", "exec", "srv", "--name", lab.name, "--", "ip", "-4", "addr", "show", "eth0"],
    ):
        result = subprocess.run(
            [sys.executable, "-m", "netwatch.cli", *argv], capture_output=True, text=True
        )
        assert result.returncode == 0, result.stderr
        assert "198.51.100.10" in result.stdout
