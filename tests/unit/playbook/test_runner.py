"""The runner on fakes: what each step sends, when the rollback runs, what the operator is
asked, what the trail keeps, and that a credential never shows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from netwatch.playbook.inventory import Credentials, Secret
from netwatch.playbook.loader import load_inventory, load_playbook
from netwatch.playbook.plan import describe, resolve

REPO = Path(__file__).resolve().parents[3]
SHIPPED = REPO / "playbooks"


def plan_of(path: Path, inventory=None, **params):
    return resolve(load_playbook(path), params, inventory)


def test_drain_upstream_drains_waits_for_the_withdrawal_and_verifies(make_runner, control,
                                                                      trail, operator):
    plan = plan_of(SHIPPED / "drain-upstream.yaml", upstream="t1", reason="CHG-42")
    result = make_runner(plan).run()
    assert result.outcome == "completed" and result.ok and result.changed
    assert control.commands() == ["drain"]
    assert control.calls[2] == ("controller", "drain", {
        "upstream": "t1", "reason": "playbook drain-upstream: CHG-42", "for_s": 14400.0})
    statuses = [r.status for r in result.steps]
    assert statuses == ["ok"] * 7
    wait = result.steps[3]
    assert "t1: 198.51.100.0/24 withdrawn, 2001:db8:100::/48 withdrawn" in wait.output
    assert any("graceful_shutdown" in seen for _, _, seen in operator.waits)  # progress shown
    assert trail.kinds() == ["playbook_start"] + ["step"] * 7 + ["playbook_end"]
    start = trail.records[0][1]
    assert start["params"] == {"upstream": "t1", "reason": "CHG-42", "graceful_s": None,
                               "lease": 14400.0}
    assert start["who"] == {"uid": 0, "user": "root"} and start["run_id"] == "r1"
    drain = trail.records[3][1]
    assert drain["action"] == ["control API (controller): drain upstream='t1' reason='playbook "
                               "drain-upstream: CHG-42' for_s=14400 (4h00m)"]
    assert drain["changed"] is True and "draining t1" in drain["output"]


def test_a_wait_that_times_out_rolls_back(make_runner, control, clock):
    control.withdraw_after_polls = 10_000  # the withdrawal never comes
    plan = plan_of(SHIPPED / "drain-upstream.yaml", upstream="t2", reason="CHG-1")
    start = clock.now
    result = make_runner(plan).run()
    assert result.outcome == "rolled back" and not result.ok
    assert control.commands() == ["drain", "restore"]
    assert [r.status for r in result.steps] == ["ok", "ok", "ok", "failed"]
    assert "not within 3600 s" in result.steps[3].output
    assert "last seen: t2: 198.51.100.0/24 graceful_shutdown" in result.steps[3].output
    assert 3600 <= clock.now - start < 3610  # the fake clock, not the wall: no test sleeps
    assert [r.status for r in result.rollback] == ["ok"]


def test_a_refused_drain_aborts_without_rollback(make_runner, control, operator):
    control.refuse = {"drain"}
    plan = plan_of(SHIPPED / "drain-upstream.yaml", upstream="t1", reason="CHG-1")
    result = make_runner(plan).run()
    assert result.outcome == "failed"
    assert control.commands() == ["drain"]
    assert "refused: drain would break the interlock" in result.steps[-1].output


def test_an_unreachable_daemon_fails_the_step_with_the_reason(make_runner, control):
    control.unreachable = {"controller"}
    plan = plan_of(SHIPPED / "restore-upstream.yaml", upstream="t1", reason="r")
    result = make_runner(plan).run()
    assert result.outcome == "failed"
    assert result.steps[0].output == "controller: unreachable: no such socket"


def test_on_failure_continue_goes_on(make_runner, control):
    control.statuses["controller"]["upstreams"][0]["sessions"]["ipv6"] = "down"
    plan = plan_of(SHIPPED / "drain-upstream.yaml", upstream="t1", reason="r")
    result = make_runner(plan).run()
    assert result.outcome == "completed"
    assert result.steps[0].status == "failed"
    assert result.steps[0].output == "t1 sessions: ipv4 up, ipv6 down"


def test_a_declined_confirmation_stops_the_run_cleanly(make_runner, control, operator):
    operator.answers = [False]
    plan = plan_of(SHIPPED / "transit-incident.yaml", upstream="t2", reason="INC-7")
    runner = make_runner(plan)
    result = runner.run()
    assert result.outcome == "stopped by the operator" and result.ok
    assert operator.questions == [
        "Drain t2 now (GRACEFUL_SHUTDOWN for 30 s, then withdraw)?"]
    assert control.commands() == []  # evidence only: nothing drained
    assert runner.diagnoser.asked == [("t2", None, 3)]
    assert result.steps[-1].status == "declined"


def test_yes_answers_the_steps_questions(make_runner, control, operator):
    plan = plan_of(SHIPPED / "transit-incident.yaml", upstream="t2", reason="INC-7")
    result = make_runner(plan, assume_yes=True).run()
    assert result.outcome == "completed"
    assert operator.questions == []
    assert control.commands() == ["drain"]


def test_ctrl_c_during_a_wait_stops_at_once_and_offers_the_rollback(make_runner, control,
                                                                     operator, stop, clock):
    control.withdraw_after_polls = 10_000
    plan = plan_of(SHIPPED / "drain-upstream.yaml", upstream="t1", reason="CHG-1")
    runner = make_runner(plan)
    polls = []

    def status_then_ctrl_c(label, elapsed_s, limit_s, observed):
        polls.append(elapsed_s)
        if len(polls) == 3:
            stop.set()

    operator.waiting = status_then_ctrl_c
    operator.answers = [True]  # yes, roll back
    result = runner.run()
    assert result.outcome == "rolled back"
    assert result.steps[-1].status == "interrupted"
    assert clock.now - 1000 < 10  # the wait ended within a slice, not after its hour
    assert operator.questions == ["Run the rollback steps now (Restore t1 (announce again at "
                                  "once))?"]
    assert control.commands() == ["drain", "restore"]


def test_ctrl_c_between_steps_with_the_rollback_declined(make_runner, control, operator, stop,
                                                         trail):
    stop.after = "3"  # Ctrl-C while the drain ran: the drain completes, then the run stops
    plan = plan_of(SHIPPED / "drain-upstream.yaml", upstream="t1", reason="CHG-1")
    result = make_runner(plan).run()
    assert result.outcome == "stopped" and not result.ok
    assert [r.label for r in result.steps] == ["1", "2", "3"]
    assert control.commands() == ["drain"]
    assert "playbook_stopped" in trail.kinds() and "rollback_start" not in trail.kinds()


DEVICE_PLAYBOOK = """\
name: dev
description: device steps
params:
  neighbor: {type: address, required: true}
