"""The control server on a real Unix socket: answers, limits, timeouts, permissions, audit,
streams, and no crash or leaked descriptor whatever a client sends."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import stat
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from netwatch.control import client
from netwatch.control.protocol import (
    Command,
    ErrorCode,
    Internal,
    NotFound,
    PermissionDenied,
    Refused,
    Unavailable,
    UnknownCommand,
    parse_answer,
)
from netwatch.control.server import ControlServer, Limits

NOBODY = 65534


def raw_exchange(path: str, data: bytes, timeout_s: float = 5.0) -> tuple[list[dict], bool]:
    """Send `data`, close our side, read until the server closes: (answers, closed)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout_s)
        sock.connect(path)
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server closed first (a line too large): what it said is still readable
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except ConnectionResetError:
            pass
    lines = [x for x in received.split(b"\n") if x]
    return [json.loads(x) for x in lines], True


def request_line(cmd: str, request_id: int = 1, **args) -> bytes:
    return json.dumps({"v": 1, "id": request_id, "cmd": cmd, "args": args}).encode() + b"\n"


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def wait_until(check, timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.02)
    return check()


# --- answers --------------------------------------------------------------------------------


def test_status_round_trip_with_the_callers_credentials(serve, agent_status):
    running = serve()
    running.handler.statuses["agent"] = agent_status
    result = client.request(running.path, Command.STATUS)
    assert result["mode"] == "on_secondary"
    _, peer = running.handler.seen[-1]
    assert (peer.uid, peer.gid, peer.pid, peer.user, peer.may_write) == (
        0, os.getgid(), os.getpid(), "root", True
    )


def test_many_clients_at_once_each_get_their_own_answer(serve):
    running = serve()
    running.handler.delay_s = 0.05  # keep them overlapping

    def one(n: int) -> str:
        change = client.request(running.path, Command.FAILOVER,
                                {"to": "secondary", "reason": f"client {n}"})
        return change["lease"]["reason"]

    with ThreadPoolExecutor(40) as pool:
        reasons = list(pool.map(one, range(40)))
    assert reasons == [f"client {n}" for n in range(40)]
    assert len(running.handler.book.leases) == 1  # one failover slot, 39 replacements


def test_requests_on_one_connection_are_answered_in_order(serve):
    running = serve()
    data = b"".join(request_line("status", n) for n in range(5)) + b"\n\n"
    answers, _ = raw_exchange(running.path, data)
    assert [a["id"] for a in answers] == [0, 1, 2, 3, 4]
    assert all(a["ok"] for a in answers)


def test_malformed_input_gets_an_error_and_the_connection_goes_on(serve):
    running = serve()
    data = (b"{oops\n" + b'{"v": 1, "id": "x", "cmd": "nope"}\n' + b"[]\n"
            + request_line("failover", 9, to="secondary") + request_line("status", 10))
    answers, _ = raw_exchange(running.path, data)
    assert [(a["id"], a.get("error", {}).get("code")) for a in answers] == [
        (None, "bad_request"), ("x", "unknown_command"), (None, "bad_request"),
        (9, "bad_request"), (10, None),
    ]
    assert "args.reason: missing" in answers[3]["error"]["message"]


def test_an_oversized_line_is_answered_then_closed(serve):
    running = serve()
    answers, closed = raw_exchange(running.path, b"x" * (200 * 1024) + b"\n" +
                                   request_line("status"))
    assert closed and [a["error"]["code"] for a in answers] == ["too_large"]
    assert client.request(running.path, Command.STATUS)  # still serving


def test_a_partial_line_at_end_of_input_is_answered(serve):
    running = serve()
    answers, _ = raw_exchange(running.path, b'{"v": 1, "id": 4, "cmd": "sta')
    assert [a["error"]["code"] for a in answers] == ["bad_request"]
    assert "no newline" in answers[0]["error"]["message"]


def test_a_silent_or_slow_client_is_disconnected(serve):
    running = serve(limits=Limits(idle_timeout_s=0.3, write_timeout_s=1.0))
    with socket.socket(socket.AF_UNIX) as silent, socket.socket(socket.AF_UNIX) as slow:
        silent.connect(running.path)
        slow.connect(running.path)
        silent.settimeout(3)
        slow.settimeout(3)
        started = time.monotonic()
        try:
            for byte in request_line("status"):  # a byte every 0.1 s: a line takes too long
                slow.sendall(bytes([byte]))
                time.sleep(0.1)
        except BrokenPipeError:
            pass  # the server hung up on it
        else:
            assert slow.recv(100) == b""
        assert silent.recv(100) == b""  # closed by the server, without a word
        assert time.monotonic() - started < 1.5
    assert client.request(running.path, Command.STATUS)


