"""The SSH login that netmiko hands to paramiko: only the inventory's credential is offered,
never the agent's keys or the ~/.ssh keys of whoever runs the playbook."""

from __future__ import annotations

from pathlib import Path

import paramiko
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from netwatch.adapters.netmiko_device import NetmikoConnector
from netwatch.playbook.inventory import Credentials, Device, Secret
from netwatch.playbook.ports import ActionFailed


@pytest.fixture
def paramiko_connects(monkeypatch) -> list[dict]:
    """Every SSHClient.connect's keyword arguments; each connect is refused as a bad login."""
    calls: list[dict] = []

    def connect(self, **kwargs):
        calls.append(kwargs)
        raise paramiko.AuthenticationException("refused by the test")

    monkeypatch.setattr(paramiko.SSHClient, "connect", connect)
    return calls


def _key_file(tmp_path: Path) -> Path:
    key = Ed25519PrivateKey.generate()
    path = tmp_path / "device_key"
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.OpenSSH,
                                       serialization.NoEncryption()))
    path.chmod(0o600)
    return path


def _device(**credential: str) -> Device:
    return Device(host="192.0.2.1", device_type="linux", username="netops", **credential)


def test_a_key_file_login_offers_that_key_and_no_other(tmp_path, paramiko_connects):
    key_path = _key_file(tmp_path)
    device = _device(key_file=str(key_path))
    with pytest.raises(ActionFailed, match=r"authentication failed at 192\.0\.2\.1:22"):
        NetmikoConnector().open("border1", device, Credentials("netops", key_file=str(key_path)))

    [params] = paramiko_connects
    assert params["look_for_keys"] is False
    assert params["allow_agent"] is False
    assert params["key_filename"] is None
    assert params["pkey"] == paramiko.PKey.from_path(key_path)
    assert params["password"] is None


def test_a_password_login_offers_no_key(tmp_path, paramiko_connects):
    device = _device(password_env="BORDER1_PASSWORD")
    with pytest.raises(ActionFailed, match="authentication failed"):
        NetmikoConnector().open("border1", device, Credentials("netops", password=Secret("pw")))

    [params] = paramiko_connects
    assert (params["look_for_keys"], params["allow_agent"]) == (False, False)
    assert params["key_filename"] is None and params["pkey"] is None
    assert params["password"] == "pw"


def test_an_unreadable_key_file_fails_the_open_and_names_the_device(tmp_path, paramiko_connects):
    not_a_key = tmp_path / "device_key"
    not_a_key.write_text("not a private key\n")
    device = _device(key_file=str(not_a_key))
    with pytest.raises(ActionFailed, match=r"^border1: cannot open a session"):
        NetmikoConnector().open("border1", device, Credentials("netops", key_file=str(not_a_key)))
    assert paramiko_connects == []
