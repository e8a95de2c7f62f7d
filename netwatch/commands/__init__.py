"""Command groups of the `netwatch` CLI, one module each, and what they share."""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from netwatch import exitcodes
from netwatch.config import ConfigError, Site, load_site
from netwatch.config.schema import Control
from netwatch.control import leases
from netwatch.control.client import DEFAULT_TIMEOUT_S, DaemonUnreachable, request
from netwatch.control.protocol import (
    Command,
    ControlError,
    ErrorCode,
    format_duration,
    parse_duration,
)


class CommandError(Exception):
    """A problem the user can fix: `netwatch.cli.main` prints the message (one or more lines)
    on stderr and exits with `exit_code`, a netwatch.exitcodes value. No traceback."""

    def __init__(self, message: str, exit_code: int = exitcodes.FAILURE):
        super().__init__(message)
        self.exit_code = exit_code


def site_or_fail(path: str | Path, needs: str | None = None) -> Site:
    """The validated site file at `path`, with section `needs` ("agent", "controller") present.

    Raises CommandError listing every problem (exit 65, or 66 when the file is missing).
    """
    try:
        site = load_site(path)
    except ConfigError as exc:
        missing = exc.missing
        raise CommandError(
            "\n".join(exc.errors), exitcodes.NOINPUT if missing else exitcodes.DATAERR
        ) from None
    if needs is not None and getattr(site, needs) is None:
        raise CommandError(f"{path}: no `{needs}` section", exitcodes.DATAERR)
    return site


# --- the control API: what the operator commands (status, failover, ...) share ---------------


@dataclass(frozen=True)
class Daemon:
    """A daemon to ask: its name ("agent", "controller"; None for a bare --socket) and socket."""

    name: str | None
    socket: str

    @property
    def label(self) -> str:
        return self.name or "daemon"


def add_control_options(parser: argparse.ArgumentParser) -> None:
    """--config FILE | --socket PATH, and --timeout, for a command that talks to a daemon."""
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--config", metavar="FILE",
        help="site file: its control section names each daemon's socket "
             "(default: the standard sockets, /run/netwatch/*.sock)",
    )
    where.add_argument("--socket", metavar="PATH", help="talk to the daemon on this socket")
    parser.add_argument(
        "--timeout", type=float, default=DEFAULT_TIMEOUT_S, metavar="S",
        help=f"seconds to wait for a daemon (default {DEFAULT_TIMEOUT_S:g})",
    )


def control_daemons(args: argparse.Namespace, wanted: tuple[str, ...]) -> list[Daemon]:
    """The daemons of `wanted` to ask, from --socket, --config (only those the site file has a
    section for) or the standard socket paths. Raises CommandError (65/66: bad site file)."""
    if args.socket:
        return [Daemon(wanted[0] if len(wanted) == 1 else None, args.socket)]
    if args.config:
        site = site_or_fail(args.config)
        present = tuple(d for d in wanted if getattr(site, d) is not None)
        if not present:
            raise CommandError(
                f"{args.config}: no {' or '.join(wanted)} section: no daemon to ask",
                exitcodes.DATAERR,
            )
        control = site.control
    else:
        present, control = wanted, Control()
    return [Daemon(d, getattr(control, d)) for d in present]


def duration_arg(text: str) -> float:
    """argparse type: a duration (`90`, `30s`, `5m`, `1h`, `2d`) in seconds."""
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def lease_duration_arg(text: str) -> float:
    """argparse type: how long an override lasts (at most 7 days), in seconds."""
    seconds = duration_arg(text)
    try:
        return leases.check_for_s(seconds)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: an override lasts at most 7 days") from None


