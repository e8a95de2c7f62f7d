"""One rule per kind of value: names, interfaces, communities, addresses, prefixes. Pure.

The site file's schema and the ExaBGP line builder both check values with these functions,
so a value the config accepts is a value the line protocol accepts, and the reverse. Each
raises ValueError with a message an engineer can act on.
"""

from __future__ import annotations

import ipaddress
import re
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Any

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network

# Linux interface names: 1-15 bytes, no "/", ":" (an alias label, not an interface) or
# whitespace; here the portable subset every tool prints unquoted.
_IFNAME = re.compile(r"\A[A-Za-z0-9_][A-Za-z0-9_.-]{0,14}\Z")
_NAME = re.compile(r"\A[a-z0-9][a-z0-9_-]{0,31}\Z")
# `\Z`, not `$`: `$` also matches before a final newline ("64500:1\n").
_COMMUNITY = re.compile(r"\A(\d{1,10}):(\d{1,10})(?::(\d{1,10}))?\Z")


def check_ifname(value: Any) -> str:
    """A Linux interface name."""
    if not isinstance(value, str) or not _IFNAME.match(value):
        raise ValueError(
            f"{value!r} is not a Linux interface name (1-15 letters, digits, '_', '.', '-'; "
            "no ':' alias)"
        )
    return value


def check_name(value: Any) -> str:
    """A netwatch name (site, upstream): lower-case letters, digits, - and _; 1-32."""
    if not isinstance(value, str) or not _NAME.match(value):
        raise ValueError(
            f"{value!r} is not a valid name (lower-case letters, digits, - and _; 1-32)"
        )
    return value


def parse_community(value: Any) -> str:
    """Standard (`ASN:VALUE`, 16 bits each) or large (`A:B:C`, 32 bits each) community."""
    match = _COMMUNITY.match(value) if isinstance(value, str) else None
    if match is None:
        raise ValueError(f"{value!r} is not a BGP community (expected A:B or A:B:C)")
    parts = [int(p) for p in match.groups() if p is not None]
    limit = 0xFFFF if len(parts) == 2 else 0xFFFFFFFF
    if any(p > limit for p in parts):
        kind = "standard" if limit == 0xFFFF else "large"
        raise ValueError(f"'{value}' is out of range for a {kind} community")
    return value


def parse_address(value: Any, *, scope_ok: bool = False) -> IPAddress:
    """An IP address. A scope ID (`fe80::1%eth0`) only with `scope_ok`, and then only an
    interface name: `ipaddress` accepts any scope text, spaces and newlines included."""
    if isinstance(value, IPv4Address | IPv6Address):
        address = value
    elif isinstance(value, str):
        if "%" in value and not scope_ok:
            raise ValueError(f"{value!r}: no scope ID (%...) here; the interface has its own key")
        try:
            address = ipaddress.ip_address(value)
        except ValueError:
            raise ValueError(f"{value!r} is not an IP address") from None
    else:
        raise ValueError(f"{value!r} is not an IP address")
    scope = getattr(address, "scope_id", None)
    if scope is not None:
        if not scope_ok:
            raise ValueError(f"{value!r}: no scope ID (%...) here; the interface has its own key")
        check_ifname(scope)
    return address


def parse_prefix(value: Any) -> IPNetwork:
    """A prefix ADDRESS/LENGTH without host bits."""
    if isinstance(value, IPv4Network | IPv6Network):
        return value
    if not isinstance(value, str) or "/" not in value:
        raise ValueError(f"{value!r} is not a prefix (expected ADDRESS/LENGTH)")
    try:
        return ipaddress.ip_network(value, strict=True)
    except ValueError as exc:
        if "host bits set" in str(exc):
            raise ValueError(f"'{value}' has host bits set") from None
        raise ValueError(f"'{value}' is not a prefix") from None
