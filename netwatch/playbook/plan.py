"""A playbook and its parameters resolved into concrete steps. Pure.

`resolve(playbook_file, given, inventory)` parses each `--param` by its declared type, fills
in defaults, substitutes every placeholder as a value (`netwatch.playbook.template`) and
checks the result as the place it goes will check it: control-API arguments by the protocol's
own `validate_args`, device lines one word per value and one line each, regexes escaped. It
returns a `Plan` whose steps hold nothing left to interpret: what `--dry-run` prints is what
`run` carries out. Every problem is collected and raised at once as a `PlanError`, before any
step runs, so a bad value never leaves a playbook half done.

The reason sent to the control API is prefixed with the playbook's name
(`playbook drain-upstream: CHG-42 ...`), so the daemon's own audit log says where a drain
came from.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from netwatch.config.errors import Loc
from netwatch.control import leases
from netwatch.control.protocol import (
    FAILOVER_AUTO,
    BadRequest,
    Command,
    format_duration,
    validate_args,
)
from netwatch.core import validators
from netwatch.playbook import conditions
from netwatch.playbook.inventory import Device, Inventory
from netwatch.playbook.loader import PlaybookFile, shipped_dir
from netwatch.playbook.schema import (
    UPLINK_STATES,
    UPSTREAM_STATES,
    CheckStep,
    Condition,
    DeviceStep,
    NetwatchStep,
    OnFailure,
    Step,
    StepKind,
    WaitStep,
)
from netwatch.playbook.template import Mode, render
from netwatch.playbook.values import ParamType, check_line, parse_value, shown

DAEMON_OF = {"drain": "controller", "restore": "controller", "prepend": "controller",
             "failover": "agent"}


class PlanError(Exception):
    """The parameters do not fit the playbook: `problems` lists every one."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


# --- resolved actions -------------------------------------------------------------------------


@dataclass(frozen=True)
class NetwatchCall:
    daemon: str  # "agent" or "controller"
    command: Command
    args: Mapping[str, Any]


@dataclass(frozen=True)
class WaitFor:
    seconds: float


@dataclass(frozen=True)
class WaitUntil:
    condition: Condition
    timeout_s: float
    every_s: float


@dataclass(frozen=True)
class CheckState:
    condition: Condition


@dataclass(frozen=True)
class TextFsmCheck:
    template: str | None  # an absolute path; None: ntc-templates for device type and command
    where: Mapping[str, str]
    expect: Mapping[str, str]  # field -> regex
    min_rows: int


@dataclass(frozen=True)
class CheckDevice:
    device_name: str
    device: Device | None  # None when no inventory was loaded (dry-run only)
    command: str
    match: str | None
    no_match: str | None
    textfsm: TextFsmCheck | None
    timeout_s: float


@dataclass(frozen=True)
class DeviceRun:
    device_name: str
    device: Device | None
    config: bool  # configuration lines (True) or exec-mode commands
    lines: tuple[str, ...]
    expect: str | None
    timeout_s: float
    confirm_minutes: int

    @property
    def commit_confirmed(self) -> bool:
        return self.config and self.device is not None and self.device.commit_confirmed


@dataclass(frozen=True)
class Diagnosis:
    upstream: str
    compare: str | None
    targets: int


@dataclass(frozen=True)
class Note:
    text: str


Action = (
    NetwatchCall | WaitFor | WaitUntil | CheckState | CheckDevice | DeviceRun | Diagnosis | Note
)


@dataclass(frozen=True)
class PlannedStep:
    label: str  # "3" for the third step, "R1" for the first rollback step
    name: str
    kind: StepKind
    on_failure: OnFailure
    confirm: str | None
    action: Action


