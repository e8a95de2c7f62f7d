"""The control API's wire protocol, version 1: lines of JSON, requests and answers. Pure.

Framing: one JSON object per line (UTF-8, `\\n`-terminated) each way. A request line is at
most MAX_LINE_BYTES; answers have no cap.

Request::

    {"v": 1, "id": 7, "cmd": "drain", "args": {"upstream": "t1", "reason": "CHG-42", ...}}

`id` is an integer or a short string, echoed in the answer; `args` may be left out when the
command takes none. Answer::

    {"v": 1, "id": 7, "ok": true, "result": {...}}
    {"v": 1, "id": 7, "ok": false, "error": {"code": "refused", "message": "..."}}

Error codes (`ErrorCode`): bad_request (malformed line, wrong or unknown argument),
unknown_command (no such command, or not one this daemon serves), too_large (line over the
cap: the connection is closed after the answer), permission (a write from a peer that may
only read), refused (a safety rule said no: the message says which), not_found (no such
override or upstream), unavailable (the daemon cannot do it now), internal (a bug: the
daemon logged it).

A stream: `events` with `"follow": true` answers with one line per event,
`{"v": 1, "id": 7, "ok": true, "event": {...}}`, the recent ones first, then each new one as it
is recorded, until the client closes the connection. An answer line with `ok: false` ends it.

Commands (`Command`), their arguments (`validate_args` fills in the defaults) and who serves
them (`SERVED_BY`); W marks a write, which needs write permission (root, the daemon's own
user, or a member of the configured control group):

    status                                   -> AgentStatus | ControllerStatus
    events   since: epoch s | null, limit: 1..10000 = 100, follow: bool = false
                                             -> {"events": [Event...], "skipped": int}
    W failover to: primary|secondary|auto, reason, for_s: s = 3600 (not with auto)
                                             -> Change (agent)
    W drain    upstream, reason, for_s = 3600, graceful_s: s | null (site default),
               force: bool = false           -> Change (controller)
    W restore  upstream, reason              -> Change (controller)
    W prepend  upstream, count: 1..10, reason, for_s = 3600
                                             -> Change (controller)
    overrides                                -> {"now": epoch s, "overrides": [Lease...]}
    W override_extend id, for_s, reason      -> Change
    W override_delete id, reason             -> Change

`reason` is always required: one non-empty line of at most 300 characters. `for_s` is more
than 0 and at most 7 days. Unknown argument names are errors.

JSON shapes of the results (every time is wall-clock seconds since the epoch, every duration
has its unit in its name; a value not known yet is null):

    Lease  = {"id": "c3", "kind": "failover"|"drain"|"prepend",
              "target": "secondary" | upstream name, "who": {"uid": 0, "user": "root"},
              "reason": str, "created_at": t, "renewed_at": t, "expires_at": t,
              "count": int|null (prepend), "graceful_s": float|null (drain),
              "forced": bool (drain past the interlock)}
    Change = {"lease": Lease|null (the lease created or extended),
              "replaced": [Lease] (ended because the new one took its slot),
              "removed": [Lease] (ended by this request), "message": str (what happened)}
    Event  = {"ts": t, "kind": "request" | an automatic action's kind, ...fields};
             a request: {"uid", "user", "pid", "cmd", "args", "reason", "ok",
                         "result" | "error": {"code", "message"}}

`AgentStatus`, `ControllerStatus` and their parts are the TypedDicts below. A renderer must
cope with a daemon that leaves out a key it does not know yet, and with only one of the two
daemons answering.

Nothing here touches a socket: the server, the client and the CLI build on these functions.
"""

from __future__ import annotations

import enum
import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypedDict

from netwatch.control import leases
from netwatch.control.leases import Who

VERSION = 1
MAX_LINE_BYTES = 64 * 1024  # a request line; a real one is under 1 KiB
MAX_ID_CHARS = 64
MAX_EVENTS = 10_000  # per `events` answer


# --- errors -------------------------------------------------------------------------------


