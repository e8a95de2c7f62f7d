"""`netwatch playbook list | show NAME | validate [FILE...] | run NAME --param k=v
[--dry-run] [--yes]`: reviewed runbooks (netwatch.playbook; the format in docs/playbooks.md).

Playbooks are looked up by name in `--playbooks DIR` (default: the shipped ones, from the
checkout or from where the wheel installed them). `run` prints the resolved plan, asks for
confirmation unless `--yes`, then runs it with a line per step (what, elapsed, result) and a
progress line while a step waits. Ctrl-C stops between steps (a wait ends at once) and offers
the rollback; a second Ctrl-C quits at once. `--dry-run` prints the plan and touches nothing:
no daemon, no device, no trail.

The trail of a run (every step, its resolved action and its full output, device output
included, never a credential) is appended to `audit-playbook.jsonl` in the site's state_dir
(`--config`; else /var/lib/netwatch), or to `--trail FILE`: the control API has no request
that adds a record to a daemon's own audit log. Each netwatch action is also in the daemon's
audit log, its reason prefixed with the playbook's name.

Exit codes: 0 the run completed (or the operator stopped it at one of its questions), 1 a step
failed (rolled back or not), the run was stopped with Ctrl-C, or the operator declined to
start it; 64 a wrong command line or parameter; 65 an invalid playbook or inventory; 66 no such
playbook or inventory file.
"""

from __future__ import annotations

import argparse
import os
import pwd
import secrets
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from netwatch import exitcodes
from netwatch.commands import CommandError, site_or_fail
from netwatch.config import ConfigError, Site
from netwatch.config.schema import Control
from netwatch.control.client import DEFAULT_TIMEOUT_S
from netwatch.control.protocol import format_duration
from netwatch.playbook import loader
from netwatch.playbook.inventory import Inventory
from netwatch.playbook.plan import Plan, PlanError, describe, resolve
from netwatch.playbook.ports import ActionFailed

DEFAULT_INVENTORY = "/etc/netwatch/inventory.yaml"
DAEMONS = ("agent", "controller")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("playbook", help="list, check and run reviewed runbooks")
    sub = parser.add_subparsers(dest="playbook_command", metavar="ACTION", required=True)

    def playbooks_option(p: argparse.ArgumentParser) -> None:
        p.add_argument("--playbooks", metavar="DIR",
                       help="where playbooks are found by name (default: the shipped ones)")

    listing = sub.add_parser("list", help="every playbook with its description and parameters")
    playbooks_option(listing)
    listing.set_defaults(func=cmd_list)

    show = sub.add_parser("show", help="a playbook's parameters, steps and rollback")
    show.add_argument("name", metavar="NAME")
    playbooks_option(show)
    show.set_defaults(func=cmd_show)

    validate = sub.add_parser(
        "validate", help="check playbooks and inventories (default: every shipped one); "
                         "every problem as FILE:LINE: path: message",
    )
    validate.add_argument("files", nargs="*", metavar="FILE")
    playbooks_option(validate)
    validate.add_argument("-q", "--quiet", action="store_true", help="print problems only")
    validate.set_defaults(func=cmd_validate)

    run = sub.add_parser("run", help="run a playbook (asks first, unless --yes)")
    run.add_argument("name", metavar="NAME", help="a playbook's name, or a path to its file")
    run.add_argument("--param", "-p", action="append", default=[], metavar="KEY=VALUE",
                     help="a parameter (repeat for each)")
    run.add_argument("--dry-run", action="store_true",
                     help="print every step with its resolved commands; touch nothing")
    run.add_argument("--yes", "-y", action="store_true",
                     help="do not ask before running, and answer yes to the steps' questions")
    where = run.add_mutually_exclusive_group()
    where.add_argument("--config", metavar="FILE",
                       help="site file: the daemons' sockets, state_dir (the trail), the "
                            "upstreams (diagnose steps)")
    where.add_argument("--socket", metavar="PATH",
                       help="talk to the daemon on this socket (for every netwatch step)")
    run.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, metavar="S",
                     help=f"seconds to wait for a daemon's answer (default {DEFAULT_TIMEOUT_S:g})")
    run.add_argument("--inventory", metavar="FILE",
                     help=f"device inventory (default {DEFAULT_INVENTORY}, when it exists)")
    run.add_argument("--trail", metavar="FILE",
                     help="where the run's trail goes (default: audit-playbook.jsonl in the "
                          "site's state_dir)")
    playbooks_option(run)
    run.set_defaults(func=cmd_run)


