"""A short chaos soak (bench/chaos.py, 60 s, a fixed seed) in a lab of its own: random faults
of every kind and kills of every daemon, the invariants watched from outside at 10 Hz.
The 30-minute run is the benchmark's (figures in docs/design.md)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "chaos.py"


def test_a_short_chaos_soak_breaks_no_invariant(tmp_path):
    out = tmp_path / "chaos.json"
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--minutes", "1", "--fault-every-s", "2.5", "--seed", "11",
         "--json", str(out)],
        capture_output=True, text=True, timeout=400,
    )
    assert out.exists(), proc.stdout[-2000:] + proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["violations_total"] == 0, result["first_violations"]
    # The observer really judged (sessions were up and read) and the chaos really happened.
    assert result["samples_judged"].get("ipv4", 0) > 400, result["samples_judged"]
    assert result["samples_judged"].get("ipv6", 0) > 400, result["samples_judged"]
    assert result["actions_total"] >= 15, result["actions"]
    assert proc.returncode == 0, proc.stderr[-2000:]
