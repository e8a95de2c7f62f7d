"""netwatch defers pyroute2's package __init__ (netwatch/_pyroute2.py): the daemons load the
rtnetlink modules only, and a name of the package's own still works, loading it then."""

from __future__ import annotations

import subprocess
import sys

PROBE = """
import sys
import netwatch.adapters.netlink, netwatch.adapters.egress_routes
from pyroute2.iproute.linux import AsyncIPRoute
loaded = len([m for m in sys.modules if m.startswith("pyroute2")])
from pyroute2 import netns  # a submodule: only it
after_submodule = len([m for m in sys.modules if m.startswith("pyroute2")])
from pyroute2 import NetNS  # a name of the package __init__: it runs now
import pyroute2
print(loaded, after_submodule, "pyroute2.ndb.main" in sys.modules, NetNS.__name__,
      pyroute2.IPRoute.__name__)
"""


def test_the_daemons_load_rtnetlink_and_a_package_name_loads_the_rest():
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                         check=True).stdout.split()
    loaded, after_submodule, ndb, netns_class, iproute_class = out
    assert int(loaded) < 120, f"{loaded} pyroute2 modules loaded by netwatch's adapters"
    assert int(after_submodule) <= int(loaded) + 5
    assert ndb == "True"  # the whole package, once a name of its own was asked for
    assert (netns_class, iproute_class) == ("NetNS", "IPRoute")
