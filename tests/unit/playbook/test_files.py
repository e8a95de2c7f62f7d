"""Playbook and inventory files: the shipped ones validate, and a bad one gets every problem
at once as FILE:LINE: path: message (exit 65 from `netwatch playbook validate`)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from netwatch.config import ConfigError
from netwatch.playbook.loader import (
    find_playbook,
    load_inventory,
    load_playbook,
    playbook_files,
    shipped_dir,
)

REPO = Path(__file__).resolve().parents[3]
SHIPPED = sorted(p for p in (REPO / "playbooks").rglob("*.yaml")
                 if not p.name.startswith("inventory"))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_every_shipped_playbook_validates(path):
    pf = load_playbook(path)
    assert pf.name == path.stem
    assert pf.playbook.description.strip()


def test_the_shipped_inventory_example_validates():
    inventory = load_inventory(REPO / "playbooks" / "inventory.example.yaml")
    border = inventory.device("border1")
    assert border.device_type == "cisco_ios" and border.password_env
    assert Path(border.known_hosts).is_absolute()  # resolved against the inventory's dir


def test_the_issue_s_playbooks_and_alert_runbooks_are_shipped():
    names = {p.stem for p in SHIPPED}
    assert {"drain-upstream", "restore-upstream", "force-server-failover",
            "transit-incident", "border-shutdown-neighbor"} <= names
    runbooks = {p.stem for p in (REPO / "playbooks" / "runbooks").glob("*.yaml")}
    assert {"primary-uplink-down", "both-uplinks-down", "upstream-degraded", "upstream-failed",
            "bgp-session-down", "safety-hold", "too-few-upstreams-announcing", "local-fault",
            "action-budget-exhausted", "override-expiring", "daemon-down",
            "probes-failing"} <= runbooks


def test_runbooks_only_read():
    for path in (REPO / "playbooks" / "runbooks").glob("*.yaml"):
        pb = load_playbook(path).playbook
        kinds = {s.kind for s in (*pb.steps, *pb.rollback)}
        assert kinds <= {"check", "diagnose", "note"}, path.name
        assert pb.alerts, f"{path.name} names no alert"


def test_every_alert_of_the_shipped_rules_has_a_runbook():
    """The alerts a runbook claims exist in grafana/alerts, and each alert there has a
    runbook playbook: a renamed alert fails here, not at 3 a.m."""
    rules = sorted((REPO / "grafana" / "alerts").glob("*.yml"))
    if not rules:
        pytest.skip("no alert rules in grafana/alerts")
    alerts = {
        rule["alert"]
        for path in rules
        for group in (yaml.safe_load(path.read_text()) or {}).get("groups", [])
        for rule in group.get("rules", [])
        if "alert" in rule
    }
    claimed = {a for p in SHIPPED for a in load_playbook(p).playbook.alerts}
    assert claimed <= alerts, f"runbooks name alerts that do not exist: {claimed - alerts}"
    assert alerts <= claimed, f"alerts without a runbook playbook: {alerts - claimed}"


BROKEN = """\
name: broken
description: every kind of mistake at once
params:
  upstream: {type: upstream, required: true}
  count: {type: integer, default: many}
steps:
  - netwatch: {action: drain, upstream: "{{ upstrem }}", reason: r}
  - wait: {for: 30s, until: {local_fault: false}}
  - check: {netwatch: {upstream: t1, state: sick}}
  - note: hello
    wait: {for: 1s}
  - netwatch: {action: prepend, upstream: t1, reason: r}
    on_failure: rollback
  - device: {device: r1, commands: [show version], expct: x}
  - check: {device: r1, command: show bgp, match: "(unclosed"}
rollback:
  - note: undo
    on_failure: rollback
