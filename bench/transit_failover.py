"""Benchmark: how fast a quiet transit failure is acted on at the peer, in a private lab.

Prints and writes bench/results/transit_failover.json: median seconds from `transit-blackhole`
(and from `loss 30`) to the affected transit's BIRD showing the action (birdc polled at
20 Hz) over --runs runs, the lab's BGP hold time as the baseline, the controller's CPU (for
STEADY_S of probing on a quiet border, the issue's figure, and through the failover runs) and
RSS, each beside the previous run's figure (read from the results file before it is
overwritten). `--noise` (alias `--soak`) adds 5 minutes of 2 % random loss (each way) on every
transit, counting false actions: any state change of an upstream or any announcement or
withdrawal written to ExaBGP meanwhile (goal 0).
`--scale 1000,10000` measures the controller's bulk path with that many extra /28s from
100.100.0.0/14 (lab-only): the lab's site file gets the prefixes, the controller is killed and
ExaBGP respawns it, which announces them (start log line -> t2's BIRD counts them all from
its edge4 session); then `transit-blackhole t2` -> t2's BIRD counts none (from the fault and
from the controller's transition log line), and heal -> all back after the recovery hold.
Always (goal 0): "prefix missing at a transit during an ExaBGP restart": ExaBGP stopped as the
systemd unit stops it (SIGTERM), started again --restart-gap seconds later, every transit's
BIRD polled every 50 ms from before the stop until 2 s after the last End-of-RIB arrived; the
longest any of our prefixes was missing at any transit.
Outbound (`--outbound-runs`, default 3): a steady stream from srv, one ICMP echo every 50 ms
to each of --flows extra addresses per family on inet's loopback (each (source, destination)
pair is one flow for edge's multipath hash), during `transit-blackhole t2`: the share of flows
lost before the controller acted (every echo lost) and after it (any echo lost from 0.2 s
after the inbound action on: goal 0), and the time from the fault to the last flow restored,
next to the inbound action (the controller's `transition` to failed, when it writes the
withdrawal) and the outbound one (its `egress` line). Goal: restored within 0.2 s of the
inbound action.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
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
import sys
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


SCALE_FIGURES = ("announce_from_start_s", "announce_all_from_start_s", "withdraw_from_decision_s",
                 "withdraw_from_fault_s", "reannounce_from_decision_s")


def _set_prefixes(lab, raw: dict, prefixes: list[str]) -> None:
    import yaml

    raw["prefixes"] = prefixes
    Path(lab.site_file).write_text(yaml.safe_dump(raw, sort_keys=False))


def scale_trial(lab, raw: dict, base: list[str], extra: list[str]) -> dict:
    """One trial: from a lab that announces only `base`, the controller restarted with
    `base + extra` announces them (start log line -> t2's BIRD, and all four, count them);
    `transit-blackhole t2` withdraws them (t2 counts none); heal re-announces them."""
    logfile = Path(lab.run_dir) / "exabgp.out"
    want = len(extra) + sum(1 for p in base if ":" not in p)
    _set_prefixes(lab, raw, base + extra)
    mark = logfile.stat().st_size
    killed = time.time()
    os.kill(controller_pid(lab), signal.SIGTERM)  # ExaBGP respawns it with the new site file
    until(lambda: edge_routes(lab, "t2") >= want, 120, hz=10)
    seen = time.time()
    until(lambda: all(edge_routes(lab, t) >= want for t in ("t1", "t3", "t4")), 120, 10)
    seen_all = time.time()
    started = log_time(lab, "start", mark) or killed
    r = {"announce_from_start_s": seen - started, "announce_all_from_start_s": seen_all - started,
         "announce_from_kill_s": seen - killed}
    time.sleep(3)  # the respawned controller's first window
    mark = logfile.stat().st_size
    fault = time.time()
    faults.apply(lab, "transit-blackhole", "t2")
    until(lambda: edge_routes(lab, "t2") == 0, 120, hz=20)
    gone = time.time()
    decided = log_time(lab, "transition", mark, "upstream=t2", "new=failed") or fault
    r["withdraw_from_fault_s"] = gone - fault
    r["withdraw_from_decision_s"] = gone - decided
    mark = logfile.stat().st_size
    faults.heal(lab)
    until(lambda: edge_routes(lab, "t2") >= want, 120, hz=10)
    back = time.time()
    healed = log_time(lab, "transition", mark, "upstream=t2", "new=healthy") or back
    r["reannounce_from_decision_s"] = back - healed
    return r


def scale_reset(lab, raw: dict, base: list[str]) -> None:
    """Back to `base` alone: ExaBGP restarted with it (as the systemd unit restarts it); its
    End-of-RIB makes every transit drop the extra prefixes it kept as stale."""
    _set_prefixes(lab, raw, base)
    lab_module.restart_exabgp(lab, gap_s=0.5)
    want = sum(1 for p in base if ":" not in p)
    until(lambda: all(edge_routes(lab, t) == want for t in ("t1", "t2", "t3", "t4")), 180, 5)
    time.sleep(4)  # the new controller's first window: verdicts are trusted again


def scale(lab, counts: list[int], trials: int) -> dict:
    """Per count, `trials` trials (`scale_trial`), each from a lab announcing only the site's
    own prefixes (`scale_reset`); seconds, and their medians."""
    import yaml

    out: dict = {}
    raw = yaml.safe_load(Path(lab.site_file).read_text())
    base = list(raw["prefixes"])
    pool = ipaddress.ip_network("100.100.0.0/14").subnets(new_prefix=28)
    extra: list[str] = []
    for count in sorted(counts):
        extra += [str(n) for n in itertools.islice(pool, count - len(extra))]
        runs = []
        for trial in range(trials):
            if trial:
                scale_reset(lab, raw, base)
            r = scale_trial(lab, raw, base, extra)
            runs.append(r)
            print(f"scale {count} trial {trial + 1}: "
                  + ", ".join(f"{k} {v:.2f}" for k, v in r.items()), flush=True)
        out[str(count)] = {"trials": trials, "runs": runs,
                           "median": {k: statistics.median(r[k] for r in runs)
                                      for k in runs[0]}}
        scale_reset(lab, raw, base)
    return out


def print_scale(new: dict, previous: dict | None) -> None:
    """The medians beside the previous run's (bench/results/transit_failover.json)."""
    for count, figures in new.items():
        entry = (previous or {}).get(count) or {}
        before = entry.get("median", entry)  # one run per count before medians were kept
        print(f"scale {count} (median of {figures['trials']} trials; previous run in brackets):")
        for key in SCALE_FIGURES:
            was = before.get(key)
            was_text = f"{was:.2f} s" if was is not None else "none recorded"
            print(f"  {key:28} {figures['median'][key]:6.2f} s  [{was_text}]")


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


STEADY_S = 30.0  # the controller's CPU while it probes a quiet border
STREAM_INTERVAL_S = 0.05
ECHO_TIMEOUT_S = 1.0


def stream(out: str, addresses: list[str], duration_s: float, interval_s: float) -> int:
    """The outbound stream, run inside srv's namespace by `outbound`: one ICMP echo to every
    address each `interval_s` for `duration_s` seconds; writes {address: [[sent, answered]]}
    as JSON to `out`, wall-clock times (the controller's log lines carry them too)."""
    import select
    import socket
    import struct

    ident = os.getpid() & 0xFFFF
    socks = {4: socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP),
             6: socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)}
    for sock in socks.values():
        sock.setblocking(False)

    def checksum(data: bytes) -> int:
        total = sum(struct.unpack(f"!{len(data) // 2}H", data))
        total = (total >> 16) + (total & 0xFFFF)
        return ~(total + (total >> 16)) & 0xFFFF

    def echo(version: int, seq: int) -> bytes:
        kind = 8 if version == 4 else 128  # the kernel sums ICMPv6 itself
        body = struct.pack("!HH", ident, seq) + b"netwatch"
        head = struct.pack("!BBH", kind, 0, 0)
        if version == 4:
            head = struct.pack("!BBH", kind, 0, checksum(head + body))
        return head + body

    def replies(version: int, sock):
        while True:
            try:
                data, peer = sock.recvfrom(2048)
            except BlockingIOError:
                return
            if version == 4:
                data = data[(data[0] & 0x0F) * 4:]
            if len(data) >= 8 and data[0] == (0 if version == 4 else 129):
                got_id, seq = struct.unpack("!HH", data[4:8])
                if got_id == ident:
                    yield str(ipaddress.ip_address(peer[0])), seq

    families = {a: ipaddress.ip_address(a).version for a in addresses}
    sent: dict[tuple[str, int], float] = {}
    answered: set[tuple[str, int]] = set()
    start = time.time()
    next_round, seq = start, 0
    while time.time() < start + duration_s + ECHO_TIMEOUT_S:
        now = time.time()
        if now >= next_round and now < start + duration_s:
            for address, version in families.items():
                with contextlib.suppress(OSError):  # no route: lost like a dropped one
                    socks[version].sendto(echo(version, seq), (address, 0))
                sent[(address, seq)] = time.time()
            seq = (seq + 1) & 0xFFFF
            next_round += interval_s
        readable, _, _ = select.select(list(socks.values()), [], [],
                                       max(0.0, min(next_round - time.time(), 0.05)))
        for version, sock in socks.items():
            if sock in readable:
                for key in replies(version, sock):
                    if key in sent and time.time() - sent[key] <= ECHO_TIMEOUT_S:
                        answered.add(key)
    flows: dict[str, list] = {a: [] for a in addresses}
    for (address, s), at in sorted(sent.items(), key=lambda kv: kv[1]):
        flows[address].append([at, (address, s) in answered])
    Path(out).write_text(json.dumps(flows))
    return 0


