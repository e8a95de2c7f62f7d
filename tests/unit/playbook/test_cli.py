"""`netwatch playbook` as an operator meets it: a subprocess with its exit codes, its
questions on stdin, Ctrl-C, and a run through the real control API socket."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_validate_every_shipped_playbook(netwatch):
    done = netwatch("playbook", "validate")
    assert done.returncode == 0, done.stderr
    assert "drain-upstream.yaml: ok (playbook drain-upstream, 7 step(s)" in done.stdout
    assert "inventory.example.yaml: ok (inventory, 3 device(s))" in done.stdout


def test_validate_prints_every_problem_and_exits_65(netwatch, write_playbook, tmp_path):
    bad = write_playbook("name: bad\ndescription: d\nsteps:\n  - wait: {for: soon}\n"
                         "  - note: '{{ who }}'\n")
    done = netwatch("playbook", "validate", str(bad), str(tmp_path / "missing.yaml"))
    assert done.returncode == 66  # the worst: a missing file (as `config validate` does)
    assert done.stderr.splitlines() == [
        f"{bad}:5: steps[1].note: {{{{ who }}}}: no such parameter (no params declared)",
        f"{bad}:4: steps[0].wait.for: 'soon' is not a duration (e.g. 90, 30s, 5m, 1h, 2d, 1h30m)",
        f"{tmp_path / 'missing.yaml'}: no such file",
    ]
    assert netwatch("playbook", "validate", str(bad)).returncode == 65


def test_list_and_show(netwatch):
    listing = netwatch("playbook", "list")
    assert listing.returncode == 0
    assert "drain-upstream" in listing.stdout and "params: upstream reason graceful_s? lease?" \
        in listing.stdout
    assert "upstream-failed" in listing.stdout  # the runbooks too
    show = netwatch("playbook", "show", "drain-upstream")
    assert show.returncode == 0
    assert "  upstream (upstream, required): the transit to drain" in show.stdout
    assert "  lease (duration, default 4h)" in show.stdout
    assert "   R1. [netwatch] Restore {{ upstream }} (announce again at once)" in show.stdout


def test_wrong_invocations_exit_with_their_codes(netwatch):
    missing = netwatch("playbook", "run", "drain-upstrem", "--dry-run")
    assert missing.returncode == 66
    assert "no playbook 'drain-upstrem'" in missing.stderr and "drain-upstream" in missing.stderr
    bad = netwatch("playbook", "run", "drain-upstream", "--dry-run", "-p", "upstream=T1",
                   "-p", "reason=x", "-p", "nonsense")
    assert bad.returncode == 64
    assert "--param 'nonsense': expected KEY=VALUE" in bad.stderr
    bad = netwatch("playbook", "run", "drain-upstream", "--dry-run", "-p", "upstream=T1")
    assert bad.returncode == 64
    assert bad.stderr.splitlines() == [
        "netwatch playbook run drain-upstream: --param upstream: 'T1' is not a valid name "
        "(lower-case letters, digits, - and _; 1-32)",
        "netwatch playbook run drain-upstream: --param reason: required (string: why (a change "
        "ticket and a sentence))",
    ]


def test_run_asks_first_and_does_nothing_when_declined(netwatch, tmp_path):
    trail = tmp_path / "trail.jsonl"
    done = netwatch("playbook", "run", "restore-upstream", "-p", "upstream=t1", "-p",
                    "reason=r", "--socket", str(tmp_path / "none.sock"), "--trail", str(trail),
                    input="n\n")
    assert done.returncode == 1
    assert "Run playbook restore-upstream now? [y/N] n\nnot run" in done.stdout
    assert not trail.exists()


CTRL_C = """\
name: slow
description: a long wait between two notes
steps:
  - note: before
  - wait: {for: 1h}
  - note: after
rollback:
  - note: undone
"""


def test_ctrl_c_stops_a_wait_and_offers_the_rollback(write_playbook, tmp_path):
    path = write_playbook(CTRL_C)
    trail = tmp_path / "trail.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-m", "netwatch.cli", "playbook", "run", str(path), "--yes",
         "--trail", str(trail)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, cwd=REPO,
    )
    try:
        lines = []
        while "[2/3] wait 1h00m" not in "".join(lines):
            line = proc.stdout.readline()
            assert line, f"the run ended early: {''.join(lines)} {proc.stderr.read()}"
            lines.append(line)
        started = time.monotonic()
        time.sleep(0.3)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate("y\n", timeout=20)
    finally:
        proc.kill()
    out = "".join(lines) + out
    assert time.monotonic() - started < 5
    assert proc.returncode == 1, err
    assert "Ctrl-C: stopping after this step" in out
    assert "INTERRUPTED after" in out
    assert "stopped at step 2 (Ctrl-C)" in out
    assert "Run the rollback steps now (note)? [y/N]" in out
    assert "[R1] note" in out and "| undone" in out
    assert "| after" not in out  # step 3 never ran
    kinds = [r["kind"] for r in records(trail)]
    assert kinds == ["playbook_start", "step", "step", "playbook_stopped", "rollback_start",
                     "rollback_step", "rollback_end", "playbook_end"]
    assert records(trail)[-1]["outcome"] == "rolled back"


def test_drain_upstream_through_the_real_control_api(netwatch, control, control_server,
                                                     tmp_path):
    control.withdraw_after_polls = 1  # withdrawn at the wait's first poll: no 2 s sleep
    socket_path, daemon_audit = control_server(control)
    trail = tmp_path / "trail.jsonl"
    done = netwatch("playbook", "run", "drain-upstream", "--yes", "--socket", str(socket_path),
                    "--trail", str(trail), "-p", "upstream=t1", "-p", "reason=CHG-42 upgrade",
                    "-p", "graceful_s=5s")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "[3/7] Drain t1: GRACEFUL_SHUTDOWN first, withdraw when graceful_s is over" in \
        done.stdout
    assert "playbook drain-upstream: completed in" in done.stdout
    assert control.calls[2] == ("controller", "drain", {
        "upstream": "t1", "reason": "playbook drain-upstream: CHG-42 upgrade",
        "for_s": 14400.0, "graceful_s": 5.0, "force": False})
    ours = records(trail)
    assert [r["kind"] for r in ours] == ["playbook_start"] + ["step"] * 7 + ["playbook_end"]
    assert ours[0]["params"]["reason"] == "CHG-42 upgrade" and ours[0]["who"]["uid"] == 0
    assert ours[-1]["outcome"] == "completed"
    theirs = [r for r in records(daemon_audit) if r["kind"] == "request"]
    assert [r["cmd"] for r in theirs] == ["drain"]  # the daemon's own audit log has it too
    assert theirs[0]["reason"] == "playbook drain-upstream: CHG-42 upgrade"


def test_a_refused_drain_fails_the_run(netwatch, control, control_server, tmp_path):
    control.refuse = {"drain"}
    socket_path, _ = control_server(control)
    done = netwatch("playbook", "run", "drain-upstream", "--yes", "--socket", str(socket_path),
                    "--trail", str(tmp_path / "t.jsonl"), "-p", "upstream=t1", "-p", "reason=x")
    assert done.returncode == 1
    assert "controller: refused: controller: refused: drain would break the interlock" in \
        done.stdout
    assert "playbook drain-upstream: failed" in done.stdout
