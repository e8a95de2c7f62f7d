"""pyroute2 without its package `__init__` until something asks it for a name.

pyroute2's `__init__` imports every family it has (ndb, ipdb, conntrack, ethtool, ipset,
nl80211, wireguard, plan9...: 163 modules, 6 MB of RSS in each daemon), and importing any
submodule runs it first. netwatch needs rtnetlink only, so `defer_package_init()` registers the
package as an empty module: `from pyroute2.iproute.linux import AsyncIPRoute` then loads that
submodule and what it imports (99 modules). A name the package `__init__` defines
(`from pyroute2 import NetNS`, `pyroute2.IPRoute`) runs that `__init__` at that moment, once,
so other code in the process sees pyroute2 as it always was.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys


def defer_package_init() -> None:
    """Register pyroute2's package module without running its `__init__` (see the module
    doc). Nothing happens if pyroute2 is imported already or not installed."""
    if "pyroute2" in sys.modules:
        return
    spec = importlib.util.find_spec("pyroute2")
    if spec is None or spec.loader is None or spec.submodule_search_locations is None:
        return  # the import that needs it will say what is missing
    package = importlib.util.module_from_spec(spec)

    def __getattr__(name: str):
        if importlib.util.find_spec(f"pyroute2.{name}") is not None:
            return importlib.import_module(f"pyroute2.{name}")  # a submodule: only it
        del package.__getattr__  # a name of the package's own: run its __init__, once
        spec.loader.exec_module(package)
        return getattr(package, name)

    package.__getattr__ = __getattr__
    sys.modules["pyroute2"] = package
