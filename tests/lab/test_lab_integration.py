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
from netwatch.config import load_site
from netwatch.lab import faults, handle, netns
from netwatch.lab import lifecycle as lab_module
from netwatch.lab.handle import LabError

pytestmark = pytest.mark.lab

PREFIXES = ("198.51.100.0/24", "2001:db8:100::/48")
TRANSITS = ("t1", "t2", "t3", "t4")



def through(lab, transit: str, target: str) -> tuple[str, str]:
    """ping options that send from edge through `transit` whatever edge's default route is
    (the controller takes a failed transit out of it): the fwmark of the controller's probe
    table for that transit and the target's family."""
    ctl = load_site(lab.site_file).controller
    index = [u.name for u in ctl.upstreams].index(transit)
    return ("-m", str(ctl.fwmark_base + 2 * index + (1 if ":" in target else 0)))

def not_established(lab, node: str) -> dict[str, str]:
    """{session: BIRD's info} for `node`'s BGP sessions that are not Established."""
    sessions = lab.bgp_sessions(node)
    return {name: s["info"] for name, s in sessions.items() if "Established" not in s["info"]}


def inet_paths(lab, prefix: str) -> list[str]:
    """The AS paths by which inet holds `prefix`."""
    return [p["as_path"] for p in lab.routes("inet").get(prefix, [])]


def test_every_transit_holds_our_prefixes_with_our_as_path(lab, held):
    for transit in TRANSITS:
        down = not_established(lab, transit)
        assert not down, f"{transit}: BGP sessions not Established: {down}"
        seen = held(transit)
        want = dict.fromkeys(PREFIXES, "64500")
        assert seen == want, f"{transit} holds {seen}, expected {want}"


def test_inet_learns_our_prefixes_through_every_transit(lab):
    want = [f"6450{i} 64500" for i in range(1, 5)]
    for prefix in PREFIXES:
        seen = sorted(inet_paths(lab, prefix))
        assert seen == want, f"inet holds {prefix} by {seen}, expected {want}"


def test_srv_reaches_every_inet_target_over_both_families(lab):
    targets = [f"203.0.113.{i}" for i in range(1, 11)]
    targets += [f"2001:db8:203::{i:x}" for i in range(1, 11)]
    unreachable = [t for t in targets if lab.ping("srv", t) != 1]
    assert unreachable == [], f"srv gets no reply from {unreachable}"


def test_birdc_in_exec_uses_the_nodes_socket(lab):
    proc = lab.exec("t1", "birdc", "show", "route")
    assert proc.returncode == 0, f"birdc in t1 exited {proc.returncode}: {proc.stderr}"
    assert "198.51.100.0/24" in proc.stdout, f"t1's birdc shows no 198.51.100.0/24: {proc.stdout}"


def test_link_down_on_uplink_drops_carrier_at_srv_and_heal_restores(healed, eventually):
    lab = healed
    faults.apply(lab, "link-down", "primary")
    link = lab.exec("srv", "ip", "-o", "link", "show", "eth0").stdout
    assert "NO-CARRIER" in link, f"link-down primary: srv's eth0 still has carrier: {link}"
    replies = lab.ping("srv", "203.0.113.1")
    assert replies == 0, "link-down primary: srv still reaches 203.0.113.1 through eth0"
    faults.heal(lab, "primary")
    for target in ("203.0.113.1", "2001:db8:203::1"):
        eventually(
            lambda t=target: lab.ping("srv", t) == 1,
            20,
            f"heal of primary: srv gets no reply from {target}",
        )


def test_link_down_on_transit_link_and_heal(healed, eventually):
    lab = healed
    faults.apply(lab, "link-down", "t1")
    link = lab.exec("edge", "ip", "-o", "link", "show", "t1").stdout
    assert "NO-CARRIER" in link, f"link-down t1: edge's t1 still has carrier: {link}"
    replies = lab.ping("edge", "203.0.113.1", *through(lab, "t1", "203.0.113.1"))
    assert replies == 0, "link-down t1: edge still reaches 203.0.113.1 through t1"
    faults.heal(lab, "t1")
    for target in ("203.0.113.1", "2001:db8:203::1"):
        eventually(
            lambda t=target: lab.ping("edge", t, *through(lab, "t1", t)) == 1,
            20,
            f"heal of t1: edge gets no reply from {target} through t1",
        )


