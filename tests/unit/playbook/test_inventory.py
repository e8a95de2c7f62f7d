"""Credentials: from an environment variable, a password file or a key file, read only when a
session opens, and never printable."""

from __future__ import annotations

import pytest

from netwatch.playbook.inventory import CredentialError, Device, Secret, credentials


def device(**source) -> Device:
    return Device(host="192.0.2.1", device_type="cisco_ios", username="netwatch", **source)


def test_a_password_from_the_environment():
    creds = credentials(device(password_env="NW_PW"), {"NW_PW": "hunter2"})
    assert creds.password.reveal() == "hunter2" and creds.key_file is None
    with pytest.raises(CredentialError, match="environment variable NW_PW is not set"):
        credentials(device(password_env="NW_PW"), {})


def test_a_password_file_must_be_private(tmp_path):
    path = tmp_path / "pw"
    path.write_text("hunter2\n")
    path.chmod(0o600)
    assert credentials(device(password_file=str(path))).password.reveal() == "hunter2"
    path.chmod(0o640)
    with pytest.raises(CredentialError, match=r"readable by others \(mode 0640\): chmod 600"):
        credentials(device(password_file=str(path)))
    with pytest.raises(CredentialError, match="No such file"):
        credentials(device(password_file=str(tmp_path / "none")))


def test_a_key_file(tmp_path):
    key = tmp_path / "id"
    key.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    assert credentials(device(key_file=str(key))).key_file == str(key)
    with pytest.raises(CredentialError, match="does not exist"):
        credentials(device(key_file=str(tmp_path / "none")))


def test_a_secret_never_prints():
    secret = Secret("hunter2")
    creds = credentials(device(password_env="X"), {"X": "hunter2"})
    for shown in (str(secret), repr(secret), f"{secret}", repr(creds), str(creds)):
        assert "hunter2" not in shown


def test_credential_errors_name_the_source_never_the_value(tmp_path):
    path = tmp_path / "pw"
    path.write_text("hunter2")
    path.chmod(0o644)
    with pytest.raises(CredentialError) as caught:
        credentials(device(password_file=str(path)))
    assert "hunter2" not in str(caught.value)
