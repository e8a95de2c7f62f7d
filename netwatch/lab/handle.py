"""The handle on one lab, by name: its paths, namespaces, daemons and commands inside its nodes.

Everything else in `netwatch.lab` builds on this module, and it imports none of them but the
pure ones (topology, netns, bird): `lifecycle` (up, down, status) and `faults` use it.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from netwatch import exitcodes
from netwatch.config import load_site
from netwatch.config.secrets import read_md5_passwords, write_private
from netwatch.lab import bird, netns
from netwatch.lab.topology import Topology, build_topology

RUN_ROOT = Path("/run/netwatch/lab")
NAME_RE = re.compile(r"^[a-z0-9]{1,10}$")


class LabError(Exception):
    """A lab command failed: one clear line and a netwatch.exitcodes value."""

    def __init__(self, message: str, exit_code: int = exitcodes.FAILURE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass
class Lab:
    """Handle on a lab by name: paths, namespaces, and commands inside its nodes."""

    name: str
    run_root: Path = RUN_ROOT

    def __post_init__(self) -> None:
        # The name becomes a path under /run that `down` removes as root: `../..` must never
        # get that far.
        check_name(self.name)

    @property
    def run_dir(self) -> Path:
        return self.run_root / self.name

    @property
    def site_file(self) -> Path:
        return self.run_dir / "site.yaml"

    @property
    def state_file(self) -> Path:
        return self.run_dir / "state.json"

    def ns(self, node: str) -> str:
        """The namespace name of `node`."""
        return f"nw-{self.name}-{node}"

    def ns_prefix(self) -> str:
        return f"nw-{self.name}-"

    def topology(self) -> Topology:
        return build_topology(load_site(self.site_file))

    def md5_passwords(self) -> dict[str, str]:
        """{upstream name: TCP-MD5 password}, read from the lab's password files (0600 in the
        run directory, written by `up`). Raises ConfigError when one is unusable."""
        return read_md5_passwords(self.site_file, load_site(self.site_file))

    def transit_bird_config(
        self, node: str, *, password: str | None = None, full_table: int = 0
    ) -> str:
        """The BIRD config of transit `node`: its own password unless `password` is given (a
        wrong one, for a fault), and `full_table` static routes exported to edge."""
        topo = self.topology()
        transit = topo.transit(node)
        if password is None and transit.md5:
            password = self.md5_passwords()[transit.upstream]
        return bird.transit_config(
            topo, transit, self.run_dir / f"{node}.log", password, full_table
        )

    def bird_socket(self, node: str) -> Path:
        return self.run_dir / f"{node}.ctl"

    def pidfile(self, node: str) -> Path:
        return self.run_dir / f"{node}.pid"

    def exec(self, node: str, *argv: str, timeout_s: float = 30.0) -> subprocess.CompletedProcess:
        """Run `argv` in `node`'s namespace (birdc gets the node's socket); never raises on a
        non-zero exit."""
        return subprocess.run(
            self.exec_argv(node, list(argv)), capture_output=True, text=True, timeout=timeout_s
        )

    def exec_argv(self, node: str, argv: list[str]) -> list[str]:
        if argv and argv[0] == "birdc" and "-s" not in argv:
            argv = ["birdc", "-s", str(self.bird_socket(node)), *argv[1:]]
        return netns.exec_argv(self.ns(node), argv)

    def birdc(self, node: str, command: str) -> str:
        """birdc output of `command` on `node`'s BIRD. Raises CalledProcessError."""
        return bird.birdc(self.ns(node), self.bird_socket(node), command)

    # --- what the lab's nodes see: for `lab status`, the tests, the demo and the benchmarks

    def routes(self, node: str) -> dict[str, list[dict[str, str]]]:
        """The routes `node`'s BIRD holds: {prefix: [{as_path, communities, ...}]}."""
        return bird.parse_routes(self.birdc(node, "show route all"))

    def bgp_sessions(self, node: str) -> dict[str, dict[str, str]]:
        """`node`'s BGP protocols: {name: {proto, state, info}} ("Established" in info)."""
        protocols = bird.parse_protocols(self.birdc(node, "show protocols"))
        return {name: p for name, p in protocols.items() if p["proto"] == "BGP"}

    def ping(self, node: str, target: str, *opts: str, count: int = 1) -> int:
        """Replies received by `count` pings from `node` to `target` (1 s wait each)."""
        argv = ["ping", "-n", "-q", "-c", str(count), "-W", "1", *opts, target]
        if count > 1:
            argv[5:5] = ["-i", "0.01"]
        for line in self.exec(node, *argv).stdout.splitlines():
            if "received" in line:
                return int(line.split(",")[1].split()[0])
        return 0

    def default_dev(self, node: str, family: int) -> str | None:
        """The interface of `node`'s default route of IP version `family`, or None."""
        out = self.exec(node, "ip", f"-{family}", "route", "show", "default").stdout
        found = re.search(r"dev (\S+)", out)
        return found.group(1) if found else None

    def metrics(self, node: str, listen: str) -> dict[str, float]:
        """{sample with labels: value} from the /metrics at `listen` (ADDRESS:PORT) in `node`."""
        text = self.exec(node, "curl", "-sf", f"http://{listen}/metrics").stdout
        values = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                values[name] = float(value)
        return values

    def read_state(self) -> dict:
        try:
            return json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return {"name": self.name, "faults": {}}

    def write_state(self, state: dict) -> None:
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2, sort_keys=True))
        tmp.replace(self.state_file)

    def exists(self) -> bool:
        return self.run_dir.exists() or bool(netns.list_namespaces(self.ns_prefix()))

    def start_bird(self, node: str, config_text: str) -> list[str]:
        """Write `node`'s BIRD config and return the argv that starts it (daemonizing)."""
        conf = self.run_dir / f"{node}.bird.conf"
        write_private(conf, config_text)  # a transit's config may hold a TCP-MD5 password
        return netns.exec_argv(
            self.ns(node),
            [
                "bird",
                "-c",
                str(conf),
                "-s",
                str(self.bird_socket(node)),
                "-P",
                str(self.pidfile(node)),
            ],
        )