def log_time(lab, event: str, since: int, *words: str) -> float | None:
    """Wall-clock time of the first controller log line after byte `since` with `event=EVENT`
    and every one of `words` (its `ts=` is local time with milliseconds)."""
    from datetime import datetime

    text = (Path(lab.run_dir) / "exabgp.out").read_bytes()[since:].decode("utf-8", "replace")
    for line in text.splitlines():
        if f"event={event} " in line and all(w in line for w in words):
            m = re.match(r"ts=(\S+)", line)
            if m:
                return datetime.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S.%f").timestamp()
    return None


def edge_egress(lab) -> set[str]:
    """The interfaces in edge's default routes, both families."""
    devs = set()
    for family in ("-4", "-6"):
        for route in json.loads(lab.exec("edge", "ip", "-j", family, "route", "show",
                                         "default").stdout or "[]"):
            devs |= {h["dev"] for h in route.get("nexthops") or [route]}
    return devs


def flow_figures(flows: dict[str, list], fault: float, inbound: float) -> dict:
    """What the stream saw: flows broken between the fault and the inbound action (every
    echo sent from 0.3 s after the fault until then lost), flows with any echo lost from
    0.2 s after the action on, and when the last broken flow answered again."""
    broken, lost_after, restored = [], [], []
    for address, echoes in flows.items():
        before = [ok for at, ok in echoes if fault + 0.3 <= at < inbound]
        if before and not any(ok for ok in before):
            broken.append(address)
            lost = [at for at, ok in echoes if at >= fault and not ok]
            back = [at for at, ok in echoes if ok and at > max(lost)]
            restored.append(min(back) if back else float("inf"))
        if any(not ok for at, ok in echoes if at >= inbound + 0.2):
            lost_after.append(address)
    last = max(restored, default=fault)
    return {
        "flows": len(flows),
        "broken_before_action": len(broken),
        "lost_share_before_action": round(len(broken) / len(flows), 3),
        "lost_after_action": len(lost_after),
        "lost_share_after_action": round(len(lost_after) / len(flows), 3),
        "lost_after_action_flows": lost_after,
        "fault_to_last_flow_restored_s": round(last - fault, 3),
        "last_flow_restored_after_inbound_s": round(last - inbound, 3),
    }


