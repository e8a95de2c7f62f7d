"""The control package's decisions are pure: protocol, leases and overrides import no I/O.
(tests/unit/test_layering.py checks protocol and leases with the rest of the project; this
covers overrides too, which only this package has.)"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import netwatch.control

PACKAGE = Path(netwatch.control.__file__).parent
BANNED = ("socket", "subprocess", "asyncio", "select", "selectors", "threading", "os",
          "netwatch.runtime", "netwatch.control.server", "netwatch.control.client",
          "netwatch.control.audit", "netwatch.control.store", "netwatch.control.keeper")


@pytest.mark.parametrize("module", ["protocol", "leases", "overrides"])
def test_the_decisions_import_no_io(module):
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module or "")
    bad = sorted(n for n in imported if any(n == b or n.startswith(b + ".") for b in BANNED))
    assert bad == []


def test_the_package_itself_imports_nothing():
    """Importing netwatch.control.protocol must not drag in asyncio through __init__."""
    tree = ast.parse((PACKAGE / "__init__.py").read_text())
    assert not [n for n in ast.walk(tree) if isinstance(n, ast.Import | ast.ImportFrom)]