@dataclass(frozen=True)
class Plan:
    playbook: str
    path: Path
    params: Mapping[str, Any]
    steps: tuple[PlannedStep, ...]
    rollback: tuple[PlannedStep, ...]
    devices: Mapping[str, Device] = field(default_factory=dict)  # the ones the plan uses

    @property
    def changes_state(self) -> bool:
        """Whether a step may change something (a netwatch action, a device step)."""
        return any(isinstance(s.action, NetwatchCall | DeviceRun) for s in self.steps)


# --- parameters -------------------------------------------------------------------------------


def parse_params(pf: PlaybookFile, given: Mapping[str, str]) -> tuple[dict[str, Any], list[str]]:
    """(the value of every declared parameter, problems): `given` parsed by type, defaults
    filled in, optional ones None."""
    declared = pf.playbook.params
    problems = [
        f"--param {name}: {pf.name} has no such parameter "
        f"(its parameters: {', '.join(declared) or 'none'})"
        for name in given if name not in declared
    ]
    values: dict[str, Any] = {}
    for name, param in declared.items():
        raw = given.get(name, param.default)
        if raw is None:
            values[name] = None
            if param.required:
                problems.append(f"--param {name}: required ({param.type}"
                                + (f": {param.description}" if param.description else "") + ")")
            continue
        try:
            values[name] = parse_value(param.kind, raw, param.parsed_choices())
        except ValueError as exc:
            problems.append(f"--param {name}: {exc}")
    return values, problems


# --- resolution -------------------------------------------------------------------------------


