"""Benchmark: the operator's levers, in a private lab.

Prints and writes bench/results/operator.json:

- `status` round trip: `netwatch status --socket ...` as a subprocess (what an operator waits
  for, Python's start included), and the same request through the client library alone (the
  control API itself: socket, the controller building its answer, JSON), median and p90 of
  --runs each;
- drain to the peer: from the moment `netwatch upstream drain t1` is started (a subprocess,
  as an operator types it) until t1's BIRD holds our IPv4 prefix with (65535,0), with a long
  graceful stage; and with `--graceful-s 0` until t1's BIRD no longer holds it; and from
  `netwatch upstream restore t1` until it holds it normally again. The BIRD is read on a
  persistent connection to its control socket (birdc's protocol) about every 5 ms, so the
  figure is not the polling's.

Every run ends its override and waits for t1 to hold the prefix normally before the next one.
Traffic stays inside the lab's namespaces; the lab is removed at the end.
"""

from __future__ import annotations

import argparse
import io
import json
import secrets
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

from netwatch.config import load_site
from netwatch.control import client
from netwatch.control.protocol import Command
from netwatch.lab import lifecycle

RESULTS = Path(__file__).resolve().parent / "results" / "operator.json"
PREFIX = "198.51.100.0/24"
GSHUT = "(65535,0)"


class Bird:
    """One BIRD's control socket, kept open: `show route PREFIX all` in a few ms."""

    def __init__(self, path: Path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(str(path))
        self.sock.settimeout(5)
        self.buffer = b""
        self._reply()  # the greeting: "0001 BIRD ... ready."

    def _reply(self) -> str:
        """Lines up to the last one of a reply (a four-digit code and a space)."""
        lines = []
        while True:
            while b"\n" not in self.buffer:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise ConnectionError("BIRD closed its control socket")
                self.buffer += chunk
            line, self.buffer = self.buffer.split(b"\n", 1)
            text = line.decode("utf-8", "replace")
            lines.append(text)
            if len(text) >= 5 and text[:4].isdigit() and text[4] == " ":
                return "\n".join(lines)

    def route(self, prefix: str) -> str | None:
        """The text of `show route PREFIX all`, or None when BIRD holds no route for it."""
        self.sock.sendall(f"show route {prefix} all\n".encode())
        text = self._reply()
        return text if prefix in text else None

    def close(self) -> None:
        self.sock.close()


def until(check, timeout_s: float, step_s: float = 0.005) -> float:
    """Seconds until check() held; raises TimeoutError after `timeout_s`."""
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if check():
            return time.monotonic() - start
        time.sleep(step_s)
    raise TimeoutError(f"not within {timeout_s} s")


def summary(values: list[float]) -> dict:
    ordered = sorted(values)
    return {"median": statistics.median(ordered),
            "p90": ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))],
            "min": ordered[0], "max": ordered[-1], "runs": len(ordered)}


def cli(sock: str, *argv: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "netwatch.cli", *argv, "--socket", sock],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finished(proc: subprocess.Popen) -> None:
    _, err = proc.communicate(timeout=30)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(proc.args[3:])} exited {proc.returncode}: {err.strip()}")


def normal(bird: Bird, asn: int) -> bool:
    text = bird.route(PREFIX)
    return text is not None and f"BGP.as_path: {asn}\n" in text + "\n" and GSHUT not in text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20, help="status round trips (default 20)")
    parser.add_argument("--drains", type=int, default=5, help="drain runs each (default 5)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    name = "bop" + secrets.token_hex(2)
    lab = lifecycle.up(name, lifecycle.DEFAULT_CONFIG, out=io.StringIO())
    bird = None
    results: dict = {"lab": name}
    try:
        site = load_site(lab.site_file)
        sock = site.control.controller
        bird = Bird(lab.bird_socket("t1"))
        until(lambda: normal(bird, site.asn), 60)
        until(lambda: Path(sock).exists(), 30)

        cli_ms, api_ms = [], []
        for _ in range(args.runs):
            start = time.monotonic()
            finished(cli(sock, "status"))
            cli_ms.append((time.monotonic() - start) * 1000)
            start = time.monotonic()
            client.request(sock, Command.STATUS)
            api_ms.append((time.monotonic() - start) * 1000)
        results["status_cli_round_trip_ms"] = summary(cli_ms)
        results["status_api_round_trip_ms"] = summary(api_ms)
        print(f"status round trip: CLI median {statistics.median(cli_ms):.0f} ms "
              f"(p90 {summary(cli_ms)['p90']:.0f}), API alone median "
              f"{statistics.median(api_ms):.1f} ms (p90 {summary(api_ms)['p90']:.1f}) over "
              f"{args.runs} runs", flush=True)

        to_community, to_withdrawn, to_restored = [], [], []
        for _ in range(args.drains):
            for graceful, times, gone in (("60", to_community, False), ("0", to_withdrawn, True)):
                start = time.monotonic()
                proc = cli(sock, "upstream", "drain", "t1", "--graceful-s", graceful,
                           "--reason", "bench")
                if gone:
                    until(lambda: bird.route(PREFIX) is None, 30)
                else:
                    until(lambda: GSHUT in (bird.route(PREFIX) or ""), 30)
                times.append(time.monotonic() - start)
                finished(proc)
                start = time.monotonic()
                proc = cli(sock, "upstream", "restore", "t1", "--reason", "bench")
                until(lambda: normal(bird, site.asn), 30)
                if gone:
                    to_restored.append(time.monotonic() - start)
                finished(proc)
        for key, values in (("drain_to_community_at_peer_s", to_community),
                            ("drain_graceful_0_to_withdrawn_at_peer_s", to_withdrawn),
                            ("restore_to_announced_at_peer_s", to_restored)):
            results[key] = summary(values)
            print(f"{key}: median {statistics.median(values):.3f} s "
                  f"(min {min(values):.3f}, max {max(values):.3f}) over {len(values)} runs",
                  flush=True)
        # What of it is the CLI's own start: the same request through the client library.
        api = []
        for _ in range(args.drains):
            start = time.monotonic()
            client.request(sock, Command.DRAIN, {"upstream": "t1", "reason": "bench",
                                                 "graceful_s": 60})
            until(lambda: GSHUT in (bird.route(PREFIX) or ""), 30)
            api.append(time.monotonic() - start)
            client.request(sock, Command.RESTORE, {"upstream": "t1", "reason": "bench"})
            until(lambda: normal(bird, site.asn), 30)
        results["drain_api_to_community_at_peer_s"] = summary(api)
        print(f"drain_api_to_community_at_peer_s: median {statistics.median(api):.3f} s "
              f"over {len(api)} runs (the request alone, no CLI start)", flush=True)
    finally:
        if bird is not None:
            bird.close()
        lifecycle.down(name, quiet=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    print(f"written {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
