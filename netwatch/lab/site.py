"""Reading the site file for the lab: the one place that knows where the Site model comes from.

`load_site(path)` returns `netwatch.config.load_site(path)` when that module exists; until then
a thin YAML reader gives the same attribute access (site.asn, site.prefixes as ipaddress
networks, site.controller.upstreams[i].neighbor, site.controller.probe.targets, ...).
Raises `SiteError` (one line) for a missing or unreadable file.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import yaml


class SiteError(Exception):
    """The site file is missing or invalid; `exit_code` is a netwatch.exitcodes value."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def _namespace(value: Any) -> Any:
    if isinstance(value, dict):
        return SimpleNamespace(**{k: _namespace(v) for k, v in value.items()})
    if isinstance(value, list):
        return [_namespace(v) for v in value]
    return value


def _load_yaml_site(path: Path) -> Any:
    raw = load_raw(path)
    site = _namespace(raw)
    site.prefixes = [ipaddress.ip_network(p) for p in raw.get("prefixes", [])]
    probe = getattr(getattr(site, "controller", None), "probe", None)
    if probe is not None and getattr(probe, "targets_file", None):
        targets_path = path.parent / probe.targets_file
        probe.targets = _namespace(load_raw(targets_path).get("targets", []))
    return site


def load_raw(path: Path) -> dict:
    """The YAML document at `path` as plain data. Raises SiteError."""
    from netwatch import exitcodes

    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise SiteError(f"{path}: cannot read: {exc.strerror}", exitcodes.NOINPUT) from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SiteError(f"{path}: not valid YAML: {exc}", exitcodes.DATAERR) from exc
    if not isinstance(data, dict):
        raise SiteError(f"{path}: expected a mapping at the top level", exitcodes.DATAERR)
    return data


def load_site(path: Path | str) -> Any:
    """The validated Site for `path`. Raises SiteError (with an exit code) on any problem."""
    from netwatch import exitcodes

    path = Path(path)
    try:
        from netwatch import config
    except ImportError:
        return _load_yaml_site(path)
    try:
        return config.load_site(path)
    except config.ConfigError as exc:
        errors = getattr(exc, "errors", None) or [str(exc)]
        raise SiteError("; ".join(errors), exitcodes.DATAERR) from exc
    except FileNotFoundError as exc:
        raise SiteError(f"{path}: cannot read: no such file", exitcodes.NOINPUT) from exc
