"""The device inventory: where each device is, how netmiko drives it, and where its
credentials come from. Pure but for reading the credentials when a session opens.

    devices:
      border1:
        host: 192.0.2.254
        port: 22
        device_type: cisco_ios          # a netmiko device type
        username: netwatch
        password_env: NETWATCH_BORDER1_PASSWORD   # exactly one of password_env,
        # password_file: secrets/border1.pass     # password_file (0600, relative to this
        # key_file: keys/border1                  # file) and key_file
        known_hosts: known_hosts        # optional: verify the device's host key

A credential never comes from a playbook, and the inventory holds only where it is: an
environment variable's name or a file's path. `credentials(device)` reads it when a session
opens and wraps it in a `Secret`, whose repr and str are "***", so that no log line, trail
record or exception message can carry it by accident.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from netwatch.core import validators
from netwatch.playbook.values import shown

_HOST = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9.-]{0,252}\Z")
_ENV = re.compile(r"\A[A-Za-z_][A-Za-z0-9_]{0,127}\Z")
_DEVICE_TYPE = re.compile(r"\A[a-z][a-z0-9_]{1,63}\Z")
# Platforms whose configuration has a commit-confirmed: netmiko's `commit(confirm=True)`.
COMMIT_CONFIRMED_PLATFORMS = ("juniper", "juniper_junos", "cisco_xr")


def _host(value: Any) -> str:
    if isinstance(value, str) and ":" in value:
        return str(validators.parse_address(value))
    if not isinstance(value, str) or not _HOST.match(value):
        raise ValueError(f"{shown(value)} is not a host name or an IP address")
    return value


def _env(value: Any) -> str:
    if not isinstance(value, str) or not _ENV.match(value):
        raise ValueError(f"{shown(value)} is not an environment variable's name")
    return value


def _device_type(value: Any) -> str:
    if not isinstance(value, str) or not _DEVICE_TYPE.match(value):
        raise ValueError(f"{shown(value)} is not a netmiko device type (e.g. cisco_ios, linux)")
    return value


def _path(value: Any) -> str:
    if not isinstance(value, str) or not value or "\0" in value or not value.isprintable():
        raise ValueError(f"{shown(value)} is not a file path")
    return value


FilePath = Annotated[str, AfterValidator(_path)]


class Device(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)

    host: Annotated[str, AfterValidator(_host)]
    port: Annotated[int, Field(ge=1, le=65535)] = 22
    device_type: Annotated[str, AfterValidator(_device_type)]
    username: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.@-]+$")]
    password_env: Annotated[str, AfterValidator(_env)] | None = None
    password_file: FilePath | None = None
    key_file: FilePath | None = None
    known_hosts: FilePath | None = None

    @model_validator(mode="after")
    def _one_credential(self) -> Device:
        sources = [n for n in ("password_env", "password_file", "key_file") if getattr(self, n)]
        if len(sources) != 1:
            found = f" (found: {', '.join(sources)})" if sources else ""
            raise ValueError(
                f"a device needs exactly one of password_env, password_file, key_file{found}"
            )
        return self

    @property
    def credential_source(self) -> str:
        """Where the credential comes from, for people (never the credential itself)."""
        if self.password_env:
            return f"password from ${self.password_env}"
        if self.password_file:
            return f"password from {self.password_file}"
        return f"key {self.key_file}"

    @property
    def commit_confirmed(self) -> bool:
        """Whether the platform has its own safety net for configuration."""
        return self.device_type in COMMIT_CONFIRMED_PLATFORMS


class Inventory(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)

    devices: dict[Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")], Device]

    def device(self, name: str) -> Device:
        """The device `name`. Raises KeyError with a message listing the known ones."""
        try:
            return self.devices[name]
        except KeyError:
            known = ", ".join(sorted(self.devices)) or "none"
            raise KeyError(f"no device {name!r} in the inventory (known: {known})") from None


class Secret:
    """A credential: printed, logged or repr'd it is "***"; `reveal()` gives the value."""

    __slots__ = ("_value",)

    def __init__(self, value: str):
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    def __str__(self) -> str:
        return "***"


@dataclass(frozen=True)
class Credentials:
    username: str
    password: Secret | None = None
    key_file: str | None = None


class CredentialError(Exception):
    """A credential cannot be read: the message names where from, never a value."""


def resolve_paths(device: Device, base: Path) -> Device:
    """`device` with its file paths made absolute against `base` (the inventory's directory)."""
    changes = {
        name: str(base / value)
        for name in ("password_file", "key_file", "known_hosts")
        if (value := getattr(device, name)) and not Path(value).is_absolute()
    }
    return device.model_copy(update=changes)


def credentials(device: Device, environ: dict[str, str] | None = None) -> Credentials:
    """`device`'s credentials, read now from its environment variable or file. A password
    file must be readable by its owner only (like ssh's private keys). Raises
    CredentialError."""
    env = os.environ if environ is None else environ
    if device.password_env:
        value = env.get(device.password_env)
        if not value:
            raise CredentialError(f"environment variable {device.password_env} is not set")
        return Credentials(device.username, password=Secret(value))
    if device.password_file:
        path = Path(device.password_file)
        try:
            mode = path.stat().st_mode
            if stat.S_IMODE(mode) & 0o077:
                raise CredentialError(
                    f"{path}: readable by others (mode {stat.S_IMODE(mode):04o}): chmod 600 it"
                )
            value = path.read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as exc:
            raise CredentialError(f"{path}: {exc.strerror or exc}") from None
        except UnicodeDecodeError:
            raise CredentialError(f"{path}: not UTF-8 text") from None
        if not value:
            raise CredentialError(f"{path}: empty")
        return Credentials(device.username, password=Secret(value))
    key = Path(device.key_file or "")
    if not key.is_file():
        raise CredentialError(f"key file {key} does not exist")
    return Credentials(device.username, key_file=str(key))
