"""Fixtures shared by every test package: the lab's site file (and a copy whose state lives in
the test's tmp_path), a fake clock, wait helpers, and the lab itself.

Tests take these as fixtures (a test module never imports another one or this file):

- `lab_site` (Path): the lab's site file, as the package ships it;
- `site_copy(**changes)` -> Path: a copy of it in tmp_path, state_dir inside tmp_path and the
  targets file by absolute path; `changes` replace top-level keys;
- `clock`: a `FakeClock` at 1000.0 s; `clock.now += 5` moves it;
- `wait_for(check, timeout_s, step_s=0.05) -> float | None`: seconds until check() held, or
  None; `eventually(check, timeout_s, message)`: the same, failing the test with `message`;
- `new_lab_name()`: a fresh unique lab name, for tests that build a lab of their own;
- `lab`: one converged lab (namespaces, BIRD, ExaBGP) for the whole session, under a unique
  name, always removed; `healed`: the lab, healed of every fault after the test.
"""

from __future__ import annotations

import io
import os
import secrets
import shutil
import time
from pathlib import Path

import pytest
import yaml

from netwatch.lab.lifecycle import DEFAULT_CONFIG as LAB_SITE

PURE_LAB_TESTS = {"test_lab.py"}  # tests/unit/lab: pure, no namespaces


class FakeClock:
    """Monotonic seconds that move only when told (decisions read this, nothing else)."""

    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def _wait_for(check, timeout_s: float, step_s: float = 0.05) -> float | None:
    start = time.monotonic()
    while True:
        if check():
            return time.monotonic() - start
        if time.monotonic() - start > timeout_s:
            return None
        time.sleep(step_s)


def _eventually(check, timeout_s: float, message: str, step_s: float = 0.1) -> float:
    took = _wait_for(check, timeout_s, step_s)
    if took is None:
        pytest.fail(f"{message} (not within {timeout_s} s)")
    return took


@pytest.fixture
def lab_site() -> Path:
    return LAB_SITE


@pytest.fixture
def site_copy(tmp_path):
    def make(**changes) -> Path:
        raw = yaml.safe_load(LAB_SITE.read_text())
        raw["state_dir"] = str(tmp_path / "state")
        probe = raw["controller"]["probe"]
        probe["targets_file"] = str((LAB_SITE.parent / probe["targets_file"]).resolve())
        raw.update(changes)
        path = tmp_path / "site.yaml"
        path.write_text(yaml.safe_dump(raw, sort_keys=False))
        return path

    return make


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def wait_for():
    return _wait_for


@pytest.fixture
def eventually():
    return _eventually


# --- the lab ------------------------------------------------------------------------------


def lab_unavailable_reason() -> str | None:
    """Why the lab cannot run here, or None."""
    from netwatch.lab.lifecycle import exabgp_program

    if os.geteuid() != 0:
        return "the lab needs root (network namespaces)"
    if not (shutil.which("bird") and shutil.which("birdc")):
        return "BIRD 2 is not installed (apt-get install bird2)"
    if not exabgp_program():
        return "exabgp is not installed (pip install exabgp)"
    if not (shutil.which("ip") and shutil.which("nft")):
        return "iproute2 and nftables are needed"
    return None


def pytest_collection_modifyitems(config, items):
    """Every test under tests/lab/ builds namespaces: mark it `lab` (so `-m "not lab"` runs
    what needs no root) and skip it, with the reason, where the lab cannot run."""
    reason = lab_unavailable_reason()
    for item in items:
        if item.path.parent.name != "lab" or item.path.parent.parent.name != "tests":
            continue
        item.add_marker(pytest.mark.lab)
        if reason:
            item.add_marker(pytest.mark.skip(reason=reason))


def _unique_lab_name() -> str:
    return "t" + secrets.token_hex(3)


@pytest.fixture
def new_lab_name():
    """A function giving a fresh, unique lab name at each call (for tests that build their
    own labs beside the session's one)."""
    return _unique_lab_name


@pytest.fixture(scope="session")
def lab():
    """A converged lab for the whole test session; removed afterwards whatever happened."""
    reason = lab_unavailable_reason()
    if reason:
        pytest.skip(reason)
    from netwatch.lab import lifecycle

    name = _unique_lab_name()
    try:
        handle = lifecycle.up(name, LAB_SITE, out=io.StringIO())
    except BaseException:
        lifecycle.down(name, quiet=True)
        raise
    try:
        yield handle
    finally:
        lifecycle.down(name, quiet=True)


@pytest.fixture
def healed(lab):
    """The lab, healed of every fault after the test."""
    from netwatch.lab import faults

    try:
        yield lab
    finally:
        faults.heal(lab)
