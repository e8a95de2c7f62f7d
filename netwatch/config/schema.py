"""The site file's schema: strict, typed, immutable pydantic models. Pure.

Unknown keys are errors; every value type has a message an engineer can act on. Every key,
its default and its unit are documented in docs/config.md; the checks across fields are in
`netwatch.config.checks`.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
)

from netwatch.core import validators
from netwatch.core.pacing import default_confirm_s
from netwatch.core.validators import IPAddress, IPNetwork

# --- value types with messages an engineer can act on ------------------------------------


def _family(version: int):
    def check(value: IPAddress) -> IPAddress:
        if value.version != version:
            raise ValueError(f"'{value}' is not an IPv{version} address")
        return value

    return check


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


def _absolute_path(value: str) -> str:
    # '' or a relative path would land wherever the daemon happens to be started from
    if not value.startswith("/") or "\0" in value:
        raise ValueError(f"{value!r} is not an absolute path")
    return value


def _check_mode(value: Any) -> str:
    text = str(value)
    if not re.fullmatch(r"0?[0-7]{3}", text):
        raise ValueError(f'{value!r} is not an octal file mode (e.g. "0660"; quote it in YAML)')
    return text.rjust(4, "0")


_as_str = PlainSerializer(str, return_type=str)
_address = PlainValidator(validators.parse_address)
IP = Annotated[IPAddress, _address, _as_str]
IPv4 = Annotated[IPAddress, _address, AfterValidator(_family(4)), _as_str]
IPv6 = Annotated[IPAddress, _address, AfterValidator(_family(6)), _as_str]
Prefix = Annotated[IPNetwork, PlainValidator(validators.parse_prefix), _as_str]
Community = Annotated[str, PlainValidator(validators.parse_community)]
IfName = Annotated[str, AfterValidator(validators.check_ifname)]
Name = Annotated[str, AfterValidator(validators.check_name)]
Listen = Annotated[str, AfterValidator(_check_listen)]
FileMode = Annotated[str, PlainValidator(_check_mode)]
ASN = Annotated[int, Field(ge=1, le=4294967295)]
Ratio = Annotated[float, Field(ge=0.0, le=1.0)]


class _Strict(BaseModel):
    # allow_inf_nan=False: `recovery_hold_s: .inf` would hold a recovered provider forever
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False, allow_inf_nan=False)


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


class _ProbeTimes:
    """A probe section's times in seconds: its timeout (`timeout_ms`, default the interval)
    and its confirmation pace (`confirm_interval_ms`, default `default_confirm_s`). Mixed
    into the sections that have those three fields."""

    @property
    def timeout_s(self) -> float:
        return (self.timeout_ms or self.interval_ms) / 1000

    @property
    def confirm_s(self) -> float:
        if self.confirm_interval_ms is not None:
            return self.confirm_interval_ms / 1000
        return default_confirm_s(self.interval_ms / 1000, self.timeout_s)


class AgentProbe(_ProbeTimes, _Strict):
    method: Literal["arp", "icmp"] = "arp"
    interval_ms: Annotated[int, Field(ge=10, le=60_000)] = 50
    timeout_ms: Annotated[int, Field(ge=1, le=60_000)] | None = None  # default: interval_ms
    # After a lost probe, the path is probed again at this pace until an answer or `fall`
    # losses in a row (netwatch/core/pacing.py). Default interval/5 (at least 5 ms); 0: off.
    confirm_interval_ms: Annotated[int, Field(ge=0, le=60_000)] | None = None
    fall: Annotated[int, Field(ge=1, le=100)] = 3
    rise: Annotated[int, Field(ge=1, le=1000)] = 5

    # Addresses inside our network past the gateways (the border routers, a core address):
    # the agent answers "does this uplink carry traffic to our border?"; whether a transit
    # carries it on to the internet is the controller's question (docs/agent.md).
    beyond: list[IP] = []
    # Beyond targets must lie in `prefixes` or here (infrastructure ranges of ours).
    internal_prefixes: list[Prefix] = []


class Failback(_Strict):
    mode: Literal["auto", "manual"] = "auto"
    hold_down_s: Annotated[float, Field(ge=0, le=86_400)] = 30.0


class AgentSection(_Strict):
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
    interface: IfName  # the controller probes the upstream through a policy route on it
    communities: list[Community] = []
    # TCP-MD5 (RFC 2385) on both sessions to this provider: the path of a file that holds the
    # password (relative to the site file). The secret itself never enters the site file; it
    # is read only when the ExaBGP config is rendered (netwatch.config.secrets).
    md5_password_file: Annotated[str, Field(min_length=1)] | None = None
    ttl_security: bool = False  # GTSM (RFC 5082): send with TTL 255, accept only TTL 255

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


class ControllerProbe(_ProbeTimes, _Strict):
    targets: list[TargetEntry] = []
    targets_file: str | None = None  # relative to the site file
    method: Literal["icmp", "tcp"] = "icmp"
    interval_ms: Annotated[int, Field(ge=50, le=60_000)] = 1000
    timeout_ms: Annotated[int, Field(ge=1, le=60_000)] | None = None  # default: interval_ms
    # After a lost probe, that (upstream, target) is probed again at this pace until it
    # answers or FAILED's losses are in (netwatch/core/pacing.py). Default interval/5; 0: off.
    confirm_interval_ms: Annotated[int, Field(ge=0, le=60_000)] | None = None
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
    # FAILED is judged on the last max(fall, 5) probes per path (controller/verdict.py): at
    # 0.5 a provider at 30-40 % loss (already prepended) would be withdrawn after a few unlucky
    # probes; 0.8 sits ~6 standard deviations above 51 % round-trip loss (docs/controller.md).
    failed: Verdict = Verdict(loss_ratio=0.8, action="withdraw")
    fall: Annotated[int, Field(ge=1, le=100)] = 3
    rise: Annotated[int, Field(ge=1, le=1000)] = 5
    min_announcing_upstreams: Annotated[int, Field(ge=1)] = 2
    recovery_hold_s: Annotated[float, Field(ge=0)] = 600.0
    max_actions_per_hour: Annotated[int, Field(ge=1)] = 6


class Bgp(_Strict):
    hold_time_s: Annotated[int, Field(ge=3, le=65535)] = 90
    # RFC 4724 restart time: how long the peers keep our routes while ExaBGP restarts. 0
    # turns graceful restart off. At most 4095: the capability carries 12 bits, and ExaBGP
    # 5.0.15 silently masks a larger value (4096 would advertise 0).
    graceful_restart_s: Annotated[int, Field(ge=0, le=4095)] = 120
    router_id: IPv4 | None = None  # default: the first upstream's IPv4 local_address


def _table(value: Any) -> int:
    if value == "main":
        return 254
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 2**31 - 1:
        raise ValueError(f"{value!r} is not a routing table (main, or a number 1..2147483647)")
    if value in (253, 255):
        raise ValueError(f"{value} is a table the kernel reserves (default, local)")
    return value


class Outbound(_Strict):
    """Outbound steering on a Linux border: the controller owns the default routes."""

    # off: the border's default routes are someone else's (full-table routers steer with
    # local preference: docs/controller.md); kernel: one multipath default per family over
    # the upstreams that may carry traffic.
    mode: Literal["off", "kernel"] = "off"
    table: Annotated[int, PlainValidator(_table)] = 254  # main
    weight: Annotated[int, Field(ge=1, le=256)] = 10  # a healthy upstream's next-hop weight
    degraded_weight: Annotated[int, Field(ge=1, le=256)] = 1  # a DEGRADED upstream's
    protocol: Annotated[int, Field(ge=5, le=255)] = 253  # the routes' `proto`: ours to repair


class ControllerSection(_Strict):
    upstreams: Annotated[list[Upstream], Field(min_length=1)]
    probe: ControllerProbe
    policy: Policy = Policy()
    bgp: Bgp = Bgp()
    outbound: Outbound = Outbound()
    # An operator's drain announces GRACEFUL_SHUTDOWN (RFC 8326) this long before it withdraws
    # (`netwatch upstream drain --graceful-s` overrides it; at most an hour, as there).
    drain_graceful_s: Annotated[float, Field(ge=0, le=3600)] = 60.0
    route_table_base: Annotated[int, Field(ge=1, le=2**31 - 16)] = 2000
    fwmark_base: Annotated[int, Field(ge=1, le=2**31 - 16)] = 0x4E580


# --- the site -----------------------------------------------------------------------------


class Metrics(_Strict):
    """Where each daemon serves /metrics: one address each, so that an agent and a controller
    started from the same site file on one host never fight for a port."""

    agent: Listen = "127.0.0.1:9110"
    controller: Listen = "127.0.0.1:9111"


class Control(_Strict):
    """Each daemon's control socket (the control API), and who may use it."""

    agent: str = "/run/netwatch/agent.sock"
    controller: str = "/run/netwatch/controller.sock"
    mode: FileMode = "0660"
    group: str | None = None


def _check_url(value: str) -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{value!r} is not an http(s) URL with a host")
    return value


class AlertmanagerInstances(_Strict):
    """The `instance` label Prometheus gives each daemon here (a failover's silence matches
    the server's alerts on it). Default: this host's name and the daemon's metrics port."""

    agent: str | None = None
    controller: str | None = None


class Alertmanager(_Strict):
    """Where operator overrides open their silences (drain, forced failover)."""

    url: Annotated[str, AfterValidator(_check_url)]
    timeout_s: Annotated[float, Field(gt=0, le=10)] = 2.0
    instance: AlertmanagerInstances = AlertmanagerInstances()


class Site(_Strict):
    site: Name
    asn: ASN
    prefixes: Annotated[list[Prefix], Field(min_length=1)]
    agent: AgentSection | None = None
    controller: ControllerSection | None = None
    metrics: Metrics = Metrics()
    control: Control = Control()
    alertmanager: Alertmanager | None = None  # silences for operator overrides, when set
    state_dir: Annotated[str, AfterValidator(_absolute_path)] = "/var/lib/netwatch"

