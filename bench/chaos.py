"""Chaos soak: random faults of every kind in a private lab, the invariants watched from outside.

For `--minutes N`, every `--fault-every-s` seconds (jittered) one action is drawn: a gateway
silent or blackholing, an uplink or a transit link down, loss on a transit, a transit
blackholing behind a live session, a session reset, a transit's BIRD stopped, a wrong TCP-MD5
password, kill -9 of the agent, of the controller or of ExaBGP, ExaBGP restarted as its
systemd unit does, an operator's drain or forced failover (with a short lease). Each fault is
healed after a random 3-20 s; at most two are active at once, and never both uplinks' links
(no software keeps a default route through two dead links). The bench is the supervisor that
systemd is in production: a dead agent or ExaBGP is started again after 1 s and 2 s
(RestartSec), and ExaBGP respawns the controller itself.

An observer thread checks every 100 ms, from outside the daemons:
- the server has an IPv4 and an IPv6 default route;
- per family, the transits whose session to us is Established and that hold our prefix number
  at least min(min_announcing_upstreams, sessions up), except while an operator's forced
  drain is active. A shortfall is a violation when two samples in a row (200 ms) see it;
  one-sample blips (four BIRDs are read one after the other, not at one instant) are
  counted apart.
Every 5 s it samples each daemon's RSS and open file descriptors.

Prints the counts (actions by kind, restarts, violations, blips, max RSS, fd drift) and writes
them as JSON (default bench/results/chaos.json). Exit 0 with no violation, 1 otherwise.
Traffic stays inside the lab's namespaces; everything is removed at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

from pyroute2 import NetNS

from netwatch.config import load_site
from netwatch.lab import faults, lifecycle
from netwatch.lab.handle import Lab, is_running

RESULTS = Path(__file__).resolve().parent / "results" / "chaos.json"
TRANSITS = ("t1", "t2", "t3", "t4")
PREFIXES = {4: "198.51.100.0/24", 6: "2001:db8:100::/48"}


class Bird:
    """A persistent connection to one BIRD's control socket (the birdc protocol), so the
    observer reads four BIRDs ten times a second without starting a process each time."""

    def __init__(self, path: Path):
        self.path = path
        self.sock: socket.socket | None = None
        self.buffer = b""

    def _connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(2.0)
        self.sock.connect(str(self.path))
        self.buffer = b""
        self._reply()  # the greeting

    def _reply(self) -> list[str]:
        lines = []
        while True:
            while b"\n" not in self.buffer:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise ConnectionError("BIRD closed the socket")
                self.buffer += chunk
            raw, self.buffer = self.buffer.split(b"\n", 1)
            line = raw.decode(errors="replace")
            lines.append(line)
            # "NNNN " ends a reply (0000 ok, 0001 greeting, 8xxx/9xxx errors); "NNNN-" and
            # " text" continue it.
            if len(line) >= 5 and line[:4].isdigit() and line[4] == " ":
                code = line[:4]
                if code in ("0000", "0001") or code[0] in "89":
                    return lines

    def command(self, text: str) -> list[str] | None:
        """The reply's lines, or None when BIRD is not there (stopped, restarting)."""
        for _ in range(2):
            try:
                if self.sock is None:
                    self._connect()
                self.sock.sendall(text.encode() + b"\n")
                return self._reply()
            except OSError:
                self.close()
        return None

    def close(self) -> None:
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.close()
        self.sock = None


def sessions_and_routes(bird: Bird) -> tuple[set[int], set[int]]:
    """({families whose session to edge is Established}, {families whose prefix it holds})."""
    up, held = set(), set()
    protocols = bird.command("show protocols") or []
    for line in protocols:
        fields = line.replace("1002-", "").split()
        if len(fields) >= 6 and fields[0] in ("edge4", "edge6") and "Established" in line:
            up.add(4 if fields[0] == "edge4" else 6)
    for family, prefix in PREFIXES.items():
        reply = bird.command(f"show route for {prefix} protocol edge{family}") or []
        if any(prefix in line for line in reply):
            held.add(family)
    return up, held


