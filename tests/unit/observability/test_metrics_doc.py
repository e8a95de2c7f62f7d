"""Every metric a rule or a panel reads is exported by a daemon (or listed as planned in
docs/metrics.md, the one place that says so), and docs/metrics.md lists every metric the
daemons export, every recording rule and every alert.

"Exported" is read from the daemons' registries (AgentMetrics, ControllerMetrics on fresh
registries) and, for metrics defined elsewhere in netwatch (the control API's), from the
definitions in the source: tests/lab/test_observability.py checks the live endpoints."""

from __future__ import annotations

import ast
import re
import warnings
from pathlib import Path

import yaml
from prometheus_client import CollectorRegistry

import netwatch
from netwatch.agent.metrics import AgentMetrics
from netwatch.controller.metrics import ControllerMetrics
from netwatch.observability.queries import dashboard_queries, metric_names, rule_queries

PACKAGE = Path(netwatch.__file__).parent
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"),
            "summary": ("_sum", "_count"), "info": ("_info",)}
CONSTRUCTORS = {"Counter": "counter", "Gauge": "gauge", "Histogram": "histogram",
                "Summary": "summary", "Info": "info", "Enum": "gauge"}


def samples_of(name: str, kind: str) -> set[str]:
    """The sample names a metric family of that type exposes."""
    base = name.removesuffix("_total") if kind == "counter" else name
    return {base + s for s in SUFFIXES.get(kind, ("",))}


def registry_metrics() -> dict[str, set[str]]:
    """{family name: its sample names} of the agent's and the controller's registries."""
    out = {}
    for build in (AgentMetrics, ControllerMetrics):
        registry = CollectorRegistry()
        build(registry)
        for family in registry.collect():
            out[family.name] = samples_of(family.name, family.type)
    return out


def source_metrics() -> dict[str, set[str]]:
    """{family: samples} for every metric constructed anywhere in netwatch with a literal
    name (Counter("netwatch_x_total", ...))."""
    out = {}
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call) or not node.args:
                continue
            func = node.func.id if isinstance(node.func, ast.Name) else getattr(
                node.func, "attr", None)
            first = node.args[0]
            if func in CONSTRUCTORS and isinstance(first, ast.Constant) \
                    and isinstance(first.value, str) and first.value.startswith("netwatch_"):
                kind = CONSTRUCTORS[func]
                out[first.value.removesuffix("_total")] = samples_of(first.value, kind)
    return out


def exported() -> set[str]:
    return set().union(*registry_metrics().values(), *source_metrics().values())


def doc(repo: Path) -> str:
    return (repo / "docs" / "metrics.md").read_text()


def planned(repo: Path) -> set[str]:
    section = doc(repo).split("\n## Planned", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `([a-z_:]+)`", section, re.M))


def documented(repo: Path) -> set[str]:
    return set(re.findall(r"^\| `([a-z_:]+)`", doc(repo), re.M))


def test_every_metric_a_rule_or_panel_reads_is_exported_or_planned(repo, rule_files,
                                                                    dashboards):
    queries = rule_queries(rule_files, repo) + dashboard_queries(dashboards, repo)
    recorded = {q.name for q in queries if q.kind == "record"}
    known = exported() | recorded | planned(repo) | {"up"}
    unknown = sorted(f"{name} (in {q.source})" for q in queries
                     for name in metric_names(q.expr) if name not in known)
    assert unknown == [], "read, but exported by no daemon and not planned:\n" + \
        "\n".join(unknown)
    landed = sorted(planned(repo) & exported())
    if landed:
        warnings.warn(f"planned metrics now defined in netwatch: {landed}: move them to their "
                      f"daemon's table in docs/metrics.md", stacklevel=1)


def test_docs_list_every_exported_metric(repo):
    listed = documented(repo)
    families = {**registry_metrics(), **source_metrics()}
    missing = sorted(name for name, samples in families.items()
                     if not ({name} | samples) & listed
                     and name.startswith("netwatch_"))
    assert missing == [], f"exported, not in docs/metrics.md: {missing}"


def test_docs_list_every_recording_rule_and_alert(repo, rule_files):
    text = doc(repo)
    names = [rule.get("alert") or rule.get("record") for path in rule_files
             for group in yaml.safe_load(path.read_text())["groups"]
             for rule in group["rules"]]
    assert sorted(n for n in names if n not in text) == []


def test_both_daemons_export_build_info():
    for build, daemon in ((AgentMetrics, "agent"), (ControllerMetrics, "controller")):
        registry = CollectorRegistry()
        build(registry)
        value = registry.get_sample_value(
            "netwatch_build_info", {"version": netwatch.__version__, "daemon": daemon})
        assert value == 1.0, daemon


def test_counters_with_known_labels_start_at_zero():
    """rate() and increase() need a sample before the first event: the first failover of a
    process, the first automatic action, the first error must show."""
    registry = CollectorRegistry()
    AgentMetrics(registry)
    assert registry.get_sample_value("netwatch_agent_failovers_total",
                                     {"reason": "gateway"}) == 0.0
    registry = CollectorRegistry()
    ControllerMetrics(registry)
    assert registry.get_sample_value("netwatch_transit_actions_total", {"kind": "failed"}) == 0
    assert registry.get_sample_value("netwatch_controller_errors_total",
                                     {"where": "probe"}) == 0.0