class ErrorCode(enum.Enum):
    BAD_REQUEST = "bad_request"
    UNKNOWN_COMMAND = "unknown_command"
    TOO_LARGE = "too_large"
    PERMISSION = "permission"
    REFUSED = "refused"
    NOT_FOUND = "not_found"
    UNAVAILABLE = "unavailable"
    INTERNAL = "internal"


class ControlError(Exception):
    """An error answer. Handlers raise a subclass; the server answers it as
    `{"ok": false, "error": {"code": cls.code, "message": str(exc)}}`, and the client raises
    the same subclass from such an answer. `request_id` is the request's id when known."""

    code: ErrorCode = ErrorCode.INTERNAL

    def __init__(self, message: str, *, request_id: int | str | None = None):
        super().__init__(message)
        self.request_id = request_id

    @property
    def message(self) -> str:
        return str(self)

    def to_json(self) -> dict:
        return {"code": self.code.value, "message": self.message}


class BadRequest(ControlError):
    code = ErrorCode.BAD_REQUEST


class UnknownCommand(ControlError):
    code = ErrorCode.UNKNOWN_COMMAND


class TooLarge(ControlError):
    code = ErrorCode.TOO_LARGE


class PermissionDenied(ControlError):
    code = ErrorCode.PERMISSION


class Refused(ControlError):
    code = ErrorCode.REFUSED


class NotFound(ControlError):
    code = ErrorCode.NOT_FOUND


class Unavailable(ControlError):
    code = ErrorCode.UNAVAILABLE


class Internal(ControlError):
    code = ErrorCode.INTERNAL


ERRORS: dict[ErrorCode, type[ControlError]] = {
    cls.code: cls
    for cls in (BadRequest, UnknownCommand, TooLarge, PermissionDenied, Refused, NotFound,
                Unavailable, Internal)
}


def error_of(code: ErrorCode, message: str, request_id: int | str | None = None) -> ControlError:
    """The ControlError subclass for `code`."""
    return ERRORS[code](message, request_id=request_id)


# --- commands -----------------------------------------------------------------------------


class Command(enum.Enum):
    """A control command; the value is its name on the wire."""

    STATUS = "status"
    EVENTS = "events"
    FAILOVER = "failover"
    DRAIN = "drain"
    RESTORE = "restore"
    PREPEND = "prepend"
    OVERRIDES = "overrides"
    OVERRIDE_EXTEND = "override_extend"
    OVERRIDE_DELETE = "override_delete"

    @property
    def writes(self) -> bool:
        """True for a command that changes what the daemon does (needs write permission)."""
        return self in WRITE_COMMANDS


WRITE_COMMANDS = frozenset({
    Command.FAILOVER, Command.DRAIN, Command.RESTORE, Command.PREPEND,
    Command.OVERRIDE_EXTEND, Command.OVERRIDE_DELETE,
})
_COMMON = frozenset({
    Command.STATUS, Command.EVENTS, Command.OVERRIDES, Command.OVERRIDE_EXTEND,
    Command.OVERRIDE_DELETE,
})
# Which daemon serves which command; `events` is served by the control server itself.
SERVED_BY: dict[str, frozenset[Command]] = {
    "agent": _COMMON | {Command.FAILOVER},
    "controller": _COMMON | {Command.DRAIN, Command.RESTORE, Command.PREPEND},
}
# The first letters of each daemon's override ids ("a3" is the agent's, "c7" the controller's).
LEASE_ID_PREFIX: dict[str, str] = {"agent": "a", "controller": "c"}
FAILOVER_AUTO = "auto"  # `failover to=auto`: end the forced failover


@dataclass(frozen=True)
class Peer:
    """Who is on the other end of a connection (SO_PEERCRED), as the server saw it."""

    uid: int
    gid: int
    pid: int
    user: str  # the account name, or the uid as text when it has none
    may_write: bool = False

    @property
    def who(self) -> Who:
        return Who(self.uid, self.user)


@dataclass(frozen=True)
class Request:
    """A validated request: `args` has every argument of `cmd`, defaults filled in."""

    id: int | str
    cmd: Command
    args: Mapping[str, Any] = field(default_factory=dict)


# --- argument rules -----------------------------------------------------------------------


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{leases.shown(value)} is not true or false")
    return value


