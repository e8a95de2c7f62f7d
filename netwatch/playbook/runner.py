"""Carrying out a plan: each step through its port, results like nornir's, rollback, Ctrl-C,
the trail.

`Runner(plan, ...).run()` runs the plan's steps in order and returns a `RunResult`. Each step
gives a `StepResult` with `ok`, `changed` and `output`. When a step fails, its `on_failure`
decides: `continue` goes on, `abort` stops the run, `rollback` stops it and runs the
playbook's rollback steps (in order; a rollback step that fails with `abort` ends the
rollback, with `continue` the rollback goes on).

- A step with `confirm` asks the operator first (`--yes` answers yes); "no" stops the run
  there, as a success: nothing failed, the operator chose not to go on.
- The stop signal (Ctrl-C) is looked at between steps and during waits, which end at once;
  a device or netwatch step is never cut in the middle. After a stop the operator is offered
  the rollback (always asked, even with `--yes`).
- Device sessions open when a step first needs one and stay open for the run. Credentials are
  read then, and every output is scrubbed of them before the operator or the trail sees it.
- Configuration on a platform with commit-confirmed is committed that way; the commits are
  confirmed when the run completes. A run that fails or stops leaves them unconfirmed, so the
  device rolls itself back even if the rollback steps cannot reach it.
- Every step, its resolved action and its full output go to the trail, with the run's start
  and end; the trail never sees a credential.

Time is injected (`clock`: monotonic seconds, `sleep`), so tests never wait.
"""

from __future__ import annotations

import contextlib
import enum
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from netwatch.control.protocol import Command
from netwatch.playbook import conditions, inventory, parsing
from netwatch.playbook.inventory import Credentials, Device
from netwatch.playbook.plan import (
    CheckDevice,
    CheckState,
    DeviceRun,
    Diagnosis,
    NetwatchCall,
    Note,
    Plan,
    PlannedStep,
    WaitFor,
    WaitUntil,
    describe,
)
from netwatch.playbook.ports import (
    ActionFailed,
    Control,
    DeviceConnector,
    DeviceSession,
    Diagnoser,
    Operator,
    StopSignal,
    Trail,
)
from netwatch.playbook.schema import OnFailure, StepKind

MAX_TRAIL_OUTPUT = 64 * 1024  # characters of one step's output kept in the trail
PROGRESS_EVERY_S = 1.0
SLICE_S = 0.2  # how often a wait looks at the stop signal


class StepStatus(enum.StrEnum):
    """How one step ended (the words of the progress lines and the trail)."""

    OK = "ok"
    FAILED = "failed"
    DECLINED = "declined"  # the operator answered no to its question: it did not run
    INTERRUPTED = "interrupted"  # stopped (Ctrl-C) while it waited


class RunOutcome(enum.StrEnum):
    """How a run ended (the words of its last line and of the trail's `playbook_end`)."""

    COMPLETED = "completed"
    FAILED = "failed"
    ROLLED_BACK = "rolled back"
    ROLLBACK_FAILED = "rollback failed"
    STOPPED = "stopped"  # by Ctrl-C, with no rollback run
    DECLINED = "stopped by the operator"  # an answer no to a step's question


@dataclass(frozen=True)
class StepResult:
    label: str
    name: str
    kind: StepKind
    status: StepStatus
    changed: bool
    output: str
    elapsed_s: float

    @property
    def ok(self) -> bool:
        return self.status is StepStatus.OK

    @property
    def failed(self) -> bool:
        return self.status in (StepStatus.FAILED, StepStatus.INTERRUPTED)


@dataclass
class RunResult:
    playbook: str
    run_id: str
    outcome: RunOutcome = RunOutcome.COMPLETED
    steps: list[StepResult] = field(default_factory=list)
    rollback: list[StepResult] = field(default_factory=list)
    elapsed_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.outcome in (RunOutcome.COMPLETED, RunOutcome.DECLINED)

    @property
    def changed(self) -> bool:
        return any(r.changed for r in (*self.steps, *self.rollback))


