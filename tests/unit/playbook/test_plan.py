"""Parameters substituted as values: typed, checked where they go, and never able to add a
line or a second command to the control API or a device session. The dry-run of every
shipped playbook shows exactly what would be sent, and touches nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from netwatch.cli import main
from netwatch.control.protocol import Command
from netwatch.playbook.loader import load_inventory, load_playbook
from netwatch.playbook.plan import DeviceRun, NetwatchCall, PlanError, resolve
from netwatch.playbook.template import Mode, render
from netwatch.playbook.values import ParamType, check_device_token, parse_value

REPO = Path(__file__).resolve().parents[3]
INVENTORY = REPO / "playbooks" / "inventory.example.yaml"

HOSTILE = [
    "t1\nreload",  # a second line: a second command
    "t1\r\nshow run",
    "ok\x1b[2J",  # a terminal escape
    "a\u2028b",  # a Unicode line separator
    "x\x00y",
]


@pytest.mark.parametrize("value", HOSTILE)
@pytest.mark.parametrize("kind", list(ParamType))
def test_no_parameter_type_takes_a_control_character(kind, value):
    with pytest.raises(ValueError):
        parse_value(kind, value)


def test_values_are_typed():
    assert parse_value(ParamType.DURATION, "1h30m") == 5400.0
    assert parse_value(ParamType.DURATION, 90) == 90.0
    assert parse_value(ParamType.INTEGER, "-3") == -3
    assert parse_value(ParamType.ADDRESS, "2001:DB8::1") == "2001:db8::1"
    assert parse_value(ParamType.UPSTREAM, "t1") == "t1"
    for kind, bad in [(ParamType.UPSTREAM, "T1; reload"), (ParamType.INTEGER, "3; reload"),
                      (ParamType.ADDRESS, "192.0.2.1; reload"), (ParamType.DURATION, "0"),
                      (ParamType.INTEGER, True), (ParamType.STRING, "x" * 301)]:
        with pytest.raises(ValueError):
            parse_value(kind, bad)
    with pytest.raises(ValueError, match="not one of: primary, secondary"):
        parse_value(ParamType.STRING, "both", ("primary", "secondary"))


@pytest.mark.parametrize("value", ["x; reload", "a b", "$(reboot)", "`id`", "a|b", "a&&b",
                                   "'q'", "x!", "do ?", "#c"])
def test_a_device_line_takes_one_word_per_value(value):
    with pytest.raises(ValueError, match="cannot go into a device command"):
        render("ping {{ host }}", {"host": value}, Mode.DEVICE)
    assert check_device_token("GigabitEthernet0/0/1.100", "ifname")
    assert render("neighbor {{ n }} shutdown", {"n": "2001:db8::1"}, Mode.DEVICE) == (
        "neighbor 2001:db8::1 shutdown")


def test_a_regex_takes_a_value_literally():
    pattern = render("^{{ n }} .*Idle", {"n": "192.0.2.1"}, Mode.REGEX)
    assert pattern == r"^192\.0\.2\.1 .*Idle"


def test_a_whole_field_placeholder_keeps_its_type_and_an_unset_one_is_left_out():
    assert render("{{ s }}", {"s": 30.0}, Mode.VALUE) == 30.0
    assert render("{{ s }}", {"s": None}, Mode.VALUE) is None
    with pytest.raises(ValueError, match="has no value"):
        render("wait {{ s }}", {"s": None})


def test_a_hostile_reason_reaches_the_api_as_one_json_string_value():
    pf = load_playbook(REPO / "playbooks" / "drain-upstream.yaml")
    plan = resolve(pf, {"upstream": "t1", "reason": 'CHG-1"; reload; {"cmd": "restore"}'})
    drain = next(s.action for s in plan.steps if isinstance(s.action, NetwatchCall))
    assert drain.command is Command.DRAIN
    assert drain.args == {
        "upstream": "t1",
        "reason": 'playbook drain-upstream: CHG-1"; reload; {"cmd": "restore"}',
        "for_s": 14400.0,
    }  # graceful_s left out: the daemon's default
    for value in ("t1\nx", "t1; reload"):
        with pytest.raises(PlanError, match="--param upstream"):
            resolve(pf, {"upstream": value, "reason": "r"})
    with pytest.raises(PlanError, match=r"--param reason: .*control character or line break"):
        resolve(pf, {"upstream": "t1", "reason": "CHG-1\nrestore t1"})


def test_a_hostile_string_never_reaches_a_device_line(write_playbook):
    pf = load_playbook(write_playbook(
        "name: p\ndescription: d\nparams:\n  host: {type: string, required: true}\n"
        "steps:\n  - device: {device: jump1, commands: ['ping -c 1 {{ host }}']}\n"))
    inventory = load_inventory(INVENTORY)
    plan = resolve(pf, {"host": "192.0.2.7"}, inventory)
    assert plan.steps[0].action.lines == ("ping -c 1 192.0.2.7",)
    with pytest.raises(PlanError) as caught:
        resolve(pf, {"host": "192.0.2.7; reboot"}, inventory)
    assert caught.value.problems == [
        "step 1: device.commands[0]: parameter host = '192.0.2.7; reboot' cannot go into a "
        "device command: one word of letters, digits and _ . : / @ + , = - (no spaces, ';', "
        "'|', quotes or line breaks)"]


def test_every_problem_with_the_parameters_is_reported_at_once(shipped):
    pf = load_playbook(shipped / "border-shutdown-neighbor.yaml")
    with pytest.raises(PlanError) as caught:
        resolve(pf, {"neighbor": "300.1.1.1", "local_asn": "x", "colour": "red"},
                load_inventory(INVENTORY))
    assert sorted(caught.value.problems) == sorted([
        "--param colour: border-shutdown-neighbor has no such parameter (its parameters: "
        "device, local_asn, neighbor, reason)",
        "--param device: required (string: the router, by its inventory name)",
        "--param local_asn: 'x' is not a whole number",
        "--param neighbor: '300.1.1.1' is not an IP address",
        "--param reason: required (string: why (kept in the trail))",
    ])


def test_a_device_missing_from_the_inventory_fails_before_anything_runs(shipped):
    pf = load_playbook(shipped / "border-shutdown-neighbor.yaml")
    params = {"device": "border9", "local_asn": "64600", "neighbor": "192.0.2.1",
              "reason": "r"}
    with pytest.raises(PlanError, match="no device 'border9' in the inventory"):
        resolve(pf, params, load_inventory(INVENTORY))
    with pytest.raises(PlanError, match="give an inventory"):
        resolve(pf, params, None)
    plan = resolve(pf, params, None, need_inventory=False)  # a dry-run without inventory
    assert isinstance(plan.steps[1].action, DeviceRun)


# --- the dry-run of every shipped playbook ------------------------------------------------------

DRY_RUNS = {
    "drain-upstream": (
        ["upstream=t1", "reason=CHG-42 router upgrade", "graceful_s=2m"],
        ["control API (controller): drain upstream='t1' reason='playbook drain-upstream: "
         "CHG-42 router upgrade' for_s=14400 (4h00m) graceful_s=120 (2m00s)",
         "poll the controller's status every 2 s until t1 announced: false; fail after 1h00m",
         "R1. Restore t1 (announce again at once)",
         "control API (controller): restore upstream='t1' reason='playbook drain-upstream: "
         "rollback: CHG-42 router upgrade'"]),
    "restore-upstream": (
        ["upstream=t3", "reason=CHG-42 done"],
        ["control API (controller): restore upstream='t3' reason='playbook restore-upstream: "
         "CHG-42 done'", "until t3 announced: normal"]),
    "force-server-failover": (
        ["to=secondary", "reason=switch A firmware", "lease=30m"],
        ["ask the agent's status: uplink secondary state: up",
         "control API (agent): failover to='secondary' reason='playbook force-server-failover: "
         "switch A firmware' for_s=1800 (30m00s)",
         "control API (agent): failover to='auto' reason="]),
    "transit-incident": (
        ["upstream=t2", "reason=INC-7 loss towards t2"],
        ["traceroute through t2 to 3 target(s), beside a healthy upstream",
         "asks first: Drain t2 now (GRACEFUL_SHUTDOWN for 30 s, then withdraw)?",
         "control API (controller): drain upstream='t2' reason='playbook transit-incident: "
         "INC-7 loss towards t2' for_s=14400 (4h00m) graceful_s=30 (30s)"]),
    "border-shutdown-neighbor": (
        ["device=border1", "local_asn=60362", "neighbor=192.0.2.1", "reason=CHG-9"],
        ["device border1 (cisco_ios at 192.0.2.254:22, user netwatch, password from "
         "$NETWATCH_BORDER1_PASSWORD)",
         "  > show bgp summary",
         "  > router bgp 60362", "  > neighbor 192.0.2.1 shutdown",
         "output must match /neighbor 192\\.0\\.2\\.1 shutdown/",
         "safety net: none on cisco_ios (no commit-confirmed): the playbook's rollback steps "
         "are the only undo",
         "{'neighbor': '192.0.2.1'}, each matching {'state_pfxrcd': '^Idle \\\\(Admin\\\\)$'}",
         "  > no neighbor 192.0.2.1 shutdown"]),
}
RUNBOOK_PARAMS = {"upstream": "t2"}


def _runbooks() -> list[str]:
    return sorted(p.stem for p in (REPO / "playbooks" / "runbooks").glob("*.yaml"))


@pytest.mark.parametrize("name", [*DRY_RUNS, *_runbooks()])
def test_the_dry_run_of_every_shipped_playbook(name, capsys, tmp_path):
    trail = tmp_path / "trail.jsonl"
    pf = load_playbook(next((REPO / "playbooks").rglob(f"{name}.yaml")))
    params, expected = DRY_RUNS.get(name, (
        [f"{k}={v}" for k, v in RUNBOOK_PARAMS.items() if k in pf.playbook.params], []))
    argv = ["playbook", "run", name, "--dry-run", "--inventory", str(INVENTORY),
            "--socket", str(tmp_path / "nobody.sock"), "--trail", str(trail)]
    for param in params:
        argv += ["--param", param]
    assert main(argv) == 0
    out = capsys.readouterr().out
    for line in expected:
        assert line in out, f"{line!r} not in:\n{out}"
    assert f"playbook {name} (" in out
    assert out.rstrip().endswith("dry run: nothing was done (no daemon, device or trail was "
                                 "touched)")
    for i in range(1, len(pf.playbook.steps) + 1):
        assert f"\n  {i:>3}. " in out  # every step is shown
    assert not trail.exists()


TEMPLATE_PARAM = (
    "name: p\ndescription: d\nparams:\n  template: {type: string, required: true}\n"
    "steps:\n  - check:\n      device: jump1\n      command: show bgp summary\n"
    "      textfsm:\n        template: '{{ template }}'\n")


@pytest.mark.parametrize("template", ["../../../../etc/passwd", "/etc/shadow",
                                      "templates/../../outside.textfsm"])
def test_a_textfsm_template_outside_the_playbooks_directory_is_refused(write_playbook, template):
    path = write_playbook(TEMPLATE_PARAM)
    pf = load_playbook(path)
    with pytest.raises(PlanError) as caught:
        resolve(pf, {"template": template}, load_inventory(INVENTORY))
    [problem] = caught.value.problems
    assert problem.startswith(f"{path}:10: step 1: check.textfsm.template: {template!r} "
                              "resolves to ")
    assert "outside" in problem


def test_a_textfsm_template_through_a_symbolic_link_out_of_the_directory_is_refused(
        write_playbook, tmp_path):
    (tmp_path / "templates").symlink_to("/etc")
    pf = load_playbook(write_playbook(TEMPLATE_PARAM))
    with pytest.raises(PlanError, match="resolves to /etc/passwd, outside"):
        resolve(pf, {"template": "templates/passwd"}, load_inventory(INVENTORY))


def test_a_textfsm_template_beside_the_playbook_or_shipped_is_used(write_playbook, tmp_path,
                                                                    shipped):
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "mine.textfsm").write_text("Value A (\\S+)\n\nStart\n")
    pf = load_playbook(write_playbook(TEMPLATE_PARAM))
    plan = resolve(pf, {"template": "templates/mine.textfsm"}, load_inventory(INVENTORY))
    assert plan.steps[0].action.textfsm.template == str(tmp_path / "templates" / "mine.textfsm")

    shipped_template = shipped / "templates" / "bgp_summary.textfsm"
    plan = resolve(pf, {"template": str(shipped_template)}, load_inventory(INVENTORY))
    assert plan.steps[0].action.textfsm.template == str(shipped_template.resolve())