def outbound(lab, runs: int, per_family: int) -> dict:
    """`runs` times: the stream from srv during `transit-blackhole t2` (see the module doc)."""
    addresses = ([f"203.0.113.{100 + i}" for i in range(per_family)]
                 + [f"2001:db8:203::{0x100 + i:x}" for i in range(per_family)])
    lab.exec("inet", "sh", "-c", "; ".join(
        f"ip addr add {a}/{32 if '.' in a else 128} dev lo" + ("" if "." in a else " nodad")
        for a in addresses))
    logfile = Path(lab.run_dir) / "exabgp.out"
    out: list[dict] = []
    for _ in range(runs):
        result = lab.run_dir / "outbound-stream.json"
        sender = subprocess.Popen(lab.exec_argv("srv", [
            sys.executable, str(Path(__file__).resolve()), "--stream", str(result),
            "--stream-duration", "9", *addresses]))
        time.sleep(2.0)  # the stream is steady
        mark = logfile.stat().st_size
        fault = time.time()
        faults.apply(lab, "transit-blackhole", "t2")
        if sender.wait(timeout=60) != 0:
            raise RuntimeError("the outbound stream failed")
        inbound = log_time(lab, "transition", mark, "upstream=t2", "new=failed")
        egress4 = log_time(lab, "egress", mark, "family=ipv4", "reason=plan")
        egress6 = log_time(lab, "egress", mark, "family=ipv6", "reason=plan")
        faults.heal(lab)
        # t2 back everywhere (after the recovery hold) before anything else is measured
        until(lambda: as_path(lab, "t2") == str(lab.topology().asn)
              and edge_egress(lab) == {"t1", "t2", "t3", "t4"}, 60, hz=5)
        if inbound is None:
            raise RuntimeError("the controller did not act on t2's blackhole")
        flows = json.loads(result.read_text())
        r = {"inbound_action_s": round(inbound - fault, 3),
             "outbound_action_s": {f: round(t - fault, 3) if t else None
                                   for f, t in (("ipv4", egress4), ("ipv6", egress6))}}
        r.update(flow_figures(flows, fault, inbound))
        for family, prefix in (("ipv4", "."), ("ipv6", ":")):
            mine = {a: e for a, e in flows.items() if prefix in a}
            r[family] = {k: v for k, v in flow_figures(mine, fault, inbound).items()
                         if k != "lost_after_action_flows"}
        out.append(r)
        print(f"outbound: {r['lost_share_before_action']:.0%} of {r['flows']} flows lost before "
              f"the action, {r['lost_share_after_action']:.0%} after; last flow restored "
              f"{r['fault_to_last_flow_restored_s']:.2f} s after the fault, "
              f"{r['last_flow_restored_after_inbound_s']:+.2f} s from the inbound action "
              f"({r['inbound_action_s']:.2f} s after the fault)", flush=True)
    return {
        "runs": out,
        "median_lost_share_before_action": statistics.median(
            r["lost_share_before_action"] for r in out),
        "max_lost_share_after_action": max(r["lost_share_after_action"] for r in out),
        "median_fault_to_last_flow_restored_s": statistics.median(
            r["fault_to_last_flow_restored_s"] for r in out),
        "median_inbound_action_s": statistics.median(r["inbound_action_s"] for r in out),
        "max_last_flow_restored_after_inbound_s": max(
            r["last_flow_restored_after_inbound_s"] for r in out),
    }


