"""netwatch.observability builds requests and reads files: no socket, no HTTP, no process, no
event loop (the HTTP side is netwatch.adapters.alertmanager)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import netwatch.observability

PACKAGE = Path(netwatch.observability.__file__).parent
BANNED = ("socket", "subprocess", "asyncio", "select", "selectors", "threading", "urllib",
          "http", "netwatch.adapters", "netwatch.runtime", "netwatch.control.server",
          "netwatch.control.client", "prometheus_client")


@pytest.mark.parametrize("module", sorted(p.stem for p in PACKAGE.glob("*.py")))
def test_imports_no_io(module):
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module or "")
    assert sorted(n for n in imported
                  if any(n == b or n.startswith(b + ".") for b in BANNED)) == []
