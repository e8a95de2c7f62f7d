"""The pure parts of playbooks and diagnosis import no I/O, so they are tested with fakes and
a fake clock only (as tests/unit/test_layering.py checks for the rest of the package)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import netwatch

PACKAGE = Path(netwatch.__file__).resolve().parent
PURE = ["playbook/values.py", "playbook/template.py", "playbook/schema.py",
        "playbook/conditions.py", "playbook/plan.py", "playbook/inventory.py",
        "diagnose/analysis.py"]
BANNED = ("socket", "subprocess", "asyncio", "select", "threading", "pyroute2", "scapy",
          "netmiko", "paramiko", "netwatch.adapters", "netwatch.runtime", "netwatch.commands",
          "netwatch.cli", "netwatch.lab", "netwatch.control.client", "netwatch.control.server",
          "netwatch.playbook.runner", "netwatch.playbook.control_port", "netwatch.diagnose.run",
          "netwatch.diagnose.tracer")


def imported(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


@pytest.mark.parametrize("module", PURE)
def test_pure_modules_import_no_io(module):
    bad = sorted(name for name in imported(PACKAGE / module)
                 if any(name == b or name.startswith(b + ".") for b in BANNED))
    assert bad == []