def noise(lab, seconds: float = 300.0, percent: str = "2") -> dict:
    """`percent` % random loss on every transit for `seconds`: the controller's false actions
    (`transition` log lines, and `command` lines that announce or withdraw) meanwhile."""
    log = Path(lab.run_dir) / "exabgp.out"
    mark = log.stat().st_size
    for t in ("t1", "t2", "t3", "t4"):
        faults.apply(lab, "loss", t, percent)
    try:
        time.sleep(seconds)
    finally:
        faults.heal(lab)
    lines = log.read_bytes()[mark:].decode("utf-8", "replace").splitlines()
    transitions = [ln for ln in lines if "event=transition " in ln]
    commands = [ln for ln in lines if "event=command " in ln
                and ("line=announce" in ln or "line=withdraw" in ln
                     or 'line="announce' in ln or 'line="withdraw' in ln)]
    return {"seconds": seconds, "loss_percent": int(percent),
            "false_actions": len(transitions) + len(commands),
            "transitions": len(transitions), "announcements_written": len(commands)}


def beside(previous, *keys, unit: str = " s", scale: float = 1.0, digits: int = 2) -> str:
    """` (previous X)`: the figure at `keys` in the previous results (` (previous: none)`)."""
    for key in keys:
        previous = previous.get(key) if isinstance(previous, dict) else None
    if not isinstance(previous, (int, float)):
        return " (previous: none)"
    return f" (previous {previous * scale:.{digits}f}{unit})"


