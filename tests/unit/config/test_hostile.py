"""Hostile or broken site files: every one is answered with exit 65 and a line naming the
problem, within a second, never with a traceback (systemd would restart a daemon that dies on
its config forever)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from netwatch.config import ConfigError, load_site

LAUGHS = "a: &a [" + ",".join(['"lol"'] * 9) + "]\n" + "".join(
    f"{b}: &{b} [" + ",".join([f"*{a}"] * 9) + "]\n"
    for a, b in zip("abcdefgh", "bcdefghi", strict=True)
)
FILES = {
    "billion-laughs": (LAUGHS, "aliases expand the document beyond 100000 nodes"),
    "recursive-list": ("site: &s [*s]\n", ":1: alias *s refers to a node it is inside"),
    "recursive-map": ("a: &m {b: *m}\n", ":1: alias *m refers to a node it is inside"),
    "5000-digits": ("site: " + "9" * 5000 + "\n", "a value cannot be read: Exceeds the limit"),
    "empty-state-dir": (
        "site: s\nasn: 64500\nprefixes: [198.51.100.0/24]\nstate_dir: ''\n",
        ":4: state_dir: '' is not an absolute path",
    ),
    "alias-interface": (
        "site: s\nasn: 64500\nprefixes: [198.51.100.0/24]\nagent:\n  uplinks:\n"
        "    primary: {interface: 'eth0:1', gateway: 100.64.1.1}\n"
        "    secondary: {interface: eth1, gateway: 100.64.2.1}\n",
        ":6: agent.uplinks.primary.interface: 'eth0:1' is not a Linux interface name",
    ),
}


@pytest.mark.parametrize("name", sorted(FILES))
def test_a_hostile_file_is_one_clear_error(tmp_path: Path, name: str) -> None:
    text, expected = FILES[name]
    path = tmp_path / "site.yaml"
    path.write_text(text)
    started = time.monotonic()
    with pytest.raises(ConfigError) as caught:
        load_site(path)
    assert time.monotonic() - started < 1.0
    assert any(expected in error for error in caught.value.errors), caught.value.errors


def test_the_billion_laughs_file_is_small(tmp_path: Path) -> None:
    assert len(LAUGHS) < 400  # the 389-byte file that used to take 31 s


def test_validate_answers_every_hostile_file_with_65(tmp_path: Path) -> None:
    paths = []
    for name, (text, _) in FILES.items():
        path = tmp_path / f"{name}.yaml"
        path.write_text(text)
        paths.append(str(path))
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "netwatch.cli", "config", "validate", *paths],
        capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 65, result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == len(FILES), result.stderr
    assert time.monotonic() - started < 10  # interpreter start included


def test_a_file_over_a_mebibyte_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "site.yaml"
    path.write_text("# padding\n" * 120_000)
    with pytest.raises(ConfigError) as caught:
        load_site(path)
    assert caught.value.errors == [f"{path}: larger than 1048576 bytes"]


def test_an_endless_file_is_read_no_further_than_the_limit() -> None:
    with pytest.raises(ConfigError) as caught:
        load_site("/dev/zero")
    assert caught.value.errors == ["/dev/zero: larger than 1048576 bytes"]
