"""The ports a playbook run talks through. Each has a real adapter and a fake in the tests.

- `Control`: the control API of the daemons (`netwatch.playbook.control_port` over
  `netwatch.control.client`);
- `DeviceConnector` and `DeviceSession`: SSH sessions to inventory devices
  (`netwatch.adapters.netmiko_device`);
- `Diagnoser`: the per-transit path diagnosis (`netwatch.diagnose`);
- `Operator`: the person at the terminal (confirmations, progress; the CLI's console);
- `Trail`: where every step and its output is recorded (`netwatch.control.audit.AuditLog`);
- `StopSignal`: set by Ctrl-C; the runner stops between steps (`threading.Event`).

Adapters raise `ActionFailed` for anything that makes a step fail (a refusal, an unreachable
daemon or device, a timeout); any other exception is a bug and propagates.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from netwatch.control.protocol import Command
from netwatch.playbook.inventory import Credentials, Device


class ActionFailed(Exception):
    """A step's action did not succeed; the message says why, in one or a few lines."""


class Control(Protocol):
    def call(self, daemon: str, command: Command, args: Mapping[str, Any]) -> Any:
        """The result of `command` from `daemon` ("agent", "controller"). Raises
        ActionFailed (unreachable, refused, not found, permission...)."""
        ...


class DeviceSession(Protocol):
    def send_command(self, line: str, timeout_s: float) -> str:
        """Run one exec-mode command; its output."""
        ...

    def send_config(self, lines: Sequence[str], timeout_s: float) -> str:
        """Enter configuration mode, send `lines`, leave it; the session's output."""
        ...

    def commit_confirmed(self, minutes: int, timeout_s: float) -> str:
        """Commit with the platform's commit-confirmed: rolled back by the device unless
        `confirm_commit` follows within `minutes`."""
        ...

    def confirm_commit(self, timeout_s: float) -> str:
        """Confirm a pending commit-confirmed."""
        ...

    def close(self) -> None: ...


class DeviceConnector(Protocol):
    def open(self, name: str, device: Device, credentials: Credentials) -> DeviceSession:
        """A logged-in session to `device`. Raises ActionFailed."""
        ...


class Diagnoser(Protocol):
    def diagnose(self, upstream: str, compare: str | None, targets: int) -> str:
        """The diagnosis report, as text. Raises ActionFailed when it cannot run."""
        ...


class Operator(Protocol):
    def confirm(self, question: str) -> bool:
        """Ask a yes/no question; False when there is no answer (end of input)."""
        ...

    def show(self, text: str) -> None:
        """Print `text` (a note, evidence, a message)."""
        ...

    def step_started(self, label: str, total: int, name: str) -> None: ...

    def waiting(self, label: str, elapsed_s: float, limit_s: float, observed: str) -> None:
        """A wait's progress: called about once a second and at each poll."""
        ...

    def step_done(self, label: str, name: str, status: str, elapsed_s: float,
                  output: str) -> None: ...


class Trail(Protocol):
    def record(self, kind: str, **fields: Any) -> Any: ...


class StopSignal(Protocol):
    def is_set(self) -> bool: ...
