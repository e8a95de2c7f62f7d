"""`netwatch lab up|down|status|fault|heal|restart-exabgp|exec`: the rehearsal lab.

Every subcommand takes `--name` (default: the one running lab; `up` defaults to "lab").
Errors are one line on stderr with a sysexits code (see netwatch.lab.handle.LabError).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from netwatch import exitcodes
from netwatch.lab.netns import NetnsError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("lab", help="the rehearsal lab (network namespaces, BIRD)")
    sub = parser.add_subparsers(dest="lab_command", metavar="ACTION", required=True)

    def named(name: str, help_text: str, func) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--name", help="lab name (default: the one running lab)")
        p.set_defaults(func=lambda args: _guard(func, args))
        return p

    up = named("up", "build the lab and wait until BGP converged", cmd_up)
    up.add_argument(
        "--config", type=Path, default=None,
        help="site file (default: the lab's own, shipped in the package)",
    )
    up.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for BGP")
    up.add_argument(
        "--keep-on-failure",
        action="store_true",
        help="leave a lab that did not converge in place for debugging",
    )
    named("down", "remove every namespace, veth, process and file of the lab", cmd_down)
    status = named(
        "status", "nodes, links, sessions, our prefixes at each transit, faults", cmd_status
    )
    status.add_argument("--json", action="store_true")
    fault = named(
        "fault",
        "inject a fault (link-down, gateway-silent, gateway-blackhole, "
        "loss, link-loss, latency, transit-blackhole, internet-blackhole, session-reset, "
        "transit-down, "
        "md5-mismatch, full-table)",
        cmd_fault,
    )
    fault.add_argument("kind")
    fault.add_argument("target")
    fault.add_argument("options", nargs="*")
    heal = named("heal", "undo faults on TARGET, or all of them", cmd_heal)
    heal.add_argument("target", nargs="?")
    heal.add_argument("--all", action="store_true")
    restart = named(
        "restart-exabgp",
        "stop ExaBGP as the systemd unit does (SIGTERM), wait, start it again",
        cmd_restart_exabgp,
    )
    restart.add_argument(
        "--gap", type=float, default=2.0, metavar="S",
        help="seconds between the stop and the start (default 2; within "
        "controller.bgp.graceful_restart_s the transits keep our routes)",
    )
    restart.add_argument(
        "--signal", choices=("TERM", "INT", "KILL"), default="TERM",
        help="how ExaBGP is stopped (default TERM, what systemd sends)",
    )
    ex = named("exec", "run a command in a node (birdc uses the node's socket)", cmd_exec)
    ex.add_argument("node")
    ex.add_argument("argv", nargs=argparse.REMAINDER)


def _guard(func, args) -> int:
    from netwatch.lab.handle import LabError

    try:
        return func(args)
    except LabError as exc:
        print(f"netwatch lab: {exc}", file=sys.stderr)
        return exc.exit_code
    except NetnsError as exc:
        print(f"netwatch lab: {exc}", file=sys.stderr)
        return exitcodes.OSERR


def cmd_up(args) -> int:
    from netwatch.lab import lifecycle

    lifecycle.up(
        args.name or lifecycle.DEFAULT_NAME,
        args.config or lifecycle.DEFAULT_CONFIG,
        timeout_s=args.timeout,
        keep_on_failure=args.keep_on_failure,
    )
    return exitcodes.OK


def cmd_down(args) -> int:
    import os

    from netwatch.lab import lifecycle
    from netwatch.lab.handle import Lab

    name = args.name or lifecycle.resolve_name(None)
    if os.geteuid() != 0:
        print("netwatch lab: the lab needs root: run it with sudo", file=sys.stderr)
        return exitcodes.NOPERM
    if not Lab(name).exists():
        print(f"netwatch lab: no lab named {name!r}", file=sys.stderr)
        return exitcodes.NOINPUT
    lifecycle.down(name)
    return exitcodes.OK


def _lab(args):
    from netwatch.lab import lifecycle
    from netwatch.lab.handle import Lab, LabError

    handle = Lab(lifecycle.resolve_name(args.name))
    if not handle.site_file.exists():
        raise LabError(f"no lab named {handle.name!r} is running", exitcodes.NOINPUT)
    return handle


def cmd_status(args) -> int:
    from netwatch.lab import lifecycle

    report = lifecycle.status(_lab(args))
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=True))
        return exitcodes.OK
    print(
        f"lab {report['name']} ({report['phase']}), run dir {report['run_dir']}, "
        f"exabgp {'running' if report['exabgp_running'] else 'NOT running'}"
    )
    missing = [n for n, v in report["nodes"].items() if not v["present"]]
    print(
        f"nodes: {len(report['nodes'])}" + (f" (missing: {', '.join(missing)})" if missing else "")
    )
    for link in report["links"]:
        a, b = link["ends"]
        print(
            f"  link {link['name']:10} {a['node']}:{a['ifname']} {a['state']:7} <-> "
            f"{b['node']}:{b['ifname']} {b['state']}"
        )
    print("sessions:")
    for s in report["sessions"]:
        print(f"  {s['node']:5} {s['protocol']:7} {s['state']:6} {s.get('info', '')}")
    print("our prefixes:")
    for node, prefixes in report["routes"].items():
        for prefix, paths in prefixes.items():
            if not paths:
                print(f"  {node:5} {prefix:20} (none)")
            for path in paths:
                comms = " ".join(filter(None, (path["communities"], path["large_communities"])))
                print(
                    f"  {node:5} {prefix:20} as-path [{path['as_path']}]"
                    + (f" communities {comms}" if comms else "")
                )
    print("faults: " + (", ".join(report["faults"]) or "none"))
    return exitcodes.OK


def cmd_fault(args) -> int:
    from netwatch.lab import faults

    record = faults.apply(_lab(args), args.kind, args.target, *args.options)
    print(
        f"fault {record['kind']} on {record['target']}"
        + (" (one-shot)" if record.get("oneshot") else " active")
    )
    return exitcodes.OK


def cmd_heal(args) -> int:
    if args.target and args.all:
        print("netwatch lab: give a TARGET or --all, not both", file=sys.stderr)
        return exitcodes.USAGE
    from netwatch.lab import faults

    healed = faults.heal(_lab(args), None if args.all else args.target)
    print("healed: " + (", ".join(healed) or "nothing"))
    return exitcodes.OK


def cmd_restart_exabgp(args) -> int:
    import signal

    from netwatch.lab import lifecycle

    if args.gap < 0:
        print("netwatch lab: --gap must be 0 or more seconds", file=sys.stderr)
        return exitcodes.USAGE
    result = lifecycle.restart_exabgp(
        _lab(args), gap_s=args.gap, sig=getattr(signal, f"SIG{args.signal}")
    )
    print(
        f"exabgp stopped (SIG{args.signal}) in {result['stop_s']:.2f} s, started again after "
        f"{result['gap_s']:g} s"
    )
    return exitcodes.OK


def cmd_exec(args) -> int:
    import subprocess

    argv = list(args.argv)
    # argparse's REMAINDER swallows options given after NODE (`lab exec srv --name x -- ip r`):
    # take --name from there too, up to the `--` that starts the command.
    while argv[:1] == ["--name"] and len(argv) > 1:
        args.name, argv = argv[1], argv[2:]
    argv = argv[1:] if argv[:1] == ["--"] else argv
    handle = _lab(args)
    if not argv:
        print("netwatch lab: exec needs a command: lab exec NODE -- CMD...", file=sys.stderr)
        return exitcodes.USAGE
    if args.node not in handle.topology().nodes:
        print(f"netwatch lab: no node {args.node!r}", file=sys.stderr)
        return exitcodes.USAGE
    return subprocess.call(handle.exec_argv(args.node, argv))
