"""grafana/alertmanager.example.yml: amtool accepts it, every shipped alert reaches the
receiver its severity says (amtool config routes test), and the inhibitions mute what they
should and nothing else, in a real Alertmanager."""

from __future__ import annotations

import datetime
import time

import pytest
import yaml

RECEIVER_OF = {"critical": "oncall", "warning": "noc-ticket", "info": "noc-chat"}


def example(repo):
    return str(repo / "grafana" / "alertmanager.example.yml")


def routed_to(amtool, run, repo, labels: dict[str, str]) -> str:
    done = run([amtool, "config", "routes", "test", f"--config.file={example(repo)}",
                *(f"{k}={v}" for k, v in labels.items())])
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout.strip()


def test_amtool_accepts_the_example(amtool, run, repo):
    done = run([amtool, "check-config", example(repo)])
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout, done.stdout


def test_every_shipped_alert_reaches_the_receiver_of_its_severity(amtool, run, repo,
                                                                  rule_files):
    wrong = []
    for path in rule_files:
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                if "alert" not in rule:
                    continue
                severity = rule["labels"]["severity"]
                labels = {"alertname": rule["alert"], "severity": severity, "site": "par1"}
                got = routed_to(amtool, run, repo, labels)
                if got != RECEIVER_OF[severity]:
                    wrong.append(f"{rule['alert']} ({severity}): {got}, expected "
                                 f"{RECEIVER_OF[severity]}")
    assert wrong == [], "\n".join(wrong)


@pytest.mark.parametrize("labels, receiver", [
    ({"alertname": "NetwatchUpstreamFailed", "severity": "critical", "upstream": "t2"},
     "oncall"),
    ({"alertname": "NetwatchBgpSessionDown", "severity": "warning"}, "noc-ticket"),
    ({"alertname": "NetwatchOverrideExpiringSoon", "severity": "info"}, "noc-chat"),
    # A netwatch alert without a severity, and someone else's critical alert: the default.
    ({"alertname": "NetwatchSomethingNew"}, "noc-ticket"),
    ({"alertname": "NodeDown", "severity": "critical"}, "noc-ticket"),
], ids=["critical", "warning", "info", "no-severity", "not-netwatch"])
def test_routes(amtool, run, repo, labels, receiver):
    assert routed_to(amtool, run, repo, labels) == receiver


def alert(name: str, **labels: str) -> dict:
    return {"labels": {"alertname": name, **labels}}


def stamped(a: dict) -> dict:
    """`a` active from now for 10 minutes (stamped when posted: the cases are built when the
    module is collected, possibly more than 10 minutes before the test runs)."""
    now = datetime.datetime.now(datetime.UTC)
    return {**a, "startsAt": now.isoformat(),
            "endsAt": (now + datetime.timedelta(minutes=10)).isoformat()}


# (source, target that the source mutes, a target it must leave alone), each in a site of its
# own so that the cases do not mute one another.
INHIBITIONS = {
    "both-uplinks-down mutes primary-down of the same server": (
        alert("NetwatchBothUplinksDown", site="s1", instance="srv1:9110", severity="critical"),
        alert("NetwatchPrimaryUplinkDown", site="s1", instance="srv1:9110",
              severity="warning", uplink="primary"),
        alert("NetwatchPrimaryUplinkDown", site="s1", instance="srv2:9110",
              severity="warning", uplink="primary"),
    ),
    "local fault mutes the upstream alerts of its site": (
        alert("NetwatchLocalFault", site="s2", instance="edge1:9111", severity="critical"),
        alert("NetwatchUpstreamFailed", site="s2", instance="edge1:9111", upstream="t1",
              severity="critical"),
        alert("NetwatchUpstreamFailed", site="s2b", instance="edge9:9111", upstream="t1",
              severity="critical"),
    ),
    "local fault leaves the invariant's alert alone": (
        alert("NetwatchLocalFault", site="s3", instance="edge1:9111", severity="critical"),
        alert("NetwatchBgpSessionDown", site="s3", instance="edge1:9111", upstream="t4",
              family="ipv4", severity="warning"),
        alert("NetwatchTooFewUpstreamsAnnouncing", site="s3", instance="edge1:9111",
              prefix="198.51.100.0/24", severity="critical"),
    ),
    "a drained upstream mutes its own alerts only": (
        alert("NetwatchUpstreamDrained", site="s4", instance="edge1:9111", upstream="t1",
              id="c3", kind="drain", target="t1", severity="info"),
        alert("NetwatchUpstreamDegraded", site="s4", instance="edge1:9111", upstream="t1",
              severity="warning"),
        alert("NetwatchUpstreamDegraded", site="s4", instance="edge1:9111", upstream="t2",
              severity="warning"),
    ),
    "an exhausted budget mutes the low-budget warning": (
        alert("NetwatchActionBudgetExhausted", site="s5", instance="edge1:9111",
              severity="critical"),
        alert("NetwatchActionBudgetLow", site="s5", instance="edge1:9111", severity="warning"),
        alert("NetwatchActionBudgetLow", site="s5", instance="edge2:9111", severity="warning"),
    ),
}


@pytest.mark.parametrize("case", list(INHIBITIONS))
def test_inhibitions(alertmanager, wait_for, case):
    source, muted, spared = INHIBITIONS[case]
    alertmanager.post_alerts([stamped(a) for a in (source, muted, spared)])

    def state(a: dict) -> tuple[str, list[str]] | None:
        """(state, inhibitedBy) of that alert, None while Alertmanager does not list it."""
        found = alertmanager.alerts(**a["labels"])
        if len(found) != 1:
            return None
        status = found[0]["status"]
        return status["state"], status["inhibitedBy"]

    listed = wait_for(lambda: all(state(a) is not None for a in (source, muted, spared)),
                      10, 0.1)
    assert listed is not None, f"{case}: posted alerts not listed\n{alertmanager.tail()}"
    took = wait_for(lambda: state(muted)[0] == "suppressed", 10, 0.1)
    assert took is not None, f"{case}: {muted['labels']} is {state(muted)}, not inhibited"
    assert state(muted)[1], f"{case}: suppressed, but by no inhibition"
    time.sleep(0.2)
    assert state(spared) == ("active", []), f"{case}: {spared['labels']} is {state(spared)}"
    assert state(source)[0] == "active", f"{case}: the source itself is {state(source)}"
