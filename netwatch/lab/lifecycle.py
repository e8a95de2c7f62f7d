"""The lab's lifecycle: `up`, `down`, `status`, `exec` and the handle tests use (`Lab`).

A lab named NAME lives in namespaces `nw-NAME-<node>` and the run directory
/run/netwatch/lab/NAME/ (BIRD configs, control sockets, pidfiles, ExaBGP config/env/log,
`state.json` with the active faults, `site.yaml`: the site file rendered for this lab,
`md5-UPSTREAM.key`: the TCP-MD5 passwords it made up; every file holding one is 0600).
`restart_exabgp` stops ExaBGP the way the shipped systemd unit does and starts it again.
`down` works from the namespace names and pidfiles alone, so it also cleans up after a crash
or a half-finished `up`; it signals only PIDs read from the lab's own pidfiles.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from netwatch import exitcodes
from netwatch.config import ConfigError, load_site
from netwatch.config.secrets import write_private
from netwatch.exabgp.config import exabgp_environment, render_exabgp_config
from netwatch.lab import bird, netns
from netwatch.lab.handle import (
    RUN_ROOT,
    Lab,
    LabError,
    check_name,
    is_running,
    process_gone,
    stop_pidfile,
)
from netwatch.lab.topology import Topology, build_topology, node_commands, route_commands

# The lab's site file ships inside the package, so `netwatch lab up` works from an installed
# wheel as well as from a checkout; `--config FILE` takes any other.
DEFAULT_CONFIG = Path(__file__).resolve().parent / "site" / "lab-site.yaml"
DEFAULT_NAME = "lab"
UP_TIMEOUT_S = 60.0
# How long ExaBGP gets to exit on SIGTERM before SIGKILL, as TimeoutStopSec in the systemd
# unit; it took 1.3-2.1 s in the lab.
STOP_TIMEOUT_S = 10.0


def running_labs(run_root: Path = RUN_ROOT) -> list[str]:
    """Names of the labs with a run directory."""
    if not run_root.is_dir():
        return []
    return sorted(p.name for p in run_root.iterdir() if (p / "state.json").exists())


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
    the targets file by absolute path, and for every upstream with `md5_password_file` a
    fresh random password in `md5-NAME.key` (0600) in the run dir, which the transit's BIRD
    uses too."""
    raw = yaml.safe_load(config.read_text())  # validated by the caller
    raw["state_dir"] = str(lab.run_dir / "state")
    control = raw.setdefault("control", {})
    control["agent"] = str(lab.run_dir / "agent.sock")
    control["controller"] = str(lab.run_dir / "controller.sock")
    probe = raw.get("controller", {}).get("probe", {})
    if probe.get("targets_file"):
        probe["targets_file"] = str((config.parent / probe["targets_file"]).resolve())
    for upstream in raw.get("controller", {}).get("upstreams", []):
        if upstream.get("md5_password_file"):
            key = lab.run_dir / f"md5-{upstream['name']}.key"
            write_private(key, secrets.token_urlsafe(24) + "\n")
            upstream["md5_password_file"] = str(key)
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
    # 0600 from its creation: it holds the TCP-MD5 passwords.
    write_private(conf, render_exabgp_config(site, announcer, lab.md5_passwords()))
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


def wait_edge_defaults(lab: Lab, timeout_s: float) -> None:
    """With `controller.outbound.mode: kernel` edge's default routes are the controller's (the
    lab installs none): wait until both families have one; raise LabError(TEMPFAIL) after
    `timeout_s` (at least 5 s)."""
    deadline = time.monotonic() + max(timeout_s, 5.0)
    missing = ["-4", "-6"]
    while missing:
        missing = [f for f in missing
                   if not lab.exec("edge", "ip", f, "route", "show", "default").stdout.strip()]
        if not missing:
            return
        if time.monotonic() > deadline:
            raise LabError(
                f"lab {lab.name}: edge has no {' or '.join(f'IPv{f[1]}' for f in missing)} "
                f"default route: the controller writes them (outbound.mode kernel); see "
                f"{lab.run_dir}/exabgp.out",
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
        if site.controller is not None and site.controller.outbound.mode == "kernel":
            wait_edge_defaults(lab, timeout_s - (time.monotonic() - started))
    except BaseException as exc:
        if not keep_on_failure:
            down(name, quiet=True)
        if isinstance(exc, ConfigError):
            missing = exc.missing
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
    birds = [lab.start_bird(t.name, lab.transit_bird_config(t.name)) for t in topo.transits]
    birds.append(lab.start_bird("inet", bird.inet_config(topo, lab.run_dir / "inet.log")))
    _parallel(birds)
    start_exabgp(lab, site)


def exabgp_children(lab: Lab) -> list[int]:
    """PIDs of the processes ExaBGP runs (the controller), from /proc: none when it is gone."""
    try:
        pid = int(lab.pidfile("exabgp").read_text().split()[0])
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except (OSError, ValueError, IndexError):
        return []
    return [int(c) for c in children]


def _wait_gone(pids: list[int], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not [p for p in pids if Path(f"/proc/{p}").exists() and not process_gone(p)]:
            return True
        time.sleep(0.02)
    return False


def stop_exabgp(lab: Lab, *, sig: int = signal.SIGTERM, timeout_s: float = STOP_TIMEOUT_S
                ) -> float:
    """Stop the lab's ExaBGP the way the shipped systemd unit does (KillMode=mixed): `sig` to
    ExaBGP alone, which stops its controller itself; SIGKILL to whatever is left after
    `timeout_s` (systemd's TimeoutStopSec). ExaBGP 5.0.15 sends no NOTIFICATION on any of
    these (it closes its sockets), so the transits keep our routes in graceful-restart
    helper mode. Returns the seconds until ExaBGP and the controller were gone. Raises
    LabError when ExaBGP is not running."""
    pidfile = lab.pidfile("exabgp")
    if not is_running(pidfile, "exabgp"):
        raise LabError(f"ExaBGP of lab {lab.name} is not running", exitcodes.FAILURE)
    pid = int(pidfile.read_text().split()[0])
    family = [pid, *exabgp_children(lab)]
    started = time.monotonic()
    os.kill(pid, sig)
    if not _wait_gone(family, timeout_s):
        for p in family:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGKILL)
        _wait_gone(family, 5.0)
    return time.monotonic() - started


def restart_exabgp(lab: Lab, *, gap_s: float = 2.0, sig: int = signal.SIGTERM) -> dict:
    """Stop ExaBGP like the systemd unit does (`stop_exabgp`), wait `gap_s`, start it again
    with a freshly rendered config (`start_exabgp`): what `systemctl restart` does, with
    the gap standing for an upgrade or a slow start. Returns {"stop_s", "gap_s"}."""
    stop_s = stop_exabgp(lab, sig=sig)
    time.sleep(gap_s)
    start_exabgp(lab, load_site(lab.site_file))
    return {"stop_s": round(stop_s, 3), "gap_s": gap_s}


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
    return is_running(lab.pidfile("exabgp"), "exabgp")
