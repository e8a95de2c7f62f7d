"""Benchmark: how long `netwatch lab up` takes to build the whole lab and see it converge.

Brings up and tears down a private lab (`nw-lbNNNN-*`) --runs times and prints the seconds
from the command's start to "every BGP session Established and every transit holds both
prefixes", measured around the real CLI (Python start included), plus `lab down`. Writes
bench/results/lab_up.json. Target (issue 3): under 15 s on a 2-core machine. Needs root.
"""

from __future__ import annotations

import argparse
import json
import secrets
import statistics
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def timed(argv: list[str]) -> float:
    started = time.monotonic()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
    return time.monotonic() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    netwatch = [sys.executable, "-m", "netwatch.cli", "lab"]
    ups, downs = [], []
    for _ in range(args.runs):
        name = "lb" + secrets.token_hex(3)
        try:
            ups.append(timed([*netwatch, "up", "--name", name]))
        finally:
            downs.append(timed([*netwatch, "down", "--name", name]))
    figures = {
        "runs": args.runs,
        "lab_up_s": {"median": statistics.median(ups), "max": max(ups), "all": ups},
        "lab_down_s": {"median": statistics.median(downs), "max": max(downs), "all": downs},
        "target_up_s": 15.0,
    }
    print(f"lab up   median {figures['lab_up_s']['median']:.2f} s  max {max(ups):.2f} s")
    print(f"lab down median {figures['lab_down_s']['median']:.2f} s  max {max(downs):.2f} s")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "lab_up.json").write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
