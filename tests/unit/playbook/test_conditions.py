"""Conditions judged on the daemons' status shapes (netwatch.control.protocol)."""

from __future__ import annotations

import pytest

from netwatch.playbook.conditions import describe, evaluate
from netwatch.playbook.schema import Condition

NOW = 1_800_000_000.0  # the status fixtures' clock


def cond(**fields) -> Condition:
    return Condition.model_validate(fields)


@pytest.fixture
def ctl(controller_status):
    status = controller_status
    t2 = status["upstreams"][1]
    t2.update(state="failed", reason="loss 100 % against a median of 0 %", egress=False)
    t2["sessions"]["ipv6"] = "down"
    for a in t2["announcements"]:
        a["mode"] = "withdrawn"
    status["upstreams"][2]["announcements"][0]["mode"] = "graceful_shutdown"
    status["safety_holds"] = [{"family": "ipv4", "kept": ["t3"]}]
    status["overrides"] = [{"id": "c4", "kind": "drain", "target": "t3",
                            "expires_at": NOW + 600, "reason": "CHG-9"}]
    return status


@pytest.mark.parametrize(("fields", "ok", "text"), [
    ({"upstream": "t1", "state": "healthy"}, True, "t1 is healthy"),
    ({"upstream": "t2", "state": "healthy"}, False,
     "t2 is failed (loss 100 % against a median of 0 %)"),
    ({"upstream": "t2", "session": "up"}, False, "t2 sessions: ipv4 up, ipv6 down"),
    ({"upstream": "t2", "session": "up", "family": "ipv4"}, True, "t2 sessions: ipv4 up"),
    ({"upstream": "t2", "announced": False}, True,
     "t2: 198.51.100.0/24 withdrawn, 2001:db8:100::/48 withdrawn"),
    ({"upstream": "t3", "announced": False}, False,
     "t3: 198.51.100.0/24 graceful_shutdown, 2001:db8:100::/48 normal"),
    ({"upstream": "t3", "announced": True}, True,
     "t3: 198.51.100.0/24 graceful_shutdown, 2001:db8:100::/48 normal"),
    ({"upstream": "t3", "announced": "graceful_shutdown", "family": "ipv4"}, True,
     "t3: 198.51.100.0/24 graceful_shutdown"),
    ({"upstream": "t2", "egress": False}, True, "t2 egress: false"),
    ({"upstream": "t9", "state": "healthy"}, False, "no upstream t9 (known: t1, t2, t3, t4)"),
    ({"local_fault": False}, True, "local_fault: false"),
    ({"budget_exhausted": False}, True, "budget_exhausted: false (0 of 30 actions this hour)"),
    ({"safety_hold": False}, False, "safety holds: ipv4: kept t3"),
    ({"no_override_expiring_within": "15m"}, False,
     "c4 drain t3 expires in 10m00s (CHG-9)"),
    ({"no_override_expiring_within": "5m"}, True, "c4 drain t3 expires in 10m00s (CHG-9)"),
    ({"answers": "controller"}, True, "controller answers (version 0.1.0)"),
])
def test_conditions_on_the_controller(ctl, fields, ok, text):
    c = cond(**fields)
    if c.no_override_expiring_within is not None:  # the plan turns it into seconds
        c = c.model_copy(update={"no_override_expiring_within": {"15m": 900.0, "5m": 300.0}[
            c.no_override_expiring_within]})
    seen = evaluate(c, ctl)
    assert (seen.ok, seen.text) == (ok, text)


def test_conditions_on_the_agent(agent_status):
    status = agent_status
    assert evaluate(cond(uplink="primary", active=True), status).text == (
        "uplink primary active: true (mode on_primary)")
    assert cond(uplink="primary", active=True).source == "agent"
    assert evaluate(cond(uplink="secondary", state="up"), status).ok


def test_a_daemon_that_does_not_answer_or_lacks_a_key_never_holds(ctl):
    seen = evaluate(cond(local_fault=False), None, error="controller: unreachable: refused")
    assert (seen.ok, seen.text) == (False, "controller does not answer: controller: "
                                           "unreachable: refused")
    del ctl["local_fault"]  # an older daemon
    seen = evaluate(cond(local_fault=False), ctl)
    assert (seen.ok, seen.text) == (False, "the controller's status has no local_fault")


def test_conditions_read_as_words():
    assert describe(cond(upstream="t1", announced=False)) == "t1 announced: false"
    assert describe(cond(upstream="t1", session="up", family="ipv6")) == "t1 session: up (ipv6)"
    assert describe(cond(uplink="secondary", active=True)) == "uplink secondary active: true"


@pytest.mark.parametrize(("fields", "message"), [
    ({}, "a condition needs exactly one of: upstream, uplink"),
    ({"upstream": "t1"}, "a condition on an upstream needs exactly one of: state, session"),
    ({"upstream": "t1", "state": "up"}, "state: an upstream is healthy, degraded, failed"),
    ({"uplink": "tertiary", "active": True}, "uplink: primary or secondary"),
    ({"local_fault": False, "family": "ipv4"}, "family: not with local_fault"),
    ({"upstream": "t1", "egress": True, "family": "ipv4"}, "family: not with upstream"),
])
def test_a_malformed_condition_is_refused(fields, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        cond(**fields)
