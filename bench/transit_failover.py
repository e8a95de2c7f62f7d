"""Benchmark: how fast a quiet transit failure is acted on at the peer, in a private lab.

Prints and writes bench/results/transit_failover.json: median seconds from `transit-blackhole`
(and from `loss 30`) to the affected transit's BIRD showing the action (birdc polled at
20 Hz) over --runs runs, the lab's BGP hold time as the baseline, the controller's CPU time and
RSS. `--soak` adds 5 minutes of 2 % random loss on every transit, counting false actions.
`--scale 1000,10000` measures the controller's bulk path with that many extra /28s from
100.100.0.0/14 (lab-only): the lab's site file gets the prefixes, the controller is killed and
ExaBGP respawns it, which announces them (start log line -> t2's BIRD counts them all from
its edge4 session); then `transit-blackhole t2` -> t2's BIRD counts none (from the fault and
from the controller's transition log line), and heal -> all back after the recovery hold.
Always (goal 0): "prefix missing at a transit during an ExaBGP restart": ExaBGP stopped as the
systemd unit stops it (SIGTERM), started again --restart-gap seconds later, every transit's
BIRD polled every 50 ms from before the stop until 2 s after the last End-of-RIB arrived; the
longest any of our prefixes was missing at any transit.
"""

from __future__ import annotations

import argparse
import io
import ipaddress
import itertools
import json
import os
import re
import secrets
import signal
import statistics
import subprocess
import time
from pathlib import Path

from netwatch.config import load_site
from netwatch.lab import faults
from netwatch.lab import lifecycle as lab_module

PREFIX4 = "198.51.100.0/24"


def as_path(lab, node: str) -> str | None:
    try:
        text = lab.birdc(node, f"show route {PREFIX4} all")
    except subprocess.CalledProcessError:
        return None  # birdc exits 1 on "Network not found"
    m = re.search(r"BGP\.as_path:\s*(.*)$", text, re.M)
    return m.group(1).strip() if m else None


def until(predicate, timeout_s: float, hz: float = 20.0) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if predicate():
            return time.monotonic() - start
        time.sleep(1 / hz)
    raise TimeoutError(f"not reached within {timeout_s} s")


def controller_pid(lab) -> int | None:
    """The API process ExaBGP of this lab runs (its child), not another lab's."""
    exabgp = lab.pidfile("exabgp").read_text().strip()
    out = subprocess.run(["pgrep", "-P", exabgp, "-f", "controller"], capture_output=True,
                         text=True).stdout.split()
    return int(out[0]) if out else None


def edge_routes(lab, node: str) -> int:
    """How many IPv4 routes `node`'s BIRD holds from its session with edge."""
    text = lab.birdc(node, "show route protocol edge4 count")
    m = re.search(r"(\d+) of \d+ routes", text)
    return int(m.group(1)) if m else 0


def log_ts(lab, event: str, since: int, *words: str) -> float | None:
    """Wall-clock ts of the first controller log line after byte `since` with `event=EVENT`
    and every one of `words`."""
    text = (Path(lab.run_dir) / "exabgp.out").read_bytes()[since:].decode("utf-8", "replace")
    for line in text.splitlines():
        if f"event={event}" in line and all(w in line for w in words):
            m = re.match(r"ts=([\d.]+)", line)
            if m:
                return float(m.group(1))
    return None


def scale(lab, counts: list[int]) -> dict:
    """Announce, withdraw (blackhole t2) and re-announce `count` extra prefixes; seconds."""
    import yaml

    out: dict = {}
    site_file = Path(lab.site_file)
    raw = yaml.safe_load(site_file.read_text())
    base = list(raw["prefixes"])
    pool = ipaddress.ip_network("100.100.0.0/14").subnets(new_prefix=28)
    extra: list[str] = []
    logfile = Path(lab.run_dir) / "exabgp.out"
    for count in sorted(counts):
        extra += [str(n) for n in itertools.islice(pool, count - len(extra))]
        raw["prefixes"] = base + extra
        site_file.write_text(yaml.safe_dump(raw, sort_keys=False))
        want = count + sum(1 for p in base if ":" not in p)
        mark = logfile.stat().st_size
        pid = controller_pid(lab)
        killed = time.time()
        os.kill(pid, signal.SIGTERM)  # ExaBGP respawns it with the new site file
        until(lambda w=want: edge_routes(lab, "t2") >= w, 120, hz=5)
        seen = time.time()
        started = log_ts(lab, "start", mark) or killed
        r = {"announce_from_start_s": seen - started, "announce_from_kill_s": seen - killed}
        until(lambda w=want: all(edge_routes(lab, t) >= w for t in ("t1", "t3", "t4")), 120, 5)
        time.sleep(3)  # the respawned controller's first window
        mark = logfile.stat().st_size
        fault = time.time()
        faults.apply(lab, "transit-blackhole", "t2")
        until(lambda: edge_routes(lab, "t2") == 0, 120, hz=10)
        gone = time.time()
        decided = log_ts(lab, "transition", mark, "upstream=t2", "new=failed") or fault
        r["withdraw_from_fault_s"] = gone - fault
        r["withdraw_from_decision_s"] = gone - decided
        mark = logfile.stat().st_size
        faults.heal(lab)
        until(lambda w=want: edge_routes(lab, "t2") >= w, 120, hz=5)
        back = time.time()
        healed = log_ts(lab, "transition", mark, "upstream=t2", "new=healthy") or back
        r["reannounce_from_decision_s"] = back - healed
        out[str(count)] = r
        print(f"scale {count}: " + ", ".join(f"{k} {v:.2f}" for k, v in r.items()), flush=True)
    return out