"""


def test_a_broken_playbook_gets_every_problem_with_its_line(write_playbook):
    path = write_playbook(BROKEN, name="wrong-name")
    with pytest.raises(ConfigError) as caught:
        load_playbook(path)
    errors = caught.value.errors
    where = str(path)
    expected = [
        f"{where}:1: name: 'broken' differs from the file's name 'wrong-name'",
        f"{where}:5: params.count: default: 'many' is not a whole number",
        f"{where}:7: steps[0].netwatch.upstream: {{{{ upstrem }}}}: no such parameter "
        "(did you mean upstream?)",
        f"{where}:8: steps[1].wait: a wait needs exactly one of: for, until (found: for, until)",
        f"{where}:9: steps[2].check.netwatch: state: an upstream is healthy, degraded, failed",
        f"{where}:10: steps[3]: a step needs exactly one of: netwatch, wait, check, device, "
        "diagnose, note (found: wait, note)",
        f"{where}:12: steps[4].netwatch: prepend needs `count`",
        f"{where}:14: steps[5].device.expct: unknown key (did you mean 'expect'?)",
        f"{where}:15: steps[6].check.match: '(unclosed' is not a regular expression",
        f"{where}:18: rollback[0].on_failure: a rollback step cannot roll back: abort or "
        "continue",
    ]
    for line in expected:
        assert any(e.startswith(line) for e in errors), f"missing: {line}\n got: {errors}"


def test_on_failure_rollback_needs_rollback_steps(write_playbook):
    path = write_playbook(
        "name: p\ndescription: d\nsteps:\n  - note: x\n    on_failure: rollback\n")
    with pytest.raises(ConfigError) as caught:
        load_playbook(path)
    assert caught.value.errors == [
        f"{path}:5: steps[0].on_failure: rollback, but the playbook has no rollback steps"]


def test_a_textfsm_template_must_exist_beside_the_playbook(write_playbook):
    path = write_playbook(
        "name: p\ndescription: d\nsteps:\n  - check:\n      device: r1\n      command: show x\n"
        "      textfsm: {template: nowhere.textfsm}\n")
    with pytest.raises(ConfigError) as caught:
        load_playbook(path)
    assert caught.value.errors[0].startswith(
        f"{path}:7: steps[0].check.textfsm.template: 'nowhere.textfsm': no such file")


def test_an_inventory_takes_exactly_one_credential_source_and_no_secret(tmp_path):
    path = tmp_path / "inventory.yaml"
    path.write_text(
        "devices:\n"
        "  r1: {host: 192.0.2.1, device_type: cisco_ios, username: u}\n"
        "  r2: {host: 192.0.2.2, device_type: cisco_ios, username: u, password_env: A,\n"
        "       key_file: k}\n"
        "  r3: {host: 'bad host', device_type: cisco_ios, username: u, password: hunter2}\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_inventory(path)
    errors = "\n".join(caught.value.errors)
    assert f"{path}:2: devices.r1: a device needs exactly one of password_env" in errors
    assert f"{path}:3: devices.r2: a device needs exactly one of" in errors
    assert "(found: password_env, key_file)" in errors
    assert f"{path}:5: devices.r3.host: 'bad host' is not a host name" in errors
    assert f"{path}:5: devices.r3.password: unknown key" in errors
    assert "hunter2" not in errors


def test_playbooks_are_found_by_name_and_close_names_suggested(shipped):
    assert find_playbook("drain-upstream", shipped) == shipped / "drain-upstream.yaml"
    assert find_playbook("local-fault", shipped) == shipped / "runbooks" / "local-fault.yaml"
    with pytest.raises(LookupError, match="did you mean: drain-upstream"):
        find_playbook("drain-upstrem", shipped)
    assert all(not p.name.startswith("inventory") for p in playbook_files(shipped))


def test_the_shipped_playbooks_are_found_from_the_checkout(shipped):
    assert shipped_dir() == shipped


class _Installed:
    """An entry of an installed distribution's file list (importlib.metadata.PackagePath)."""

    def __init__(self, site: Path, relative: str):
        self.site, self.relative = site, relative

    def as_posix(self) -> str:
        return self.relative

    def locate(self) -> Path:
        return self.site / self.relative


def test_an_installed_wheel_s_playbooks_are_found_through_its_file_list(tmp_path):
    from netwatch.playbook.loader import installed_dir

    site = tmp_path / "venv" / "lib" / "python3.11" / "site-packages"
    shared = tmp_path / "venv" / "share" / "netwatch" / "playbooks"
    shared.mkdir(parents=True)
    (shared / "drain-upstream.yaml").write_text("name: drain-upstream\n")
    files = [_Installed(site, "netwatch/__init__.py"),
             _Installed(site, "../../../share/netwatch/playbooks/drain-upstream.yaml")]
    assert installed_dir(files) == shared.resolve()
    assert installed_dir(files[:1]) is None
