"""The playbook file's schema: strict, typed, immutable pydantic models. Pure.

A playbook (docs/playbooks.md has the full format with the shipped ones as examples)::

    name: drain-upstream
    description: Maintenance on one transit ...
    params:
      upstream: {type: upstream, required: true}
      graceful_s: {type: duration, default: 60s}
    steps:
      - name: Drain {{ upstream }}
        netwatch: {action: drain, upstream: "{{ upstream }}", reason: "{{ reason }}"}
        on_failure: abort
      - wait: {until: {upstream: "{{ upstream }}", announced: false}, timeout: 5m}
        on_failure: rollback
    rollback:
      - netwatch: {action: restore, upstream: "{{ upstream }}", reason: rollback}

Each step holds exactly one kind: `netwatch`, `wait`, `check`, `device`, `diagnose` or `note`,
and may have `name`, `confirm` (a question asked before it runs) and `on_failure` (abort,
continue or rollback; default abort). Strings may hold `{{ param }}` placeholders
(`netwatch.playbook.template`); values that depend on one are checked once the parameters
are known (`netwatch.playbook.plan`), everything else here.
"""

from __future__ import annotations

import enum
import re
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    model_validator,
)

from netwatch.core import validators
from netwatch.playbook import template
from netwatch.playbook.values import ParamType, check_line, parse_value, shown

# --- value types ----------------------------------------------------------------------------


def _template_line(value: Any) -> str:
    """One line of text that may hold placeholders."""
    if not isinstance(value, str):
        raise ValueError(f"{shown(value)} is not a string")
    check_line(value, "the text")
    template.references(value)
    return value


