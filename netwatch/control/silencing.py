"""The daemons' side of Alertmanager silences: one worker that runs the silence jobs of
operator overrides in order, in a thread, so an operator's request never waits for
Alertmanager and a slow or dead Alertmanager never blocks the event loop.

`SilenceWorker.for_site(site, daemon, wall, on_error)` is None when the site file has no
`alertmanager` section; otherwise the daemon queues jobs (`netwatch.observability.silences
.jobs_for`) with `queue()` and supervises `run()`. A failed job calls `on_error` (the
daemon's counter) and is logged once per episode (`silence_failed`, `silence_recovered`).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable, Iterable

from netwatch.adapters.alertmanager import AlertmanagerError, HttpAlertmanager
from netwatch.observability import silences
from netwatch.runtime.logs import kv

log = logging.getLogger("netwatch.control")


class SilenceWorker:
    def __init__(self, keeper: silences.SilenceKeeper, on_error: Callable[[], None]):
        self.keeper = keeper
        self.on_error = on_error
        self._jobs: asyncio.Queue[silences.SilenceJob] = asyncio.Queue()

    @classmethod
    def for_site(cls, site, daemon: str, wall: Callable[[], float],
                 on_error: Callable[[], None]) -> SilenceWorker | None:
        """The worker for `daemon` ("agent" or "controller"), or None without alertmanager.
        Its `instance` label: the site file's, else this host's name and the metrics port."""
        am = site.alertmanager
        if am is None:
            return None
        instance = silences.instance_label(getattr(am.instance, daemon), socket.getfqdn(),
                                           getattr(site.metrics, daemon))
        keeper = silences.SilenceKeeper(
            HttpAlertmanager(am.url, am.timeout_s), site=site.site, wall=wall,
            instance=instance, survives=(AlertmanagerError, OSError))
        return cls(keeper, on_error)

    def queue(self, jobs: Iterable[silences.SilenceJob]) -> None:
        """Queue `jobs`; never blocks."""
        for job in jobs:
            self._jobs.put_nowait(job)

    async def run(self) -> None:
        """The worker: each queued job, in order, in a thread."""
        while True:
            job = await self._jobs.get()
            outcome = await asyncio.to_thread(self.keeper.run, job)
            if outcome.error is not None:
                self.on_error()
            for level, event, fields in silences.log_lines(outcome):
                log.log(level, kv(event, **fields))
