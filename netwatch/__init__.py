"""netwatch: uplink failover agent and BGP transit controller."""

from importlib.metadata import PackageNotFoundError, version

from netwatch import _pyroute2

try:
    __version__ = version("netwatch")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+source"

_pyroute2.defer_package_init()  # rtnetlink without the package's every family: 6 MB less
