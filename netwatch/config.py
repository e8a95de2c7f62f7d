"""The site file: a strict, typed schema with errors that name file, line and field. Pure.

`load_site(path)` reads one YAML file (and the target catalogue it may point at) and returns
a validated, immutable `Site`, or raises `ConfigError` carrying *every* problem found, each
as `FILE:LINE: dotted.path: message`. Unknown keys are errors with a "did you mean" hint.
Every key, its default and its unit are documented in docs/config.md.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
import types
import typing
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    ValidationError,
)

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network


# --- value types with messages an engineer can act on ------------------------------------


def _parse_ip(value: Any) -> IPAddress:
    if isinstance(value, IPv4Address | IPv6Address):
        return value
    if isinstance(value, str):
        if "%" in value:
            # ipaddress accepts any scope ID, spaces and all, and these values end up in
            # ExaBGP commands; the interface is always given by its own key.
            raise ValueError(f"{value!r}: no scope ID (%...) here; the interface has its own key")
        try:
            return ipaddress.ip_address(value)
        except ValueError:
            pass
    raise ValueError(f"{value!r} is not an IP address")


def _family(version: int):
    def check(value: IPAddress) -> IPAddress:
        if value.version != version:
            raise ValueError(f"'{value}' is not an IPv{version} address")
        return value

    return check


def _parse_prefix(value: Any) -> IPNetwork:
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


_COMMUNITY = re.compile(r"^(\d{1,10}):(\d{1,10})(?::(\d{1,10}))?\Z")


def _parse_community(value: Any) -> str:
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


_IFNAME = re.compile(r"^[A-Za-z0-9_.@:+-]{1,15}\Z")


def _check_ifname(value: str) -> str:
    if not _IFNAME.match(value) or value in (".", ".."):
        raise ValueError(
            f"{value!r} is not a Linux interface name (1-15 characters, no / or space)"
        )
    return value


_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}\Z")


def _check_name(value: str) -> str:
    if not _NAME.match(value):
        raise ValueError(
            f"{value!r} is not a valid name (lower-case letters, digits, - and _; 1-32)"
        )
    return value


def _check_listen(value: str) -> str:
    host, sep, port = value.rpartition(":")
    host = host.strip("[]")
    try:
        ipaddress.ip_address(host)
        ok = sep == ":" and 0 < int(port) < 65536
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(f"{value!r} is not ADDRESS:PORT (e.g. 127.0.0.1:9110 or [::1]:9110)")
    return value


def _check_mode(value: Any) -> str:
    text = str(value)
    if not re.fullmatch(r"0?[0-7]{3}", text):
        raise ValueError(f'{value!r} is not an octal file mode (e.g. "0660"; quote it in YAML)')
    return text.rjust(4, "0")


_as_str = PlainSerializer(str, return_type=str)
IP = Annotated[IPAddress, PlainValidator(_parse_ip), _as_str]
IPv4 = Annotated[IPAddress, PlainValidator(_parse_ip), AfterValidator(_family(4)), _as_str]
IPv6 = Annotated[IPAddress, PlainValidator(_parse_ip), AfterValidator(_family(6)), _as_str]
Prefix = Annotated[IPNetwork, PlainValidator(_parse_prefix), _as_str]
Community = Annotated[str, PlainValidator(_parse_community)]
IfName = Annotated[str, AfterValidator(_check_ifname)]
Name = Annotated[str, AfterValidator(_check_name)]
Listen = Annotated[str, AfterValidator(_check_listen)]
FileMode = Annotated[str, PlainValidator(_check_mode)]
ASN = Annotated[int, Field(ge=1, le=4294967295)]
Ratio = Annotated[float, Field(ge=0.0, le=1.0)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)


# --- the agent ----------------------------------------------------------------------------


class Uplink(_Strict):
    interface: IfName
    gateway: IPv4
    gateway6: IPv6 | None = None
    source: IPv4 | None = None  # src of the default route while this uplink is active
    source6: IPv6 | None = None


class Uplinks(_Strict):
    primary: Uplink
    secondary: Uplink


class AgentProbe(_Strict):
    method: Literal["arp", "icmp"] = "arp"
    interval_ms: Annotated[int, Field(ge=10, le=60_000)] = 50
    timeout_ms: Annotated[int, Field(ge=1, le=60_000)] | None = None  # default: interval_ms
    fall: Annotated[int, Field(ge=1, le=100)] = 3
    rise: Annotated[int, Field(ge=1, le=1000)] = 5
    beyond: list[IP] = []


class Failback(_Strict):
    mode: Literal["auto", "manual"] = "auto"
    hold_down_s: Annotated[float, Field(ge=0, le=86_400)] = 30.0


class Agent(_Strict):
    uplinks: Uplinks
    probe: AgentProbe = AgentProbe()
    failback: Failback = Failback()
    route_table_base: Annotated[int, Field(ge=1, le=2**31 - 16)] = 1000  # per-uplink tables
    fwmark_base: Annotated[int, Field(ge=1, le=2**31 - 16)] = 0x4E570  # per-uplink probe marks


# --- the controller -----------------------------------------------------------------------


class Upstream(_Strict):
    name: Name
    asn: ASN
    neighbor: IP
    local_address: IP
    nexthop: IP | None = None  # the provider's router for our probes; default: neighbor
    neighbor6: IPv6 | None = None  # a second, IPv6 session to the same provider
    local_address6: IPv6 | None = None
    nexthop6: IPv6 | None = None  # default: neighbor6
    interface: IfName | None = None
    communities: list[Community] = []

    @property
    def probe_nexthop(self) -> IPAddress:
        return self.nexthop or self.neighbor

    @property
    def probe_nexthop6(self) -> IPAddress | None:
        return (
            self.nexthop6
            or self.neighbor6
            or (self.nexthop if self.neighbor.version == 6 else None)
        )


def _target_from_scalar(value: Any) -> Any:
    return {"address": value} if isinstance(value, str) else value


class Target(_Strict):
    address: IP
    name: str | None = None
    port: Annotated[int, Field(ge=1, le=65535)] | None = None  # TCP SYN probes, when set

    @property
    def label(self) -> str:
        return self.name or str(self.address)


TargetEntry = Annotated[Target, BeforeValidator(_target_from_scalar)]


class TargetCatalogue(_Strict):
    targets: list[TargetEntry]


class ControllerProbe(_Strict):
    targets: list[TargetEntry] = []
    targets_file: str | None = None  # relative to the site file
    method: Literal["icmp", "tcp"] = "icmp"
    interval_ms: Annotated[int, Field(ge=50, le=60_000)] = 1000
    timeout_ms: Annotated[int, Field(ge=1, le=60_000)] | None = None  # default: interval_ms
    window_s: Annotated[float, Field(gt=0, le=3600)] = 10.0
    min_targets: Annotated[int, Field(ge=1)] = 3  # quorum of usable targets per verdict


class Verdict(_Strict):
    loss_ratio: Ratio  # loss above the median of the other upstreams
    latency_ms: Annotated[float, Field(gt=0)] | None = None  # RTT above their median
    action: Literal["announce", "prepend", "communities", "withdraw"]
    prepend: Annotated[int, Field(ge=1, le=10)] | None = None
    communities: list[Community] = []


class Policy(_Strict):
    degraded: Verdict = Verdict(loss_ratio=0.05, latency_ms=80, action="prepend", prepend=3)
    # FAILED is judged on the last max(fall, 5) probes per path (netwatch/transit.py): at 0.5 a
    # provider at 30-40 % loss (already prepended) would be withdrawn after a few unlucky
    # probes; 0.8 sits ~6 standard deviations above 51 % round-trip loss (docs/controller.md).
    failed: Verdict = Verdict(loss_ratio=0.8, action="withdraw")
    fall: Annotated[int, Field(ge=1, le=100)] = 3
    rise: Annotated[int, Field(ge=1, le=1000)] = 5
    min_announcing_upstreams: Annotated[int, Field(ge=1)] = 2
    recovery_hold_s: Annotated[float, Field(ge=0)] = 600.0
    max_actions_per_hour: Annotated[int, Field(ge=1)] = 6


class Bgp(_Strict):
    hold_time_s: Annotated[int, Field(ge=3, le=65535)] = 90
    router_id: IPv4 | None = None  # default: the first upstream's IPv4 local_address


class Controller(_Strict):
    upstreams: Annotated[list[Upstream], Field(min_length=1)]
    probe: ControllerProbe
    policy: Policy = Policy()
    bgp: Bgp = Bgp()
    route_table_base: Annotated[int, Field(ge=1, le=2**31 - 16)] = 2000
    fwmark_base: Annotated[int, Field(ge=1, le=2**31 - 16)] = 0x4E580


# --- the site -----------------------------------------------------------------------------


class Metrics(_Strict):
    listen: Listen | None = None  # default: 127.0.0.1:9110 (agent), 127.0.0.1:9111 (controller)

    def listen_for(self, daemon: Literal["agent", "controller"]) -> str:
        return self.listen or DEFAULT_METRICS_LISTEN[daemon]


DEFAULT_METRICS_LISTEN = {"agent": "127.0.0.1:9110", "controller": "127.0.0.1:9111"}


class Control(_Strict):
    socket: str = "/run/netwatch/netwatch.sock"
    mode: FileMode = "0660"
    group: str | None = None


class Site(_Strict):
    site: Name
    asn: ASN
    prefixes: Annotated[list[Prefix], Field(min_length=1)]
    agent: Agent | None = None
    controller: Controller | None = None
    metrics: Metrics = Metrics()
    control: Control = Control()
    state_dir: str = "/var/lib/netwatch"


# --- errors -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    file: str
    line: int | None
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class ConfigError(Exception):
    """A site file (or a file it refers to) is unusable. `problems` lists every one found."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))

    @property
    def errors(self) -> list[str]:
        return [str(p) for p in self.problems]