def cpu_rss(pid: int) -> tuple[float, int]:
    """(CPU seconds of every thread, from schedstat: /proc/PID/stat counts 10 ms ticks and
    charges a whole one to a process woken on it; RSS bytes)."""
    cpu_s = sum(int(Path(f).read_text().split()[0])
                for f in glob.glob(f"/proc/{pid}/task/*/schedstat")) / 1e9
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    rss = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
    return cpu_s, rss


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--noise", "--soak", dest="noise", action="store_true",
                        help="5 minutes of 2 %% random loss on every transit: false actions")
    parser.add_argument("--scale", default="", help="extra prefix counts, e.g. 1000,10000")
    parser.add_argument("--scale-trials", type=int, default=5,
                        help="trials per prefix count (medians; default 5)")
    parser.add_argument("--no-failover", action="store_true", help="skip the failover runs")
    parser.add_argument("--restart-gap", type=float, default=2.0,
                        help="seconds between ExaBGP's stop and start (default 2)")
    parser.add_argument("--outbound-runs", type=int, default=3,
                        help="runs of the outbound stream during a blackhole (0: none)")
    parser.add_argument("--flows", type=int, default=40,
                        help="outbound stream: destinations per family (default 40)")
    parser.add_argument("--stream", metavar="OUT", help=argparse.SUPPRESS)
    parser.add_argument("--stream-duration", type=float, default=9.0, help=argparse.SUPPRESS)
    parser.add_argument("addresses", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stream:  # the outbound stream itself, inside srv's namespace
        return stream(args.stream, args.addresses, args.stream_duration, STREAM_INTERVAL_S)
    name = "bench" + secrets.token_hex(2)
    results: dict = {}
    last_file = Path(__file__).parent / "results" / "transit_failover.json"
    last = json.loads(last_file.read_text()) if last_file.exists() else {}
    lab = lab_module.up(name, lab_module.DEFAULT_CONFIG, out=io.StringIO())
    try:
        site = load_site(lab.site_file)
        results["bgp_hold_time_s"] = site.controller.bgp.hold_time_s
        normal = str(site.asn)
        until(lambda: all(as_path(lab, t) == normal for t in ("t1", "t2", "t3", "t4")), 30)
        # The controller gives no verdict before its first full window of probes (by design):
        # a first run started sooner measured the start-up (1.7 s), not the detection.
        time.sleep(site.controller.probe.window_s + 1.0)
        pid = controller_pid(lab)
        if pid:  # the figure: probing on a quiet border, nothing to act on
            cpu0, wall0 = cpu_rss(pid)[0], time.monotonic()
            time.sleep(STEADY_S)
            cpu1, rss = cpu_rss(pid)
            results["controller_probing_cpu_ratio"] = (cpu1 - cpu0) / (time.monotonic() - wall0)
            print(f"controller while probing ({STEADY_S:g} s, quiet): "
                  f"{results['controller_probing_cpu_ratio']:.1%} of a core"
                  + beside(last, "controller_probing_cpu_ratio", unit=" %", scale=100,
                           digits=1)
                  + f", RSS {rss / 2**20:.1f} MiB", flush=True)
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
                  f"{[round(t, 2) for t in times]}"
                  + beside(last, f"{kind}_to_action_s", "median"), flush=True)
        if args.outbound_runs:
            results["outbound"] = o = outbound(lab, args.outbound_runs, args.flows)
            print(f"outbound (median of {args.outbound_runs}): "
                  f"{o['median_lost_share_before_action']:.0%} of the flows lost before the "
                  f"action, at most {o['max_lost_share_after_action']:.0%} after (goal 0); last "
                  f"flow restored {o['median_fault_to_last_flow_restored_s']:.2f} s after the "
                  f"fault, inbound action at {o['median_inbound_action_s']:.2f} s; at most "
                  f"{o['max_last_flow_restored_after_inbound_s']:+.2f} s from it (goal 0.2); "
                  f"inbound action" + beside(last, "outbound", "median_inbound_action_s"),
                  flush=True)
        if args.noise:
            results["noise"] = n = noise(lab)
            results["soak_false_actions"] = n["false_actions"]
            print(f"noise: {n['false_actions']} false actions in 5 minutes of 2 % loss on every "
                  f"transit (goal 0; {n['transitions']} transitions, "
                  f"{n['announcements_written']} announcements written)"
                  + beside(last, "soak_false_actions", unit="", digits=0), flush=True)
        if pid and not (args.no_failover and not args.outbound_runs and not args.noise):
            cpu1, rss = cpu_rss(pid)
            results["controller_cpu_ratio"] = (cpu1 - cpu0) / (time.monotonic() - wall0)
            results["controller_rss_bytes"] = rss
        print(f"BGP hold time (baseline for a loud failure): {results['bgp_hold_time_s']} s")
        print(f"controller CPU through the runs above {results.get('controller_cpu_ratio', 0):.1%}"
              " of a core"
              + beside(last, "controller_cpu_ratio", unit=" %", scale=100, digits=1)
              + f", RSS {results.get('controller_rss_bytes', 0) / 2**20:.1f} MiB"
              + beside(last, "controller_rss_bytes", unit=" MiB", scale=2**-20, digits=1))
        results["exabgp_restart"] = r = restart(lab, args.restart_gap)
        print(f"prefix missing at a transit during an ExaBGP restart: {r['prefix_missing_ms']} ms"
              f" (goal 0; SIGTERM, {r['gap_s']:g} s gap, {r['polls']} polls at 20 Hz over 4 "
              f"transits, End-of-RIB {r['eor_after_start_s']} s after the start)"
              + beside(last, "exabgp_restart", "prefix_missing_ms", unit=" ms", digits=0),
              flush=True)
        if args.scale:
            results["scale"] = scale(lab, [int(c) for c in args.scale.split(",")],
                                     args.scale_trials)
    finally:
        lab_module.down(name, quiet=True)
    out = Path(__file__).parent / "results" / "transit_failover.json"
    previous = json.loads(out.read_text()) if out.exists() else {}
    if "scale" in results:
        print_scale(results["scale"], previous.get("scale"))
    out.parent.mkdir(exist_ok=True)
    # What this run did not measure (--no-failover, --outbound-runs 0) keeps its last figures.
    out.write_text(json.dumps({**previous, **results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
