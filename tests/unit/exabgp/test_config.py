"""The ExaBGP configuration: every value that reaches it is one plain token, and each neighbor
is configured for graceful restart, manual End-of-RIB, no Adj-RIB-In, TCP-MD5 and GTSM as the
site file says; the real ExaBGP parser reads back what was meant."""

from __future__ import annotations

import os
import re
import stat
import subprocess
from pathlib import Path

import pytest
import yaml

from netwatch.config import load_site
from netwatch.config.errors import ConfigError
from netwatch.exabgp.config import _token, exabgp_environment, render_exabgp_config
from netwatch.lab.lifecycle import exabgp_program

ROOT = Path(__file__).resolve().parents[3]
ARGV = ["/usr/bin/netwatch", "controller", "--config", "/s.yaml"]
# The lab site gives t3 and t4 a password file; these stand for what was read from them.
PASSWORDS = {"t3": "t3-Secret!#$%&()*+,-./:;<=>?@[]^_`{|}~", "t4": "0123456789abcdef"}


def _site(tmp_path, **bgp):
    raw = yaml.safe_load((ROOT / "netwatch/lab/site/lab-site.yaml").read_text())
    raw["controller"]["probe"]["targets_file"] = str(ROOT / "netwatch/lab/site/targets/lab.yaml")
    raw["controller"]["bgp"].update(bgp)
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(raw))
    return load_site(path)


@pytest.fixture
def site(tmp_path):
    return _site(tmp_path)


def blocks(text: str) -> dict[str, str]:
    """{neighbor address: its block}."""
    return dict(re.findall(r"^neighbor (\S+) \{\n(.*?)^\}", text, re.S | re.M))


def test_every_session_gets_a_neighbor_block(site):
    text = render_exabgp_config(site, ARGV, PASSWORDS)
    assert "run /usr/bin/netwatch controller --config /s.yaml;" in text
    assert text.count("neighbor ") == 8 and "neighbor 2001:db8:ffff:4::1 {" in text
    assert "    family {\n        ipv6 unicast;\n    }" in blocks(text)["2001:db8:ffff:4::1"]


def test_every_neighbor_restarts_gracefully_with_manual_eor_and_keeps_no_rib_in(site):
    for peer, block in blocks(render_exabgp_config(site, ARGV, PASSWORDS)).items():
        assert "    manual-eor true;\n" in block, peer
        assert "    adj-rib-in false;\n" in block, peer
        assert "    capability {\n        graceful-restart 120;\n    }" in block, peer
        # No subscription to anything received: ExaBGP then never decodes a transit's UPDATEs.
        assert "receive" not in block and "neighbor-changes;" in block, peer


def test_graceful_restart_follows_the_site_file_and_0_turns_it_off(tmp_path):
    text = render_exabgp_config(_site(tmp_path, graceful_restart_s=4095), ARGV, PASSWORDS)
    assert text.count("graceful-restart 4095;") == 8
    text = render_exabgp_config(_site(tmp_path, graceful_restart_s=0), ARGV, PASSWORDS)
    assert "graceful-restart" not in text and "capability" not in text
    assert text.count("manual-eor true;") == 8  # the controller sends End-of-RIB anyway


def test_md5_and_gtsm_only_where_the_upstream_asks_for_them(site):
    by_peer = blocks(render_exabgp_config(site, ARGV, PASSWORDS))
    for peer in ("192.0.2.9", "2001:db8:ffff:3::1"):  # t3, both sessions
        assert f'    md5-password "{PASSWORDS["t3"]}";\n' in by_peer[peer]
        assert "    outgoing-ttl 255;\n    incoming-ttl 255;\n" in by_peer[peer]
    for peer in ("192.0.2.1", "2001:db8:ffff:2::1"):  # t1, t2: neither
        assert "md5" not in by_peer[peer] and "ttl" not in by_peer[peer]


def test_an_upstream_with_a_password_file_and_no_password_is_refused(site):
    with pytest.raises(ValueError, match="t4: md5_password_file is set but no password"):
        render_exabgp_config(site, ARGV, {"t3": "x"})


@pytest.mark.parametrize(
    "password", ['pa"ss', "pa'ss", "pa\\nss", "pass word", "pa\nss", "passé", "x" * 81, ""]
)
def test_a_password_the_config_cannot_carry_is_refused_without_showing_it(site, password):
    with pytest.raises(ValueError) as caught:
        render_exabgp_config(site, ARGV, {**PASSWORDS, "t3": password})
    if password:
        assert password not in str(caught.value)