def _timestamp(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{leases.shown(value)} is not a time (seconds since the epoch)")
    if value < 0:
        raise ValueError(f"{leases.shown(value)} is before the epoch")
    return float(value)


def _limit(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_EVENTS:
        raise ValueError(f"{leases.shown(value)} is not an integer from 1 to {MAX_EVENTS}")
    return value


def _failover_to(value: Any) -> str:
    if value == FAILOVER_AUTO:
        return value
    try:
        return leases.check_uplink(value)
    except ValueError:
        raise ValueError(f"{leases.shown(value)} is not primary, secondary or auto") from None


@dataclass(frozen=True)
class _Arg:
    check: Callable[[Any], Any]
    required: bool = False
    default: Any = None


_REASON = _Arg(leases.check_reason, required=True)
_FOR_S = _Arg(leases.check_for_s, default=leases.DEFAULT_FOR_S)
_UPSTREAM = _Arg(leases.check_upstream, required=True)

_ARGS: dict[Command, dict[str, _Arg]] = {
    Command.STATUS: {},
    Command.EVENTS: {
        "since": _Arg(_timestamp), "limit": _Arg(_limit, default=100),
        "follow": _Arg(_bool, default=False),
    },
    Command.FAILOVER: {
        "to": _Arg(_failover_to, required=True), "reason": _REASON, "for_s": _FOR_S,
    },
    Command.DRAIN: {
        "upstream": _UPSTREAM, "reason": _REASON, "for_s": _FOR_S,
        "graceful_s": _Arg(leases.check_graceful_s), "force": _Arg(_bool, default=False),
    },
    Command.RESTORE: {"upstream": _UPSTREAM, "reason": _REASON},
    Command.PREPEND: {
        "upstream": _UPSTREAM, "count": _Arg(leases.check_count, required=True),
        "reason": _REASON, "for_s": _FOR_S,
    },
    Command.OVERRIDES: {},
    Command.OVERRIDE_EXTEND: {
        "id": _Arg(leases.check_lease_id, required=True),
        "for_s": _Arg(leases.check_for_s, required=True), "reason": _REASON,
    },
    Command.OVERRIDE_DELETE: {
        "id": _Arg(leases.check_lease_id, required=True), "reason": _REASON,
    },
}


def command_of(name: Any) -> Command:
    """The Command named `name`. Raises UnknownCommand (listing the known ones)."""
    try:
        return Command(name)
    except ValueError:
        known = ", ".join(c.value for c in Command)
        raise UnknownCommand(f"unknown command {leases.shown(name)} (known: {known})") from None


def validate_args(cmd: Command, args: Any) -> dict[str, Any]:
    """`args` checked for `cmd`: every argument of the command, defaults filled in. Raises
    BadRequest naming the argument (`drain: args.reason: must not be empty`)."""
    if args is None:
        args = {}
    if not isinstance(args, Mapping):
        raise BadRequest(f"{cmd.value}: args must be an object")
    rules = _ARGS[cmd]
    unknown = sorted(str(k)[:40] for k in args if k not in rules)
    if unknown:
        known = ", ".join(rules) or "none"
        raise BadRequest(
            f"{cmd.value}: unknown argument(s) {', '.join(map(repr, unknown))} (known: {known})"
        )
    out = {}
    for name, rule in rules.items():
        if name not in args:
            if rule.required:
                raise BadRequest(f"{cmd.value}: args.{name}: missing")
            out[name] = rule.default
            continue
        try:
            out[name] = rule.check(args[name])
        except ValueError as exc:
            raise BadRequest(f"{cmd.value}: args.{name}: {exc}") from None
    if cmd is Command.FAILOVER and out["to"] == FAILOVER_AUTO and "for_s" in args:
        raise BadRequest("failover: args.for_s: not with to=auto (it ends the forced failover)")
    return out


def _request_id(value: Any) -> int | str:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise BadRequest("id must be an integer or a string")
    if isinstance(value, str) and (len(value) > MAX_ID_CHARS or not value.isprintable()):
        raise BadRequest(f"id must be at most {MAX_ID_CHARS} printable characters")
    if isinstance(value, int) and not -(2**63) <= value < 2**63:
        raise BadRequest("id is out of the 64-bit range")
    return value


def parse_request(line: bytes) -> Request:
    """The request in one line (with or without its newline). Raises a ControlError:
    TooLarge, BadRequest (not UTF-8 JSON, not an object, wrong version, bad id or args) or
    UnknownCommand; `request_id` is set once the id was read."""
    if len(line) > MAX_LINE_BYTES + 1:
        raise TooLarge(f"request line over {MAX_LINE_BYTES} bytes")
    try:
        data = json.loads(line.decode("utf-8"), parse_constant=_no_constant)
    except UnicodeDecodeError:
        raise BadRequest("request is not UTF-8") from None
    except (ValueError, RecursionError) as exc:
        raise BadRequest(f"request is not JSON: {str(exc)[:100]}") from None
    if not isinstance(data, dict):
        raise BadRequest("request must be a JSON object")
    request_id = _request_id(data["id"]) if "id" in data else None
    try:
        unknown = sorted(str(k)[:40] for k in data if k not in {"v", "id", "cmd", "args"})
        if unknown:
            raise BadRequest(f"unknown request field(s) {', '.join(map(repr, unknown))}")
        if data.get("v") != VERSION:
            raise BadRequest(f"protocol version must be {VERSION} (\"v\": {VERSION})")
        if request_id is None:
            raise BadRequest("id missing")
        if "cmd" not in data:
            raise BadRequest("cmd missing")
        cmd = command_of(data["cmd"])
        return Request(request_id, cmd, validate_args(cmd, data.get("args")))
    except ControlError as exc:
        exc.request_id = request_id
        raise


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def encode_request(request_id: int | str, cmd: Command, args: Mapping[str, Any]) -> bytes:
    """One request line (newline included)."""
    data = {"v": VERSION, "id": request_id, "cmd": cmd.value, "args": dict(args)}
    return _line(data)


# --- answers ------------------------------------------------------------------------------


def _line(data: Mapping[str, Any]) -> bytes:
    # ensure_ascii: whatever a string holds, the line is ASCII and has no raw newline.
    return json.dumps(data, ensure_ascii=True, separators=(",", ":"), allow_nan=False).encode(
        "ascii"
    ) + b"\n"


def encode_result(request_id: int | str | None, result: Any) -> bytes:
    """A success answer. Raises ValueError/TypeError when `result` is not JSON-able."""
    return _line({"v": VERSION, "id": request_id, "ok": True, "result": result})


def encode_event(request_id: int | str | None, event: Mapping[str, Any]) -> bytes:
    """One line of an `events --follow` stream."""
    return _line({"v": VERSION, "id": request_id, "ok": True, "event": dict(event)})


def encode_error(request_id: int | str | None, error: ControlError) -> bytes:
    return _line({"v": VERSION, "id": request_id, "ok": False, "error": error.to_json()})


@dataclass(frozen=True)
class Answer:
    """One answer line as the client reads it: exactly one of result (ok), event (ok, a
    stream) and error (not ok) is meaningful."""

    id: int | str | None
    ok: bool
    result: Any = None
    event: Mapping[str, Any] | None = None
    error: ControlError | None = None


def parse_answer(line: bytes) -> Answer:
    """The answer in one line. Raises ValueError when it is not a protocol-1 answer."""
    try:
        data = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ValueError(f"answer is not JSON: {str(exc)[:100]}") from None
    if not isinstance(data, dict) or data.get("v") != VERSION:
        raise ValueError("answer is not a protocol-1 answer object")
    if not isinstance(data.get("ok"), bool):
        raise ValueError("answer is not a protocol-1 answer object")
    if data["ok"]:
        event = data.get("event")
        if event is not None and not isinstance(event, dict):
            raise ValueError("answer's event is not an object")
        return Answer(data.get("id"), True, data.get("result"), event)
    err = data.get("error")
    if not isinstance(err, dict) or not isinstance(err.get("message"), str):
        raise ValueError("error answer without an error object")
    try:
        code = ErrorCode(err.get("code"))
    except ValueError:
        code = ErrorCode.INTERNAL  # a newer daemon's code: still an error, still shown
    return Answer(data.get("id"), False, error=error_of(code, err["message"], data.get("id")))


# --- durations, as the CLI takes and prints them --------------------------------------------

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd])")


