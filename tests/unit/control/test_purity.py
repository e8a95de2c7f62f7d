"""The control package's __init__ imports nothing, so importing its pure modules (protocol,
leases, overrides: checked with the rest in tests/unit/test_layering.py) drags in no I/O."""

from __future__ import annotations

import ast
from pathlib import Path

import netwatch.control

PACKAGE = Path(netwatch.control.__file__).parent
def test_the_package_itself_imports_nothing():
    """Importing netwatch.control.protocol must not drag in asyncio through __init__."""
    tree = ast.parse((PACKAGE / "__init__.py").read_text())
    assert not [n for n in ast.walk(tree) if isinstance(n, ast.Import | ast.ImportFrom)]
