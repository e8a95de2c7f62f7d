"""A write whose answer never comes may have been applied: the CLI says the outcome is
unknown (exit 75), not that the daemon is unreachable (69); a read stays unreachable."""

from __future__ import annotations

import socket
import threading

import pytest

from netwatch import exitcodes
from netwatch.commands import exit_code_of
from netwatch.control import client
from netwatch.control.protocol import Command


@pytest.fixture
def mute_daemon(tmp_path):
    """A socket that takes requests and never answers; its path."""
    path = tmp_path / "mute.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen()
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept():
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            held.append(conn)  # read nothing, answer nothing

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield path
    stop.set()
    thread.join(2)
    for conn in held:
        conn.close()
    server.close()


def test_a_write_that_times_out_has_an_unknown_outcome(mute_daemon):
    with pytest.raises(client.OutcomeUnknown, match="outcome unknown") as info:
        client.request(mute_daemon, Command.FAILOVER,
                       {"to": "secondary", "reason": "CHG-1"}, timeout_s=0.2)
    assert "netwatch overrides" in str(info.value)
    assert exit_code_of(info.value) == exitcodes.TEMPFAIL


def test_a_read_that_times_out_is_unreachable(mute_daemon):
    with pytest.raises(client.DaemonUnreachable) as info:
        client.request(mute_daemon, Command.STATUS, timeout_s=0.2)
    assert exit_code_of(info.value) == exitcodes.UNAVAILABLE
