"""The alert and recording rules of grafana/alerts/, with promtool and by what a NOC relies on:
each alert is tested firing, not firing and (where its `for:` matters) pending; its name,
severity and annotations follow one convention; its runbook exists in this repository; each
`for:` says why in a comment."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

SEVERITIES = {"critical", "warning", "info"}
RUNBOOK_BASE = "https://github.com/netwatch/netwatch/blob/main/"
ALERT_NAME = re.compile(r"\ANetwatch(?:[A-Z][a-z0-9]*)+\Z")
RECORD_NAME = re.compile(r"\Anetwatch:[a-z0-9_]+(?::[a-z0-9_]+)?\Z")


def alert_rules(rule_files: list[Path]) -> list[tuple[Path, dict]]:
    return [(path, rule) for path in rule_files
            for group in yaml.safe_load(path.read_text())["groups"]
            for rule in group["rules"] if "alert" in rule]


def test_promtool_checks_every_rule_file(promtool, run, rule_files):
    assert rule_files, "no rule file in grafana/alerts/"
    done = run([promtool, "check", "rules", *map(str, rule_files)])
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("SUCCESS") == len(rule_files), done.stdout


def test_promtool_rule_tests_pass(promtool, run, rule_tests):
    assert rule_tests, "no promtool test in grafana/alerts/tests/"
    done = run([promtool, "test", "rules", *map(str, rule_tests)])
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_alert_is_tested_firing_not_firing_and_pending(rule_files, rule_tests):
    firing, quiet, pending = set(), set(), set()
    for path in rule_tests:
        for group in yaml.safe_load(path.read_text())["tests"]:
            for case in group.get("alert_rule_test", []):
                (firing if case.get("exp_alerts") else quiet).add(case["alertname"])
            for case in group.get("promql_expr_test", []):
                for sample in case.get("exp_samples", []):
                    found = re.search(r'alertname="(\w+)".*alertstate="pending"',
                                      sample["labels"])
                    if found:
                        pending.add(found.group(1))
    missing = []
    for _, rule in alert_rules(rule_files):
        name = rule["alert"]
        needs = {"firing": firing, "not firing": quiet}
        if rule.get("for"):
            needs["pending"] = pending
        missing += [f"{name}: {what}" for what, seen in needs.items() if name not in seen]
    assert missing == [], "cases missing in grafana/alerts/tests/:\n" + "\n".join(missing)


def test_alerts_are_named_and_labelled_one_way(rule_files):
    problems = []
    for path, rule in alert_rules(rule_files):
        name = rule["alert"]
        if not ALERT_NAME.match(name):
            problems.append(f"{path.name}: {name}: not CamelCase with the Netwatch prefix")
        severity = rule.get("labels", {}).get("severity")
        if severity not in SEVERITIES:
            problems.append(f"{path.name}: {name}: severity {severity!r}")
        notes = rule.get("annotations", {})
        for key in ("summary", "description", "runbook_url"):
            if not notes.get(key, "").strip():
                problems.append(f"{path.name}: {name}: no {key}")
        if "$labels." not in notes.get("description", ""):
            problems.append(f"{path.name}: {name}: the description names no label value")
    assert problems == [], "\n".join(problems)


def test_every_runbook_link_points_at_a_runbook_in_this_repository(rule_files, repo):
    problems = []
    for _path, rule in alert_rules(rule_files):
        name, url = rule["alert"], rule["annotations"]["runbook_url"]
        if not url.startswith(RUNBOOK_BASE):
            problems.append(f"{name}: {url} does not start with {RUNBOOK_BASE}")
            continue
        target = repo / url.removeprefix(RUNBOOK_BASE)
        if not target.is_file():
            problems.append(f"{name}: {url}: no file {target.relative_to(repo)}")
        elif name not in target.read_text():
            problems.append(f"{name}: {target.relative_to(repo)} does not mention {name}")
    assert problems == [], "\n".join(problems)


def test_every_rule_says_why_in_a_comment(rule_files):
    """The line above each rule is a comment: for an alert, why its `for:` (or none) fits the
    daemon's own hysteresis; for a recording rule, what it records."""
    bare = []
    for path in rule_files:
        lines = path.read_text().splitlines()
        for i, line in enumerate(lines):
            found = re.match(r"\s*- (?:alert|record): (\S+)", line)
            if found and not lines[i - 1].lstrip().startswith("#"):
                bare.append(f"{path.name}:{i + 1}: {found.group(1)}")
    assert bare == [], "rules without a comment above them:\n" + "\n".join(bare)


def test_recording_rules_are_named_level_metric_operation(rule_files):
    names = [rule["record"] for path in rule_files
             for group in yaml.safe_load(path.read_text())["groups"]
             for rule in group["rules"] if "record" in rule]
    assert names, "no recording rule"
    assert [n for n in names if not RECORD_NAME.match(n)] == []


def test_rules_keep_the_target_labels(rule_files):
    """Rules aggregate with `without (...)`: `by (...)` would drop the `site` label that the
    Alertmanager inhibitions compare (and any label a site adds to its targets)."""
    offending = [f"{path.name}: {rule.get('alert') or rule.get('record')}"
                 for path in rule_files
                 for group in yaml.safe_load(path.read_text())["groups"]
                 for rule in group["rules"] if re.search(r"\bby\s*\(", rule["expr"])]
    assert offending == []


@pytest.mark.parametrize("name", ["NetwatchUpstreamFailed", "NetwatchDaemonDown"])
def test_the_lab_tested_alerts_exist(rule_files, name):
    """tests/lab/test_observability.py waits for these at the webhook."""
    assert name in {rule["alert"] for _, rule in alert_rules(rule_files)}
