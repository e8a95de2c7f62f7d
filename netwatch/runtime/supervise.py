"""One way for a daemon to run its workers: a dead worker stops the daemon.

`supervise(workers, stop)` runs every worker coroutine in one asyncio.TaskGroup until `stop`
is set (SIGTERM, or a worker that is done by design, such as the controller's ExaBGP reader
at EOF). A worker that raises, or returns without `stop` being set, cancels the others and
comes out as `WorkerDied` naming it, so the daemon exits non-zero and its supervisor (systemd,
or ExaBGP for the controller) starts it again. What the daemon left in the kernel or in ExaBGP
stays as it was: routes and announcements are never undone on the way out.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Mapping
from typing import Any


class WorkerDied(RuntimeError):
    """A worker raised or returned. `worker` is its name; `__cause__` the error, if any."""

    def __init__(self, worker: str, error: BaseException | None = None):
        self.worker = worker
        self.error = error
        what = f"{type(error).__name__}: {error}" if error is not None else "returned"
        super().__init__(f"worker {worker} {'died: ' + what if error else what}")


class _Stopped(Exception):
    """Raised inside the group to end it when `stop` is set (not an error)."""


async def supervise(workers: Mapping[str, Coroutine[Any, Any, Any]], stop: asyncio.Event) -> None:
    """Run `workers` ({name: coroutine}) until `stop` is set. Raises WorkerDied for the first
    worker that raised or returned while `stop` was not set; the others are cancelled and
    awaited either way."""

    async def guarded(name: str, coroutine: Coroutine[Any, Any, Any]) -> None:
        try:
            await coroutine
        except asyncio.CancelledError as exc:
            # Cancelled by the group (another worker died, or stop): ends quietly. A worker
            # that dies of a CancelledError of its own (a future it awaited was cancelled by
            # someone else) would otherwise count as cancelled, which a TaskGroup ignores:
            # the daemon would run on without it.
            task = asyncio.current_task()
            if stop.is_set() or (task is not None and task.cancelling()):
                raise
            raise WorkerDied(name, exc) from exc
        except Exception as exc:
            if stop.is_set():
                return
            raise WorkerDied(name, exc) from exc
        if not stop.is_set():
            raise WorkerDied(name)

    async def stopper() -> None:
        await stop.wait()
        raise _Stopped

    try:
        async with asyncio.TaskGroup() as group:
            for name, coroutine in workers.items():
                group.create_task(guarded(name, coroutine), name=name)
            group.create_task(stopper(), name="stop")
    except* _Stopped:
        pass
    except* WorkerDied as died:
        raise died.exceptions[0] from died.exceptions[0].__cause__
