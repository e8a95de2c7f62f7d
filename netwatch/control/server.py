"""The control API's server: a Unix stream socket, one JSON request and answer per line.

A daemon plugs in with a handler and, optionally, its audit log::

    server = ControlServer(site.control.agent, "agent", handler, audit=audit,
                           mode=int(site.control.mode, 8), group=site.control.group)
    workers["control"] = server.serve()          # in netwatch.runtime.supervise

`handler.handle(request, peer)` (see `Handler`) answers every command of `SERVED_BY[daemon]`
except `events`, which the server answers from the audit log itself. The handler returns a
JSON-able result or raises a `netwatch.control.protocol.ControlError` subclass (Refused,
NotFound, Unavailable...), which becomes the error answer; any other exception is logged
with its traceback and answered `internal`. It runs on the daemon's event loop: it must not
block, and a staged action (a drain's graceful period) goes on in the background after it
returns.

What the server guarantees, whatever a client does:

- the socket file: a stale one is removed only if it is a socket nobody answers on; a new one
  is bound under a temporary name, given `mode` (default 0660) and `group` (when configured
  and existing), then renamed into place, so it is never reachable with looser permissions;
- the caller's uid, gid and pid come from SO_PEERCRED. Writes (`Command.writes`) are allowed
  to root, to the daemon's own user, and to members of `group` (primary group or a
  supplementary one in the group database); anyone who can open the socket may read;
- one request, one answer, in order, per connection; many connections at once, at most
  `Limits.max_connections` (the next ones get `unavailable` and are closed);
- a line over `Limits.max_line_bytes` gets `too_large` and the connection is closed; a line
  that is not a valid request gets an error answer and the connection goes on; input that
  ends without a newline gets `bad_request` and is closed;
- a client that sends no complete line within `Limits.idle_timeout_s`, or does not read its
  answers within `Limits.write_timeout_s`, is disconnected;
- no exception escapes into the daemon and no file descriptor outlives its connection;
- every write request is recorded in the audit log with its outcome before it is answered;
- `on_request(cmd, error)`, when given, is called once per request line answered: the
  command's name ("invalid" for a line that is no request) and the error answer's code (None
  when it succeeded), for the daemon's request counter. What it raises is logged, not served.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import logging
import os
import pwd
import socket
import stat
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from netwatch.control.audit import AuditLog, without_secrets
from netwatch.control.protocol import (
    MAX_LINE_BYTES,
    SERVED_BY,
    BadRequest,
    Command,
    ControlError,
    ErrorCode,
    Internal,
    Peer,
    PermissionDenied,
    Request,
    TooLarge,
    Unavailable,
    UnknownCommand,
    encode_error,
    encode_event,
    encode_result,
    parse_request,
)
from netwatch.runtime.logs import kv

log = logging.getLogger("netwatch.control")

MAX_SOCKET_PATH_BYTES = 107  # sun_path is 108 bytes with its NUL
_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid
RETRY_FIRST_S = 1.0  # the socket could not be opened: tried again after this,
RETRY_MAX_S = 30.0  # doubling up to this


class Handler(Protocol):
    """A daemon's side of the control API."""

    async def handle(self, request: Request, peer: Peer) -> Any:
        """The result of `request` (validated; a command of SERVED_BY[daemon] but `events`;
        writes only from a peer that may write). Raises a ControlError subclass to refuse."""
        ...


@dataclass(frozen=True)
class Limits:
    idle_timeout_s: float = 30.0  # to send a complete request line
    write_timeout_s: float = 10.0  # for the client to take an answer
    max_connections: int = 64
    max_line_bytes: int = MAX_LINE_BYTES