def test_gateway_silent_answers_nothing_with_carrier_up(healed, eventually):
    lab = healed
    faults.apply(lab, "gateway-silent", "gwa")
    lab.exec("srv", "ip", "neigh", "flush", "dev", "eth0")
    link = lab.exec("srv", "ip", "-o", "link", "show", "eth0").stdout
    assert "LOWER_UP" in link, f"gwa silent: srv's eth0 lost its carrier: {link}"
    for gateway in ("100.64.1.1", "fe80::1%eth0"):
        replies = lab.ping("srv", gateway)
        assert replies == 0, f"gwa silent: gwa ({gateway}) still answers srv's ping"
    neigh = lab.exec("srv", "ip", "neigh", "show", "100.64.1.1", "dev", "eth0").stdout
    assert "lladdr" not in neigh, f"gwa silent: gwa answered ARP: {neigh}"
    replies = lab.ping("srv", "100.64.2.1")
    assert replies == 1, "gwa silent: gwb (100.64.2.1) does not answer srv, and it should"
    faults.heal(lab, "gwa")
    for gateway in ("100.64.1.1", "fe80::1%eth0"):
        eventually(
            lambda g=gateway: lab.ping("srv", g) == 1,
            20,
            f"heal of gwa: gwa ({gateway}) does not answer srv's ping",
        )


def test_gateway_blackhole_answers_but_forwards_nothing(healed):
    lab = healed
    faults.apply(lab, "gateway-blackhole", "gwa")
    for gateway in ("100.64.1.1", "fe80::1%eth0"):
        replies = lab.ping("srv", gateway)
        assert replies == 1, f"gwa blackholed: gwa ({gateway}) does not answer srv's ping"
    for target in ("203.0.113.2", "2001:db8:203::2"):
        replies = lab.ping("srv", target)
        assert replies == 0, f"gwa blackholed: srv still reaches {target} through it"
    faults.heal(lab, "gwa")
    replies = lab.ping("srv", "203.0.113.2")
    assert replies == 1, "heal of gwa: srv gets no reply from 203.0.113.2"


def test_loss_drops_forwarded_traffic_and_keeps_bgp(healed):
    lab = healed
    faults.apply(lab, "loss", "t2", "100")
    replies = lab.ping("edge", "203.0.113.3", *through(lab, "t2", "203.0.113.3"), count=5)
    assert replies == 0, f"loss 100 % at t2: {replies} of 5 pings through t2 answered"
    down = not_established(lab, "t2")
    assert not down, f"loss 100 % at t2: its BGP sessions are not Established: {down}"
    faults.heal(lab, "t2")
    faults.apply(lab, "loss", "50", "t2")  # both orders are accepted
    received = lab.ping("edge", "203.0.113.3", *through(lab, "t2", "203.0.113.3"), count=60)
    # a reply crosses t2 twice: expected 60 * 0.25 = 15
    assert 2 <= received <= 40, (
        f"loss 50 % at t2: {received} of 60 pings through t2 answered, expected 2-40 (~15)"
    )
    faults.heal(lab, "t2")
    replies = lab.ping("edge", "203.0.113.3", *through(lab, "t2", "203.0.113.3"), count=5)
    assert replies == 5, f"heal of t2: {replies} of 5 pings through t2 answered, expected 5"


def test_latency_is_refused_without_netem(lab):
    probe = lab.exec("t3", "tc", "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms")
    if probe.returncode == 0:
        lab.exec("t3", "tc", "qdisc", "del", "dev", "lo", "root")
        pytest.skip("this kernel has netem; the refusal path is not reachable")
    with pytest.raises(LabError) as info:
        faults.apply(lab, "latency", "t3", "50")
    assert info.value.exit_code == exitcodes.UNAVAILABLE, (
        f"latency t3 without netem: exit code {info.value.exit_code}, expected UNAVAILABLE"
    )
    assert "netem" in str(info.value), f"latency t3 refused without naming netem: {info.value}"
    recorded = lab.read_state()["faults"]
    assert "latency:t3" not in recorded, f"the refused latency:t3 is recorded: {recorded}"


