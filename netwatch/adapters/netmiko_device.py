"""SSH sessions to network devices through netmiko: the playbook runner's `DeviceConnector`
and `DeviceSession` ports (netwatch.playbook.ports). I/O only.

- Credentials come in as a `Credentials` (a password `Secret` or a key file) and go only to
  netmiko; no message of this module contains one. Agent and `~/.ssh` keys are never used
  (paramiko gets allow_agent=False, look_for_keys=False): the inventory says exactly how a
  device is logged into. A key file is loaded here and must not need a passphrase.
- With `known_hosts` in the inventory the device's host key must be in that file (paramiko's
  RejectPolicy); without it, netmiko accepts any host key, and `netwatch playbook run`
  says so in its plan.
- Configuration on a commit-confirmed platform (Junos, IOS XR) stays in configuration mode
  after `send_config`; `commit_confirmed` commits with the platform's timer and
  `confirm_commit` confirms it. Junos counts the timer in minutes, IOS XR in seconds.
- Every netmiko, paramiko or socket error becomes `ActionFailed`, with the device's name.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from typing import Any

from netwatch.playbook.inventory import Credentials, Device
from netwatch.playbook.ports import ActionFailed

CONNECT_TIMEOUT_S = 15.0


def _errors() -> tuple[type[BaseException], ...]:
    from netmiko.exceptions import NetmikoBaseException
    from paramiko.pkey import UnknownKeyType
    from paramiko.ssh_exception import SSHException

    return (NetmikoBaseException, SSHException, UnknownKeyType, OSError, EOFError,
            socket.timeout, ValueError)


class NetmikoSession:
    def __init__(self, name: str, device: Device, connection: Any):
        self.name = name
        self.device = device
        self.connection = connection

    def _do(self, what: str, call, *args, **kwargs) -> str:
        try:
            return str(call(*args, **kwargs))
        except _errors() as exc:
            raise ActionFailed(f"{self.name}: {what}: {type(exc).__name__}: "
                               f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
                               ) from None

    def send_command(self, line: str, timeout_s: float) -> str:
        return self._do(f"`{line}`", self.connection.send_command, line, read_timeout=timeout_s)

    def send_config(self, lines: Sequence[str], timeout_s: float) -> str:
        return self._do("configuration", self.connection.send_config_set, list(lines),
                        read_timeout=timeout_s, exit_config_mode=not self.device.commit_confirmed)

    def commit_confirmed(self, minutes: int, timeout_s: float) -> str:
        delay = minutes * 60 if self.device.device_type.startswith("cisco_xr") else minutes
        out = self._do("commit confirmed", self.connection.commit, confirm=True,
                       confirm_delay=delay, read_timeout=max(timeout_s, 120.0))
        return out + self._do("leaving configuration mode", self.connection.exit_config_mode)

    def confirm_commit(self, timeout_s: float) -> str:
        out = self._do("confirming the commit", self.connection.commit,
                       read_timeout=max(timeout_s, 120.0))
        return out + self._do("leaving configuration mode", self.connection.exit_config_mode)

    def close(self) -> None:
        self._do("disconnect", self.connection.disconnect)


def _login(credentials: Credentials) -> dict[str, Any]:
    """netmiko's login parameters for `credentials`: the password, or the key file loaded
    here as a paramiko key. Raises OSError if the key file cannot be read and paramiko's
    SSHException if it is not a private key (or needs a passphrase)."""
    if credentials.password is not None:
        return {"password": credentials.password.reveal(), "use_keys": False}
    from paramiko import PKey

    # netmiko's use_keys=True becomes paramiko's look_for_keys=True, which also offers the
    # ~/.ssh/id_* keys of whoever runs the playbook (usually root). Handing paramiko the
    # loaded key with use_keys=False offers that key and no other.
    return {"pkey": PKey.from_path(credentials.key_file), "use_keys": False, "password": None}


class NetmikoConnector:
    def __init__(self, connect_timeout_s: float = CONNECT_TIMEOUT_S):
        self.connect_timeout_s = connect_timeout_s

    def open(self, name: str, device: Device, credentials: Credentials) -> NetmikoSession:
        from netmiko import ConnectHandler
        from netmiko.exceptions import NetmikoAuthenticationException

        params: dict[str, Any] = {
            "device_type": device.device_type,
            "host": device.host,
            "port": device.port,
            "username": credentials.username,
            "allow_agent": False,
            "conn_timeout": self.connect_timeout_s,
            "auth_timeout": self.connect_timeout_s,
            "banner_timeout": self.connect_timeout_s,
        }
        if device.known_hosts:
            params.update(ssh_strict=True, system_host_keys=False, alt_host_keys=True,
                          alt_key_file=device.known_hosts)
        where = f"{device.host}:{device.port}"
        try:
            params.update(_login(credentials))
            connection = ConnectHandler(**params)
        except NetmikoAuthenticationException:
            raise ActionFailed(f"{name}: authentication failed at {where} for user "
                               f"{credentials.username}") from None
        except _errors() as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise ActionFailed(f"{name}: cannot open a session to {where}: "
                               f"{type(exc).__name__}: {first}") from None
        return NetmikoSession(name, device, connection)