def parse_duration(text: str) -> float:
    """Seconds in `text`: `90` (seconds), `30s`, `5m`, `1h`, `2d`, or a sum such as `1h30m`.
    Raises ValueError with an example for anything else (zero, negative, unknown unit)."""
    value = text.strip().lower()
    hint = f"{text!r} is not a duration (e.g. 90, 30s, 5m, 1h, 2d, 1h30m)"
    if re.fullmatch(r"\d+(?:\.\d+)?", value):
        seconds = float(value)
    else:
        parts = _DURATION.findall(value)
        if not parts or "".join(n + u for n, u in parts) != value:
            raise ValueError(hint)
        seconds = sum(float(n) * _UNITS[u] for n, u in parts)
    if not seconds > 0 or not math.isfinite(seconds):
        raise ValueError(f"{text!r}: a duration must be more than 0")
    return seconds


def format_duration(seconds: float) -> str:
    """`seconds` for people, two units at most: 45s, 3m12s, 1h02m, 2d03h."""
    total = max(0, round(seconds))
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


# --- the status shapes (documentation the renderer and the daemons share) -------------------


class UplinkStatus(TypedDict):
    role: Literal["primary", "secondary"]
    interface: str
    gateway: str | None  # IPv4 gateway
    gateway6: str | None
    state: Literal["up", "down", "unknown"]  # the uplink's verdict (Health)
    carrier: str | None  # "up", "carrier lost", "admin down", "interface vanished"; null: unseen
    rtt_ms: float | None  # the gateway's recent RTT
    loss_ratio: float | None  # 0..1 over the recent probes
    active: bool  # carries the default routes now
    since: float | None  # when `state` last changed
    reason: str  # why it is in that state


