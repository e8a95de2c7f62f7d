"""The lab's lifecycle: `up`, `down`, `status`, `exec` and the handle tests use (`Lab`).

A lab named NAME lives in namespaces `nw-NAME-<node>` and the run directory
/run/netwatch/lab/NAME/ (BIRD configs, control sockets, pidfiles, ExaBGP config/env/log,
`state.json` with the active faults, `site.yaml`: the site file rendered for this lab).
`down` works from the namespace names and pidfiles alone, so it also cleans up after a crash
or a half-finished `up`; it signals only PIDs read from the lab's own pidfiles.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from netwatch import exitcodes
from netwatch.config import ConfigError, load_site
from netwatch.exabgp_config import exabgp_environment, render_exabgp_config
from netwatch.lab import bird, netns
from netwatch.lab.topology import Topology, build_topology

RUN_ROOT = Path("/run/netwatch/lab")
NAME_RE = re.compile(r"^[a-z0-9]{1,10}$")
DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "probes" / "lab-site.yaml"
DEFAULT_NAME = "lab"
UP_TIMEOUT_S = 60.0


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

    # Convenience for tests and other engineers' fixtures.
    def fault(self, kind: str, target: str, *opts: str) -> dict:
        from netwatch.lab import faults

        return faults.apply(self, kind, target, list(opts))

    def heal(self, target: str | None = None) -> list[str]:
        from netwatch.lab import faults

        return faults.heal(self, target)


def running_labs(run_root: Path = RUN_ROOT) -> list[str]:
    """Names of the labs with a run directory."""
    if not run_root.is_dir():
        return []
    return sorted(p.name for p in run_root.iterdir() if (p / "state.json").exists())


def check_name(name: str) -> str:
    """`name` if it is a valid lab name. Raises LabError (exit 64) otherwise."""
    if not NAME_RE.match(name):
        raise LabError(f"lab name {name!r}: use 1-10 lowercase letters or digits", exitcodes.USAGE)
    return name


def resolve_name(name: str | None, run_root: Path = RUN_ROOT) -> str:
    """`name`, or the one running lab. Raises LabError when there is none or several, or when
    the name is not a valid lab name."""
    if name:
        return check_name(name)
    labs = running_labs(run_root)
    if len(labs) == 1:
        return labs[0]
    if not labs:
        raise LabError("no lab is running (start one with `netwatch lab up`)", exitcodes.NOINPUT)
    raise LabError(f"several labs are running ({', '.join(labs)}): pass --name", exitcodes.USAGE)


def exabgp_program() -> str | None:
    beside = Path(sys.executable).parent / "exabgp"
    return str(beside) if beside.exists() else shutil.which("exabgp")


def preflight(name: str) -> None:
    """Raise LabError when the lab cannot be built here (root, bird2, exabgp, name)."""
    check_name(name)
    if os.geteuid() != 0:
        raise LabError(
            "the lab needs root (network namespaces): run it with sudo", exitcodes.NOPERM
        )
    for prog in ("ip", "nft"):
        if not shutil.which(prog):
            raise LabError(
                f"{prog} not found: install iproute2 and nftables", exitcodes.UNAVAILABLE
            )
    if not (shutil.which("bird") and shutil.which("birdc")):
        raise LabError(
            "BIRD 2 not found: install it (apt-get install bird2)", exitcodes.UNAVAILABLE
        )
    if not exabgp_program():
        raise LabError(
            "exabgp not found: install it (pip install 'exabgp>=5.0.15,<5.1')",
            exitcodes.UNAVAILABLE,
        )


def render_site_file(lab: Lab, config: Path) -> None:
    """Write the lab's own copy of the site file: state and control socket inside the run dir,
    the targets file by absolute path."""
    raw = yaml.safe_load(config.read_text())  # validated by the caller
    raw["state_dir"] = str(lab.run_dir / "state")
    raw.setdefault("control", {})["socket"] = str(lab.run_dir / "netwatch.sock")
    probe = raw.get("controller", {}).get("probe", {})
    if probe.get("targets_file"):
        probe["targets_file"] = str((config.parent / probe["targets_file"]).resolve())
    lab.site_file.write_text(
        f"# netwatch lab {lab.name}: rendered from {config.resolve()}\n"
        + yaml.safe_dump(raw, sort_keys=False)
    )


def _sysctls(routing: bool) -> dict[str, str]:
    values = {
        "net.ipv6.conf.all.accept_dad": "0",
        "net.ipv6.conf.default.accept_dad": "0",
        # a link-down fault must not flush the IPv6 addresses heal expects to find again
        "net.ipv6.conf.all.keep_addr_on_down": "1",
        "net.ipv6.conf.default.keep_addr_on_down": "1",
        "net.ipv4.conf.all.rp_filter": "0",
        "net.ipv4.conf.default.rp_filter": "0",
    }
    if routing:
        values["net.ipv4.ip_forward"] = "1"
        values["net.ipv6.conf.all.forwarding"] = "1"
        values["net.ipv6.conf.default.forwarding"] = "1"
    return values


def _parallel(argvs: list[list[str]]) -> None:
    procs = [
        subprocess.Popen(a, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for a in argvs
    ]
    for argv, proc in zip(argvs, procs, strict=True):
        _, err = proc.communicate(timeout=30)
        if proc.returncode != 0:
            raise LabError(f"{' '.join(argv[-4:])}: {err.strip()}", exitcodes.OSERR)


def node_commands(topo: Topology, node: str) -> list[str]:
    """iproute2 batch lines configuring `node`: addresses, links up, loopbacks."""
    lines = ["link set lo up"]
    for link in topo.links:
        for end in (link.a, link.b):
            if end.node != node:
                continue
            for addr in end.addrs:
                extra = " nodad" if ":" in addr else ""
                lines.append(f"addr add {addr} dev {end.name}{extra}")
            lines.append(f"link set {end.name} up")
    for addr in topo.loopbacks.get(node, []):
        extra = " nodad" if ":" in addr else ""
        lines.append(f"addr add {addr} dev lo{extra}")
    return lines


def route_commands(topo: Topology, node: str) -> list[str]:
    """iproute2 batch lines for `node`'s static routes (`ip -batch` takes no -4/-6, so the
    family is spelled out in the destination)."""
    lines = []
    for route in topo.routes[node]:
        family, dest, *rest = route.split()
        if dest == "default":
            dest = "0.0.0.0/0" if family == "-4" else "::/0"
        lines.append(" ".join(["route", "replace", dest, *rest]))
    return lines


def start_bird(lab: Lab, node: str, config_text: str) -> list[str]:
    """Write `node`'s BIRD config and return the argv that starts it (daemonizing)."""
    conf = lab.run_dir / f"{node}.bird.conf"
    conf.write_text(config_text)
    return netns.exec_argv(
        lab.ns(node),
        [
            "bird",
            "-c",
            str(conf),
            "-s",
            str(lab.bird_socket(node)),
            "-P",
            str(lab.pidfile(node)),
        ],
    )