class _Redactor:
    def __init__(self) -> None:
        self.secrets: list[str] = []

    def add(self, secret: str) -> None:
        if secret and secret not in self.secrets:
            self.secrets.append(secret)

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text


class Runner:
    def __init__(
        self, plan: Plan, *, control: Control, devices: DeviceConnector, diagnoser: Diagnoser,
        operator: Operator, trail: Trail, stop: StopSignal, run_id: str,
        who: dict[str, Any] | None = None, assume_yes: bool = False,
        clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep,
        read_credentials: Callable[[Device], Credentials] = inventory.credentials,
    ):
        self.plan = plan
        self.control = control
        self.devices = devices
        self.diagnoser = diagnoser
        self.operator = operator
        self.trail = trail
        self.stop = stop
        self.run_id = run_id
        self.who = who or {}
        self.assume_yes = assume_yes
        self.clock = clock
        self.sleep = sleep
        self.read_credentials = read_credentials
        self.redact = _Redactor()
        self._sessions: dict[str, DeviceSession] = {}
        self._pending_commits: list[str] = []

    # --- the run ---

    def run(self) -> RunResult:
        result = RunResult(self.plan.playbook, self.run_id)
        started = self.clock()
        self._record("playbook_start", path=str(self.plan.path), params=dict(self.plan.params),
                     who=self.who, steps=len(self.plan.steps), rollback=len(self.plan.rollback))
        try:
            result.outcome = self._run_steps(result)
            if result.outcome is RunOutcome.COMPLETED:
                self._confirm_commits()
        finally:
            self._close_sessions()
            result.elapsed_s = self.clock() - started
            self._record("playbook_end", outcome=result.outcome, ok=result.ok,
                         changed=result.changed, elapsed_s=round(result.elapsed_s, 3))
        return result

    def _run_steps(self, result: RunResult) -> RunOutcome:
        total = len(self.plan.steps)
        for step in self.plan.steps:
            if self.stop.is_set():
                return self._stopped(result, f"before step {step.label}")
            if step.confirm and not self._confirmed(step):
                result.steps.append(self._declined(step))
                return RunOutcome.DECLINED
            outcome = self._execute(step, total)
            result.steps.append(outcome)
            if outcome.status is StepStatus.INTERRUPTED or (self.stop.is_set() and outcome.ok):
                return self._stopped(result, f"at step {step.label}")
            if outcome.ok or step.on_failure is OnFailure.CONTINUE:
                continue
            if step.on_failure is OnFailure.ROLLBACK:
                return self._rollback(result, f"step {step.label} failed")
            return RunOutcome.FAILED
        return RunOutcome.COMPLETED

    def _confirmed(self, step: PlannedStep) -> bool:
        if self.assume_yes:
            self.operator.show(f"{step.confirm} yes (--yes)")
            return True
        return self.operator.confirm(step.confirm or "")

    def _declined(self, step: PlannedStep) -> StepResult:
        declined = StepResult(step.label, step.name, step.kind, StepStatus.DECLINED, False,
                              f"the operator answered no to: {step.confirm}", 0.0)
        self._record_step(step, declined, "step")
        self.operator.step_done(step.label, step.name, StepStatus.DECLINED, 0.0, declined.output)
        return declined

    def _stopped(self, result: RunResult, where: str) -> RunOutcome:
        self.operator.show(f"stopped {where} (Ctrl-C)")
        self._record("playbook_stopped", where=where)
        if not self.plan.rollback:
            return RunOutcome.STOPPED
        labels = ", ".join(s.name for s in self.plan.rollback)
        if self.operator.confirm(f"Run the rollback steps now ({labels})?"):
            return self._rollback(result, f"stopped {where}")
        return RunOutcome.STOPPED

    def _rollback(self, result: RunResult, why: str) -> RunOutcome:
        if not self.plan.rollback:
            return RunOutcome.FAILED
        self.operator.show(f"rolling back: {why}")
        self._record("rollback_start", why=why)
        total = len(self.plan.rollback)
        outcome = RunOutcome.ROLLED_BACK
        for step in self.plan.rollback:
            done = self._execute(step, total, kind="rollback_step", interruptible=False)
            result.rollback.append(done)
            if not done.ok and step.on_failure is not OnFailure.CONTINUE:
                outcome = RunOutcome.ROLLBACK_FAILED
                break
            if not done.ok:
                outcome = RunOutcome.ROLLBACK_FAILED
        self._record("rollback_end", outcome=outcome)
        return outcome

    # --- one step ---

    def _execute(self, step: PlannedStep, total: int, kind: str = "step",
                 interruptible: bool = True) -> StepResult:
        self.operator.step_started(step.label, total, step.name)
        started = self.clock()
        try:
            status, changed, output = self._act(step, started, interruptible)
        except ActionFailed as exc:
            status, changed, output = StepStatus.FAILED, False, str(exc)
        output = self.redact(output)
        done = StepResult(step.label, step.name, step.kind, status, changed, output,
                          self.clock() - started)
        self._record_step(step, done, kind)
        self.operator.step_done(step.label, step.name, status, done.elapsed_s, output)
        return done

    def _act(self, step: PlannedStep, started: float,
             interruptible: bool) -> tuple[StepStatus, bool, str]:
        action = step.action
        if isinstance(action, NetwatchCall):
            return self._netwatch(action)
        if isinstance(action, WaitFor):
            return self._wait_for(step, action, started, interruptible)
        if isinstance(action, WaitUntil):
            return self._wait_until(step, action, started, interruptible)
        if isinstance(action, CheckState):
            seen = self._observe(action.condition)
            return (StepStatus.OK if seen.ok else StepStatus.FAILED), False, seen.text
        if isinstance(action, CheckDevice):
            return self._check_device(action)
        if isinstance(action, DeviceRun):
            return self._device_run(action)
        if isinstance(action, Diagnosis):
            report = self.diagnoser.diagnose(action.upstream, action.compare, action.targets)
            return StepStatus.OK, False, report
        if isinstance(action, Note):
            return StepStatus.OK, False, action.text
        raise TypeError(f"no way to carry out {action!r}")

    def _netwatch(self, call: NetwatchCall) -> tuple[StepStatus, bool, str]:
        answer = self.control.call(call.daemon, call.command, call.args)
        if not isinstance(answer, dict):
            return StepStatus.OK, True, str(answer)
        lease = answer.get("lease")
        changed = bool(lease or answer.get("removed") or answer.get("replaced"))
        text = str(answer.get("message") or "done")
        expires = lease.get("expires_at") if isinstance(lease, dict) else None
        if isinstance(expires, int | float):
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(expires))
            text += f" (override {lease.get('id')}, expires {when})"
        return StepStatus.OK, changed, text

    def _observe(self, condition) -> conditions.Observation:
        try:
            status = self.control.call(condition.source, Command.STATUS, {})
        except ActionFailed as exc:
            return conditions.evaluate(condition, None, error=str(exc))
        return conditions.evaluate(condition, status if isinstance(status, dict) else None)

    def _pause(self, seconds: float, interruptible: bool) -> bool:
        """Sleep `seconds` in slices; False when the stop signal came meanwhile."""
        end = self.clock() + seconds
        while (left := end - self.clock()) > 0:
            if interruptible and self.stop.is_set():
                return False
            self.sleep(min(SLICE_S, left))
        return not (interruptible and self.stop.is_set())

    def _wait_for(self, step: PlannedStep, w: WaitFor, started: float,
                  interruptible: bool) -> tuple[StepStatus, bool, str]:
        while (elapsed := self.clock() - started) < w.seconds:
            self.operator.waiting(step.label, elapsed, w.seconds, "")
            if not self._pause(min(PROGRESS_EVERY_S, w.seconds - elapsed), interruptible):
                elapsed = self.clock() - started
                return (StepStatus.INTERRUPTED, False,
                        f"stopped after {elapsed:.1f} s of {w.seconds:g} s")
        return StepStatus.OK, False, f"waited {w.seconds:g} s"

    def _wait_until(self, step: PlannedStep, w: WaitUntil, started: float,
                    interruptible: bool) -> tuple[StepStatus, bool, str]:
        polls = 0
        while True:
            seen = self._observe(w.condition)
            polls += 1
            elapsed = self.clock() - started
            if seen.ok:
                return StepStatus.OK, False, f"after {elapsed:.1f} s ({polls} polls): {seen.text}"
            if elapsed >= w.timeout_s:
                return StepStatus.FAILED, False, (f"not within {w.timeout_s:g} s ({polls} polls); "
                                         f"last seen: {seen.text}")
            self.operator.waiting(step.label, elapsed, w.timeout_s, seen.text)
            pause = min(w.every_s, w.timeout_s - elapsed)
            if not self._pause(pause, interruptible):
                return (StepStatus.INTERRUPTED, False,
                        f"stopped after {elapsed:.1f} s; last seen: {seen.text}")

    def _session(self, name: str, device: Device | None) -> DeviceSession:
        if device is None:
            raise ActionFailed(f"device {name}: no inventory entry")
        if name not in self._sessions:
            try:
                creds = self.read_credentials(device)
            except inventory.CredentialError as exc:
                raise ActionFailed(f"device {name}: credentials: {exc}") from None
            if creds.password is not None:
                self.redact.add(creds.password.reveal())
            self._sessions[name] = self.devices.open(name, device, creds)
        return self._sessions[name]

    def _check_device(self, check: CheckDevice) -> tuple[StepStatus, bool, str]:
        session = self._session(check.device_name, check.device)
        output = self.redact(session.send_command(check.command, check.timeout_s))
        ok, findings = parsing.judge(check, output, check.device.device_type)
        text = f"{check.device_name}> {check.command}\n{output.strip()}\n" + "\n".join(
            f"  {f}" for f in findings)
        return (StepStatus.OK if ok else StepStatus.FAILED), False, text

    def _device_run(self, run: DeviceRun) -> tuple[StepStatus, bool, str]:
        session = self._session(run.device_name, run.device)
        if run.config:
            output = session.send_config(list(run.lines), run.timeout_s)
            if run.commit_confirmed:
                output += "\n" + session.commit_confirmed(run.confirm_minutes, run.timeout_s)
                if run.device_name not in self._pending_commits:
                    self._pending_commits.append(run.device_name)
        else:
            output = "\n".join(
                f"{run.device_name}> {line}\n"
                + session.send_command(line, run.timeout_s).strip("\r\n")
                for line in run.lines
            )
        output = self.redact(output)
        if run.expect is not None and not re.search(run.expect, output, re.MULTILINE):
            return (StepStatus.FAILED, run.config,
                    f"{output.strip()}\n  expected /{run.expect}/: not found")
        return StepStatus.OK, run.config, output.strip()

    def _confirm_commits(self) -> None:
        for name in self._pending_commits:
            session = self._sessions[name]
            try:
                output = session.confirm_commit(60.0)
                self._record("commit_confirmed", device=name, output=self.redact(output))
                self.operator.show(f"{name}: commit confirmed")
            except ActionFailed as exc:
                message = self.redact(str(exc))
                self._record("commit_confirm_failed", device=name, error=message)
                self.operator.show(f"{name}: could not confirm the commit ({message}): the device "
                                   "will roll back by itself when its timer ends")

    def _close_sessions(self) -> None:
        for session in self._sessions.values():
            with contextlib.suppress(ActionFailed):  # a session already gone needs no closing
                session.close()
        self._sessions.clear()

    # --- the trail ---

    def _record(self, kind: str, **fields: Any) -> None:
        self.trail.record(kind, run_id=self.run_id, playbook=self.plan.playbook, **fields)

    def _record_step(self, step: PlannedStep, done: StepResult, kind: str) -> None:
        output = done.output
        if len(output) > MAX_TRAIL_OUTPUT:
            output = output[:MAX_TRAIL_OUTPUT] + f"\n[... {len(done.output)} characters in all]"
        self._record(
            kind, step=step.label, name=step.name, step_kind=step.kind,
            action=[self.redact(line) for line in describe(step.action)],
            status=done.status, ok=done.ok, changed=done.changed, output=output,
            elapsed_s=round(done.elapsed_s, 3),
        )
