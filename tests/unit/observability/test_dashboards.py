"""The Grafana dashboards of grafana/dashboards/ and the provisioning files, checked by
structure (there is no Grafana server to load them) and by parsing every query with
Prometheus's own parser (promtool). tests/lab/test_observability.py runs the queries."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from netwatch.observability.queries import dashboard_queries, metric_names, panels

# uid -> title: Grafana links, bookmarks and provisioning use the uid; it never changes.
BOARDS = {"netwatch-transit": "netwatch: transit", "netwatch-servers": "netwatch: servers"}
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
# What each board must show (the metrics its panels read): the list.
SHOWS = {
    "netwatch-transit": {
        "netwatch_transit_state", "netwatch_transit_loss_ratio", "netwatch_transit_rtt_seconds",
        "netwatch:transit_loss_ratio:median", "netwatch:transit_rtt_seconds:median",
        "netwatch_announcement_mode", "netwatch_egress_weight", "netwatch_bgp_session_up",
        "netwatch_transit_safety_hold", "netwatch_transit_local_fault",
        "netwatch_transit_actions_total", "netwatch_transit_action_budget_remaining",
        "netwatch_override_expiry_timestamp_seconds", "netwatch_control_requests_total",
        "netwatch_exabgp_commands_rejected_total", "netwatch_controller_errors_total"},
    "netwatch-servers": {
        "netwatch_agent_default_route_uplink", "netwatch_agent_uplink_family_up",
        "netwatch_agent_probe_rtt_seconds_bucket",
        "netwatch_agent_probe_loss_ratio", "netwatch_agent_failovers_total",
        "netwatch:agent_on_secondary:max"},
}


def load(path: Path) -> dict:
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def boards(dashboards) -> dict[str, dict]:
    return {(b := load(p))["uid"]: b for p in dashboards}


def test_the_boards_and_their_stable_uids(boards):
    assert {uid: b["title"] for uid, b in boards.items()} == BOARDS


def test_provisioned_boards_carry_no_database_id(boards):
    """A dashboard file with an `id` would fight Grafana's own numbering."""
    assert [uid for uid, b in boards.items() if b.get("id") is not None] == []


def test_a_datasource_variable_and_every_panel_uses_it(boards):
    problems = []
    for uid, board in boards.items():
        variables = {v["name"]: v for v in board["templating"]["list"]}
        ds = variables.get("datasource", {})
        if (ds.get("type"), ds.get("query")) != ("datasource", "prometheus"):
            problems.append(f"{uid}: no `datasource` variable of type datasource/prometheus")
        for v in variables.values():
            if v["type"] == "query" and v["datasource"] != DATASOURCE:
                problems.append(f"{uid}: variable {v['name']}: datasource {v['datasource']}")
        for panel in panels(board):
            if panel["type"] == "row":
                continue
            if panel.get("datasource") != DATASOURCE:
                problems.append(f"{uid}: panel {panel['id']}: datasource {panel.get('datasource')}")
            for target in panel.get("targets", []):
                if target.get("datasource") != DATASOURCE:
                    problems.append(f"{uid}: panel {panel['id']} {target['refId']}: datasource")
        for annotation in board["annotations"]["list"]:
            if annotation.get("expr") and annotation.get("datasource") != DATASOURCE:
                problems.append(f"{uid}: annotation {annotation['name']}: datasource")
    assert problems == [], "\n".join(problems)


def test_the_servers_board_selects_an_instance(boards):
    variables = {v["name"]: v for v in boards["netwatch-servers"]["templating"]["list"]}
    assert "instance" in variables
    assert "netwatch_build_info" in variables["instance"]["definition"]