def start_exabgp(lab: Lab, site) -> None:
    """Render ExaBGP's config and environment and start it in edge; pidfile edge-exabgp.pid."""
    announcer = [
        sys.executable,
        "-m",
        "netwatch.cli",
        "controller",
        "--config",
        str(lab.site_file),
    ]
    conf = lab.run_dir / "exabgp.conf"
    conf.write_text(render_exabgp_config(site, announcer))
    env_vars = exabgp_environment(lab.run_dir / "exabgp.log")
    (lab.run_dir / "exabgp.env").write_text(
        "".join(f"{k}={v}\n" for k, v in sorted(env_vars.items()))
    )
    with open(lab.run_dir / "exabgp.out", "ab") as out:
        proc = subprocess.Popen(
            netns.exec_argv(lab.ns("edge"), [exabgp_program(), str(conf)]),
            env={**os.environ, **env_vars},
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=lab.run_dir,
        )
    # `ip netns exec` execs the program, so this PID is ExaBGP's own.
    lab.pidfile("exabgp").write_text(f"{proc.pid}\n")


def transit_ready(lab: Lab, topo: Topology, node: str) -> bool:
    """Both edge sessions of `node` Established and both our prefixes held with AS path ASN."""
    try:
        protocols = bird.parse_protocols(lab.birdc(node, "show protocols"))
        routes = bird.parse_routes(lab.birdc(node, "show route all"))
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
        return False
    if any(p["proto"] == "BGP" and "Established" not in p["info"] for p in protocols.values()):
        return False
    return all(
        any(path["as_path"] == str(topo.asn) for path in routes.get(prefix, []))
        for prefix in topo.prefixes
    )