def test_exabgp_itself_reads_back_every_value_and_each_password_literally(site, tmp_path):
    """`exabgp validate` (the real 5.0.15 parser) accepts the rendered config and reads each
    password exactly, punctuation included: no quote, escape or comment character leaks."""
    program = exabgp_program()
    assert program, "exabgp is a dependency of netwatch: it must be installed beside it"
    conf = tmp_path / "exabgp.conf"
    conf.write_text(render_exabgp_config(site, ["/bin/true"], PASSWORDS))
    proc = subprocess.run(
        [program, "validate", "-nv", str(conf)], capture_output=True, text=True, timeout=60,
        env={**os.environ, **exabgp_environment()},
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    out = proc.stdout + proc.stderr
    read = set(re.findall(r"md5-password\s+\|\s+'(.*)'", out))
    assert read == set(PASSWORDS.values())
    for key in ("manual-eor", "adj-rib-in", "graceful-restart", "outgoing-ttl", "incoming-ttl"):
        assert key in out


def test_the_config_command_writes_a_private_file_and_refuses_bad_password_files(
    tmp_path, capsys
):
    """`--output` creates the file 0600 even under umask 000; a password file that others
    can read is refused with FILE:LINE and exit 65, and the secret is in no message."""
    from netwatch.cli import main

    raw = yaml.safe_load((ROOT / "netwatch/lab/site/lab-site.yaml").read_text())
    raw["controller"]["probe"]["targets_file"] = str(ROOT / "netwatch/lab/site/targets/lab.yaml")
    (tmp_path / "md5").mkdir()
    for name, secret in PASSWORDS.items():
        key = tmp_path / "md5" / f"{name}.key"
        key.write_text(secret + "\n")
        key.chmod(0o600)
    site_file = tmp_path / "site.yaml"
    site_file.write_text(yaml.safe_dump(raw, sort_keys=False))
    out = tmp_path / "exabgp.conf"
    old = os.umask(0)
    try:
        assert main(["exabgp-config", str(site_file), "--output", str(out)]) == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert f'md5-password "{PASSWORDS["t4"]}";' in out.read_text()
    assert main(["exabgp-config", str(site_file), "--output", str(out)]) == 0  # replaced
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    capsys.readouterr()

    (tmp_path / "md5" / "t4.key").chmod(0o640)
    assert main(["exabgp-config", str(site_file)]) == 65
    captured = capsys.readouterr()
    assert captured.out == ""
    line = next(n for n, text in enumerate(site_file.read_text().splitlines(), 1)
                if "md5/t4.key" in text)
    assert captured.err == (
        f"{site_file}:{line}: controller.upstreams[3].md5_password_file: "
        f"'{tmp_path}/md5/t4.key' has mode 0640: group and others must have no access to a "
        f"password (chmod 600 {tmp_path}/md5/t4.key)\n"
    )
    assert PASSWORDS["t4"] not in captured.err


@pytest.mark.parametrize(
    "argv",
    [
        ["/usr/bin/netwatch\n", "controller"],  # `$` matched before the newline
        ["/usr/bin/netwatch", "controller;", "run", "/bin/sh"],
        ["/usr/bin/netwatch", "--config", "/etc/net watch.yaml"],
        ["/usr/bin/netwatch", "fe80::1%eth0"],
        ["netwatch", "controller"],  # not an absolute path
    ],
)
def test_a_value_that_is_not_one_plain_token_is_refused(site, argv):
    with pytest.raises(ValueError):
        render_exabgp_config(site, argv, PASSWORDS)


def test_the_shipped_unit_stops_exabgp_the_way_the_lab_tests_pin_and_writes_the_config_0600():
    """The lab's restart (netwatch.lab.lifecycle.stop_exabgp, used by tests/lab/
    test_bgp_sessions.py) signals ExaBGP alone with SIGTERM, SIGKILL after 10 s: the unit
    must do the same, and render the config with --output (0600: it holds the passwords)."""
    from netwatch.lab.lifecycle import STOP_TIMEOUT_S

    unit = (ROOT / "probes/systemd/netwatch-exabgp.service").read_text()
    settings = dict(
        line.split("=", 1) for line in unit.splitlines() if "=" in line and line[:1].isupper()
    )
    assert settings["KillSignal"] == "SIGTERM"
    assert settings["KillMode"] == "mixed"
    assert float(settings["TimeoutStopSec"]) == STOP_TIMEOUT_S
    assert settings["Restart"] == "always"
    assert settings["ExecStartPre"].split()[1:] == [
        "exabgp-config", "/etc/netwatch/site.yaml", "--output", "/run/netwatch/exabgp.conf"
    ]
    assert settings["ExecStart"].split()[1:] == ["/run/netwatch/exabgp.conf"]
    for key, value in exabgp_environment().items():
        if key not in ("exabgp_log_level", "exabgp_log_statistics"):
            assert f"Environment={key}={value}" in unit, key


def _site_raw(tmp_path, change):
    raw = yaml.safe_load((ROOT / "netwatch/lab/site/lab-site.yaml").read_text())
    raw["controller"]["probe"]["targets_file"] = str(ROOT / "netwatch/lab/site/targets/lab.yaml")
    change(raw)
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(raw))
    return load_site(path)


def test_the_router_id_defaults_to_the_first_upstreams_ipv4_local_address(tmp_path):
    site = _site_raw(tmp_path, lambda raw: raw["controller"]["bgp"].pop("router_id"))
    text = render_exabgp_config(site, ARGV, PASSWORDS)
    first = str(site.controller.upstreams[0].local_address)
    assert "None" not in text
    assert {re.search(r"router-id (\S+);", b).group(1) for b in blocks(text).values()} == {first}


def test_no_router_id_and_no_ipv4_local_address_is_refused_at_validation(tmp_path):
    def ipv6_only(raw):
        raw["controller"]["bgp"].pop("router_id")
        for up in raw["controller"]["upstreams"]:
            up["neighbor"], up["local_address"] = up.pop("neighbor6"), up.pop("local_address6")
            up.pop("nexthop", None)

    with pytest.raises(ConfigError) as refused:
        _site_raw(tmp_path, ipv6_only)
    assert "controller.bgp.router_id: required" in str(refused.value)


@pytest.mark.parametrize("value", [None, 1.5, True, b"x", ["a"], Path("/x")])
def test_a_value_of_no_config_type_is_refused(value):
    with pytest.raises(ValueError, match="not a value for the ExaBGP config"):
        _token(value)