def _template_text(value: Any) -> str:
    """Text of one or more lines (a note, a description) that may hold placeholders."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError("must be non-empty text")
    if any(not line.isprintable() for line in value.splitlines()):
        raise ValueError("has a control character")
    template.references(value)
    return value


def _scalar(value: Any) -> Any:
    """A number, a boolean, or one line that may be a placeholder."""
    if isinstance(value, bool | int | float):
        return value
    return _template_line(value)


def _is_template(value: Any) -> bool:
    return isinstance(value, str) and "{{" in value


def _duration(value: Any) -> Any:
    """A duration (90, 30s, 5m) or a placeholder; the text stays as written."""
    value = _scalar(value)
    if not _is_template(value):
        parse_value(ParamType.DURATION, value)
    return value


def _regex(value: Any) -> str:
    """A Python regular expression that may hold placeholders (filled in escaped)."""
    text = _template_line(value)
    try:
        re.compile(template.render(text, _AnyValue(), template.Mode.REGEX))
    except re.error as exc:
        raise ValueError(f"{shown(text)} is not a regular expression: {exc}") from None
    return text


class _AnyValue(dict):
    """Every parameter has the value "x": to compile a regex before the values are known."""

    def __contains__(self, key: object) -> bool:
        return True

    def __getitem__(self, key: str) -> str:
        return "x"


Line = Annotated[str, PlainValidator(_template_line)]
Text = Annotated[str, PlainValidator(_template_text)]
Scalar = Annotated[Any, PlainValidator(_scalar)]
Duration = Annotated[Any, PlainValidator(_duration)]
Regex = Annotated[str, PlainValidator(_regex)]
Name = Annotated[str, AfterValidator(validators.check_name)]
ParamName = Annotated[str, Field(pattern=r"^[a-z_][a-z0-9_]{0,31}$")]
class OnFailure(enum.StrEnum):
    """What a failed step does to the run (the YAML's and the trail's words)."""

    ABORT = "abort"
    CONTINUE = "continue"
    ROLLBACK = "rollback"


class StepKind(enum.StrEnum):
    """Which action a step holds: the name of its one action key in the YAML."""

    NETWATCH = "netwatch"
    WAIT = "wait"
    CHECK = "check"
    DEVICE = "device"
    DIAGNOSE = "diagnose"
    NOTE = "note"

ANNOUNCE_MODES = ("normal", "prepend", "communities", "graceful_shutdown", "withdrawn")
UPSTREAM_STATES = ("healthy", "degraded", "failed")
UPLINK_STATES = ("up", "down")


def _announced(value: Any) -> bool | str:
    if isinstance(value, bool) or value in ANNOUNCE_MODES:
        return value
    raise ValueError(f"{shown(value)} is not true, false or one of: {', '.join(ANNOUNCE_MODES)}")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False, allow_inf_nan=False)


def _one_of(model: BaseModel, names: tuple[str, ...], what: str) -> str:
    """The one field of `names` that is set on `model`. Raises ValueError otherwise."""
    present = [n for n in names if getattr(model, n) is not None]
    if len(present) != 1:
        keys = [n.rstrip("_") for n in names]  # `for_` is `for` in the file
        found = f" (found: {', '.join(n.rstrip('_') for n in present)})" if present else ""
        raise ValueError(f"{what} needs exactly one of: {', '.join(keys)}{found}")
    return present[0]


# --- parameters -----------------------------------------------------------------------------


class Param(_Strict):
    type: Literal["string", "upstream", "duration", "integer", "address"]
    description: str | None = None
    required: bool = False
    default: Any = None
    choices: list[Any] | None = None

    @property
    def kind(self) -> ParamType:
        return ParamType(self.type)

    @model_validator(mode="after")
    def _check(self) -> Param:
        if self.required and self.default is not None:
            raise ValueError("a parameter is either required or has a default, not both")
        choices = None
        if self.choices is not None:
            if not self.choices:
                raise ValueError("choices must not be empty")
            choices = tuple(parse_value(self.kind, c) for c in self.choices)
        if self.default is not None:
            try:
                parse_value(self.kind, self.default, choices)
            except ValueError as exc:
                raise ValueError(f"default: {exc}") from None
        return self

    def parsed_choices(self) -> tuple[Any, ...] | None:
        return None if self.choices is None else tuple(
            parse_value(self.kind, c) for c in self.choices
        )


# --- conditions on netwatch's state -----------------------------------------------------------


class Condition(_Strict):
    """One assertion on a daemon's status (see `netwatch.playbook.conditions`)::

        {upstream: t1, state: healthy}            {upstream: t1, session: up, family: ipv4}
        {upstream: t1, announced: false}          {upstream: t1, announced: graceful_shutdown}
        {upstream: t1, egress: false}             {uplink: primary, state: up}
        {uplink: secondary, active: true}         {local_fault: false}
        {budget_exhausted: false}                 {safety_hold: false}
        {no_override_expiring_within: 15m}        {answers: controller}
        {no_override_expiring_within: 15m, daemon: agent}   (the controller's by default)
    """

    upstream: Line | None = None
    uplink: Line | None = None
    state: Line | None = None
    session: Literal["up", "down"] | None = None
    family: Literal["ipv4", "ipv6"] | None = None
    announced: Annotated[Any, PlainValidator(_announced)] = None
    egress: bool | None = None
    active: bool | None = None
    local_fault: bool | None = None
    budget_exhausted: bool | None = None
    safety_hold: bool | None = None
    no_override_expiring_within: Duration = None
    answers: Literal["agent", "controller"] | None = None
    daemon: Literal["agent", "controller"] | None = None  # whose overrides

    SUBJECTS: ClassVar[tuple[str, ...]] = (
        "upstream", "uplink", "local_fault", "budget_exhausted", "safety_hold",
        "no_override_expiring_within", "answers",
    )
    UPSTREAM_TESTS: ClassVar[tuple[str, ...]] = ("state", "session", "announced", "egress")
    UPLINK_TESTS: ClassVar[tuple[str, ...]] = ("state", "active")

    @property
    def subject(self) -> str:
        return _one_of(self, self.SUBJECTS, "a condition")

    @model_validator(mode="after")
    def _check(self) -> Condition:
        subject = self.subject
        set_fields = {n for n in type(self).model_fields if getattr(self, n) is not None}
        if subject == "upstream":
            test = _one_of(self, self.UPSTREAM_TESTS, "a condition on an upstream")
            allowed = {"upstream", test, "family"} if test in ("session", "announced") else {
                "upstream", test}
            if test == "state" and not _is_template(self.state) and (
                    self.state not in UPSTREAM_STATES):
                raise ValueError(f"state: an upstream is {', '.join(UPSTREAM_STATES)}")
        elif subject == "uplink":
            test = _one_of(self, self.UPLINK_TESTS, "a condition on an uplink")
            allowed = {"uplink", test}
            if not _is_template(self.uplink) and self.uplink not in ("primary", "secondary"):
                raise ValueError("uplink: primary or secondary")
            if test == "state" and not _is_template(self.state) and (
                    self.state not in UPLINK_STATES):
                raise ValueError(f"state: an uplink is {' or '.join(UPLINK_STATES)}")
        elif subject == "no_override_expiring_within":
            allowed = {subject, "daemon"}
        else:
            allowed = {subject}
        extra = sorted(set_fields - allowed)
        if extra:
            raise ValueError(f"{', '.join(extra)}: not with {subject}")
        return self

    @property
    def source(self) -> str:
        """The daemon whose status answers this condition."""
        if self.answers is not None:
            return self.answers
        if self.daemon is not None:
            return self.daemon
        return "agent" if self.uplink is not None else "controller"


# --- the step kinds -----------------------------------------------------------------------------


class NetwatchStep(_Strict):
    """An action through the control API: drain, restore, prepend (controller) or failover
    (agent). `for` is the override's lease (default: the daemon's, 1 h)."""

    action: Literal["drain", "restore", "prepend", "failover"]
    upstream: Line | None = None
    reason: Line
    for_: Duration = Field(None, alias="for")
    graceful_s: Duration = None
    count: Scalar = None
    to: Line | None = None
    force: bool = False

    NEEDS: ClassVar[dict[str, tuple[set[str], set[str]]]] = {
        "drain": ({"upstream"}, {"for_", "graceful_s", "force"}),
        "restore": ({"upstream"}, set()),
        "prepend": ({"upstream", "count"}, {"for_"}),
        "failover": ({"to"}, {"for_"}),
    }

    @model_validator(mode="after")
    def _check(self) -> NetwatchStep:
        needs, may = self.NEEDS[self.action]
        for name in sorted(needs):
            if getattr(self, name) is None:
                raise ValueError(f"{self.action} needs `{name}`")
        optional = {"upstream", "for_", "graceful_s", "count", "to"} - needs
        for name in sorted(optional):
            if getattr(self, name) is not None and name not in may:
                key = "for" if name == "for_" else name
                raise ValueError(f"`{key}` does not go with {self.action}")
        if self.force and self.action != "drain":
            raise ValueError(f"`force` does not go with {self.action}")
        return self


class WaitStep(_Strict):
    """`{for: 30s}`, or `{until: CONDITION, timeout: 5m, every: 2s}`."""

    for_: Duration = Field(None, alias="for")
    until: Condition | None = None
    timeout: Duration = None
    every: Duration = "2s"

    @model_validator(mode="after")
    def _check(self) -> WaitStep:
        kind = _one_of(self, ("for_", "until"), "a wait").rstrip("_")
        if kind == "until" and self.timeout is None:
            raise ValueError("a wait `until` a condition needs a `timeout`")
        if kind == "for" and self.timeout is not None:
            raise ValueError("`timeout` goes with `until`, not with `for`")
        return self


class TextFsm(_Strict):
    """Parse a device's output with TextFSM: `template` (a file, relative to the playbook;
    default: ntc-templates' template for the device type and command), the rows whose fields
    equal `where`, at least `min_rows` of them, each matching every regex of `expect`."""

    template: Line | None = None
    where: dict[str, Line] = {}
    expect: dict[str, Regex] = {}
    min_rows: Annotated[int, Field(ge=0, le=100_000)] = 1


class CheckStep(_Strict):
    """`{netwatch: CONDITION}`, or `{device: NAME, command: LINE, match|no_match: REGEX,
    textfsm: {...}}` on that command's output."""

    netwatch: Condition | None = None
    device: Line | None = None
    command: Line | None = None
    match: Regex | None = None
    no_match: Regex | None = None
    textfsm: TextFsm | None = None
    timeout: Duration = "60s"

    @model_validator(mode="after")
    def _check(self) -> CheckStep:
        kind = _one_of(self, ("netwatch", "device"), "a check")
        device_keys = ("command", "match", "no_match", "textfsm")
        if kind == "netwatch":
            extra = [k for k in device_keys if getattr(self, k) is not None]
            if extra:
                raise ValueError(f"{', '.join(extra)}: only in a check on a device")
            return self
        if self.command is None:
            raise ValueError("a check on a device needs `command`")
        if self.match is None and self.no_match is None and self.textfsm is None:
            raise ValueError("a check on a device needs `match`, `no_match` or `textfsm`")
        return self


