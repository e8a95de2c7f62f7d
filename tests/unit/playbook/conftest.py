"""Fixtures for the playbook tests: fakes of every port the runner talks through, the shipped
playbooks, and the CLI as a subprocess.

- `controller_status`, `agent_status`: the daemons' status shapes, all healthy (NOW is
  1_800_000_000.0);
- `shipped` (Path): the repository's playbooks/ directory;
- `write_playbook(text, name=None)` -> Path: a playbook file in tmp_path (its `name:` is the
  file's stem unless `name` is given);
- `FakeControl` (`control` fixture): both daemons in memory. Status shapes are those of
  netwatch.control.protocol; `drain` makes the upstream announce graceful_shutdown, then
  withdrawn after `withdraw_after_polls` status polls; `restore` announces it normally;
  `failover` moves the agent's active uplink; names in `refuse` are refused; `unreachable`
  daemons raise ActionFailed. Every call is in `calls` as (daemon, command name, args);
- `FakeDevices` (`devices` fixture): sessions that answer `outputs[command]` (else ""),
  record every line sent per device in `sent`, and can fail to open (`fail_open`);
- `FakeOperator` (`operator` fixture): answers questions from `answers` (then `default`),
  records questions, shown text and finished steps;
- `RecordingTrail` (`trail` fixture): `records`, a list of (kind, fields);
- `StopAt` (`stop` fixture): a stop signal that the operator sets after a given step label;
- `clock`: the root conftest's FakeClock; `sleep` advances it;
- `make_runner(plan, **overrides)` -> Runner wired to all of the above;
- `netwatch(*argv, input=None)` -> CompletedProcess: the CLI, as a subprocess.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from netwatch.control.protocol import Command
from netwatch.playbook.inventory import Credentials, Device
from netwatch.playbook.ports import ActionFailed
from netwatch.playbook.runner import Runner

REPO = Path(__file__).resolve().parents[3]
NOW = 1_800_000_000.0


def _controller_status() -> dict:
    def announcements(mode: str) -> list[dict]:
        return [
            {"prefix": "198.51.100.0/24", "family": "ipv4", "mode": mode, "as_path": [],
             "communities": []},
            {"prefix": "2001:db8:100::/48", "family": "ipv6", "mode": mode, "as_path": [],
             "communities": []},
        ]

    def upstream(name: str, asn: int, state: str = "healthy") -> dict:
        return {"name": name, "asn": asn, "state": state, "since": NOW - 600, "reason": "",
                "loss_ratio": 0.0, "median_loss_ratio": 0.0, "rtt_ms": 10.0,
                "median_rtt_ms": 10.0, "sessions": {"ipv4": "up", "ipv6": "up"},
                "announcements": announcements("normal"), "egress": True, "recovery": None,
                "drain": None}

    return {
        "daemon": "controller", "site": "lab", "host": "edge", "version": "0.1.0", "now": NOW,
        "local_fault": False, "safety_holds": [],
        "budget": {"max_actions_per_hour": 30, "used": 0, "exhausted": False},
        "upstreams": [upstream(f"t{i}", 64500 + i) for i in range(1, 5)],
        "overrides": [],
    }


def _agent_status() -> dict:
    def uplink(role: str, active: bool) -> dict:
        return {"role": role, "interface": "eth0" if role == "primary" else "eth1",
                "gateway": "100.64.1.1", "gateway6": None, "state": "up", "carrier": "up",
                "rtt_ms": 0.3, "loss_ratio": 0.0, "active": active, "since": NOW - 60,
                "reason": ""}

    return {"daemon": "agent", "site": "lab", "host": "srv", "version": "0.1.0", "now": NOW,
            "mode": "on_primary", "failback": {"mode": "auto", "hold_down_s": 5.0,
                                                "primary_stable_for_s": 60.0},
            "both_down": False,
            "uplinks": [uplink("primary", True), uplink("secondary", False)], "overrides": []}


@dataclass
class FakeControl:
    statuses: dict = field(default_factory=lambda: {"controller": _controller_status(),
                                                    "agent": _agent_status()})
    withdraw_after_polls: int = 2
    refuse: set = field(default_factory=set)  # command names answered "refused"
    unreachable: set = field(default_factory=set)  # daemon names
    calls: list = field(default_factory=list)
    _draining: dict = field(default_factory=dict)  # upstream -> polls left

    def _upstream(self, name: str) -> dict:
        for u in self.statuses["controller"]["upstreams"]:
            if u["name"] == name:
                return u
        raise ActionFailed(f"controller: not_found: no upstream {name}")

    def _mode(self, name: str, mode: str) -> None:
        for a in self._upstream(name)["announcements"]:
            a["mode"] = mode
        self._upstream(name)["egress"] = mode != "withdrawn"

    def call(self, daemon: str, command: Command, args: Mapping[str, Any]) -> Any:
        self.calls.append((daemon, command.value, dict(args)))
        if daemon in self.unreachable:
            raise ActionFailed(f"{daemon}: unreachable: no such socket")
        if command.value in self.refuse:
            raise ActionFailed(f"{daemon}: refused: {command.value} would break the interlock")
        if command is Command.STATUS:
            for name in list(self._draining):
                self._draining[name] -= 1
                if self._draining[name] <= 0:
                    self._mode(name, "withdrawn")
                    del self._draining[name]
            return copy.deepcopy(self.statuses[daemon])
        if command is Command.DRAIN:
            self._mode(args["upstream"], "graceful_shutdown")
            self._draining[args["upstream"]] = self.withdraw_after_polls
            return {"lease": {"id": "c1", "expires_at": NOW + 3600}, "replaced": [],
                    "removed": [], "message": f"draining {args['upstream']}"}
        if command is Command.RESTORE:
            self._draining.pop(args["upstream"], None)
            self._mode(args["upstream"], "normal")
            return {"lease": None, "replaced": [], "removed": [{"id": "c1"}],
                    "message": f"restored {args['upstream']}"}
        if command is Command.FAILOVER:
            for u in self.statuses["agent"]["uplinks"]:
                u["active"] = args["to"] in (u["role"], "auto") and (
                    args["to"] != "auto" or u["role"] == "primary")
            return {"lease": {"id": "a1", "expires_at": NOW + 3600}, "replaced": [],
                    "removed": [], "message": f"failover to {args['to']}"}
        return {"lease": None, "replaced": [], "removed": [], "message": "done"}

    def commands(self) -> list[str]:
        return [c for _, c, _ in self.calls if c != "status"]


@dataclass
class FakeSession:
    name: str
    devices: FakeDevices

    def _out(self, line: str) -> str:
        self.devices.sent.setdefault(self.name, []).append(line)
        return self.devices.outputs.get(line, "")

    def send_command(self, line: str, timeout_s: float) -> str:
        return self._out(line)

    def send_config(self, lines: Sequence[str], timeout_s: float) -> str:
        return "\n".join(self._out(line) or f"cfg# {line}" for line in lines)

    def commit_confirmed(self, minutes: int, timeout_s: float) -> str:
        return self._out(f"commit confirmed {minutes}") or "commit complete"

    def confirm_commit(self, timeout_s: float) -> str:
        return self._out("commit") or "commit complete"

    def close(self) -> None:
        self.devices.closed.append(self.name)


@dataclass
class FakeDevices:
    outputs: dict = field(default_factory=dict)
    sent: dict = field(default_factory=dict)
    opened: list = field(default_factory=list)
    closed: list = field(default_factory=list)
    fail_open: bool = False

    def open(self, name: str, device: Device, credentials: Credentials) -> FakeSession:
        if self.fail_open:
            raise ActionFailed(f"{name}: cannot open a session")
        self.opened.append((name, credentials))
        return FakeSession(name, self)


@dataclass
class FakeOperator:
    answers: list = field(default_factory=list)
    default: bool = False
    questions: list = field(default_factory=list)
    shown: list = field(default_factory=list)
    done: list = field(default_factory=list)  # (label, status, output)
    waits: list = field(default_factory=list)
    on_done: Any = None  # called with the label after each step

    def confirm(self, question: str) -> bool:
        self.questions.append(question)
        return self.answers.pop(0) if self.answers else self.default

    def show(self, text: str) -> None:
        self.shown.append(text)

    def step_started(self, label: str, total: int, name: str) -> None:
        pass

    def waiting(self, label: str, elapsed_s: float, limit_s: float, observed: str) -> None:
        self.waits.append((label, elapsed_s, observed))

    def step_done(self, label, name, status, elapsed_s, output) -> None:
        self.done.append((label, status, output))
        if self.on_done is not None:
            self.on_done(label)


@dataclass
class RecordingTrail:
    records: list = field(default_factory=list)

    def record(self, kind: str, **fields: Any) -> dict:
        self.records.append((kind, fields))
        return {"kind": kind, **fields}

    def kinds(self) -> list[str]:
        return [kind for kind, _ in self.records]


class StopAt:
    """A stop signal set by hand (`set()`) or after the step `after` finished."""

    def __init__(self) -> None:
        self.flag = False
        self.after: str | None = None

    def is_set(self) -> bool:
        return self.flag

    def set(self) -> None:
        self.flag = True


@pytest.fixture
def controller_status() -> dict:
    """A controller's status: t1..t4 healthy, both prefixes announced normally to each."""
    return _controller_status()