def restart(lab, gap_s: float) -> dict:
    """Restart ExaBGP like the systemd unit does and watch our prefixes at every transit."""
    from netwatch.lab.watch import RouteWatch, graceful_restart_pending

    transits = ("t1", "t2", "t3", "t4")
    with RouteWatch(lab) as watch:
        time.sleep(0.3)
        stopped = lab_module.restart_exabgp(lab, gap_s=gap_s)
        started = time.monotonic()
        try:
            until(lambda: not any(graceful_restart_pending(lab, t) for t in transits), 130, 10)
            eor_s = round(time.monotonic() - started, 2)
        except TimeoutError:
            eor_s = None  # the peers waited out the restart time: no End-of-RIB came
        time.sleep(2)
    return {
        "gap_s": gap_s,
        "stop_s": stopped["stop_s"],
        "eor_after_start_s": eor_s,
        "polls": sum(watch.polls(t) for t in transits),
        "missing_ms": {t: {p: round(v * 1000) for p, v in watch.missing_s(t).items()}
                       for t in transits},
        "prefix_missing_ms": round(watch.worst_missing_s() * 1000),
    }


def cpu_rss(pid: int) -> tuple[float, int]:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu_s = (int(fields[11]) + int(fields[12])) / ticks
    rss = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
    return cpu_s, rss


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--soak", action="store_true")
    parser.add_argument("--scale", default="", help="extra prefix counts, e.g. 1000,10000")
    parser.add_argument("--no-failover", action="store_true", help="skip the failover runs")
    parser.add_argument("--restart-gap", type=float, default=2.0,
                        help="seconds between ExaBGP's stop and start (default 2)")
    args = parser.parse_args()
    name = "bench" + secrets.token_hex(2)
    results: dict = {}
    lab = lab_module.up(name, lab_module.DEFAULT_CONFIG, out=io.StringIO())
    try:
        site = load_site(lab.site_file)
        results["bgp_hold_time_s"] = site.controller.bgp.hold_time_s
        normal = str(site.asn)
        until(lambda: all(as_path(lab, t) == normal for t in ("t1", "t2", "t3", "t4")), 30)
        pid = controller_pid(lab)
        cpu0, _ = cpu_rss(pid) if pid else (0.0, 0)
        wall0 = time.monotonic()
        for kind, opts, done in (
            ("transit-blackhole", (), lambda: as_path(lab, "t2") is None),
            ("loss", ("30",), lambda: as_path(lab, "t2") not in (None, normal)),
        ):
            if args.no_failover:
                break
            times = []
            for _ in range(args.runs):
                faults.apply(lab, kind, "t2", *opts)
                times.append(until(done, 30))
                faults.heal(lab)
                until(lambda: as_path(lab, "t2") == normal, 60)
            results[f"{kind}_to_action_s"] = {"median": statistics.median(times), "runs": times}
            print(f"{kind}: median {statistics.median(times):.2f} s over {len(times)} runs "
                  f"{[round(t, 2) for t in times]}", flush=True)
        if args.soak:
            log = Path(lab.run_dir) / "exabgp.out"
            before = log.read_text().count("event=transition")
            for t in ("t1", "t2", "t3", "t4"):
                faults.apply(lab, "loss", t, "2")
            time.sleep(300)
            faults.heal(lab)
            results["soak_false_actions"] = log.read_text().count("event=transition") - before
            print(f"soak: {results['soak_false_actions']} false actions in 5 minutes")
        if pid:
            cpu1, rss = cpu_rss(pid)
            results["controller_cpu_ratio"] = (cpu1 - cpu0) / (time.monotonic() - wall0)
            results["controller_rss_bytes"] = rss
        print(f"BGP hold time (baseline for a loud failure): {results['bgp_hold_time_s']} s")
        print(f"controller CPU {results.get('controller_cpu_ratio', 0):.1%} of a core, "
              f"RSS {results.get('controller_rss_bytes', 0) / 2**20:.1f} MiB")
        results["exabgp_restart"] = r = restart(lab, args.restart_gap)
        print(f"prefix missing at a transit during an ExaBGP restart: {r['prefix_missing_ms']} ms"
              f" (goal 0; SIGTERM, {r['gap_s']:g} s gap, {r['polls']} polls at 20 Hz over 4 "
              f"transits, End-of-RIB {r['eor_after_start_s']} s after the start)", flush=True)
        if args.scale:
            results["scale"] = scale(lab, [int(c) for c in args.scale.split(",")])
    finally:
        lab_module.down(name, quiet=True)
    out = Path(__file__).parent / "results" / "transit_failover.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