class Observer(threading.Thread):
    def __init__(self, lab: Lab, minimum: int, forced: threading.Event):
        super().__init__(daemon=True)
        self.lab, self.minimum, self.forced = lab, minimum, forced
        self.stop = threading.Event()
        self.samples = 0
        self.judged: Counter = Counter()  # samples where a family had enough sessions up
        self.violations: Counter = Counter()
        self.blips: Counter = Counter()
        self.first: list[str] = []  # the first violations, described
        self.usage: dict[str, dict] = {}

    def run(self) -> None:
        birds = {t: Bird(self.lab.bird_socket(t)) for t in TRANSITS}
        srv = NetNS(self.lab.ns("srv"))
        short_before: set[str] = set()
        last_usage = 0.0
        try:
            while not self.stop.wait(0.1):
                short = set()
                for family, af in ((4, socket.AF_INET), (6, socket.AF_INET6)):
                    routes = [r for r in srv.route("dump", family=af, table=254)
                              if r.get("dst_len") == 0]
                    if not routes:
                        short.add(f"no IPv{family} default route on srv")
                seen = {t: sessions_and_routes(b) for t, b in birds.items()}
                if not self.forced.is_set():
                    for family in PREFIXES:
                        ups = [t for t, (up, _) in seen.items() if family in up]
                        holding = [t for t in ups if family in seen[t][1]]
                        if len(ups) >= self.minimum:
                            self.judged[f"ipv{family}"] += 1
                        if len(holding) < min(self.minimum, len(ups)):
                            short.add(f"IPv{family} held by {holding or 'none'} of sessions up "
                                      f"{ups}")
                self.samples += 1
                for problem in short:
                    kind = problem.split(" held")[0].split(" on srv")[0]
                    if problem in short_before:
                        self.violations[kind] += 1
                        if len(self.first) < 10:
                            self.first.append(f"{time.strftime('%H:%M:%S')} {problem}")
                    else:
                        self.blips[kind] += 1
                short_before = short
                if time.monotonic() - last_usage > 5:
                    last_usage = time.monotonic()
                    self._sample_usage()
        finally:
            srv.close()
            for bird in birds.values():
                bird.close()

    def _sample_usage(self) -> None:
        for name, pid in daemon_pids(self.lab).items():
            try:
                rss_kib = next(int(line.split()[1]) for line in
                               Path(f"/proc/{pid}/status").read_text().splitlines()
                               if line.startswith("VmRSS:"))
                fds = len(os.listdir(f"/proc/{pid}/fd"))
            except (OSError, StopIteration):
                continue
            seen = self.usage.setdefault(name, {"max_rss_mib": 0.0, "instances": {}})
            seen["max_rss_mib"] = max(seen["max_rss_mib"], round(rss_kib / 1024, 1))
            inst = seen["instances"].setdefault(str(pid), {"seen_at": time.monotonic()})
            # The baseline is taken once the instance has run 20 s: a daemon opens its probe
            # sockets and listeners in its first seconds, which is not a leak.
            if "fds_first" not in inst and time.monotonic() - inst["seen_at"] >= 20:
                inst.update(fds_first=fds, rss_first=rss_kib)
            inst.update(fds_last=fds, rss_last=rss_kib)


def daemon_pids(lab: Lab) -> dict[str, int]:
    pids = {}
    with contextlib.suppress(OSError, ValueError, IndexError):
        pids["exabgp"] = int(lab.pidfile("exabgp").read_text().split()[0])
    children = lifecycle.exabgp_children(lab)
    if children:
        pids["controller"] = children[0]
    with contextlib.suppress(OSError, ValueError, IndexError):
        pid = int((lab.run_dir / "chaos-agent.pid").read_text().split()[0])
        if b"agent" in Path(f"/proc/{pid}/cmdline").read_bytes():
            pids["agent"] = pid
    return pids


