"""drain-upstream and restore-upstream against the lab's real controller, through its control
socket: t1's BIRD stops holding our prefixes, then holds them again. Skipped, saying why,
while the lab's controller serves no control API."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from netwatch.config import load_site
from netwatch.control.client import DaemonUnreachable
from netwatch.control.client import request as ask
from netwatch.control.protocol import Command, ControlError

REPO = Path(__file__).resolve().parents[2]


def playbook(lab, name: str, *params: str, trail: Path) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "netwatch.cli", "playbook", "run", name, "--yes",
            "--config", str(lab.site_file), "--trail", str(trail)]
    for param in params:
        argv += ["--param", param]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=REPO,
                          env=dict(os.environ))


def test_drain_then_restore_t1(lab, held, eventually, tmp_path, request):
    socket_path = load_site(lab.site_file).control.controller
    try:
        ask(socket_path, Command.STATUS, None, timeout_s=2.0)
    except (DaemonUnreachable, ControlError) as exc:
        pytest.skip(f"the lab's controller does not answer on {socket_path}: {exc}")
    request.getfixturevalue("announced")  # every transit holds our prefixes, before and after
    trail = tmp_path / "trail.jsonl"
    started = time.monotonic()
    done = playbook(lab, "drain-upstream", "upstream=t1", "reason=lab drain test",
                    "graceful_s=2s", "lease=10m", trail=trail)
    drained_s = time.monotonic() - started
    assert done.returncode == 0, done.stdout + done.stderr
    assert held("t1") == {}, held("t1")  # t1's BIRD holds none of our prefixes
    records = [json.loads(line) for line in trail.read_text().splitlines()]
    assert records[-1]["outcome"] == "completed"

    done = playbook(lab, "restore-upstream", "upstream=t1", "reason=lab drain test done",
                    trail=trail)
    assert done.returncode == 0, done.stdout + done.stderr
    eventually(lambda: len(held("t1")) == 2, 30, "t1 holds both prefixes again")
    assert drained_s < 60, f"drain-upstream took {drained_s:.1f} s"