@pytest.fixture
def agent_status() -> dict:
    """An agent's status: both uplinks up, the primary active."""
    return _agent_status()


@pytest.fixture
def shipped() -> Path:
    return REPO / "playbooks"


@pytest.fixture
def write_playbook(tmp_path):
    def write(text: str, name: str | None = None) -> Path:
        stem = name
        if stem is None:
            for line in text.splitlines():
                if line.startswith("name:"):
                    stem = line.split(":", 1)[1].strip()
                    break
        path = tmp_path / f"{stem or 'playbook'}.yaml"
        path.write_text(text)
        return path

    return write


@pytest.fixture
def control() -> FakeControl:
    return FakeControl()


@pytest.fixture
def devices() -> FakeDevices:
    return FakeDevices()


@pytest.fixture
def operator() -> FakeOperator:
    return FakeOperator()


@pytest.fixture
def trail() -> RecordingTrail:
    return RecordingTrail()


@pytest.fixture
def stop(operator) -> StopAt:
    signal = StopAt()
    operator.on_done = lambda label: signal.set() if label == signal.after else None
    return signal


class FakeDiagnoser:
    def __init__(self) -> None:
        self.asked: list = []

    def diagnose(self, upstream: str, compare: str | None, targets: int) -> str:
        self.asked.append((upstream, compare, targets))
        return f"Verdict: through {upstream}, traffic stops after hop 1"


