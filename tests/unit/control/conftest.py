"""Fixtures for the control API's tests: a real server on a real Unix socket, a fake daemon
behind it, and the status a daemon would send.

- `ctl_dir`: a short directory under /tmp (a socket path has at most 107 bytes) that other
  users may traverse (0711), so a permission test is refused by the socket, not the path;
- `FakeHandler`: a daemon's handler, plugged in as a daemon would: answers status from
  `statuses`, keeps its overrides with a real LeaseKeeper (state in `state_dir`, clock
  `now`), refuses a drain of an upstream in `interlocked` unless forced (the check a
  controller makes), and records every (request, peer) it was given;
- `serve(handler=None, daemon="agent", **server_kwargs)` -> Running: a ControlServer on its own
  event loop in a thread (`.path`, `.server`, `.audit`, `.handler`, `.run(coro)`); every one is
  closed after the test;
- `agent_status`, `controller_status`: the status shapes of netwatch.control.protocol, filled
  in as a lab would;
- `netwatch(*argv, user=None)` -> CompletedProcess: the CLI as a subprocess (`user`: a uid to
  run it as);
- `as_user(uid, gid, fn)` -> fn's result: `fn()` in a forked child that has dropped to `uid`
  and `gid` (no supplementary groups); its exception, if any, comes back as ("raised", type
  name, message).
"""

from __future__ import annotations

import asyncio
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from netwatch.control.audit import AuditLog
from netwatch.control.keeper import LeaseKeeper
from netwatch.control.leases import LeaseBook, LeaseKind
from netwatch.control.protocol import (
    Command,
    Peer,
    Refused,
    Request,
)
from netwatch.control.server import ControlServer, Limits
from netwatch.control.store import LeaseStore

REPO = Path(__file__).resolve().parents[3]
NOBODY = 65534


@dataclass
class FakeHandler:
    state_dir: Path
    daemon: str = "agent"
    audit: AuditLog | None = None
    statuses: dict = field(default_factory=dict)
    now: float = 1_800_000_000.0
    interlocked: frozenset = frozenset()
    upstreams: tuple = ("t1", "t2", "t3", "t4")
    seen: list = field(default_factory=list)
    delay_s: float = 0.0

    def __post_init__(self):
        # The way a daemon keeps its overrides: a LeaseKeeper on its state_dir.
        self.keeper = LeaseKeeper(LeaseStore(self.state_dir, self.daemon), self.audit,
                                  clock=lambda: self.now)

    @property
    def book(self) -> LeaseBook:
        return self.keeper.book

    async def handle(self, request: Request, peer: Peer):
        self.seen.append((request, peer))
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if request.cmd is Command.STATUS:
            status = self.statuses.get(self.daemon, {"daemon": self.daemon})
            return {**status, "overrides": self.keeper.live()}
        if request.cmd is Command.OVERRIDES:
            return self.keeper.listing()
        upstreams = self.upstreams if self.daemon == "controller" else None
        return self.keeper.apply(request, peer, upstreams=upstreams,
                                 check=self._interlock).to_json()

    def _interlock(self, change) -> None:
        lease = change.lease
        if (lease is not None and lease.kind is LeaseKind.DRAIN
                and lease.target in self.interlocked and not lease.forced):
            raise Refused(f"draining {lease.target} would leave ipv4 announced to "
                          "1 upstream (min_announcing_upstreams 2); --force to override")


@dataclass
class Running:
    server: ControlServer
    handler: FakeHandler
    audit: AuditLog | None
    loop: asyncio.AbstractEventLoop

    @property
    def path(self) -> str:
        return str(self.server.path)

    def run(self, coro, timeout_s: float = 10.0):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    def connections(self) -> int:
        async def count():
            return self.server.connections

        return self.run(count())


@pytest.fixture
def ctl_dir():
    path = Path(tempfile.mkdtemp(prefix="nwc-", dir="/tmp"))
    path.chmod(0o711)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def serve(ctl_dir):
    started: list[tuple[Running, threading.Thread]] = []

    def start(handler: FakeHandler | None = None, daemon: str | None = None, *,
              audit: bool = True, limits: Limits | None = None, **kwargs) -> Running:
        daemon = daemon or getattr(handler, "daemon", "agent")
        log = AuditLog(ctl_dir / f"audit-{daemon}.jsonl") if audit else None
        handler = handler or FakeHandler(ctl_dir / f"state-{daemon}", daemon, log)
        loop = asyncio.new_event_loop()
        server = ControlServer(ctl_dir / f"{daemon}.sock", daemon, handler, audit=log,
                               limits=limits or Limits(idle_timeout_s=2.0, write_timeout_s=2.0),
                               **kwargs)
        loop.run_until_complete(server.start())
        thread = threading.Thread(target=loop.run_forever, daemon=True)
        thread.start()
        running = Running(server, handler, log, loop)
        started.append((running, thread))
        return running

    yield start
    for running, thread in started:
        running.run(running.server.close())
        running.loop.call_soon_threadsafe(running.loop.stop)
        thread.join(5)
        running.loop.close()
        if running.audit is not None:
            running.audit.close()