def wait_converged(lab: Lab, topo: Topology, timeout_s: float) -> None:
    """Poll birdc until every BIRD is ready; raise LabError(TEMPFAIL) after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    pending = set(topo.bird_nodes())
    while pending:
        for node in sorted(pending):
            ok = inet_ready(lab, topo) if node == "inet" else transit_ready(lab, topo, node)
            if ok:
                pending.discard(node)
        if not pending:
            return
        if time.monotonic() > deadline:
            raise LabError(
                f"lab {lab.name} did not converge in {timeout_s:.0f} s "
                f"(waiting for {', '.join(sorted(pending))}; "
                f"see {lab.run_dir}/*.log)",
                exitcodes.TEMPFAIL,
            )
        time.sleep(0.1)


def inet_ready(lab: Lab, topo: Topology) -> bool:
    try:
        protocols = bird.parse_protocols(lab.birdc("inet", "show protocols"))
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
        return False
    bgp = [p for p in protocols.values() if p["proto"] == "BGP"]
    return bool(bgp) and all("Established" in p["info"] for p in bgp)


def up(
    name: str,
    config: Path,
    *,
    timeout_s: float = UP_TIMEOUT_S,
    keep_on_failure: bool = False,
    out=sys.stdout,
) -> Lab:
    """Build lab `name` from `config` and wait until it converged. Raises LabError; a failed
    `up` removes what it built."""
    preflight(name)
    lab = Lab(name)
    if lab.exists():
        raise LabError(
            f"a lab named {name!r} exists: `netwatch lab down --name {name}` first",
            exitcodes.CANTCREAT,
        )
    if not config.exists():
        raise LabError(f"{config}: no such site file", exitcodes.NOINPUT)
    started = time.monotonic()
    lab.run_dir.mkdir(parents=True)
    (lab.run_dir / "state").mkdir()
    lab.write_state(
        {"name": name, "config": str(config.resolve()), "phase": "building", "faults": {}}
    )
    try:
        load_site(config)  # errors name the user's file and lines, not the rendered copy
        render_site_file(lab, config)
        site = load_site(lab.site_file)
        topo = build_topology(site)
        _build(lab, site, topo)
        wait_converged(lab, topo, timeout_s)
    except BaseException as exc:
        if not keep_on_failure:
            down(name, quiet=True)
        if isinstance(exc, ConfigError):
            missing = all(p.message == "no such file" for p in exc.problems)
            code = exitcodes.NOINPUT if missing else exitcodes.DATAERR
            raise LabError("\n".join(exc.errors), code) from None
        if isinstance(exc, netns.NetnsError):
            raise LabError(str(exc), exitcodes.OSERR) from exc
        raise
    elapsed = time.monotonic() - started
    state = lab.read_state()
    state.update(phase="up", up_seconds=round(elapsed, 2))
    lab.write_state(state)
    print(
        f"lab {name} up in {elapsed:.1f} s: {len(topo.nodes)} namespaces, "
        f"{len(topo.links)} links, {2 * len(topo.transits)} eBGP sessions from edge, "
        f"prefixes {', '.join(topo.prefixes)} held by {', '.join(t.name for t in topo.transits)}"
        f"\n  run dir {lab.run_dir}; site file {lab.site_file}",
        file=out,
    )
    return lab


def _build(lab: Lab, site, topo: Topology) -> None:
    for node in topo.nodes:
        netns.add_namespace(lab.ns(node))
    _parallel(
        [
            netns.exec_argv(
                lab.ns(n),
                [
                    "sh",
                    "-c",
                    "; ".join(
                        f"echo {v} > /proc/sys/{k.replace('.', '/')}"
                        for k, v in _sysctls(n in topo.routing_nodes).items()
                    ),
                ],
            )
            for n in topo.nodes
        ]
    )
    netns.batch(
        None,
        [
            f"link add {link.a.name} netns {lab.ns(link.a.node)} type veth "
            f"peer name {link.b.name} netns {lab.ns(link.b.node)}"
            for link in topo.links
        ],
    )
    for node in topo.nodes:
        netns.batch(lab.ns(node), node_commands(topo, node) + route_commands(topo, node))
    birds = [
        start_bird(lab, t.name, bird.transit_config(topo, t, lab.run_dir / f"{t.name}.log"))
        for t in topo.transits
    ]
    birds.append(start_bird(lab, "inet", bird.inet_config(topo, lab.run_dir / "inet.log")))
    _parallel(birds)
    start_exabgp(lab, site)


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


def stop_pidfile(pidfile: Path, expect: str, timeout_s: float = 3.0) -> bool:
    """SIGTERM the PID in `pidfile` if its command line contains `expect`, SIGKILL after
    `timeout_s`. Returns True when a process was stopped."""
    pid = _pid_from(pidfile)
    if pid is None or not _is_ours(pid, expect, pidfile.parent):
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not Path(f"/proc/{pid}").exists() or _zombie(pid):
            return True
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    return True


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def down(name: str, *, quiet: bool = False, out=sys.stdout) -> int:
    """Remove every process (from the lab's pidfiles), namespace and file of lab `name`.
    Returns the number of namespaces removed."""
    lab = Lab(name)
    if lab.run_dir.is_dir():
        for pidfile in sorted(lab.run_dir.glob("*.pid")):
            expect = "exabgp" if pidfile.stem == "exabgp" else "bird"
            stop_pidfile(pidfile, expect)
    namespaces = netns.list_namespaces(lab.ns_prefix())
    for ns in namespaces:
        netns.delete_namespace(ns)
    shutil.rmtree(lab.run_dir, ignore_errors=True)
    if not quiet:
        print(f"lab {name} down: removed {len(namespaces)} namespaces", file=out)
    return len(namespaces)


def status(lab: Lab) -> dict:
    """What the lab holds now: nodes, links, sessions, our prefixes per transit, faults."""
    topo = lab.topology()
    present = set(netns.list_namespaces(lab.ns_prefix()))
    links_by_ns = {
        n: {li["ifname"]: li for li in netns.link_state(lab.ns(n))}
        for n in topo.nodes
        if lab.ns(n) in present
    }
    nodes = {n: {"namespace": lab.ns(n), "present": lab.ns(n) in present} for n in topo.nodes}
    links = []
    for link in topo.links:
        ends = []
        for end in (link.a, link.b):
            info = links_by_ns.get(end.node, {}).get(end.name, {})
            ends.append(
                {
                    "node": end.node,
                    "ifname": end.name,
                    "state": info.get("operstate", "ABSENT"),
                    "admin_up": "UP" in info.get("flags", []),
                }
            )
        links.append({"name": link.name, "kind": link.kind, "ends": ends})
    sessions, transits = [], {}
    for node in topo.bird_nodes():
        try:
            protocols = bird.parse_protocols(lab.birdc(node, "show protocols"))
            routes = bird.parse_routes(lab.birdc(node, "show route all"))
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
            sessions.append({"node": node, "protocol": "*", "state": "bird not running"})
            continue
        for pname, p in protocols.items():
            if p["proto"] == "BGP":
                sessions.append(
                    {"node": node, "protocol": pname, "state": p["state"], "info": p["info"]}
                )
        transits[node] = {prefix: routes.get(prefix, []) for prefix in topo.prefixes}
    state = lab.read_state()
    return {
        "name": lab.name,
        "run_dir": str(lab.run_dir),
        "phase": state.get("phase"),
        "exabgp_running": _exabgp_alive(lab),
        "nodes": nodes,
        "links": links,
        "sessions": sessions,
        "routes": transits,
        "faults": state.get("faults", {}),
    }


def _exabgp_alive(lab: Lab) -> bool:
    pid = _pid_from(lab.pidfile("exabgp"))
    return pid is not None and _is_ours(pid, "exabgp", lab.run_dir) and not _zombie(pid)