class Supervisor:
    """What systemd does in production: start the agent, restart it and ExaBGP when dead."""

    def __init__(self, lab: Lab, log: Path):
        self.lab, self.log = lab, log
        self.agent: subprocess.Popen | None = None
        self.restarts: Counter = Counter()
        self.exabgp_down_since: float | None = None
        self.agent_down_since: float | None = None

    def start_agent(self) -> None:
        with open(self.log, "a") as out:
            self.agent = subprocess.Popen(
                [sys.executable, "-m", "netwatch.cli", "agent", "--config", str(self.lab.site_file),
                 "--netns", self.lab.ns("srv")], stdout=out, stderr=subprocess.STDOUT)
        (self.lab.run_dir / "chaos-agent.pid").write_text(f"{self.agent.pid}\n")

    def tick(self) -> None:
        now = time.monotonic()
        if self.agent is not None and self.agent.poll() is not None:
            self.agent_down_since = self.agent_down_since or now
            if now - self.agent_down_since >= 1.0:  # RestartSec=1
                self.restarts["agent"] += 1
                self.agent_down_since = None
                self.start_agent()
        if not lifecycle._exabgp_alive(self.lab):
            self.exabgp_down_since = self.exabgp_down_since or now
            if now - self.exabgp_down_since >= 2.0:  # RestartSec=2
                self.restarts["exabgp"] += 1
                self.exabgp_down_since = None
                lifecycle.start_exabgp(self.lab, load_site(self.lab.site_file))
        else:
            self.exabgp_down_since = None

    def stop(self) -> None:
        if self.agent is not None and self.agent.poll() is None:
            self.agent.send_signal(signal.SIGTERM)
            try:
                self.agent.wait(10)
            except subprocess.TimeoutExpired:
                self.agent.kill()


def operator(lab: Lab, *argv: str) -> int:
    site = load_site(lab.site_file)
    cmd = [sys.executable, "-m", "netwatch.cli", *argv, "--reason", "chaos soak"]
    sock = site.control.controller if argv[0] == "upstream" else site.control.agent
    return subprocess.run([*cmd, "--socket", sock], capture_output=True, timeout=20).returncode


def _is_controller(lab: Lab, pids: dict[str, int]) -> bool:
    """Whether `pids["controller"]` is still this lab's controller (ExaBGP's child)."""
    try:
        cmdline = Path(f"/proc/{pids['controller']}/cmdline").read_bytes()
    except OSError:
        return False
    return b"controller" in cmdline and str(lab.site_file).encode() in cmdline


def act(lab: Lab, rng: random.Random, active: dict, forced: threading.Event,
        counts: Counter, supervisor: Supervisor) -> None:
    """Draw one action and carry it out; record faults to heal in `active` (target -> when)."""
    gateways_down = {t for t, (kind, _) in active.items() if kind == "link-down" and
                     t in ("gwa", "gwb")}
    choices = [
        ("gateway-silent", rng.choice(["gwa", "gwb"])),
        ("gateway-blackhole", rng.choice(["gwa", "gwb"])),
        ("link-down", rng.choice(["gwa", "gwb", *TRANSITS])),
        ("loss", rng.choice(TRANSITS)),
        ("transit-blackhole", rng.choice(TRANSITS)),
        ("session-reset", rng.choice(TRANSITS)),
        ("transit-down", rng.choice(TRANSITS)),
        ("md5-mismatch", rng.choice(["t3", "t4"])),
        ("kill-agent", "srv"), ("kill-controller", "edge"), ("kill-exabgp", "edge"),
        ("restart-exabgp", "edge"), ("drain", rng.choice(TRANSITS)),
        ("forced-drain", rng.choice(TRANSITS)), ("failover", "srv"),
    ]
    kind, target = rng.choice(choices)
    if target in active or (kind == "link-down" and target in ("gwa", "gwb") and gateways_down):
        return  # one fault per target, and never both uplinks' links at once
    heal_at = time.monotonic() + rng.uniform(3, 20)
    pids = daemon_pids(lab)
    # Only processes this bench started, checked at the moment of the kill: a pidfile of a
    # daemon that died a moment ago may name a PID the system has given to another process.
    if kind == "kill-agent" and supervisor.agent is not None and supervisor.agent.poll() is None:
        supervisor.agent.kill()
    elif kind == "kill-controller" and "controller" in pids and _is_controller(lab, pids):
        os.kill(pids["controller"], signal.SIGKILL)
    elif kind == "kill-exabgp" and is_running(lab.pidfile("exabgp"), "exabgp"):
        os.kill(pids["exabgp"], signal.SIGKILL)
    elif kind == "restart-exabgp":
        with contextlib.suppress(Exception):
            lifecycle.restart_exabgp(lab, gap_s=rng.uniform(0.5, 5))
    elif kind in ("drain", "forced-drain"):
        extra = ["--force"] if kind == "forced-drain" else []
        if kind == "forced-drain":
            forced.set()  # the interlock is overridden on purpose: not a violation
        lease = f"{int(heal_at - time.monotonic()) + 1}s"
        code = operator(lab, "upstream", "drain", target, "--for", lease, "--graceful-s", "1",
                        *extra)
        counts[f"{kind}:exit{code}"] += 1
        active[target] = (kind, heal_at)
        return
    elif kind == "failover":
        code = operator(lab, "failover", "--to", "secondary", "--for",
                        f"{int(heal_at - time.monotonic()) + 1}s")
        counts[f"failover:exit{code}"] += 1
        return
    else:
        opts = [str(rng.choice([30, 60, 100]))] if kind == "loss" else []
        try:
            record = faults.apply(lab, kind, target, *opts)
        except Exception as exc:  # a fault the lab refuses now (e.g. BIRD already down)
            counts[f"refused:{kind}"] += 1
            print(f"  {kind} {target}: {exc}", flush=True)
            return
        if not record.get("oneshot"):
            active[target] = (kind, heal_at)
    counts[kind] += 1