class DeviceStep(_Strict):
    """Commands (`commands`: exec mode) or configuration lines (`config`) on an inventory
    device, and a regex the output must match (`expect`). `confirm_minutes`: the window of
    the device's own commit-confirmed, on platforms that have one."""

    device: Line
    commands: Annotated[list[Line], Field(min_length=1)] | None = None
    config: Annotated[list[Line], Field(min_length=1)] | None = None
    expect: Regex | None = None
    timeout: Duration = "60s"
    confirm_minutes: Annotated[int, Field(ge=1, le=60)] = 5

    @model_validator(mode="after")
    def _check(self) -> DeviceStep:
        _one_of(self, ("commands", "config"), "a device step")
        return self


class DiagnoseStep(_Strict):
    """A per-transit path diagnosis (`netwatch diagnose upstream`), beside `compare` (default:
    a healthy upstream)."""

    upstream: Line
    compare: Line | None = None
    targets: Annotated[int, Field(ge=1, le=10)] = 3


class Step(_Strict):
    name: Line | None = None
    on_failure: OnFailure = OnFailure.ABORT
    confirm: Line | None = None
    netwatch: NetwatchStep | None = None
    wait: WaitStep | None = None
    check: CheckStep | None = None
    device: DeviceStep | None = None
    diagnose: DiagnoseStep | None = None
    note: Text | None = None

    KINDS: ClassVar[tuple[str, ...]] = tuple(kind.value for kind in StepKind)

    @property
    def kind(self) -> StepKind:
        return StepKind(_one_of(self, self.KINDS, "a step"))

    @model_validator(mode="after")
    def _check(self) -> Step:
        _ = self.kind
        return self


class Playbook(_Strict):
    name: Name
    description: Text
    alerts: list[Annotated[str, Field(pattern=r"^Netwatch[A-Za-z0-9]+$")]] = []
    params: dict[ParamName, Param] = {}
    steps: Annotated[list[Step], Field(min_length=1)]
    rollback: list[Step] = []

    @property
    def has_device_steps(self) -> bool:
        return any(
            s.device is not None or (s.check is not None and s.check.device is not None)
            for s in (*self.steps, *self.rollback)
        )