class ControlServer:
    def __init__(
        self, path: str | Path, daemon: str, handler: Handler, *,
        audit: AuditLog | None = None, mode: int = 0o660, group: str | None = None,
        limits: Limits = Limits(),
        on_request: Callable[[str, ErrorCode | None], None] | None = None,
    ):
        self.path = Path(path)
        self.daemon = daemon
        self.commands = SERVED_BY[daemon]
        self.handler = handler
        self.audit = audit
        self.mode = mode
        self.group = group
        self.limits = limits
        self.on_request = on_request
        self._group_gid: int | None = None
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._inode: int | None = None

    @property
    def connections(self) -> int:
        """Connections being served now."""
        return len(self._tasks)

    # --- lifecycle ---

    async def start(self) -> None:
        """Create the socket and start serving. Raises OSError (the directory cannot be made,
        another daemon answers on the path, the path is not a socket, or is too long)."""
        if len(os.fsencode(self.path)) > MAX_SOCKET_PATH_BYTES:
            raise OSError(f"{self.path}: a socket path has at most {MAX_SOCKET_PATH_BYTES} bytes")
        self._group_gid = self._resolve_group()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale(self.path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        try:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            sock.bind(str(tmp))
            os.chmod(tmp, self.mode)
            if self._group_gid is not None:
                os.chown(tmp, -1, self._group_gid)
            os.rename(tmp, self.path)  # listen() comes after: nobody connected meanwhile
            self._inode = os.stat(self.path).st_ino
            self._server = await asyncio.start_unix_server(
                self._connection, sock=sock, limit=self.limits.max_line_bytes,
            )
        except BaseException:
            sock.close()
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        log.info(kv("control_listening", daemon=self.daemon, path=self.path,
                    mode=f"{self.mode:04o}", group=self.group))

    async def close(self) -> None:
        """Stop accepting, end every connection, remove the socket file (if it is still
        ours). Safe to call twice."""
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
        with contextlib.suppress(OSError):
            if self._inode is not None and os.lstat(self.path).st_ino == self._inode:
                self.path.unlink()
        self._inode = None

    async def serve(self) -> None:
        """Start, then serve until cancelled; close on the way out. A worker for
        `netwatch.runtime.supervise`."""
        await self.start()
        try:
            await asyncio.Future()
        finally:
            await self.close()

    async def serve_retrying(self, on_unavailable: Callable[[OSError, float], None]) -> None:
        """`serve`, but while the socket cannot be opened (another daemon on it, a bad path)
        call `on_unavailable(error, retry_in_s)` and try again, backing off from
        RETRY_FIRST_S to RETRY_MAX_S. A daemon goes on with its real job meanwhile: an
        operator's socket is no reason to stop failing over, and a daemon that exited for it
        would be restarted into the same error in a loop. A worker for
        `netwatch.runtime.supervise`."""
        delay = RETRY_FIRST_S
        while True:
            try:
                await self.start()
            except OSError as exc:
                on_unavailable(exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)
                continue
            try:
                await asyncio.Future()
            finally:
                await self.close()

    async def __aenter__(self) -> ControlServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.close()

    def _resolve_group(self) -> int | None:
        if self.group is None:
            return None
        try:
            return grp.getgrnam(self.group).gr_gid
        except KeyError:
            log.warning(kv("control_group_missing", daemon=self.daemon, group=self.group,
                           effect="writes allowed to root and the daemon's user only"))
            return None

    # --- one connection ---

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        task = asyncio.current_task()
        self._tasks.add(task)
        self._writers.add(writer)
        try:
            if len(self._tasks) > self.limits.max_connections:
                busy = Unavailable(f"too many connections ({self.limits.max_connections})")
                await self._send(writer, encode_error(None, busy))
                return
            sock = writer.get_extra_info("socket")
            creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
            pid, uid, gid = _UCRED.unpack(creds)
            peer = await asyncio.to_thread(self._peer, pid, uid, gid)
            await self._serve(reader, writer, peer)
        except (ConnectionError, TimeoutError, asyncio.IncompleteReadError):
            pass  # the client left or stalled: nothing to answer
        except asyncio.CancelledError:
            # Only `close` cancels this task, which the server owns: end it as done, since
            # Python 3.11's streams log a cancelled connection task as an error.
            pass
        except Exception:
            log.exception(kv("control_connection_error", daemon=self.daemon))
        finally:
            self._tasks.discard(task)
            self._writers.discard(writer)
            await self._hang_up(writer)

    async def _hang_up(self, writer: asyncio.StreamWriter) -> None:
        """Close after the last answer is flushed; abort a client that does not take it."""
        writer.close()
        try:
            async with asyncio.timeout(self.limits.write_timeout_s):
                await writer.wait_closed()
        except (Exception, asyncio.CancelledError):
            writer.transport.abort()

    async def _serve(self, reader, writer, peer: Peer) -> None:
        limits = self.limits
        while True:
            try:
                async with asyncio.timeout(limits.idle_timeout_s):
                    line = await reader.readuntil(b"\n")
            except asyncio.LimitOverrunError:
                too_large = TooLarge(f"request line over {limits.max_line_bytes} bytes")
                self._count("invalid", too_large)
                await self._send(writer, encode_error(None, too_large))
                return
            except asyncio.IncompleteReadError as exc:
                if exc.partial.strip():
                    partial = BadRequest("incomplete request: no newline before end of input")
                    self._count("invalid", partial)
                    await self._send(writer, encode_error(None, partial))
                return
            if not line.strip():
                continue
            if not await self._answer(line, reader, writer, peer):
                return

    async def _answer(self, line: bytes, reader, writer, peer: Peer) -> bool:
        """Answer one request line. False: the connection is done (a stream ended)."""
        try:
            request = parse_request(line)
        except ControlError as exc:
            self._count("invalid", exc)
            await self._send(writer, encode_error(exc.request_id, exc))
            return True
        if request.cmd is Command.EVENTS:  # every daemon: the server reads its audit log
            self._count(request.cmd.value, None if self.audit else Unavailable("no audit log"))
            return await self._events(request, reader, writer)
        result: Any = None
        error: ControlError | None = None
        try:
            result = await self._dispatch(request, peer)
            out = encode_result(request.id, result)
        except ControlError as exc:
            error, out = exc, encode_error(request.id, exc)
        except (TypeError, ValueError):
            log.exception(kv("control_bad_result", daemon=self.daemon, cmd=request.cmd))
            error = Internal("the daemon's answer was not JSON (a bug: see its log)")
            out = encode_error(request.id, error)
        if request.cmd.writes:
            await self._audit_request(request, peer, result, error)
        self._count(request.cmd.value, error)
        await self._send(writer, out)
        return True

    def _count(self, cmd: str, error: ControlError | None) -> None:
        if self.on_request is None:
            return
        try:
            self.on_request(cmd, None if error is None else error.code)
        except Exception:
            log.exception(kv("control_count_failed", daemon=self.daemon, cmd=cmd))

    async def _dispatch(self, request: Request, peer: Peer) -> Any:
        cmd = request.cmd
        if cmd not in self.commands:
            other = [d for d, cmds in SERVED_BY.items() if cmd in cmds and d != self.daemon]
            where = f"; ask the {other[0]}" if other else ""
            raise UnknownCommand(f"the {self.daemon} does not serve {cmd.value}{where}")
        if cmd.writes and not peer.may_write:
            who = f"{peer.user} (uid {peer.uid})"
            allowed = "root" + (f" or members of group {self.group}" if self.group else "")
            raise PermissionDenied(f"{who} may read but not {cmd.value}: writes need {allowed}")
        try:
            return await self.handler.handle(request, peer)
        except ControlError:
            raise
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception(kv("control_handler_error", daemon=self.daemon, cmd=cmd))
            raise Internal(
                f"{cmd.value} failed inside the {self.daemon} (a bug: see its log)"
            ) from None

    async def _events(self, request: Request, reader, writer) -> bool:
        args = request.args
        if self.audit is None:
            await self._send(writer, encode_error(request.id, Unavailable("no audit log")))
            return True
        if not args["follow"]:
            events, skipped = await asyncio.to_thread(self.audit.read, args["since"], args["limit"])
            result = {"events": events, "skipped": skipped}
            await self._send(writer, encode_result(request.id, result))
            return True

        async def pump() -> None:
            async for event in self.audit.follow(args["since"], args["limit"]):
                await self._send(writer, encode_event(request.id, event))

        # The stream ends when the client closes (or sends anything) or stops reading.
        streaming = asyncio.ensure_future(pump())
        hangup = asyncio.ensure_future(reader.read(1))
        try:
            await asyncio.wait({streaming, hangup}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (streaming, hangup):
                task.cancel()
            outcome = await asyncio.gather(streaming, hangup, return_exceptions=True)
        failed = outcome[0]
        if isinstance(failed, Exception) and not isinstance(failed, ConnectionError | TimeoutError):
            log.error(kv("control_follow_failed", daemon=self.daemon, error=repr(failed)))
        return False

    async def _send(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        writer.write(data)
        async with asyncio.timeout(self.limits.write_timeout_s):
            await writer.drain()

    async def _audit_request(self, request: Request, peer: Peer, result: Any,
                             error: ControlError | None) -> None:
        if self.audit is None:
            return
        fields: dict[str, Any] = {
            "uid": peer.uid, "user": peer.user, "pid": peer.pid, "cmd": request.cmd.value,
            "args": without_secrets(dict(request.args)), "reason": request.args.get("reason"),
            "ok": error is None,
        }
        if error is None:
            fields["result"] = result
        else:
            fields["error"] = error.to_json()
        await asyncio.to_thread(self.audit.record, "request", **fields)

    def _peer(self, pid: int, uid: int, gid: int) -> Peer:
        """The peer, named, and whether it may write. Runs in a worker thread: the user and
        group databases may be remote (NSS)."""
        try:
            user = pwd.getpwuid(uid).pw_name
        except KeyError:
            user = None
        return Peer(uid, gid, pid, user or str(uid), self._may_write(uid, gid, user))

    def _may_write(self, uid: int, gid: int, user: str | None) -> bool:
        if uid in (0, os.geteuid()):
            return True
        if self._group_gid is None:
            return False
        if gid == self._group_gid:
            return True
        if user is None:
            return False
        try:
            return self._group_gid in os.getgrouplist(user, gid)
        except OSError:
            return False


def _remove_stale(path: Path) -> None:
    """Remove `path` if it is a socket nobody answers on. Raises OSError when it is not a
    socket (never deleted) or when a daemon is listening on it."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise FileExistsError(f"{path} exists and is not a socket: not removing it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        return
    except OSError:
        pass  # busy or unreachable: assume alive
    finally:
        probe.close()
    raise OSError(f"{path}: another process is listening on it (a second daemon?)")
