"""`netwatch agent`: an agent that cannot even be built exits with the documented code, a log
line and no traceback. The Agent is replaced by one that fails as it is built: the real one
would start failing over in this namespace."""

from __future__ import annotations

import errno

import pytest

from netwatch import exitcodes
from netwatch.agent import daemon
from netwatch.cli import main


def failing_agent(exc: Exception):
    class Agent:
        def __init__(self, *args, **kwargs):
            raise exc

    return Agent


@pytest.mark.parametrize("exc, code", [
    (ValueError("ipv6 is managed but has no probe kind"), exitcodes.DATAERR),
    (OSError(errno.EADDRINUSE, "Address in use"), exitcodes.OSERR),
    (PermissionError(errno.EACCES, "Permission denied"), exitcodes.NOPERM),
    (RuntimeError("a bug"), exitcodes.SOFTWARE),
])
def test_an_agent_that_cannot_be_built_exits_with_its_code(site_copy, monkeypatch, capsys,
                                                           exc, code):
    monkeypatch.setattr(daemon, "Agent", failing_agent(exc))
    monkeypatch.setenv("NETWATCH_IN_PLACE", "1")  # not in a fresh image: this test's Agent
    rc = main(["agent", "--config", str(site_copy()), "--metrics-listen", "none"])
    err = capsys.readouterr().err
    assert rc == code
    assert "event=fatal" in err and str(exc.args[-1]) in err
    if code != exitcodes.SOFTWARE:
        assert "Traceback" not in err
