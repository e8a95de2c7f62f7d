"""Import directions, checked on the source: commands -> daemons -> adapters/runtime -> pure.

The pure modules (decisions, plans, protocols, the config schema) import no socket,
subprocess, asyncio, pyroute2 or adapter, so they are tested with a fake clock and nothing
else; adapters and runtime never reach up into a daemon or a command. Function-local imports
count as much as the ones at the top.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import netwatch

PACKAGE = Path(netwatch.__file__).resolve().parent

PURE = (
    "netwatch.core",
    "netwatch.config",
    "netwatch.agent.decision",
    "netwatch.controller.params",
    "netwatch.controller.verdict",
    "netwatch.controller.schedule",
    "netwatch.controller.plan",
    "netwatch.controller.decision",
    "netwatch.controller.persistence",
    "netwatch.controller.overrides",
    "netwatch.controller.status",
    "netwatch.exabgp.protocol",
    "netwatch.exabgp.sync",
    "netwatch.exabgp.config",
    "netwatch.control.protocol",
    "netwatch.control.leases",
    "netwatch.control.overrides",
    "netwatch.playbook.values",
    "netwatch.playbook.template",
    "netwatch.playbook.schema",
    "netwatch.playbook.conditions",
    "netwatch.playbook.plan",
    "netwatch.playbook.inventory",
    "netwatch.diagnose.analysis",
)
# What a pure module may never import: I/O, concurrency, and every layer above the core.
IMPURE = (
    "socket", "subprocess", "asyncio", "select", "selectors", "threading", "pyroute2", "scapy",
    "netmiko", "prometheus_client", "netwatch.adapters", "netwatch.runtime", "netwatch.commands",
    "netwatch.cli", "netwatch.lab", "netwatch.agent.daemon", "netwatch.controller.daemon",
    "netwatch.control.server", "netwatch.control.client", "netwatch.playbook.runner",
    "netwatch.playbook.control_port", "netwatch.diagnose.run", "netwatch.diagnose.tracer",
    "netwatch.control.keeper", "netwatch.control.store", "netwatch.control.audit",
    "netwatch.controller.control",
)
DAEMONS = ("netwatch.agent", "netwatch.controller", "netwatch.control")
ABOVE_ADAPTERS = ("netwatch.commands", "netwatch.cli", "netwatch.lab", *DAEMONS)
ABOVE_DAEMONS = ("netwatch.commands", "netwatch.cli", "netwatch.lab")


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def imports_of(path: Path, module: str) -> set[str]:
    """Every module `path` imports, absolute, from any depth of its code."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def _under(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def violations(modules: dict[str, Path]) -> list[str]:
    found = []
    for module, path in sorted(modules.items()):
        imported = imports_of(path, module)
        if _under(module, PURE):
            rule, banned = "pure", IMPURE
        elif _under(module, ("netwatch.adapters", "netwatch.runtime")):
            rule, banned = "adapter/runtime", ABOVE_ADAPTERS
        elif _under(module, DAEMONS):
            rule, banned = "daemon", ABOVE_DAEMONS
        else:
            continue
        for name in sorted(imported):
            if _under(name, banned):
                found.append(f"{module} ({rule}) imports {name}")
    return found


def test_imports_point_one_way():
    modules = _modules()
    assert "netwatch.agent.decision" in modules and "netwatch.controller.plan" in modules
    assert violations(modules) == []


@pytest.mark.parametrize(("source", "module", "expected"), [
    ("import socket\n", "netwatch.controller.plan",
     "netwatch.controller.plan (pure) imports socket"),
    ("def f():\n    from netwatch.adapters.netlink import Netlink\n", "netwatch.agent.decision",
     "netwatch.agent.decision (pure) imports netwatch.adapters.netlink"),
    ("from ..controller.daemon import Controller\n", "netwatch.runtime.logs",
     "netwatch.runtime.logs (adapter/runtime) imports netwatch.controller.daemon"),
    ("from netwatch.commands import site_or_fail\n", "netwatch.agent.daemon",
     "netwatch.agent.daemon (daemon) imports netwatch.commands"),
])
def test_the_check_catches_an_import_the_wrong_way(tmp_path, source, module, expected):
    path = tmp_path / "mod.py"
    path.write_text(source)
    assert expected in violations({module: path})
