"""The CLI's client of the control API: blocking, one connection per request, a timeout.

`request(path, cmd, args)` sends one request and returns its result. It raises:

- `DaemonUnreachable`: no socket file, nobody listening (connection refused), no answer
  within `timeout_s`, or the connection closed before an answer;
- `PermissionDenied` (netwatch.control.protocol): the socket's permissions refused us
  (EACCES), or the daemon answered `permission`;
- the other `ControlError` subclasses for error answers (`Refused`, `NotFound`,
  `BadRequest`...), each carrying its `code`; `BadRequest` also for arguments that fail the
  protocol's validation here, before anything is sent;
- `Internal` for an answer that is not protocol 1;
- `OutcomeUnknown` (an `Unavailable`: exit 75) for a write command sent whose answer did not
  come (a timeout, the connection closed): the daemon may have carried it out.

`follow_events(path, ...)` yields the events of an `events --follow` stream until the daemon
closes it (or the caller stops iterating, which closes the connection).
"""

from __future__ import annotations

import itertools
import os
import socket
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from netwatch.control.protocol import (
    Answer,
    Command,
    Internal,
    PermissionDenied,
    Unavailable,
    encode_request,
    parse_answer,
    validate_args,
)

DEFAULT_TIMEOUT_S = 5.0
MAX_ANSWER_BYTES = 64 * 1024 * 1024  # a status of hundreds of upstreams is well under 1 MiB
_ids = itertools.count(1)


class DaemonUnreachable(Exception):
    """Nothing answered on the socket (not running, not started yet, hung)."""


class OutcomeUnknown(Unavailable):
    """A write command went out and no answer came back: it may have been applied (the
    daemon was slow, or died after saving it). Not `DaemonUnreachable`: retrying blindly could
    apply it twice, or an operator could believe a drain is not in force when it is."""


def request(
    path: str | Path, cmd: Command, args: Mapping[str, Any] | None = None, *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> Any:
    """The result of `cmd` with `args` from the daemon on `path`. Raises as the module doc
    says."""
    args = dict(args or {})
    validate_args(cmd, args)  # BadRequest now rather than after a round trip
    with _connect(path, timeout_s) as sock:
        _send(sock, path, encode_request(next(_ids), cmd, args))
        try:
            answer = _read_answer(_lines(sock, path, timeout_s), path)
        except DaemonUnreachable as exc:
            if not cmd.writes:
                raise
            raise OutcomeUnknown(
                f"outcome unknown: {exc}; the {cmd.value} was sent and may have been "
                "applied: check `netwatch overrides`") from None
    if answer.error is not None:
        raise answer.error
    return answer.result


def follow_events(
    path: str | Path, *, since: float | None = None, limit: int = 100,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> Iterator[dict]:
    """The events of `path`'s audit log from `since` (at most `limit` old ones), then each new
    one as it comes, without a timeout once the stream has started. Raises like `request`."""
    args = {"since": since, "limit": limit, "follow": True}
    validate_args(Command.EVENTS, args)
    with _connect(path, timeout_s) as sock:
        _send(sock, path, encode_request(next(_ids), Command.EVENTS, args))
        lines = _lines(sock, path, timeout_s, stream=True)
        while True:
            answer = _read_answer(lines, path, eof_ok=True)
            if answer is None:
                return
            if answer.error is not None:
                raise answer.error
            if answer.event is not None:
                yield dict(answer.event)


def _connect(path: str | Path, timeout_s: float) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout_s)
    try:
        sock.connect(os.fspath(path))
    except FileNotFoundError:
        sock.close()
        raise DaemonUnreachable(f"{path}: no such socket (is the daemon running?)") from None
    except ConnectionRefusedError:
        sock.close()
        raise DaemonUnreachable(f"{path}: connection refused (the daemon is not running)") from None
    except PermissionError:
        sock.close()
        raise PermissionDenied(
            f"{path}: permission denied (the socket is for root and the control group)"
        ) from None
    except TimeoutError:
        sock.close()
        raise DaemonUnreachable(f"{path}: no connection within {timeout_s:g} s") from None
    except OSError as exc:
        sock.close()
        raise DaemonUnreachable(f"{path}: {exc.strerror or exc}") from None
    return sock


def _send(sock: socket.socket, path: str | Path, data: bytes) -> None:
    try:
        sock.sendall(data)
    except TimeoutError:
        raise DaemonUnreachable(f"{path}: the daemon does not take requests") from None
    except OSError as exc:
        raise DaemonUnreachable(f"{path}: {exc.strerror or exc}") from None


def _lines(sock: socket.socket, path: str | Path, timeout_s: float,
           stream: bool = False) -> Iterator[bytes]:
    """The answer lines; a stream has no timeout once its first line came."""
    buffer = b""
    while True:
        newline = buffer.find(b"\n")
        if newline >= 0:
            line, buffer = buffer[: newline + 1], buffer[newline + 1:]
            yield line
            if stream:
                sock.settimeout(None)
            continue
        if len(buffer) > MAX_ANSWER_BYTES:
            raise Internal(f"{path}: answer over {MAX_ANSWER_BYTES} bytes")
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            raise DaemonUnreachable(f"{path}: no answer within {timeout_s:g} s") from None
        except OSError as exc:
            raise DaemonUnreachable(f"{path}: {exc.strerror or exc}") from None
        if not chunk:
            return
        buffer += chunk


def _read_answer(lines: Iterator[bytes], path: str | Path, eof_ok: bool = False) -> Answer | None:
    line = next(lines, None)
    if line is None:
        if eof_ok:
            return None
        raise DaemonUnreachable(f"{path}: the daemon closed the connection without answering")
    try:
        return parse_answer(line)
    except ValueError as exc:
        raise Internal(f"{path}: {exc}") from None