def test_a_client_that_does_not_read_is_dropped(serve, agent_status):
    running = serve(limits=Limits(idle_timeout_s=5, write_timeout_s=0.3))
    running.handler.statuses["agent"] = {**agent_status, "padding": "x" * 4_000_000}
    with socket.socket(socket.AF_UNIX) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(running.path)
        sock.sendall(request_line("status"))
        assert wait_until(lambda: running.connections() == 1, 2)
        assert wait_until(lambda: running.connections() == 0, 3)


def test_file_descriptors_stay_flat_after_abandoned_connections(serve):
    running = serve(limits=Limits(idle_timeout_s=0.3, write_timeout_s=0.3))
    client.request(running.path, Command.STATUS)  # warm up: executor threads, lazy imports
    assert wait_until(lambda: running.connections() == 0)
    before = fd_count()
    socks = []
    for n in range(200):
        sock = socket.socket(socket.AF_UNIX)
        sock.connect(running.path)
        # Over the cap (64) a connection is answered `unavailable` and closed: a write to it
        # may find it closed already (EPIPE), as a real client would.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            if n % 4 == 1:
                sock.sendall(b'{"v": 1, "id"')  # partial
            elif n % 4 == 2:
                sock.sendall(request_line("status"))  # never reads its answer
            elif n % 4 == 3:
                sock.sendall(b"\x00" * 70_000)  # too large
        socks.append(sock)
    for sock in socks[::2]:
        sock.close()  # abandoned at once
    assert wait_until(lambda: running.connections() == 0, 5)  # the rest: timed out
    for sock in socks[1::2]:
        sock.close()
    assert wait_until(lambda: fd_count() == before, 5), (fd_count(), before)


def test_connections_over_the_cap_are_turned_away(serve):
    running = serve(limits=Limits(max_connections=3, idle_timeout_s=5))
    held = [socket.socket(socket.AF_UNIX) for _ in range(3)]
    try:
        for sock in held:
            sock.connect(running.path)
        assert wait_until(lambda: running.connections() == 3)
        answers, _ = raw_exchange(running.path, request_line("status"))
        assert answers[0]["error"]["code"] == "unavailable"
        assert "too many connections" in answers[0]["error"]["message"]
    finally:
        for sock in held:
            sock.close()
    assert wait_until(lambda: client.request(running.path, Command.STATUS) is not None)


# --- what the handler says ------------------------------------------------------------------


def test_a_safety_rule_refusal_is_a_refused_answer(serve):
    running = serve(daemon="controller")
    running.handler.interlocked = frozenset({"t1"})
    with pytest.raises(Refused, match="min_announcing_upstreams"):
        client.request(running.path, Command.DRAIN, {"upstream": "t1", "reason": "CHG-1"})
    forced = client.request(running.path, Command.DRAIN,
                            {"upstream": "t1", "reason": "CHG-1", "force": True})
    assert forced["lease"]["forced"] is True
    with pytest.raises(NotFound, match="no upstream t9"):
        client.request(running.path, Command.RESTORE, {"upstream": "t9", "reason": "x"})


def test_a_command_of_the_other_daemon_points_there(serve):
    running = serve(daemon="agent")
    with pytest.raises(UnknownCommand, match="the agent does not serve drain; ask the controller"):
        client.request(running.path, Command.DRAIN, {"upstream": "t1", "reason": "x"})


class Broken:
    def __init__(self, result):
        self.result = result

    async def handle(self, request, peer):
        if self.result is None:
            raise RuntimeError("boom")
        return self.result


@pytest.mark.parametrize("result", [None, {"not json": object()}])
def test_a_handler_bug_is_an_internal_answer_and_the_server_lives_on(serve, result, caplog):
    running = serve(Broken(result), daemon="agent")
    with pytest.raises(Internal, match="see its log"):
        client.request(running.path, Command.STATUS)
    with pytest.raises(Internal):
        client.request(running.path, Command.STATUS)  # still answering
    assert "Traceback" in caplog.text or "control_" in caplog.text