class _Resolver:
    def __init__(self, pf: PlaybookFile, values: Mapping[str, Any], inventory: Inventory | None):
        self.pf = pf
        self.values = values
        self.inventory = inventory
        self.problems: list[str] = []
        self.devices: dict[str, Device] = {}

    def fail(self, where: str, message: str) -> None:
        self.problems.append(f"{where}: {message}")

    def text(self, where: str, value: str, mode: Mode = Mode.TEXT) -> Any:
        try:
            return render(value, self.values, mode)
        except ValueError as exc:
            self.fail(where, str(exc))
            return None

    def seconds(self, where: str, value: Any) -> float:
        raw = self.text(where, value, Mode.VALUE) if isinstance(value, str) else value
        if raw is None:
            return 0.0
        try:
            return parse_value(ParamType.DURATION, raw)
        except ValueError as exc:
            self.fail(where, str(exc))
            return 0.0

    def step(self, label: str, step: Step, loc: Loc) -> PlannedStep | None:
        where = f"step {label}"
        kind = step.kind
        before = len(self.problems)
        action: Any
        if kind is StepKind.NETWATCH:
            action = self.netwatch(where, step.netwatch)
        elif kind is StepKind.WAIT:
            action = self.wait(where, step.wait)
        elif kind is StepKind.CHECK:
            action = self.check(where, step.check, loc)
        elif kind is StepKind.DEVICE:
            action = self.device_run(where, step.device)
        elif kind is StepKind.DIAGNOSE:
            d = step.diagnose
            upstream = self.name(f"{where}: diagnose.upstream", d.upstream)
            compare = (self.name(f"{where}: diagnose.compare", d.compare)
                       if d.compare is not None else None)
            action = Diagnosis(upstream, compare, d.targets)
        elif kind is StepKind.NOTE:
            action = Note(self.text(where, step.note) or "")
        else:
            raise AssertionError(f"step kind {kind!r} has no plan")
        confirm = self.text(f"{where}: confirm", step.confirm) if step.confirm else None
        if len(self.problems) > before:
            return None
        name = self.text(f"{where}: name", step.name) if step.name else default_name(action)
        return PlannedStep(label, name or kind.value, kind, step.on_failure, confirm, action)

    def name(self, where: str, value: str) -> str:
        text = self.text(where, value)
        if text is None:
            return ""
        try:
            return validators.check_name(text)
        except ValueError as exc:
            self.fail(where, str(exc))
            return ""

    def netwatch(self, where: str, n: NetwatchStep) -> NetwatchCall | None:
        command = Command(n.action)
        args: dict[str, Any] = {}
        reason = self.text(f"{where}: reason", n.reason)
        if reason is not None:
            args["reason"] = _prefixed_reason(self.pf.name, reason)
        if n.upstream is not None:
            args["upstream"] = self.text(f"{where}: upstream", n.upstream)
        if n.to is not None:
            args["to"] = self.text(f"{where}: to", n.to)
        if n.for_ is not None and args.get("to") != FAILOVER_AUTO:
            args["for_s"] = self.seconds(f"{where}: for", n.for_)
        if n.graceful_s is not None:
            graceful = self.text(f"{where}: graceful_s", n.graceful_s, Mode.VALUE) if isinstance(
                n.graceful_s, str) else n.graceful_s
            if graceful is not None:  # an unset optional parameter: the daemon's default
                args["graceful_s"] = self.seconds(f"{where}: graceful_s", graceful)
        if n.count is not None:
            args["count"] = self.text(f"{where}: count", n.count, Mode.VALUE) if isinstance(
                n.count, str) else n.count
        if n.force:
            args["force"] = True
        try:
            checked = validate_args(command, args)
        except BadRequest as exc:
            self.fail(where, str(exc))
            return None
        sent = {k: v for k, v in checked.items() if k in args}  # the daemon fills defaults
        return NetwatchCall(DAEMON_OF[n.action], command, sent)

    def condition(self, where: str, c: Condition) -> Condition:
        changes: dict[str, Any] = {}
        for key in ("upstream", "uplink", "state"):
            value = getattr(c, key)
            if value is not None:
                changes[key] = self.text(f"{where}.{key}", value)
        if c.upstream is not None and changes.get("upstream"):
            try:
                validators.check_name(changes["upstream"])
            except ValueError as exc:
                self.fail(f"{where}.upstream", str(exc))
        if c.uplink is not None and changes.get("uplink") not in ("primary", "secondary"):
            self.fail(f"{where}.uplink", f"{shown(changes.get('uplink'))} is not primary or "
                                         "secondary")
        if c.state is not None:
            states = UPSTREAM_STATES if c.upstream is not None else UPLINK_STATES
            if changes.get("state") not in states:
                self.fail(f"{where}.state", f"{shown(changes.get('state'))} is not one of: "
                                            f"{', '.join(states)}")
        if c.no_override_expiring_within is not None:
            changes["no_override_expiring_within"] = self.seconds(
                f"{where}.no_override_expiring_within", c.no_override_expiring_within)
        return c.model_copy(update=changes)

    def wait(self, where: str, w: WaitStep) -> WaitFor | WaitUntil:
        if w.for_ is not None:
            return WaitFor(self.seconds(f"{where}: wait.for", w.for_))
        return WaitUntil(
            self.condition(f"{where}: wait.until", w.until),
            self.seconds(f"{where}: wait.timeout", w.timeout),
            self.seconds(f"{where}: wait.every", w.every),
        )

    def device_of(self, where: str, value: str) -> tuple[str, Device | None]:
        name = self.text(where, value) or ""
        if self.inventory is None:
            return name, None
        try:
            device = self.inventory.device(name)
        except KeyError as exc:
            self.fail(where, exc.args[0])
            return name, None
        self.devices[name] = device
        return name, device

    def template_file(self, where: str, value: str, loc: Loc) -> str | None:
        """The absolute path of a TextFSM template `value` (relative to the playbook), which
        must resolve (symbolic links followed) inside the playbook's directory or the shipped
        templates: a parameter must not make a check read any file on the host."""
        relative = self.text(where, value)
        if relative is None:
            return None
        path = (self.pf.path.parent / relative).resolve()
        roots = [self.pf.path.parent.resolve()]
        if (shipped := shipped_dir()) is not None:
            roots.append((shipped / "templates").resolve())
        if not any(path.is_relative_to(root) for root in roots):
            self.fail(f"{self.pf.where(loc)}: {where}",
                      f"{shown(relative)} resolves to {path}, outside "
                      f"{' and '.join(str(r) for r in roots)}")
            return None
        return str(path)

    def device_line(self, where: str, value: str) -> str:
        line = self.text(where, value, Mode.DEVICE)
        if line is None:
            return ""
        try:
            return check_line(line, "a device line")
        except ValueError as exc:
            self.fail(where, str(exc))
            return ""

    def check(self, where: str, c: CheckStep, loc: Loc) -> CheckState | CheckDevice:
        if c.netwatch is not None:
            return CheckState(self.condition(f"{where}: check.netwatch", c.netwatch))
        name, device = self.device_of(f"{where}: check.device", c.device)
        fsm = None
        if c.textfsm is not None:
            t = c.textfsm
            template = None
            if t.template is not None:
                template = self.template_file(f"{where}: check.textfsm.template", t.template,
                                              (*loc, "check", "textfsm", "template"))
            fsm = TextFsmCheck(
                template,
                {k: self.text(f"{where}: check.textfsm.where.{k}", v) for k, v in t.where.items()},
                {k: self.text(f"{where}: check.textfsm.expect.{k}", v, Mode.REGEX)
                 for k, v in t.expect.items()},
                t.min_rows,
            )
        return CheckDevice(
            name, device, self.device_line(f"{where}: check.command", c.command),
            self.text(f"{where}: check.match", c.match, Mode.REGEX) if c.match else None,
            self.text(f"{where}: check.no_match", c.no_match, Mode.REGEX) if c.no_match else None,
            fsm, self.seconds(f"{where}: check.timeout", c.timeout),
        )

    def device_run(self, where: str, d: DeviceStep) -> DeviceRun:
        name, device = self.device_of(f"{where}: device.device", d.device)
        key = "config" if d.config is not None else "commands"
        lines = tuple(
            self.device_line(f"{where}: device.{key}[{i}]", line)
            for i, line in enumerate(d.config or d.commands or [])
        )
        expect = self.text(f"{where}: device.expect", d.expect, Mode.REGEX) if d.expect else None
        return DeviceRun(name, device, d.config is not None, lines, expect,
                         self.seconds(f"{where}: device.timeout", d.timeout), d.confirm_minutes)