def test_panel_ids_are_unique_and_panels_do_not_overlap(boards):
    problems = []
    for uid, board in boards.items():
        ids = [p["id"] for p in panels(board)]
        twice = sorted({i for i in ids if ids.count(i) > 1})
        if twice:
            problems.append(f"{uid}: duplicate panel ids {twice}")
        taken: dict[tuple[int, int], int] = {}
        for p in panels(board):
            g = p["gridPos"]
            if g["x"] + g["w"] > 24:
                problems.append(f"{uid}: panel {p['id']} goes past column 24")
            cells = {(x, y) for x in range(g["x"], g["x"] + g["w"])
                     for y in range(g["y"], g["y"] + g["h"])}
            others = sorted({taken[c] for c in cells if c in taken})
            if others:
                problems.append(f"{uid}: panel {p['id']} overlaps panels {others}")
            taken.update(dict.fromkeys(cells, p["id"]))
    assert problems == [], "\n".join(problems)


def test_every_panel_has_a_unit_a_title_a_description_and_a_query(boards):
    problems = []
    for uid, board in boards.items():
        for p in panels(board):
            if p["type"] == "row":
                continue
            where = f"{uid}: panel {p['id']} {p.get('title')!r}"
            if not p["fieldConfig"]["defaults"].get("unit"):
                problems.append(f"{where}: no unit")
            if not p.get("title") or not p.get("description"):
                problems.append(f"{where}: no title or description")
            if not [t for t in p.get("targets", []) if t.get("expr")]:
                problems.append(f"{where}: no query")
            refs = [t["refId"] for t in p.get("targets", [])]
            if len(refs) != len(set(refs)):
                problems.append(f"{where}: duplicate refIds {refs}")
    assert problems == [], "\n".join(problems)


def test_actions_and_overrides_are_annotations_on_the_transit_board(boards):
    named = {a["name"]: a for a in boards["netwatch-transit"]["annotations"]["list"]}
    assert "netwatch_transit_actions_total" in named["Automatic actions"]["expr"]
    overrides = named["Operator overrides"]
    assert "netwatch_override_created_timestamp_seconds" in overrides["expr"]
    assert overrides["useValueForTime"] is True, "an override shows at its creation time"


@pytest.mark.parametrize("uid", sorted(SHOWS))
def test_each_board_shows_what_the_noc_asked_for(boards, dashboards, uid):
    path = next(p for p in dashboards if load(p)["uid"] == uid)
    read = set().union(*(metric_names(q.expr) for q in dashboard_queries([path])))
    assert sorted(SHOWS[uid] - read) == []


def test_every_query_parses(dashboards, promtool, run, tmp_path):
    """Each query, its variables substituted as a dashboard would, as a recording rule that
    `promtool check rules` parses with Prometheus's own PromQL parser."""
    queries = dashboard_queries(dashboards)
    rules = {"groups": [{"name": "dashboard-queries", "rules": [
        {"record": f"dashboard:query_{i}", "expr": q.expr} for i, q in enumerate(queries)]}]}
    path = tmp_path / "queries.yml"
    path.write_text(yaml.safe_dump(rules))
    done = run([promtool, "check", "rules", "--lint=none", str(path)])
    if done.returncode != 0:
        index = {f"dashboard:query_{i}": q.source for i, q in enumerate(queries)}
        pytest.fail("\n".join([done.stdout + done.stderr, *map(str, index.items())]))


def test_the_provisioning_files_a_stock_grafana_loads(repo):
    datasources = yaml.safe_load(
        (repo / "grafana/provisioning/datasources/netwatch.yml").read_text())
    assert datasources["apiVersion"] == 1
    [ds] = datasources["datasources"]
    assert (ds["type"], ds["access"]) == ("prometheus", "proxy")
    assert ds["url"].startswith("http") and ds["uid"] and ds["name"]

    providers = yaml.safe_load(
        (repo / "grafana/provisioning/dashboards/netwatch.yml").read_text())
    assert providers["apiVersion"] == 1
    [provider] = providers["providers"]
    assert provider["type"] == "file"
    assert Path(provider["options"]["path"]).is_absolute()
    assert provider["folder"] == "netwatch"