def reason_arg(text: str) -> str:
    """argparse type: an override's reason (one non-empty line)."""
    try:
        return leases.check_reason(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def upstream_arg(text: str) -> str:
    """argparse type: an upstream's name."""
    try:
        return leases.check_upstream(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


# What each error answer means for the shell (see netwatch.exitcodes).
_EXIT_OF_CODE = {
    ErrorCode.BAD_REQUEST: exitcodes.USAGE,
    ErrorCode.UNKNOWN_COMMAND: exitcodes.USAGE,
    ErrorCode.TOO_LARGE: exitcodes.USAGE,
    ErrorCode.PERMISSION: exitcodes.NOPERM,
    ErrorCode.REFUSED: exitcodes.REFUSED,
    ErrorCode.NOT_FOUND: exitcodes.FAILURE,
    ErrorCode.UNAVAILABLE: exitcodes.TEMPFAIL,
    ErrorCode.INTERNAL: exitcodes.SOFTWARE,
}


def exit_code_of(error: Exception) -> int:
    """The exit code for a failed control request (DaemonUnreachable or a ControlError)."""
    if isinstance(error, DaemonUnreachable):
        return exitcodes.UNAVAILABLE
    if isinstance(error, ControlError):
        return _EXIT_OF_CODE[error.code]
    return exitcodes.SOFTWARE


def error_text(daemon: Daemon, error: Exception) -> str:
    """One line for stderr: `netwatch: controller: refused: drain of t1 would ...`."""
    if isinstance(error, ControlError):
        return f"netwatch: {daemon.label}: {error.code.value}: {error}"
    return f"netwatch: {daemon.label}: unreachable: {error}"


def error_json(error: Exception) -> dict:
    """An error as --json output shows it: {"error": {"code", "message"}}."""
    if isinstance(error, ControlError):
        return {"error": error.to_json()}
    return {"error": {"code": "unreachable", "message": str(error)}}


def call(daemon: Daemon, cmd: Command, args: dict | None, timeout_s: float) -> Any:
    """The result of `cmd` from `daemon`. Raises CommandError with the exit code the error
    means (refused 3, unreachable 69, permission 77, ...)."""
    try:
        return request(daemon.socket, cmd, args, timeout_s=timeout_s)
    except (ControlError, DaemonUnreachable) as exc:
        raise CommandError(error_text(daemon, exc), exit_code_of(exc)) from None


def ask_each(
    daemons: list[Daemon], cmd: Command, args: dict | None, timeout_s: float,
) -> list[tuple[Daemon, Any, Exception | None]]:
    """(daemon, result, error) for each daemon: a read that shows whatever answered."""
    out = []
    for daemon in daemons:
        try:
            out.append((daemon, request(daemon.socket, cmd, args, timeout_s=timeout_s), None))
        except (ControlError, DaemonUnreachable) as exc:
            out.append((daemon, None, exc))
    return out


def worst_exit(answers: list[tuple[Daemon, Any, Exception | None]]) -> int:
    """OK when any daemon answered; else the first error's exit code."""
    if any(error is None for _, _, error in answers):
        return exitcodes.OK
    errors = [error for _, _, error in answers]
    return exit_code_of(errors[0]) if errors else exitcodes.UNAVAILABLE


def format_table(headers: list[str], rows: list[list[str]], indent: str = "  ") -> list[str]:
    """Rows under headers, columns padded to their widest cell; the last column unpadded."""
    widths = [max(len(str(row[i])) for row in [headers, *rows]) for i in range(len(headers))]
    lines = []
    for row in [headers, *rows]:
        cells = [str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)]
        lines.append((indent + "  ".join(cells)).rstrip())
    return lines


def local_time(ts: float) -> str:
    """`ts` (epoch seconds) as local time, to the second."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def print_change(daemon: Daemon, change: Any, as_json: bool) -> None:
    """Print a write's answer (a `Change`, netwatch.control.protocol): what happened and, for
    a lease created or renewed, when it expires."""
    if as_json:
        print(json.dumps(change, indent=2, sort_keys=True))
        return
    if not isinstance(change, dict):
        print(f"{daemon.label}: {change}")
        return
    print(f"{daemon.label}: {change.get('message') or 'done'}")
    lease = change.get("lease")
    if isinstance(lease, dict) and isinstance(lease.get("expires_at"), int | float):
        left = format_duration(lease["expires_at"] - time.time())
        print(f"  expires in {left}, at {local_time(lease['expires_at'])}; "
              f"`netwatch override extend|delete {lease.get('id')}` to change that")
