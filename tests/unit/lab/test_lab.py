"""Unit tests of the lab's pure parts: topology, BIRD and ExaBGP config rendering, parsing."""

from __future__ import annotations

import pytest

from netwatch.config import load_site
from netwatch.exabgp.config import exabgp_environment, render_exabgp_config
from netwatch.lab import bird
from netwatch.lab.lifecycle import DEFAULT_CONFIG
from netwatch.lab.topology import build_topology, route_commands


def _site():
    return load_site(DEFAULT_CONFIG)


def test_topology_has_every_node_and_dual_stack_links():
    topo = build_topology(_site())
    assert topo.nodes == ["srv", "gwa", "gwb", "edge", "t1", "t2", "t3", "t4", "inet"]
    for link in topo.links:
        for end in (link.a, link.b):
            assert any(":" in a for a in end.addrs) and any("." in a for a in end.addrs), end
    assert topo.link("primary").b.addrs[-1] == "fe80::1/64"
    assert topo.link("t2").a.addrs == ("192.0.2.6/30", "2001:db8:ffff:2::2/64")
    assert len(topo.loopbacks["inet"]) == 20


def test_route_commands_spell_out_the_family_of_defaults():
    topo = build_topology(_site())
    lines = route_commands(topo, "srv")
    assert "route replace 0.0.0.0/0 via 100.64.1.1 dev eth0 src 198.51.100.10" in lines
    assert "route replace ::/0 via fe80::1 dev eth0 src 2001:db8:100:1::10" in lines


def test_edge_gets_a_static_default_only_when_the_controller_does_not_own_it():
    """outbound.mode kernel (the lab's): edge's defaults are the controller's, and a heal that
    applies edge's routes again must not replace them; off: a static multipath."""
    site = _site()
    assert site.controller.outbound.mode == "kernel"
    defaults = ("route replace 0.0.0.0/0", "route replace ::/0")
    assert [line for line in route_commands(build_topology(site), "edge")
            if line.startswith(defaults)] == []
    outbound = site.controller.outbound.model_copy(update={"mode": "off"})
    off = site.model_copy(update={
        "controller": site.controller.model_copy(update={"outbound": outbound})})
    assert [line for line in route_commands(build_topology(off), "edge")
            if line.startswith(defaults)] == [
        "route replace 0.0.0.0/0 nexthop via 192.0.2.1 dev t1 nexthop via 192.0.2.5 dev t2 "
        "nexthop via 192.0.2.9 dev t3 nexthop via 192.0.2.13 dev t4",
        "route replace ::/0 nexthop via 2001:db8:ffff:1::1 dev t1 nexthop via "
        "2001:db8:ffff:2::1 dev t2 nexthop via 2001:db8:ffff:3::1 dev t3 nexthop via "
        "2001:db8:ffff:4::1 dev t4",
    ]


PASSWORDS = {"t3": "t3-secret", "t4": "t4-secret"}  # what `lab up` writes, in the run dir


def test_exabgp_config_has_a_json_process_and_a_neighbor_per_family():
    text = render_exabgp_config(
        _site(), ["/usr/bin/netwatch", "controller", "--config", "/x"], PASSWORDS
    )
    assert "run /usr/bin/netwatch controller --config /x;" in text
    assert "encoder json;" in text
    assert text.count("neighbor ") == 8
    assert "neighbor 2001:db8:ffff:3::1 {" in text
    assert "local-as 64500;" in text and "hold-time 9;" in text
    assert "neighbor-changes;" in text


def test_exabgp_config_refuses_unsafe_argv():
    import pytest

    with pytest.raises(ValueError):
        render_exabgp_config(_site(), ["/bin/x", "a;\nprocess evil"])
    with pytest.raises(ValueError):
        render_exabgp_config(_site(), ["relative"])


def test_exabgp_environment_keeps_the_pid_ours():
    env = exabgp_environment()
    assert env["exabgp_daemon_daemonize"] == "false"
    assert env["exabgp_daemon_user"] == "root"
    assert env["exabgp_api_ack"] == "true"


def test_bird_configs_filter_explicitly():
    topo = build_topology(_site())
    conf = bird.transit_config(topo, topo.transits[0], "/tmp/x.log")
    assert "protocol device" in conf
    assert "import all; export none;" in conf
    assert "198.51.100.0/24+" in conf
    assert "neighbor 192.0.2.2 as 64500" in conf


def test_transits_are_graceful_restart_helpers_and_t3_t4_use_md5_and_gtsm():
    topo = build_topology(_site())
    by_name = {t.name: t for t in topo.transits}
    assert [t.name for t in topo.transits if t.md5 and t.ttl_security] == ["t3", "t4"]
    plain = bird.transit_config(topo, by_name["t1"], "/tmp/x.log")
    assert plain.count("graceful restart on;") == 2  # edge4 and edge6
    assert "password" not in plain and "ttl security" not in plain
    guarded = bird.transit_config(topo, by_name["t3"], "/tmp/x.log", password="t3-secret")
    assert guarded.count('password "t3-secret";') == 2
    assert guarded.count("ttl security on;") == 2
    with pytest.raises(ValueError, match="t3 uses TCP-MD5"):
        bird.transit_config(topo, by_name["t3"], "/tmp/x.log")