def test_every_write_is_audited_with_its_outcome_before_the_answer(serve):
    running = serve(daemon="controller")
    running.handler.interlocked = frozenset({"t2"})
    client.request(running.path, Command.DRAIN, {"upstream": "t1", "reason": "CHG-1"})
    with pytest.raises(Refused):
        client.request(running.path, Command.DRAIN, {"upstream": "t2", "reason": "CHG-2"})
    client.request(running.path, Command.STATUS)  # reads are not audited
    events, _ = running.audit.read()
    assert [(e["cmd"], e["reason"], e["ok"]) for e in events] == [
        ("drain", "CHG-1", True), ("drain", "CHG-2", False),
    ]
    assert events[0]["uid"] == 0 and events[0]["user"] == "root"
    assert events[0]["result"]["lease"]["id"] == "c1"
    assert events[1]["error"]["code"] == "refused"


def test_events_read_and_follow(serve):
    running = serve(daemon="agent")
    client.request(running.path, Command.FAILOVER, {"to": "secondary", "reason": "one"})
    answer = client.request(running.path, Command.EVENTS, {"limit": 10})
    assert [e["reason"] for e in answer["events"]] == ["one"] and answer["skipped"] == 0

    stream = client.follow_events(running.path)
    assert next(stream)["reason"] == "one"  # the backlog first
    running.audit.record("failover", uplink="secondary", cause="operator")
    assert next(stream)["kind"] == "failover"  # then live
    assert running.connections() == 1
    stream.close()  # the client hangs up: the stream ends on the server too
    assert wait_until(lambda: running.connections() == 0)


def test_no_audit_log_means_events_are_unavailable(serve):
    running = serve(daemon="agent", audit=False)
    with pytest.raises(Unavailable, match="no audit log"):
        client.request(running.path, Command.EVENTS)


# --- the socket file ------------------------------------------------------------------------


def test_the_socket_gets_its_mode_and_group_and_goes_away_on_close(serve, ctl_dir):
    running = serve(daemon="agent", mode=0o660, group="nogroup")
    info = os.stat(running.path)
    assert stat.S_ISSOCK(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o660
    assert info.st_gid == 65534
    assert sorted(p.name for p in ctl_dir.iterdir()) == ["agent.sock"]  # no temporary left
    running.run(running.server.close())
    assert not Path(running.path).exists()


def test_a_stale_socket_is_replaced_but_a_file_or_a_live_daemon_is_not(serve, ctl_dir):
    stale = ctl_dir / "agent.sock"
    dead = socket.socket(socket.AF_UNIX)
    dead.bind(str(stale))
    dead.close()  # bound, never listening: nobody answers
    running = serve(daemon="agent")
    assert client.request(running.path, Command.STATUS)

    second = ControlServer(stale, "agent", running.handler)
    with pytest.raises(OSError, match="another process is listening"):
        asyncio.run(second.start())
    assert client.request(running.path, Command.STATUS)  # the live one still serves

    plain = ctl_dir / "controller.sock"
    plain.write_text("not a socket")
    with pytest.raises(FileExistsError, match="not a socket"):
        asyncio.run(ControlServer(plain, "controller", running.handler).start())
    assert plain.read_text() == "not a socket"


# --- permissions ----------------------------------------------------------------------------


def test_another_user_without_group_access_is_refused_by_the_socket(serve, as_user):
    running = serve(daemon="agent", mode=0o660)  # root:root 0660

    def status():
        return client.request(running.path, Command.STATUS)

    assert as_user(NOBODY, NOBODY, status) == (
        "raised", "PermissionDenied",
        f"{running.path}: permission denied (the socket is for root and the control group)",
    )
    assert running.handler.seen == []  # never reached the daemon


def test_a_reader_may_read_but_not_write(serve, as_user):
    running = serve(daemon="agent", mode=0o666)

    def status_then_failover():
        status = client.request(running.path, Command.STATUS)
        try:
            client.request(running.path, Command.FAILOVER, {"to": "secondary", "reason": "x"})
        except PermissionDenied as exc:
            return status["daemon"], exc.code.value, str(exc)
        return status["daemon"], "written", ""

    daemon, code, message = as_user(NOBODY, NOBODY, status_then_failover)
    assert (daemon, code) == ("agent", "permission")
    assert "nobody (uid 65534) may read but not failover" in message
    assert running.handler.book.leases == ()
    events, _ = running.audit.read()
    assert [(e["user"], e["ok"], e["error"]["code"]) for e in events] == [
        ("nobody", False, "permission")
    ]


def test_a_member_of_the_control_group_may_write(serve, as_user):
    running = serve(daemon="agent", mode=0o660, group="nogroup")

    def failover():
        return client.request(running.path, Command.FAILOVER,
                              {"to": "secondary", "reason": "on call"})["lease"]["who"]

    assert as_user(NOBODY, NOBODY, failover) == {"uid": NOBODY, "user": "nobody"}


# --- whatever a client throws at it ---------------------------------------------------------

_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                  max_size=4),
    max_leaves=12,
)
_requestish = st.fixed_dictionaries(
    {}, optional={
        "v": st.sampled_from([1, 2, "1", None]),
        "id": st.one_of(st.integers(), st.text(max_size=80), st.booleans(), st.none()),
        "cmd": st.sampled_from([c.value for c in Command] + ["", "reboot"]),
        "args": st.one_of(_json_values, st.dictionaries(
            st.sampled_from(["to", "reason", "for_s", "upstream", "count", "id", "since",
                             "limit", "follow", "force", "graceful_s", "x"]),
            _json_values, max_size=5)),
    },
).map(lambda d: json.dumps(d).encode())
_chunk = st.one_of(
    st.binary(max_size=300),
    _requestish.map(lambda b: b + b"\n"),
    _requestish.flatmap(lambda b: st.integers(0, len(b)).map(lambda n: b[:n])),  # cut short
    st.sampled_from([70_000, 200_000]).map(lambda n: b"a" * n),  # huge
    _json_values.map(lambda v: json.dumps(v).encode() + b"\n"),
)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(chunks=st.lists(_chunk, min_size=1, max_size=4))
def test_random_input_gets_error_answers_or_a_closed_connection(serve_once, chunks):
    running = serve_once
    answers, closed = raw_exchange(running.path, b"".join(chunks))
    assert closed
    for answer in answers:  # every line is a protocol answer
        parsed = parse_answer(json.dumps(answer).encode())
        assert parsed.ok or parsed.error.code in ErrorCode
    # and the daemon goes on serving
    assert client.request(running.path, Command.STATUS)["daemon"] == "controller"