# --- YAML with line numbers ---------------------------------------------------------------

Loc = tuple[str | int, ...]


@dataclass
class _Document:
    file: str
    data: Any
    lines: dict[Loc, int]  # where each key (or list item) starts, 1-based
    duplicates: list[Problem]

    def line(self, loc: Loc) -> int | None:
        """The line of `loc`, or of its nearest ancestor that the file has."""
        for end in range(len(loc), -1, -1):
            if loc[:end] in self.lines:
                return self.lines[loc[:end]]
        return None


def _read_yaml(path: Path, shown: str) -> _Document:
    """Parse one YAML file, recording the line of every key. Raises ConfigError."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([Problem(shown, None, "", "no such file")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise ConfigError([Problem(shown, None, "", f"cannot read: {reason}")]) from None
    try:
        loader = yaml.SafeLoader(text)
        try:
            node = loader.get_single_node()
            data = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        message = f"YAML syntax error: {exc.problem or exc.context}"
        raise ConfigError([Problem(shown, line, "", message)]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([Problem(shown, None, "", f"YAML error: {exc}")]) from None
    if data is None:
        raise ConfigError([Problem(shown, None, "", "the file is empty")])
    if not isinstance(data, dict):
        line = node.start_mark.line + 1
        kind = type(data).__name__
        raise ConfigError([Problem(shown, line, "", f"expected a mapping of keys, got a {kind}")])
    lines: dict[Loc, int] = {}
    duplicates: list[Problem] = []
    _index_lines(node, (), lines, duplicates, shown)
    return _Document(shown, data, lines, duplicates)


def _index_lines(node: yaml.Node, loc: Loc, lines: dict, duplicates: list, shown: str) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: set = set()
        for key_node, value_node in node.value:
            key = key_node.value
            here = (*loc, key)
            if key in seen:
                duplicates.append(
                    Problem(shown, key_node.start_mark.line + 1, _dotted(here), "duplicate key")
                )
            seen.add(key)
            lines[here] = key_node.start_mark.line + 1
            _index_lines(value_node, here, lines, duplicates, shown)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            lines[(*loc, index)] = item.start_mark.line + 1
            _index_lines(item, (*loc, index), lines, duplicates, shown)


def _dotted(loc: Loc) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


# --- pydantic errors -> problems ----------------------------------------------------------


def _unwrap(annotation: Any) -> list[Any]:
    """The model classes an annotation may hold (through Optional, list, Annotated)."""
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return _unwrap(typing.get_args(annotation)[0])
    if origin in (list, tuple, typing.Union, types.UnionType):
        return [m for arg in typing.get_args(annotation) for m in _unwrap(arg)]
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return []


def _model_at(root: type[BaseModel], loc: Loc) -> type[BaseModel] | None:
    model: type[BaseModel] | None = root
    for part in loc:
        if isinstance(part, int) or model is None:
            continue
        field = model.model_fields.get(part)
        candidates = _unwrap(field.annotation) if field else []
        model = candidates[0] if candidates else None
    return model


def _message(error: dict, root: type[BaseModel]) -> str:
    kind, value = error["type"], error.get("input")
    loc = tuple(error["loc"])
    if kind == "missing":
        return "required key is missing"
    if kind == "extra_forbidden":
        model = _model_at(root, loc[:-1])
        known = list(model.model_fields) if model else []
        hint = difflib.get_close_matches(str(loc[-1]), known, n=1, cutoff=0.6)
        suffix = f" (did you mean '{hint[0]}'?)" if hint else f" (known keys: {', '.join(known)})"
        return f"unknown key{suffix}"
    if kind == "value_error":
        return str(error["ctx"]["error"])
    if kind == "literal_error":
        return f"{value!r} is not one of: {error['ctx']['expected']}"
    if kind in ("int_parsing", "int_type", "int_from_float"):
        return f"{value!r} is not a whole number"
    if kind in ("float_parsing", "float_type"):
        return f"{value!r} is not a number"
    if kind in ("bool_parsing", "bool_type"):
        return f"{value!r} is not true or false"
    if kind in ("string_type",):
        return f"{value!r} is not a string"
    if kind in ("list_type",):
        return f"expected a list, got {value!r}"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"expected a mapping, got {value!r}"
    if kind.startswith(("greater_than", "less_than")):
        return f"{value!r}: {error['msg'].lower()}"
    if kind == "too_short":
        return "must not be empty"
    return f"{error['msg']} (got {value!r})"


def _problems(exc: ValidationError, doc: _Document, root: type[BaseModel]) -> list[Problem]:
    errors = exc.errors(include_url=False)
    # A misspelt required key shows up twice: as unknown, and its right spelling as missing.
    # The unknown-key line already says "did you mean", so the missing line is dropped.
    hinted = set()
    for error in errors:
        if error["type"] == "extra_forbidden":
            loc = tuple(error["loc"])
            model = _model_at(root, loc[:-1])
            known = list(model.model_fields) if model else []
            for match in difflib.get_close_matches(str(loc[-1]), known, n=1, cutoff=0.6):
                hinted.add((*loc[:-1], match))
    problems = []
    for error in errors:
        loc = tuple(error["loc"])
        if error["type"] == "missing" and loc in hinted:
            continue
        problems.append(Problem(doc.file, doc.line(loc), _dotted(loc), _message(error, root)))
    return problems


# --- checks across fields (run once every field is valid) ---------------------------------


def _cross_checks(site: Site) -> list[tuple[Loc, str]]:
    found: list[tuple[Loc, str]] = []
    seen_prefix: dict = {}
    for i, prefix in enumerate(site.prefixes):
        if prefix in seen_prefix:
            found.append((("prefixes", i), f"'{prefix}' is listed twice"))
        seen_prefix[prefix] = i
    if site.agent is not None:
        up = site.agent.uplinks
        if up.primary.interface == up.secondary.interface:
            found.append(
                (("agent", "uplinks", "secondary", "interface"), "must differ from the primary's")
            )
    if site.controller is not None:
        found += _controller_checks(site, site.controller)
    return found


def _controller_checks(site: Site, ctl: Controller) -> list[tuple[Loc, str]]:
    found: list[tuple[Loc, str]] = []
    ups = ("controller", "upstreams")
    seen: dict[str, dict] = {"name": {}, "asn": {}, "neighbor": {}}
    for i, upstream in enumerate(ctl.upstreams):
        for key in ("name", "asn", "neighbor"):
            value = getattr(upstream, key)
            if value in seen[key]:
                first = seen[key][value]
                found.append(((*ups, i, key), f"'{value}' is already used by upstreams[{first}]"))
            seen[key].setdefault(value, i)
        if upstream.neighbor6 is not None:
            if upstream.neighbor6 in seen["neighbor"]:
                first = seen["neighbor"][upstream.neighbor6]
                found.append(
                    (
                        (*ups, i, "neighbor6"),
                        f"'{upstream.neighbor6}' is already used by upstreams[{first}]",
                    )
                )
            seen["neighbor"].setdefault(upstream.neighbor6, i)
        version = upstream.neighbor.version
        for key in ("local_address", "nexthop"):
            value = getattr(upstream, key)
            if value is not None and value.version != version:
                found.append(
                    (
                        (*ups, i, key),
                        f"'{value}' is IPv{value.version} but neighbor is IPv{version}",
                    )
                )
        if (upstream.neighbor6 is None) != (upstream.local_address6 is None):
            missing = "local_address6" if upstream.local_address6 is None else "neighbor6"
            found.append(
                ((*ups, i, missing), "required when the other of neighbor6/local_address6 is set")
            )
        if version == 6 and upstream.neighbor6 is not None:
            found.append(((*ups, i, "neighbor6"), "the neighbor is already IPv6"))
    policy = ctl.policy
    deg, fail = policy.degraded, policy.failed
    if deg.loss_ratio >= fail.loss_ratio:
        found.append(
            (
                ("controller", "policy", "degraded", "loss_ratio"),
                f"{deg.loss_ratio} must be below failed.loss_ratio ({fail.loss_ratio})",
            )
        )
    if (
        deg.latency_ms is not None
        and fail.latency_ms is not None
        and deg.latency_ms >= fail.latency_ms
    ):
        found.append(
            (
                ("controller", "policy", "degraded", "latency_ms"),
                f"{deg.latency_ms} must be below failed.latency_ms ({fail.latency_ms})",
            )
        )
    for name, verdict in (("degraded", deg), ("failed", fail)):
        if verdict.action == "prepend" and verdict.prepend is None:
            found.append(
                (("controller", "policy", name, "prepend"), "required when action is prepend")
            )
        if verdict.action == "communities" and not verdict.communities:
            found.append(
                (
                    ("controller", "policy", name, "communities"),
                    "required when action is communities",
                )
            )
    if policy.min_announcing_upstreams >= len(ctl.upstreams):
        found.append(
            (
                ("controller", "policy", "min_announcing_upstreams"),
                f"{policy.min_announcing_upstreams} must be below the number of upstreams "
                f"({len(ctl.upstreams)})",
            )
        )
    probe = ctl.probe
    if bool(probe.targets) == (probe.targets_file is not None):
        found.append(
            (("controller", "probe", "targets"), "give exactly one of targets and targets_file")
        )
    if probe.method == "tcp":
        for i, target in enumerate(probe.targets):
            if target.port is None:
                found.append(
                    (("controller", "probe", "targets", i, "port"), "required when method is tcp")
                )
    if probe.window_s * 1000 < probe.interval_ms:
        found.append(
            (
                ("controller", "probe", "window_s"),
                f"{probe.window_s} s is shorter than one interval",
            )
        )
    v6_sessions = any(u.neighbor6 is not None or u.neighbor.version == 6 for u in ctl.upstreams)
    v4_sessions = any(u.neighbor.version == 4 for u in ctl.upstreams)
    for i, prefix in enumerate(site.prefixes):
        if (prefix.version == 6 and not v6_sessions) or (prefix.version == 4 and not v4_sessions):
            found.append(
                (
                    ("prefixes", i),
                    f"no upstream has an IPv{prefix.version} session to announce it on",
                )
            )
    return found


# --- entry point --------------------------------------------------------------------------


def load_site(path: str | Path) -> Site:
    """Load and validate a site file. Raises ConfigError listing every problem found."""
    path = Path(path)
    doc = _read_yaml(path, str(path))
    problems = list(doc.duplicates)
    try:
        site = Site.model_validate(doc.data)
    except ValidationError as exc:
        raise ConfigError(problems + _problems(exc, doc, Site)) from None
    problems += [
        Problem(doc.file, doc.line(loc), _dotted(loc), msg) for loc, msg in _cross_checks(site)
    ]
    if problems:
        raise ConfigError(problems)
    ctl = site.controller
    if ctl is not None and ctl.probe.targets_file is not None:
        targets = _load_targets(
            path.parent / ctl.probe.targets_file, doc, need_port=ctl.probe.method == "tcp"
        )
        probe = ctl.probe.model_copy(update={"targets": targets})
        site = site.model_copy(update={"controller": ctl.model_copy(update={"probe": probe})})
    return site


def _load_targets(path: Path, site_doc: _Document, need_port: bool = False) -> list[Target]:
    loc = ("controller", "probe", "targets_file")
    try:
        doc = _read_yaml(path, str(path))
    except ConfigError as exc:
        if exc.problems[0].message == "no such file":
            raise ConfigError(
                [
                    Problem(
                        site_doc.file, site_doc.line(loc), _dotted(loc), f"'{path}' does not exist"
                    )
                ]
            ) from None
        raise
    try:
        catalogue = TargetCatalogue.model_validate(doc.data)
    except ValidationError as exc:
        raise ConfigError(doc.duplicates + _problems(exc, doc, TargetCatalogue)) from None
    if doc.duplicates:
        raise ConfigError(doc.duplicates)
    if not catalogue.targets:
        raise ConfigError(
            [Problem(doc.file, doc.line(("targets",)), "targets", "must not be empty")]
        )
    if need_port:
        missing = [i for i, target in enumerate(catalogue.targets) if target.port is None]
        problems = [
            Problem(
                doc.file,
                doc.line(("targets", i)),
                f"targets[{i}].port",
                "required when controller.probe.method is tcp",
            )
            for i in missing
        ]
        if problems:
            raise ConfigError(problems)
    return catalogue.targets


def load_targets(path: str | Path) -> list[Target]:
    """Load a target catalogue on its own (`netwatch config validate` on probes/targets/*)."""
    return _load_targets(Path(path), _Document(str(path), {}, {}, []))