@pytest.fixture
def make_runner(control, devices, operator, trail, stop, clock):
    def sleep(seconds: float) -> None:
        clock.now += seconds

    def make(plan, **overrides) -> Runner:
        kwargs = dict(
            control=control, devices=devices, diagnoser=FakeDiagnoser(), operator=operator,
            trail=trail, stop=stop, run_id="r1", who={"uid": 0, "user": "root"},
            clock=clock, sleep=sleep,
            read_credentials=lambda device: Credentials(device.username, None, "/key"),
        )
        kwargs.update(overrides)
        return Runner(plan, **kwargs)

    return make


@pytest.fixture
def netwatch(tmp_path):
    def run(*argv: str, input: str | None = None, env: dict | None = None,
            timeout_s: float = 60.0) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "netwatch.cli", *argv], capture_output=True, text=True,
            input=input if input is not None else "", timeout=timeout_s, cwd=tmp_path,
            env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
        )

    return run


class _Handler:
    """A daemon's control-API handler in front of a FakeControl."""

    def __init__(self, fake: FakeControl, daemon: str):
        self.fake = fake
        self.daemon = daemon

    async def handle(self, request, peer):
        from netwatch.control.protocol import NotFound, Refused

        try:
            return self.fake.call(self.daemon, request.cmd, request.args)
        except ActionFailed as exc:
            if "refused" in str(exc):
                raise Refused(str(exc)) from None
            raise NotFound(str(exc)) from None


@pytest.fixture
def control_server():
    """`control_server(fake, daemon="controller")` -> (socket path, audit log path): the real
    ControlServer (netwatch.control.server) on a Unix socket in a short /tmp directory, its
    handler answering from `fake`; stopped and removed after the test."""
    import asyncio
    import shutil
    import tempfile
    import threading

    from netwatch.control.audit import AuditLog
    from netwatch.control.server import ControlServer

    started = []

    def start(fake: FakeControl, daemon: str = "controller") -> tuple[Path, Path]:
        directory = Path(tempfile.mkdtemp(prefix="nwpb-", dir="/tmp"))
        audit = AuditLog(directory / f"audit-{daemon}.jsonl")
        server = ControlServer(directory / f"{daemon}.sock", daemon, _Handler(fake, daemon),
                               audit=audit)
        loop = asyncio.new_event_loop()
        loop.run_until_complete(server.start())
        thread = threading.Thread(target=loop.run_forever, daemon=True)
        thread.start()
        started.append((server, loop, thread, audit, directory))
        return directory / f"{daemon}.sock", audit.path

    yield start
    for server, loop, thread, audit, directory in started:
        asyncio.run_coroutine_threadsafe(server.close(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()
        audit.close()
        shutil.rmtree(directory, ignore_errors=True)
