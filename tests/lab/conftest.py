"""The session-scoped `lab` fixture: one real lab (namespaces, BIRD, ExaBGP) for every
integration test, under a unique name, always torn down.

Other test packages use it too: `lab.name`, `lab.run_dir`, `lab.site_file`, `lab.ns(node)`,
`lab.exec(node, *argv)`, `lab.birdc(node, cmd)`, `lab.fault(kind, target, *opts)`,
`lab.heal(target=None)`.
"""

from __future__ import annotations

import io
import os
import secrets
import shutil

import pytest


def lab_unavailable_reason() -> str | None:
    """Why the lab cannot run here, or None."""
    from netwatch.lab.lab import exabgp_program

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
    """Every test here except the pure ones in test_lab_unit.py builds namespaces: mark it
    `lab` (so `-m "not lab"` runs what needs no root) and skip it, with the reason, where
    the lab cannot run."""
    reason = lab_unavailable_reason()
    for item in items:
        if item.path.parent.name != "lab" or item.path.name == "test_lab_unit.py":
            continue
        item.add_marker(pytest.mark.lab)
        if reason:
            item.add_marker(pytest.mark.skip(reason=reason))


def unique_lab_name() -> str:
    return "t" + secrets.token_hex(3)


@pytest.fixture(scope="session")
def lab():
    """A converged lab for the whole test session; removed afterwards whatever happened."""
    reason = lab_unavailable_reason()
    if reason:
        pytest.skip(reason)
    from netwatch.lab import lab as lab_module

    name = unique_lab_name()
    try:
        handle = lab_module.up(name, lab_module.DEFAULT_CONFIG, out=io.StringIO())
    except BaseException:
        lab_module.down(name, quiet=True)
        raise
    try:
        yield handle
    finally:
        lab_module.down(name, quiet=True)


@pytest.fixture
def healed(lab):
    """The lab, healed of every fault after the test."""
    try:
        yield lab
    finally:
        lab.heal()
