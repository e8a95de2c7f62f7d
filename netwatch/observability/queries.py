"""Every PromQL expression netwatch ships, and the metrics each one reads. Pure (it reads the
files it is given).

The alert and recording rules (`grafana/alerts/*.yml`) and the Grafana dashboards
(`grafana/dashboards/*.json`: panel targets, annotations) are only as good as the metrics they
name: a renamed metric makes a panel empty and an alert silent, with no error anywhere. These
functions list the expressions with where they come from, so that a check can run each one
against a Prometheus, and name the metrics each one selects, so that a check can compare them
with what the daemons export (tests/unit/observability, tests/lab/test_observability.py).

`selectors` understands the PromQL that netwatch writes (selectors with matchers, functions,
aggregations with by/without, vector matching with on/ignoring/group_left), not every corner
of the language: a selector without a metric name (`{job="x"}`) is not reported.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml

# What a dashboard's variables stand for when its queries run outside Grafana: every
# instance, site and upstream; Grafana's interval variables as a dashboard over the last
# 5 minutes would set them.
DASHBOARD_VARIABLES = {
    "__rate_interval": "1m",
    "__interval": "30s",
    "__range_s": "300",
    "__range": "5m",
    "site": ".*",
    "instance": ".*",
    "upstream": ".*",
}

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_LABEL_LIST = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_IDENTIFIER = re.compile(r"(?<![\w:.$])[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_VALUES = re.compile(r"\Alabel_values\((.+),\s*\w+\)\Z", re.S)
_KEYWORDS = frozenset({"and", "or", "unless", "bool", "offset", "by", "without", "on",
                       "ignoring", "group_left", "group_right", "inf", "nan", "atan2"})


@dataclass(frozen=True)
class Query:
    """One PromQL expression and where it comes from (`grafana/alerts/x.yml: alert
    NetwatchUpstreamFailed`, `grafana/dashboards/y.json: panel 7 "Loss" A`)."""

    source: str
    expr: str
    kind: str  # "alert", "record", "panel", "annotation", "variable"
    name: str = ""  # the alert's or record's name


def _blank(match: re.Match) -> str:
    text = match.group()
    return text[0] + " " * (len(text) - 2) + text[-1] if len(text) >= 2 else " "


def selectors(expr: str) -> list[str]:
    """The vector selectors of `expr`, each as written: `up{job=~"netwatch-agent"}`,
    `netwatch_transit_state{state="failed"}`, `netwatch:agent_on_secondary:max`."""
    masked = _STRING.sub(_blank, expr)
    masked = _LABEL_LIST.sub(lambda m: " " * len(m.group()), masked)
    scan = _MATCHERS.sub(_blank, masked)
    found = []
    for match in _IDENTIFIER.finditer(scan):
        name = match.group()
        rest = scan[match.end():].lstrip()
        if name in _KEYWORDS or rest.startswith("("):
            continue
        selector = name
        if rest.startswith("{"):
            start = scan.index("{", match.end())
            end = scan.index("}", start)
            selector += expr[start:end + 1]
        found.append(selector)
    return found


def metric_names(expr: str) -> set[str]:
    """The metric names `expr` selects."""
    return {s.split("{", 1)[0] for s in selectors(expr)}


def substitute(expr: str, variables: Mapping[str, str] = DASHBOARD_VARIABLES) -> str:
    """`expr` with Grafana's `$name` and `${name}` replaced (longest names first, so that
    `$__range_s` is not read as `$__range` and "_s"). Raises ValueError for a variable left
    over."""
    for name in sorted(variables, key=len, reverse=True):
        expr = expr.replace("${" + name + "}", variables[name])
        expr = expr.replace("$" + name, variables[name])
    left = re.search(r"\$\{?\w+", expr)
    if left:
        raise ValueError(f"variable {left.group()} has no value in {expr!r}")
    return expr


def rule_queries(paths: Iterable[Path], root: Path | None = None) -> list[Query]:
    """Every alert and recording rule's expression in the rule files `paths`. `root`: the
    paths are shown relative to it."""
    out = []
    for path in sorted(paths):
        shown = path.relative_to(root) if root else path
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                kind = "alert" if "alert" in rule else "record"
                name = rule[kind]
                out.append(Query(f"{shown}: {kind} {name}", rule["expr"], kind, name))
    return out


def dashboard_queries(paths: Iterable[Path], root: Path | None = None,
                      variables: Mapping[str, str] = DASHBOARD_VARIABLES) -> list[Query]:
    """Every Prometheus query of the dashboards `paths` (panels, panels inside rows,
    annotations, and the selector of each `label_values(selector, label)` variable), with
    their variables substituted."""
    out = []
    for path in sorted(paths):
        shown = path.relative_to(root) if root else path
        board = json.loads(path.read_text())
        for panel in panels(board):
            for target in panel.get("targets", []):
                if target.get("expr"):
                    where = f'{shown}: panel {panel["id"]} "{panel.get("title", "")}" ' \
                            f'{target.get("refId", "")}'
                    out.append(Query(where, substitute(target["expr"], variables), "panel"))
        for variable in board.get("templating", {}).get("list", []):
            found = _LABEL_VALUES.match(variable.get("definition", "")) \
                if variable.get("type") == "query" else None
            if found:
                where = f'{shown}: variable "{variable["name"]}"'
                out.append(Query(where, substitute(found.group(1), variables), "variable"))
        for annotation in board.get("annotations", {}).get("list", []):
            if annotation.get("expr"):
                where = f'{shown}: annotation "{annotation.get("name", "")}"'
                out.append(Query(where, substitute(annotation["expr"], variables),
                                 "annotation"))
    return out


def panels(board: Mapping) -> list[Mapping]:
    """Every panel of a dashboard, those inside collapsed rows included."""
    out = []
    for panel in board.get("panels", []):
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out