class AgentStatus(TypedDict):
    daemon: Literal["agent"]
    site: str
    host: str
    version: str
    now: float  # the daemon's clock: "since" and "left" are relative to it
    mode: str  # "starting", "on_primary", "on_secondary"
    failback: dict  # {"mode": "auto"|"manual", "hold_down_s": float,
    #                  "primary_stable_for_s": float | null}
    both_down: bool
    uplinks: list[UplinkStatus]
    overrides: list[dict]  # [Lease]


class AnnouncementStatus(TypedDict):
    prefix: str
    family: Literal["ipv4", "ipv6"]
    # "normal", "prepend", "communities", "graceful_shutdown" (a drain's first stage), "withdrawn"
    mode: str
    as_path: list[int]
    communities: list[str]


class UpstreamStatus(TypedDict):
    name: str
    asn: int
    state: Literal["healthy", "degraded", "failed"]
    since: float | None  # when `state` last changed
    reason: str
    loss_ratio: float | None  # over the probe window
    median_loss_ratio: float | None  # of the other upstreams
    rtt_ms: float | None
    median_rtt_ms: float | None  # of the other upstreams
    sessions: dict[str, str]  # {"ipv4": "up"|"down"|"unknown", "ipv6": ...}
    announcements: list[AnnouncementStatus]
    egress: bool  # carries outgoing traffic (in the border's default multipath)
    recovery: dict | None  # {"towards": state, "hold_s": float, "left_s": float} while
    #                        earning its way back; null otherwise
    drain: dict | None  # {"stage": "graceful"|"withdrawn", "withdraw_at": t | null}


class ControllerStatus(TypedDict):
    daemon: Literal["controller"]
    site: str
    host: str
    version: str
    now: float
    local_fault: bool  # every upstream looks bad: no BGP action is taken
    safety_holds: list[dict]  # [{"family": "ipv4", "kept": ["t3"]}]: kept against the verdict
    budget: dict  # {"max_actions_per_hour": int, "used": int, "exhausted": bool}
    upstreams: list[UpstreamStatus]
    overrides: list[dict]  # [Lease]
