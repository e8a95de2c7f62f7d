"""The daemons' state file: atomic and durable saves, loud loads."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from netwatch.runtime.state_store import StateStore


def test_save_and_load_round_trip(tmp_path):
    store = StateStore(tmp_path / "d" / "state.json")
    assert store.load() is None  # no state yet
    store.save({"upstreams": {"t1": {"state": "failed"}}})
    assert store.load() == {"upstreams": {"t1": {"state": "failed"}}}
    assert [p.name for p in (tmp_path / "d").iterdir()] == ["state.json"]  # no temporary left


def test_save_makes_the_rename_durable(tmp_path, monkeypatch):
    """The file is fsynced before the rename and its directory after it."""
    synced, real_fsync, real_replace = [], os.fsync, os.replace

    def fsync(fd):
        synced.append("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real_fsync(fd)

    def replace(src, dst):
        synced.append("rename")
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    StateStore(tmp_path / "state.json").save({"a": 1})
    assert synced == ["file", "rename", "dir"]


@pytest.mark.parametrize(
    ("content", "reason"),
    [("{not json", "not valid JSON"), ("[1, 2]", "expected a JSON object"),
     (b"\xff\xfe{}", "unreadable")],
)
def test_a_damaged_file_is_a_value_error(tmp_path, content, reason):
    path = tmp_path / "state.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(ValueError, match=reason):
        StateStore(path).load()


def test_an_unreadable_file_is_a_value_error(tmp_path, monkeypatch):
    (tmp_path / "is-a-dir").mkdir()
    with pytest.raises(ValueError, match="unreadable"):
        StateStore(tmp_path / "is-a-dir").load()

    def refuse(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_text", refuse)  # root reads any mode: refuse outright
    with pytest.raises(ValueError, match="Permission denied"):
        StateStore(tmp_path / "state.json").load()


@pytest.mark.parametrize("content", [
    "[" * 100_000,  # RecursionError inside json
    '{"a": ' * 50_000 + "1" + "}" * 50_000,
    "\xff\xfe not utf-8",
])
def test_a_damaged_file_is_a_value_error_and_nothing_else(tmp_path, content):
    path = tmp_path / "state.json"
    path.write_bytes(content.encode("latin-1"))
    with pytest.raises(ValueError):
        StateStore(path).load()


def test_a_huge_file_is_refused_before_it_is_read(tmp_path):
    path = tmp_path / "state.json"
    with open(path, "wb") as handle:
        handle.truncate(17 * 1024 * 1024)  # sparse: costs no disk
    with pytest.raises(ValueError, match="larger than"):
        StateStore(path).load()


def test_a_file_that_cannot_be_read_is_told_from_a_damaged_one(tmp_path, monkeypatch):
    from netwatch.runtime.state_store import StateUnreadable

    path = tmp_path / "state.json"
    path.write_text("{not json")
    with pytest.raises(ValueError) as damaged:
        StateStore(path).load()
    assert not isinstance(damaged.value, StateUnreadable)

    def fail(self, *args, **kwargs):
        raise OSError(5, "Input/output error", str(self))

    monkeypatch.setattr(Path, "read_text", fail)
    with pytest.raises(StateUnreadable, match="Input/output error") as unreadable:
        StateStore(path).load()
    assert unreadable.value.errno == 5 and isinstance(unreadable.value, ValueError)