def check_name(name: str) -> str:
    """`name` if it is a valid lab name. Raises LabError (exit 64) otherwise."""
    if not NAME_RE.match(name):
        raise LabError(f"lab name {name!r}: use 1-10 lowercase letters or digits", exitcodes.USAGE)
    return name


def _pid_from(pidfile: Path) -> int | None:
    try:
        return int(pidfile.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _is_ours(pid: int, expect: str, run_dir: Path) -> bool:
    """Whether `pid` is still the process our pidfile names: its command line must mention
    the program and this lab's run directory (every daemon of a lab is started with a config
    file from there), so a recycled PID, or another lab's BIRD, is never signalled."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return False
    return expect in cmdline and f"{run_dir}/" in cmdline


def is_running(pidfile: Path, expect: str) -> bool:
    """Whether the process `pidfile` names is alive and still ours (see `_is_ours`)."""
    pid = _pid_from(pidfile)
    return pid is not None and _is_ours(pid, expect, pidfile.parent) and not process_gone(pid)


def stop_pidfile(pidfile: Path, expect: str, timeout_s: float = 3.0) -> bool:
    """SIGTERM the PID in `pidfile` if its command line contains `expect`, SIGKILL after
    `timeout_s`. Returns True when a process was stopped."""
    pid = _pid_from(pidfile)
    if pid is None or not _is_ours(pid, expect, pidfile.parent):
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not Path(f"/proc/{pid}").exists() or process_gone(pid):
            return True
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    return True


def process_gone(pid: int) -> bool:
    """Whether `pid` has exited (no such process, or a zombie not reaped yet)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