@pytest.fixture
def serve_once(serve):
    """One server for every example of a hypothesis test (a fixture runs once per test)."""
    running = serve(daemon="controller", mode=0o660,
                    limits=Limits(idle_timeout_s=1.0, write_timeout_s=1.0))
    yield running
    assert wait_until(lambda: running.connections() == 0, 5)


def test_the_server_thread_survives_many_short_connections(serve):
    """Connect-and-close storms (port scanners, health checks) leave nothing behind."""
    running = serve()

    def knock():
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(running.path)

    threads = [threading.Thread(target=knock) for _ in range(100)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert wait_until(lambda: running.connections() == 0)
    assert client.request(running.path, Command.STATUS)


def test_an_override_outlives_the_daemon_that_took_it(serve, ctl_dir):
    """A daemon restarted with the same state_dir answers with the same override."""
    first = serve(daemon="agent")
    client.request(first.path, Command.FAILOVER, {"to": "secondary", "reason": "CHG-9"})
    first.run(first.server.close())
    second = serve(daemon="agent")  # a new server and handler on the same state_dir
    listing = client.request(second.path, Command.OVERRIDES)
    assert [(x["id"], x["target"], x["reason"]) for x in listing["overrides"]] == [
        ("a1", "secondary", "CHG-9")]


def test_serve_is_a_worker_that_cleans_up_when_cancelled(ctl_dir):
    """How a daemon runs it: `server.serve()` among its supervised workers."""

    class Status:
        async def handle(self, request, peer):
            return {"daemon": "controller"}

    path = ctl_dir / "controller.sock"

    async def scenario():
        server = ControlServer(path, "controller", Status())
        worker = asyncio.ensure_future(server.serve())
        while not path.exists():
            await asyncio.sleep(0.01)
        answer = await asyncio.to_thread(client.request, path, Command.STATUS)
        worker.cancel()
        await asyncio.gather(worker, return_exceptions=True)
        return answer

    assert asyncio.run(scenario()) == {"daemon": "controller"}
    assert not path.exists()
