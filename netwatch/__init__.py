"""netwatch: uplink failover agent and BGP transit controller."""

from netwatch import _pyroute2

# The one place the version is written: pyproject.toml reads it from here. A literal, not
# importlib.metadata: that module and the email and zipfile packages it pulls in cost each
# daemon 4.4 MB of RSS.
__version__ = "0.1.0"

_pyroute2.defer_package_init()  # rtnetlink without the package's every family: 6 MB less