# --- finding and loading ------------------------------------------------------------------------


def _directory(args: argparse.Namespace) -> Path | None:
    if args.playbooks:
        directory = Path(args.playbooks)
        if not directory.is_dir():
            raise CommandError(f"--playbooks {args.playbooks}: not a directory", exitcodes.NOINPUT)
        return directory
    return loader.shipped_dir()


def _config_error(exc: ConfigError) -> CommandError:
    missing = exc.missing
    return CommandError("\n".join(exc.errors), exitcodes.NOINPUT if missing else exitcodes.DATAERR)


def _load(args: argparse.Namespace) -> loader.PlaybookFile:
    try:
        path = loader.find_playbook(args.name, _directory(args))
    except LookupError as exc:
        raise CommandError(f"netwatch playbook: {exc}", exitcodes.NOINPUT) from None
    try:
        return loader.load_playbook(path)
    except ConfigError as exc:
        raise _config_error(exc) from None


def _inventory(args: argparse.Namespace, needed: bool) -> Inventory | None:
    path = args.inventory or (DEFAULT_INVENTORY if Path(DEFAULT_INVENTORY).exists() else None)
    if path is None:
        return None
    try:
        return loader.load_inventory(path)
    except ConfigError as exc:
        if needed or args.inventory:
            raise _config_error(exc) from None
        return None


# --- list, show, validate ---------------------------------------------------------------------


def _summary(text: str, limit: int = 100) -> str:
    """The first sentence of `text`, on one line, at most `limit` characters."""
    flat = " ".join(text.split())
    sentence = flat.split(". ")[0].rstrip(".")
    return sentence if len(sentence) <= limit else sentence[: limit - 3] + "..."


def cmd_list(args: argparse.Namespace) -> int:
    directory = _directory(args)
    if directory is None:
        raise CommandError("no shipped playbooks found: give --playbooks DIR", exitcodes.NOINPUT)
    rows = []
    for path in loader.playbook_files(directory):
        try:
            pb = loader.load_playbook(path).playbook
        except ConfigError as exc:
            rows.append((path.stem, f"INVALID: {exc.errors[0]}", ""))
            continue
        params = " ".join(
            f"{n}{'' if p.required else '?'}" for n, p in pb.params.items()
        )
        rows.append((pb.name, _summary(pb.description), params))
    width = max((len(r[0]) for r in rows), default=4)
    print(f"playbooks in {directory}:")
    for name, summary, params in rows:
        print(f"  {name:<{width}}  {summary}" + (f"\n  {'':<{width}}  params: {params}"
                                                  if params else ""))
    return exitcodes.OK


def cmd_show(args: argparse.Namespace) -> int:
    pf = _load(args)
    pb = pf.playbook
    print(f"playbook {pb.name} ({pf.path})")
    print(pb.description.rstrip())
    if pb.alerts:
        print(f"runbook for: {', '.join(pb.alerts)}")
    if pb.params:
        print("parameters:")
        for name, p in pb.params.items():
            extra = "required" if p.required else (
                f"default {p.default}" if p.default is not None else "optional")
            choices = f", one of {', '.join(map(str, p.choices))}" if p.choices else ""
            about = f": {p.description}" if p.description else ""
            print(f"  {name} ({p.type}, {extra}{choices}){about}")
    for title, steps in (("steps", pb.steps), ("rollback", pb.rollback)):
        if not steps:
            continue
        print(f"{title}:")
        for i, step in enumerate(steps, 1):
            label = f"R{i}" if title == "rollback" else str(i)
            print(f"  {label:>3}. [{step.kind}] {step.name or '(unnamed)'}"
                  f"  (on failure: {step.on_failure})")
            if step.confirm:
                print(f"       asks first: {step.confirm}")
    print(f"dry-run it: netwatch playbook run {pb.name} --dry-run"
          + "".join(f" --param {n}=..." for n, p in pb.params.items() if p.required))
    return exitcodes.OK