def _prefixed_reason(playbook: str, reason: str) -> str:
    prefix = f"playbook {playbook}: "
    return prefix + reason[: leases.MAX_REASON_CHARS - len(prefix)]


def resolve(pf: PlaybookFile, given: Mapping[str, str], inventory: Inventory | None = None,
            *, need_inventory: bool = True) -> Plan:
    """The plan of `pf` with the parameters `given` (name -> text). `inventory` is needed when
    the playbook has device steps and `need_inventory` (a real run); a dry-run without one
    shows the device names only. Raises PlanError listing every problem."""
    values, problems = parse_params(pf, given)
    if pf.playbook.has_device_steps and inventory is None and need_inventory:
        problems.append(f"{pf.name} has device steps: give an inventory (--inventory FILE)")
    if problems:
        raise PlanError(problems)
    r = _Resolver(pf, values, inventory)
    steps = [r.step(str(i), s, ("steps", i - 1)) for i, s in enumerate(pf.playbook.steps, 1)]
    rollback = [r.step(f"R{i}", s, ("rollback", i - 1))
                for i, s in enumerate(pf.playbook.rollback, 1)]
    if r.problems:
        raise PlanError(r.problems)
    return Plan(pf.name, pf.path, values, tuple(s for s in steps if s),
                tuple(s for s in rollback if s), r.devices)


# --- descriptions, for --dry-run, progress lines and the trail ----------------------------------