def test_transit_blackhole_keeps_the_session_and_drops_traffic(healed):
    lab = healed
    faults.apply(lab, "transit-blackhole", "t3")
    for target in ("203.0.113.4", "2001:db8:203::4"):
        replies = lab.ping("edge", target, *through(lab, "t3", target))
        assert replies == 0, f"t3 blackholed: edge still reaches {target} through t3"
    replies = lab.ping("edge", "203.0.113.4", *through(lab, "t4", "203.0.113.4"))
    assert replies == 1, "t3 blackholed: edge gets no reply from 203.0.113.4 through t4"
    down = not_established(lab, "t3")
    assert not down, f"t3 blackholed: its BGP sessions are not Established: {down}"
    faults.heal(lab, "t3")
    replies = lab.ping("edge", "203.0.113.4", *through(lab, "t3", "203.0.113.4"))
    assert replies == 1, "heal of t3: edge gets no reply from 203.0.113.4 through t3"


def test_internet_blackhole_darkens_every_transit_and_keeps_bgp(healed):
    lab = healed
    faults.apply(lab, "internet-blackhole", "inet")
    for transit in ("t1", "t4"):
        for target in ("203.0.113.4", "2001:db8:203::4"):
            replies = lab.ping("edge", target, *through(lab, transit, target))
            assert replies == 0, f"internet blackholed: edge still reaches {target} via {transit}"
    down = not_established(lab, "inet")
    assert not down, f"internet blackholed: inet's BGP sessions are not Established: {down}"
    faults.heal(lab, "inet")
    replies = lab.ping("edge", "2001:db8:203::4", *through(lab, "t1", "2001:db8:203::4"))
    assert replies == 1, "heal of inet: edge gets no reply from 2001:db8:203::4 through t1"


def test_session_reset_restarts_the_sessions_and_routes_return(lab, held, eventually):
    def since():
        out = lab.birdc("t4", "show protocols")
        return {
            line.split()[0]: line.split()[4] for line in out.splitlines() if line.startswith("edge")
        }

    before = since()
    time.sleep(0.05)
    faults.apply(lab, "session-reset", "t4")
    eventually(
        lambda: since() != before and not not_established(lab, "t4"),
        20,
        f"session-reset t4: its sessions with edge (since {before}) did not restart, "
        "or not all its BGP sessions are Established again",
    )
    eventually(
        lambda: set(held("t4")) == set(PREFIXES),
        20,
        f"session-reset t4: t4 does not hold {PREFIXES} again",
    )


def test_transit_down_withdraws_at_inet_and_heal_restores(healed, eventually):
    lab = healed
    faults.apply(lab, "transit-down", "t2")
    status = lab.exec("t2", "birdc", "show", "status")
    assert status.returncode != 0, f"transit-down t2: t2's BIRD still answers: {status.stdout}"
    for prefix in PREFIXES:
        eventually(
            lambda p=prefix: "64502 64500" not in inet_paths(lab, p),
            20,
            f"transit-down t2: inet still holds {prefix} by 64502 64500",
        )
    faults.heal(lab, "t2")
    for prefix in PREFIXES:
        eventually(
            lambda p=prefix: "64502 64500" in inet_paths(lab, p),
            30,
            f"heal of t2: inet does not hold {prefix} by 64502 64500 again",
        )


def test_status_reports_sessions_routes_and_faults(healed):
    lab = healed
    faults.apply(lab, "transit-blackhole", "t1")
    report = lab_module.status(lab)
    assert report["exabgp_running"], "lab status says ExaBGP is not running"
    fault = report["faults"].get("transit-blackhole:t1")
    assert fault and fault["node"] == "t1", (
        f"lab status shows transit-blackhole:t1 as {fault}, expected on node t1"
    )
    t1_routes = report["routes"]["t1"].get("198.51.100.0/24")
    assert t1_routes and t1_routes[0]["as_path"] == "64500", (
        f"lab status shows t1's 198.51.100.0/24 as {t1_routes}, expected AS path 64500"
    )
    nodes = {s["node"] for s in report["sessions"]}
    assert nodes == {*TRANSITS, "inet"}, f"lab status has sessions of {nodes}, expected t1-t4, inet"