def heal_due(lab: Lab, active: dict, forced: threading.Event, everything: bool = False) -> None:
    now = time.monotonic()
    for target, (kind, heal_at) in list(active.items()):
        if not everything and now < heal_at:
            continue
        if kind in ("drain", "forced-drain"):
            operator(lab, "upstream", "restore", target)
        else:
            with contextlib.suppress(Exception):
                faults.heal(lab, target)
        del active[target]
    if not any(kind == "forced-drain" for kind, _ in active.values()):
        forced.clear()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--fault-every-s", type=float, default=8.0)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--json", type=Path, default=RESULTS)
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else secrets.randbits(32)
    rng = random.Random(seed)
    name = "chaos" + secrets.token_hex(2)
    lab = lifecycle.up(name, lifecycle.DEFAULT_CONFIG, out=io.StringIO())
    minimum = load_site(lab.site_file).controller.policy.min_announcing_upstreams
    forced = threading.Event()
    supervisor = Supervisor(lab, lab.run_dir / "chaos-agent.log")
    observer = Observer(lab, minimum, forced)
    counts: Counter = Counter()
    active: dict = {}
    started = time.monotonic()
    try:
        supervisor.start_agent()
        time.sleep(3)  # the agent's first verdicts
        observer.start()
        next_at = time.monotonic()
        while time.monotonic() - started < args.minutes * 60:
            supervisor.tick()
            heal_due(lab, active, forced)
            if time.monotonic() >= next_at:
                act(lab, rng, active, forced, counts, supervisor)
                next_at = time.monotonic() + rng.uniform(0.5, 1.5) * args.fault_every_s
            time.sleep(0.2)
        heal_due(lab, active, forced, everything=True)
        settle = time.monotonic()
        while time.monotonic() - settle < 15:  # the restarts after the last kills
            supervisor.tick()
            time.sleep(0.2)
    finally:
        observer.stop.set()
        observer.join(5)
        supervisor.stop()
        lifecycle.down(name, quiet=True)
    fd_drift = {
        daemon: max((i["fds_last"] - i["fds_first"] for i in u["instances"].values()
                     if "fds_first" in i), default=0)
        for daemon, u in observer.usage.items()
    }
    rss_drift = {
        daemon: round(max((i["rss_last"] - i["rss_first"] for i in u["instances"].values()
                           if "rss_first" in i), default=0) / 1024, 1)
        for daemon, u in observer.usage.items()
    }
    result = {
        "seed": seed,
        "minutes": args.minutes,
        "samples": observer.samples,
        "samples_judged": dict(observer.judged),
        "actions": dict(sorted(counts.items())),
        "actions_total": sum(counts.values()),
        "restarts": dict(supervisor.restarts),
        "violations": dict(observer.violations),
        "violations_total": sum(observer.violations.values()),
        "blips": dict(observer.blips),
        "first_violations": observer.first,
        "max_rss_mib": {d: u["max_rss_mib"] for d, u in observer.usage.items()},
        "fd_drift_within_an_instance": fd_drift,
        "rss_drift_mib_within_an_instance": rss_drift,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0 if result["violations_total"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
