"""netwatch: uplink failover agent and BGP transit controller."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("netwatch")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+source"