def cmd_validate(args: argparse.Namespace) -> int:
    if args.files:
        paths = [Path(f) for f in args.files]
    else:
        directory = _directory(args)
        if directory is None:
            raise CommandError("no shipped playbooks found: give FILE... or --playbooks DIR",
                               exitcodes.NOINPUT)
        paths = loader.playbook_files(directory) + sorted(directory.glob("inventory*.yaml"))
    worst = exitcodes.OK
    for path in paths:
        try:
            if path.name.startswith("inventory"):
                inventory = loader.load_inventory(path)
                summary = f"inventory, {len(inventory.devices)} device(s)"
            else:
                pb = loader.load_playbook(path).playbook
                summary = (f"playbook {pb.name}, {len(pb.steps)} step(s), "
                           f"{len(pb.rollback)} rollback step(s)")
        except ConfigError as exc:
            for line in exc.errors:
                print(line, file=sys.stderr)
            missing = exc.missing
            worst = max(worst, exitcodes.NOINPUT if missing else exitcodes.DATAERR)
            continue
        if not args.quiet:
            print(f"{path}: ok ({summary})")
    return worst


# --- run ------------------------------------------------------------------------------------------


def _params(pairs: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CommandError(f"--param {pair!r}: expected KEY=VALUE", exitcodes.USAGE)
        if key in out:
            raise CommandError(f"--param {key}: given twice", exitcodes.USAGE)
        out[key] = value
    return out


def print_plan(plan: Plan, description: str, out=None) -> None:
    """The plan as --dry-run shows it (and `run` before it asks)."""
    out = out or sys.stdout
    print(f"playbook {plan.playbook} ({plan.path})", file=out)
    print(f"  {_summary(description)}", file=out)
    if plan.params:
        shown = " ".join(
            f"{k}={v!r}" if isinstance(v, str) else (f"{k}=(unset)" if v is None else f"{k}={v}")
            for k, v in plan.params.items())
        print(f"parameters: {shown}", file=out)
    for title, steps in (("steps", plan.steps), ("rollback", plan.rollback)):
        if not steps:
            continue
        heading = title if title == "steps" else (
            "rollback (when a step with on_failure: rollback fails, or after Ctrl-C if you "
            "accept it)")
        print(f"{heading}:", file=out)
        for step in steps:
            print(f"  {step.label:>3}. {step.name}  [{step.kind}, on failure: {step.on_failure}]",
                  file=out)
            if step.confirm:
                print(f"       asks first: {step.confirm}", file=out)
            for line in describe(step.action):
                print(f"       {line}", file=out)
    for name, device in plan.devices.items():
        if not device.known_hosts:
            print(f"warning: {name}: no known_hosts in the inventory: its SSH host key is not "
                  "verified", file=out)


class Console:
    """The `Operator` port on a terminal (or a pipe: progress lines every 10 s instead of a
    line redrawn in place)."""

    def __init__(self, out=None, inp=None):
        self.out = out or sys.stdout
        self.inp = inp or sys.stdin
        self.tty = self.out.isatty()
        self._last_progress = 0.0
        self._progress_shown = False

    def _clear(self) -> None:
        if self._progress_shown and self.tty:
            self.out.write("\r\033[K")
        self._progress_shown = False

    def confirm(self, question: str) -> bool:
        self._clear()
        self.out.write(f"{question} [y/N] ")
        self.out.flush()
        answer = self.inp.readline()
        if not answer:
            self.out.write("(no answer: no)\n")
            return False
        if not self.inp.isatty():  # a piped answer is not echoed: show it, for the log
            self.out.write(answer.strip()[:20] + "\n")
        return answer.strip().lower() in ("y", "yes")

    def show(self, text: str) -> None:
        self._clear()
        print(text, file=self.out, flush=True)

    def step_started(self, label: str, total: int, name: str) -> None:
        self._clear()
        self._last_progress = time.monotonic()
        of = f"/{total}" if label.isdigit() else ""
        print(f"[{label}{of}] {name}", file=self.out, flush=True)

    def waiting(self, label: str, elapsed_s: float, limit_s: float, observed: str) -> None:
        line = (f"      waiting {format_duration(elapsed_s)} of {format_duration(limit_s)}"
                + (f": {observed}" if observed else ""))
        if self.tty:
            self.out.write("\r\033[K" + line[:200])
            self.out.flush()
            self._progress_shown = True
        elif time.monotonic() - self._last_progress >= 10.0:
            self._last_progress = time.monotonic()
            print(line, file=self.out, flush=True)

    def step_done(self, label: str, name: str, status: str, elapsed_s: float,
                  output: str) -> None:
        self._clear()
        print(f"      {status.upper()} after {elapsed_s:.1f} s", file=self.out)
        for line in output.rstrip().splitlines():
            print(f"      | {line}", file=self.out)
        self.out.flush()


class _SiteDiagnoser:
    def __init__(self, site: Site | None):
        self.site = site

    def diagnose(self, upstream: str, compare: str | None, targets: int) -> str:
        if self.site is None or self.site.controller is None:
            raise ActionFailed("a diagnose step needs --config FILE with a controller section")
        from netwatch.diagnose.analysis import render_text
        from netwatch.diagnose.run import DiagnoseError, diagnose_here

        try:
            return render_text(diagnose_here(self.site, upstream, compare=compare,
                                             targets=targets))
        except (DiagnoseError, OSError) as exc:
            raise ActionFailed(f"diagnose {upstream}: {exc}") from None


def _sockets(args: argparse.Namespace, site: Site | None) -> dict[str, str]:
    if args.socket:
        return dict.fromkeys(DAEMONS, args.socket)
    control = site.control if site is not None else Control()
    present = [d for d in DAEMONS if site is None or getattr(site, d) is not None]
    return {d: getattr(control, d) for d in present}


def _who() -> dict[str, Any]:
    uid = os.getuid()
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = str(uid)
    return {"uid": uid, "user": user}


def cmd_run(args: argparse.Namespace) -> int:
    given = _params(args.param)
    pf = _load(args)
    site = site_or_fail(args.config) if args.config else None
    inventory = _inventory(args, needed=pf.playbook.has_device_steps and not args.dry_run)
    try:
        plan = resolve(pf, given, inventory, need_inventory=not args.dry_run)
    except PlanError as exc:
        raise CommandError("\n".join(f"netwatch playbook run {pf.name}: {p}"
                                     for p in exc.problems), exitcodes.USAGE) from None
    print_plan(plan, pf.playbook.description)
    if args.dry_run:
        print("dry run: nothing was done (no daemon, device or trail was touched)")
        return exitcodes.OK
    console = Console()
    if not args.yes and not console.confirm(f"Run playbook {plan.playbook} now?"):
        print("not run")
        return exitcodes.FAILURE
    return _run(plan, args, site, console)


def _run(plan: Plan, args: argparse.Namespace, site: Site | None, console: Console) -> int:
    from netwatch.adapters.netmiko_device import NetmikoConnector
    from netwatch.control.audit import AuditLog, audit_path
    from netwatch.playbook.control_port import ClientControl
    from netwatch.playbook.runner import Runner

    state_dir = site.state_dir if site is not None else Site.model_fields["state_dir"].default
    trail_path = Path(args.trail) if args.trail else audit_path(state_dir, "playbook")
    trail = AuditLog(trail_path)
    stop = threading.Event()

    def on_sigint(signum, frame):
        stop.set()
        signal.signal(signal.SIGINT, signal.default_int_handler)
        console.show("Ctrl-C: stopping after this step (Ctrl-C again quits at once)")

    run_id = f"{time.strftime('%Y%m%dT%H%M%S')}-{secrets.token_hex(3)}"
    runner = Runner(
        plan, control=ClientControl(_sockets(args, site), args.timeout),
        devices=NetmikoConnector(), diagnoser=_SiteDiagnoser(site), operator=console,
        trail=trail, stop=stop, run_id=run_id, who=_who(), assume_yes=args.yes,
    )
    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        result = runner.run()
    finally:
        signal.signal(signal.SIGINT, previous)
        trail.close()
    rolled = f", rollback: {len(result.rollback)} step(s)" if result.rollback else ""
    print(f"playbook {plan.playbook}: {result.outcome} in {result.elapsed_s:.1f} s "
          f"({sum(r.ok for r in result.steps)} of {len(plan.steps)} step(s) ok{rolled}); "
          f"trail: {trail_path} run {run_id}")
    return exitcodes.OK if result.ok else exitcodes.FAILURE