def test_a_full_table_is_static_routes_exported_to_edge_over_ipv4_only():
    topo = build_topology(_site())
    conf = bird.transit_config(topo, topo.transits[0], "/tmp/x.log", full_table=3)
    assert "protocol static fulltable4 {" in conf
    assert "route 100.112.0.0/32 blackhole;" in conf and "route 100.112.0.2/32 blackhole;" in conf
    assert "ipv4 { import all; export where source = RTS_STATIC; };" in conf
    assert "ipv6 { import all; export none; };" in conf
    assert len(bird.full_table_routes(100_000)) == 100_000
    assert bird.full_table_routes(100_000)[-1] == "100.113.134.159/32"
    with pytest.raises(ValueError):
        bird.full_table_routes(bird.FULL_TABLE_MAX + 1)


def test_parse_routes_reads_as_path_of_every_path():
    output = """BIRD 2.0.12 ready.
Table master4:
198.51.100.0/24      unicast [t1_4 16:15:55.226] * (100) [AS64500i]
\tvia 100.64.101.1 on t1
\tType: BGP univ
\tBGP.as_path: 64501 64500
\tBGP.community: (65535,0)
                     unicast [t2_4 16:15:55.226] (100) [AS64500i]
\tvia 100.64.102.1 on t2
\tBGP.as_path: 64502 64500 64500
"""
    routes = bird.parse_routes(output)
    paths = routes["198.51.100.0/24"]
    assert [p["as_path"] for p in paths] == ["64501 64500", "64502 64500 64500"]
    assert paths[0]["communities"] == "(65535,0)"


def test_preflight_errors_are_one_clear_line(monkeypatch):
    import pytest

    from netwatch import exitcodes
    from netwatch.lab import lifecycle as lab_module

    monkeypatch.setattr(lab_module.os, "geteuid", lambda: 1000)
    with pytest.raises(lab_module.LabError) as info:
        lab_module.preflight("x1")
    assert info.value.exit_code == exitcodes.NOPERM and "root" in str(info.value)
    monkeypatch.setattr(lab_module.os, "geteuid", lambda: 0)
    real_which = lab_module.shutil.which
    monkeypatch.setattr(
        lab_module.shutil, "which", lambda p: None if p in ("bird", "birdc") else real_which(p)
    )
    with pytest.raises(lab_module.LabError) as info:
        lab_module.preflight("x1")
    assert info.value.exit_code == exitcodes.UNAVAILABLE and "apt-get install bird2" in str(
        info.value
    )
    with pytest.raises(lab_module.LabError) as info:
        lab_module.preflight("bad-name")
    assert info.value.exit_code == exitcodes.USAGE


def test_exabgp_config_command_on_the_lab_site_names_the_password_files_lab_up_writes(capsys):
    """The shipped lab site points t3 and t4 at password files that only `lab up` creates (in
    its run dir): rendering the shipped file on its own says which, with their lines."""
    from netwatch.cli import main

    assert main(["exabgp-config", str(DEFAULT_CONFIG)]) == 65
    captured = capsys.readouterr()
    assert captured.out == ""
    assert [line.split(": ", 2)[1:] for line in captured.err.splitlines()] == [
        ["controller.upstreams[2].md5_password_file",
         f"'{DEFAULT_CONFIG.parent}/md5/t3.key' does not exist"],
        ["controller.upstreams[3].md5_password_file",
         f"'{DEFAULT_CONFIG.parent}/md5/t4.key' does not exist"],
    ]


def test_a_lab_name_can_never_reach_outside_the_run_root(tmp_path):
    import pytest

    from netwatch import exitcodes
    from netwatch.lab.handle import Lab, LabError
    from netwatch.lab.lifecycle import resolve_name

    for name in ("../..", "..", "a/b", "", "UPPER", "x" * 11):
        with pytest.raises(LabError) as caught:
            Lab(name, run_root=tmp_path)
        assert caught.value.exit_code == exitcodes.USAGE
        if name:
            with pytest.raises(LabError):
                resolve_name(name, run_root=tmp_path)


def test_cli_refuses_a_traversing_name_before_touching_anything():
    import subprocess
    import sys
    from pathlib import Path

    result = subprocess.run(
        [sys.executable, "-m", "netwatch.cli", "lab", "down", "--name", "../.."],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 64, result.stderr
    assert "lab name '../..'" in result.stderr
    assert Path("/run").is_dir()


def test_only_processes_started_from_the_labs_run_dir_are_ours(tmp_path):
    import os
    import sys

    from netwatch.lab.handle import _is_ours

    me = os.getpid()  # a python process whose command line names neither program nor run dir
    assert not _is_ours(me, "bird", tmp_path)
    assert not _is_ours(me, os.path.basename(sys.executable), tmp_path)
    assert not _is_ours(2**22 + 1, "bird", tmp_path)  # no such PID