def _args_text(args: Mapping[str, Any]) -> str:
    parts = []
    for key, value in args.items():
        if key.endswith("_s") and isinstance(value, int | float) and not isinstance(value, bool):
            parts.append(f"{key}={value:g} ({format_duration(value)})")
        else:
            parts.append(f"{key}={value!r}" if isinstance(value, str) else f"{key}={value}")
    return " ".join(parts)


def default_name(action: Action) -> str:
    """A step's name when the playbook gives none."""
    if isinstance(action, NetwatchCall):
        target = action.args.get("upstream") or action.args.get("to")
        return f"{action.command.value} {target}"
    if isinstance(action, WaitFor):
        return f"wait {format_duration(action.seconds)}"
    if isinstance(action, WaitUntil):
        return f"wait until {conditions.describe(action.condition)}"
    if isinstance(action, CheckState):
        return f"check {conditions.describe(action.condition)}"
    if isinstance(action, CheckDevice):
        return f"check `{action.command}` on {action.device_name}"
    if isinstance(action, DeviceRun):
        what = "configure" if action.config else "run commands on"
        return f"{what} {action.device_name}"
    if isinstance(action, Diagnosis):
        return f"diagnose {action.upstream}"
    return "note"


def safety_net(action: DeviceRun) -> str:
    """What undoes `action`'s configuration if the playbook goes wrong, in one sentence."""
    if action.device is None:
        return "safety net: unknown until the inventory is loaded"
    if action.commit_confirmed:
        return (f"safety net: `commit confirmed {action.confirm_minutes}` on "
                f"{action.device.device_type}: confirmed when the playbook ends ok, else the "
                f"device rolls back by itself within {action.confirm_minutes} min")
    return (f"safety net: none on {action.device.device_type} (no commit-confirmed): the "
            "playbook's rollback steps are the only undo")


def describe(action: Action) -> list[str]:
    """What the step will do, resolved, one line each (the dry-run's body)."""
    if isinstance(action, NetwatchCall):
        return [f"control API ({action.daemon}): {action.command.value} "
                f"{_args_text(action.args)}"]
    if isinstance(action, WaitFor):
        return [f"sleep {action.seconds:g} s"]
    if isinstance(action, WaitUntil):
        return [f"poll the {action.condition.source}'s status every {action.every_s:g} s until "
                f"{conditions.describe(action.condition)}; fail after "
                f"{format_duration(action.timeout_s)}"]
    if isinstance(action, CheckState):
        return [f"ask the {action.condition.source}'s status: "
                f"{conditions.describe(action.condition)}"]
    if isinstance(action, CheckDevice):
        lines = [_device_line(action.device_name, action.device), f"  > {action.command}"]
        if action.match:
            lines.append(f"  output must match /{action.match}/")
        if action.no_match:
            lines.append(f"  output must not match /{action.no_match}/")
        if action.textfsm:
            t = action.textfsm
            source = t.template or "ntc-templates for the device type and command"
            lines.append(f"  parsed with TextFSM ({source}): at least {t.min_rows} row(s) "
                         f"where {dict(t.where)}, each matching {dict(t.expect)}")
        return lines
    if isinstance(action, DeviceRun):
        mode = "configuration lines" if action.config else "commands"
        lines = [f"{_device_line(action.device_name, action.device)}: {mode}"]
        lines += [f"  > {line}" for line in action.lines]
        if action.expect:
            lines.append(f"  output must match /{action.expect}/")
        if action.config:
            lines.append(f"  {safety_net(action)}")
        return lines
    if isinstance(action, Diagnosis):
        against = action.compare or "a healthy upstream"
        return [f"traceroute through {action.upstream} to {action.targets} target(s), beside "
                f"{against}"]
    return [f"print: {line}" for line in action.text.splitlines()] or ["print"]


def _device_line(name: str, device: Device | None) -> str:
    if device is None:
        return f"device {name} (not looked up: no inventory loaded)"
    return (f"device {name} ({device.device_type} at {device.host}:{device.port}, "
            f"user {device.username}, {device.credential_source})")
