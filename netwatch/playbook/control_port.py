"""The `Control` port over the control API's client (`netwatch.control.client`).

One socket per daemon ("agent", "controller"), as the site file's `control` section names
them (or one `--socket` for both). Every error of the client becomes `ActionFailed` with the
daemon's name and the error's code: `controller: refused: draining t1 would leave ipv4
announced to 1 upstream ...`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from netwatch.control.client import DEFAULT_TIMEOUT_S, DaemonUnreachable, request
from netwatch.control.protocol import Command, ControlError
from netwatch.playbook.ports import ActionFailed


class ClientControl:
    def __init__(self, sockets: Mapping[str, str], timeout_s: float = DEFAULT_TIMEOUT_S):
        self.sockets = dict(sockets)
        self.timeout_s = timeout_s

    def call(self, daemon: str, command: Command, args: Mapping[str, Any]) -> Any:
        path = self.sockets.get(daemon)
        if path is None:
            raise ActionFailed(f"{daemon}: no control socket known (the site file has no "
                               f"`{daemon}` section; give --socket or another --config)")
        try:
            return request(path, command, dict(args), timeout_s=self.timeout_s)
        except ControlError as exc:
            raise ActionFailed(f"{daemon}: {exc.code.value}: {exc}") from None
        except DaemonUnreachable as exc:
            raise ActionFailed(f"{daemon}: unreachable: {exc}") from None
