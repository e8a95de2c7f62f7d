"""Fixtures of the controller's unit tests.

- `quiet_probes`: probe routes and probers that do nothing, for a controller whose test feeds
  the verdicts itself (pass it as both `routes=` and `prober=`).
"""

from __future__ import annotations

import asyncio

import pytest


class QuietProbes:
    """Probe routes and probers that do nothing: the test feeds the verdicts itself."""

    async def open(self) -> None: ...

    def close(self) -> None: ...

    async def links(self, ifnames) -> dict:
        return {}

    async def ensure_probe_path(self, path) -> bool:
        return False

    def __call__(self, method, family, mark):
        return self

    async def ping(self, target, timeout_s):
        await asyncio.Event().wait()


@pytest.fixture
def quiet_probes() -> QuietProbes:
    return QuietProbes()