steps:
  - device: {device: border1, config: ["router bgp 64600", "neighbor {{ neighbor }} shutdown"],
             expect: 'Idle \\(Admin\\)'}
    on_failure: rollback
  - check: {device: border1, command: show bgp summary, match: '{{ neighbor }}'}
rollback:
  - device: {device: border1, config: ["router bgp 64600", "no neighbor {{ neighbor }} shutdown"]}
"""


def test_a_failing_expect_runs_the_rollback_on_the_device(make_runner, devices,
                                                          write_playbook):
    inventory = load_inventory(SHIPPED / "inventory.example.yaml")
    plan = plan_of(write_playbook(DEVICE_PLAYBOOK), inventory, neighbor="192.0.2.1")
    result = make_runner(plan).run()
    assert result.outcome == "rolled back"
    assert "expected /Idle \\(Admin\\)/: not found" in result.steps[0].output
    assert devices.sent["border1"] == [
        "router bgp 64600", "neighbor 192.0.2.1 shutdown",
        "router bgp 64600", "no neighbor 192.0.2.1 shutdown",
    ]
    assert devices.closed == ["border1"]  # one session for the run, closed at its end


def test_a_password_never_reaches_the_operator_or_the_trail(make_runner, devices, operator,
                                                             trail, write_playbook):
    password = "S3cret-pw"
    devices.outputs = {"show bgp summary": f"192.0.2.1 4 64501 Idle (Admin) echo {password}",
                       "neighbor 192.0.2.1 shutdown": f"Idle (Admin) {password}"}
    inventory = load_inventory(SHIPPED / "inventory.example.yaml")
    plan = plan_of(write_playbook(DEVICE_PLAYBOOK), inventory, neighbor="192.0.2.1")
    runner = make_runner(plan, read_credentials=lambda d: Credentials(
        d.username, Secret(password)))
    result = runner.run()
    assert result.outcome == "completed"
    assert devices.opened[0][1].password.reveal() == password  # netmiko got it...
    everything = repr(trail.records) + repr(operator.done) + repr(result)
    assert password not in everything  # ...nobody else did
    assert "echo ***" in everything


def test_commit_confirmed_platforms_are_confirmed_only_when_the_run_completes(
        make_runner, devices, write_playbook, tmp_path):
    inventory_file = tmp_path / "inventory.yaml"
    inventory_file.write_text("devices:\n  mx1: {host: 192.0.2.9, device_type: juniper_junos,"
                              " username: u, password_env: X}\n")
    text = ("name: junos\ndescription: d\nsteps:\n"
            "  - device: {device: mx1, config: ['deactivate protocols bgp group t1'],"
            " confirm_minutes: 3}\n"
            "  - check: {device: mx1, command: show bgp summary, match: Established}\n")
    plan = plan_of(write_playbook(text), load_inventory(inventory_file))
    assert "safety net: `commit confirmed 3` on juniper_junos" in " ".join(
        describe(plan.steps[0].action))
    devices.outputs = {"show bgp summary": "Established"}
    make_runner(plan).run()
    assert devices.sent["mx1"] == ["deactivate protocols bgp group t1", "commit confirmed 3",
                                   "show bgp summary", "commit"]
    devices.sent.clear()
    devices.outputs = {"show bgp summary": "Idle"}  # the check fails: no confirmation
    result = make_runner(plan).run()
    assert result.outcome == "failed"
    assert devices.sent["mx1"] == ["deactivate protocols bgp group t1", "commit confirmed 3",
                                   "show bgp summary"]


def test_a_device_that_cannot_be_reached_fails_its_step(make_runner, devices, write_playbook):
    devices.fail_open = True
    inventory = load_inventory(SHIPPED / "inventory.example.yaml")
    plan = plan_of(write_playbook(DEVICE_PLAYBOOK), inventory, neighbor="192.0.2.1")
    result = make_runner(plan).run()
    assert result.steps[0].output == "border1: cannot open a session"
    assert result.outcome == "rollback failed"


def test_textfsm_fields_are_checked_on_the_parsed_rows(make_runner, devices, write_playbook):
    inventory = load_inventory(SHIPPED / "inventory.example.yaml")
    text = ("name: fsm\ndescription: d\nparams:\n  n: {type: address, required: true}\n"
            f"steps:\n  - check:\n      device: border1\n      command: show bgp summary\n"
            f"      textfsm:\n        template: {SHIPPED}/templates/bgp_summary.textfsm\n"
            "        where: {neighbor: '{{ n }}'}\n"
            "        expect: {state_pfxrcd: '^Idle \\(Admin\\)$'}\n")
    plan = plan_of(write_playbook(text), inventory, n="192.0.2.5")
    header = ("BGP router identifier 192.0.2.254, local AS number 60362\n"
              "Neighbor        V           AS MsgRcvd MsgSent   TblVer  InQ OutQ Up/Down  "
              "State/PfxRcd\n192.0.2.1       4        64501     100     100        5    0    0 "
              "1d02h           5\n")
    devices.outputs = {"show bgp summary": header + "192.0.2.5       4        64502       0   "
                       "    0        1    0    0 never    Idle (Admin)\n"}
    result = make_runner(plan).run()
    assert result.ok, result.steps[0].output
    assert "neighbor=192.0.2.5: state_pfxrcd 'Idle (Admin)' matches" in result.steps[0].output
    devices.outputs = {"show bgp summary": header}
    result = make_runner(plan).run()
    assert not result.ok
    assert "want at least 1 such row(s)" in result.steps[0].output


def test_force_server_failover_refuses_a_dead_uplink(make_runner, control):
    control.statuses["agent"]["uplinks"][1]["state"] = "down"
    control.statuses["agent"]["uplinks"][1]["reason"] = "carrier lost"
    plan = plan_of(SHIPPED / "force-server-failover.yaml", to="secondary", reason="r")
    result = make_runner(plan).run()
    assert result.outcome == "failed"
    assert result.steps[0].output == "uplink secondary is down (carrier lost)"
    assert control.commands() == []


def test_force_server_failover_moves_the_routes(make_runner, control):
    plan = plan_of(SHIPPED / "force-server-failover.yaml", to="secondary", reason="r")
    result = make_runner(plan).run()
    assert result.outcome == "completed"
    assert control.calls[1] == ("agent", "failover", {
        "to": "secondary", "reason": "playbook force-server-failover: r", "for_s": 3600.0})


@pytest.mark.parametrize("runbook", sorted((SHIPPED / "runbooks").glob("*.yaml")),
                         ids=lambda p: p.stem)
def test_every_runbook_runs_read_only_on_a_healthy_site(runbook, make_runner, control):
    params = {"upstream": "t1"} if "upstream" in load_playbook(runbook).playbook.params else {}
    result = make_runner(plan_of(runbook, **params)).run()
    assert result.outcome == "completed", [r.output for r in result.steps]
    assert control.commands() == [] and not result.changed


def test_the_trail_and_the_result_keep_the_playbooks_words(make_runner, trail, write_playbook):
    inventory = load_inventory(SHIPPED / "inventory.example.yaml")
    plan = plan_of(write_playbook(DEVICE_PLAYBOOK), inventory, neighbor="192.0.2.1")
    result = make_runner(plan).run()
    written = [(kind, json.loads(json.dumps(fields))) for kind, fields in trail.records]
    steps = [fields for kind, fields in written if kind in ("step", "rollback_step")]
    assert [(s["step_kind"], s["status"]) for s in steps] == [("device", "failed"),
                                                              ("device", "ok")]
    assert dict(written)["playbook_end"]["outcome"] == "rolled back"
    assert f"{result.outcome}" == "rolled back" and plan.steps[0].on_failure == "rollback"