def test_up_refuses_a_lab_that_exists(lab):
    with pytest.raises(LabError) as info:
        lab_module.up(lab.name, lab_module.DEFAULT_CONFIG, out=io.StringIO())
    assert info.value.exit_code == exitcodes.CANTCREAT, (
        f"up of the existing lab {lab.name}: exit code {info.value.exit_code}, expected CANTCREAT"
    )


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
    removed = lab_module.down(name, quiet=True)
    assert removed == 2, f"down of the half-built lab {name} returned {removed}, expected 2"
    left = _leftovers(name)
    assert left == [], f"down of the half-built lab {name} left {left}"


def test_a_second_lab_comes_up_beside_and_down_removes_it_all(lab, new_lab_name, eventually):
    name = new_lab_name()
    try:
        lab_module.up(name, lab_module.DEFAULT_CONFIG, out=io.StringIO())
        assert _leftovers(name), f"no namespace, run dir or process of lab {name} after its up"
        second = handle.Lab(name)
        replies = second.ping("srv", "203.0.113.1")
        assert replies == 1, f"lab {name}: srv gets no reply from 203.0.113.1"
        # ExaBGP pin: when it stops, its sessions close without a NOTIFICATION, and every
        # transit keeps our routes as stale (graceful restart, docs/controller.md).
        stopped = handle.stop_pidfile(second.pidfile("exabgp"), "exabgp")
        assert stopped, f"lab {name}: no ExaBGP of its own to stop"
        for transit in TRANSITS:
            eventually(
                lambda t=transit: len(not_established(second, t)) == 2,
                20,
                f"lab {name}: {transit}'s sessions with edge still up after ExaBGP stopped",
            )
            kept = set(second.routes(transit))
            assert set(PREFIXES) <= kept, (
                f"lab {name}: {transit} dropped our routes when ExaBGP stopped: it holds {kept}"
            )
    finally:
        lab_module.down(name, quiet=True)
    left = _leftovers(name)
    assert left == [], f"down of lab {name} left {left}"
    replies = lab.ping("srv", "203.0.113.1")
    assert replies == 1, f"the first lab {lab.name}: srv lost 203.0.113.1 after {name}'s down"


def test_exabgp_respawns_its_api_process_and_keeps_announcing(lab, held, eventually):
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
    assert len(before) == 1, f"ExaBGP API processes of lab {lab.name}: {before}, expected one"
    (old_pid,) = before
    os.kill(old_pid, signal.SIGTERM)
    eventually(
        lambda: len(announcers()) == 1 and old_pid not in announcers(),
        20,
        f"ExaBGP did not respawn its API process {old_pid} (one new PID expected)",
    )
    assert lab_module.status(lab)["exabgp_running"], "ExaBGP stopped with its API process"
    for transit in TRANSITS:
        eventually(
            lambda t=transit: set(held(t)) == set(PREFIXES),
            20,
            f"{transit} does not hold {PREFIXES} after the API process respawned",
        )


def test_cli_status_json_and_exec(lab, capsys):
    import json

    from netwatch.cli import main

    code = main(["lab", "status", "--name", lab.name, "--json"])
    assert code == 0, f"lab status --json exited {code}"
    report = json.loads(capsys.readouterr().out)
    assert report["name"] == lab.name, f"lab status --json names {report['name']!r}"
    assert report["nodes"]["edge"]["present"], f"lab status --json: edge {report['nodes']['edge']}"
    code = main(["lab", "fault", "--name", lab.name, "transit-down", "t9"])
    assert code == exitcodes.USAGE, f"lab fault transit-down t9 (no such transit) exited {code}"


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
        assert result.returncode == 0, f"{argv}: exit {result.returncode}: {result.stderr}"
        assert "198.51.100.10" in result.stdout, f"{argv}: no 198.51.100.10 on srv's eth0"