@pytest.fixture
def agent_status() -> dict:
    now = 1_800_000_000.0
    return {
        "daemon": "agent", "site": "lab", "host": "srv", "version": "0.1.0", "now": now,
        "mode": "on_secondary",
        "failback": {"mode": "auto", "hold_down_s": 5.0, "primary_stable_for_s": None},
        "both_down": False,
        "uplinks": [
            {"role": "primary", "interface": "eth0", "gateway": "100.64.1.1",
             "gateway6": "fe80::1", "state": "down", "carrier": "up", "rtt_ms": None,
             "loss_ratio": 1.0, "active": False, "since": now - 192,
             "reason": "gateway 100.64.1.1 silent"},
            {"role": "secondary", "interface": "eth1", "gateway": "100.64.2.1",
             "gateway6": "fe80::1", "state": "up", "carrier": "up", "rtt_ms": 0.31,
             "loss_ratio": 0.0, "active": True, "since": now - 3720, "reason": ""},
        ],
        "overrides": [],
    }


@pytest.fixture
def controller_status() -> dict:
    now = 1_800_000_000.0

    def ann(mode, path=()):
        return [
            {"prefix": "198.51.100.0/24", "family": "ipv4", "mode": mode,
             "as_path": list(path), "communities": []},
            {"prefix": "2001:db8:100::/48", "family": "ipv6", "mode": mode,
             "as_path": list(path), "communities": []},
        ]

    def up(name, asn, state, loss, rtt, mode, path=(), **extra):
        return {"name": name, "asn": asn, "state": state, "since": now - 600, "reason": "",
                "loss_ratio": loss, "median_loss_ratio": 0.0, "rtt_ms": rtt,
                "median_rtt_ms": 12.0, "sessions": {"ipv4": "up", "ipv6": "up"},
                "announcements": ann(mode, path), "egress": state == "healthy",
                "recovery": None, "drain": None, **extra}

    return {
        "daemon": "controller", "site": "lab", "host": "edge", "version": "0.1.0", "now": now,
        "local_fault": False,
        "safety_holds": [{"family": "ipv4", "kept": ["t3"]}],
        "budget": {"max_actions_per_hour": 30, "used": 2, "exhausted": False},
        "upstreams": [
            up("t1", 64501, "healthy", 0.0, 12.1, "normal"),
            up("t2", 64502, "failed", 1.0, None, "withdrawn",
               recovery={"towards": "healthy", "hold_s": 10.0, "left_s": 250.0}),
            up("t3", 64503, "degraded", 0.3, 95.0, "prepend", (64500, 64500, 64500, 64500)),
            up("t4", 64504, "healthy", 0.0, 11.8, "graceful_shutdown",
               drain={"stage": "graceful", "withdraw_at": now + 20}),
        ],
        "overrides": [],
    }


@pytest.fixture
def netwatch():
    def run(*argv: str, user: int | None = None, timeout_s: float = 30.0):
        kwargs = {}
        if user is not None:
            kwargs = {"user": user, "group": user, "extra_groups": []}
        return subprocess.run(
            [sys.executable, "-m", "netwatch.cli", *argv], capture_output=True, text=True,
            timeout=timeout_s, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, **kwargs,
        )

    return run


@pytest.fixture
def as_user():
    def run(uid: int, gid: int, fn):
        reader, writer = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: drop privileges, run, report, never return into pytest
            code = 0
            try:
                os.close(reader)
                os.setgroups([])
                os.setgid(gid)
                os.setuid(uid)
                try:
                    outcome = ("returned", fn())
                except Exception as exc:
                    outcome = ("raised", type(exc).__name__, str(exc))
                os.write(writer, pickle.dumps(outcome))
            except BaseException:
                code = 1
            finally:
                os._exit(code)
        os.close(writer)
        with os.fdopen(reader, "rb") as pipe:
            data = pipe.read()
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0 and data, "the child failed"
        outcome = pickle.loads(data)
        return outcome[1] if outcome[0] == "returned" else outcome

    return run
