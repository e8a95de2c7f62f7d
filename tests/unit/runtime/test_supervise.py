"""supervise(): a daemon's workers run until stop; the first one that raises or returns stops
them all and comes out as WorkerDied naming it."""

from __future__ import annotations

import asyncio

import pytest

from netwatch.runtime.supervise import WorkerDied, supervise


class Worker:
    """A worker that runs until cancelled, recording that it started and was cancelled."""

    def __init__(self):
        self.started = self.cancelled = False

    async def run(self):
        self.started = True
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled = True
            raise


def run(main):
    return asyncio.run(asyncio.wait_for(main(), 5))


def test_stop_ends_every_worker_without_an_error():
    workers = [Worker(), Worker()]

    async def main():
        stop = asyncio.Event()
        asyncio.get_running_loop().call_later(0.01, stop.set)
        await supervise({"a": workers[0].run(), "b": workers[1].run()}, stop)

    run(main)
    assert all(w.started and w.cancelled for w in workers)


def test_a_worker_that_raises_stops_the_others_and_is_named():
    other = Worker()

    async def broken():
        await asyncio.sleep(0.01)
        raise ValueError("cannot parse the reply")

    async def main():
        await supervise({"probes": broken(), "events": other.run()}, asyncio.Event())

    with pytest.raises(WorkerDied) as died:
        run(main)
    assert died.value.worker == "probes"
    assert isinstance(died.value.error, ValueError) and died.value.__cause__ is died.value.error
    assert str(died.value) == "worker probes died: ValueError: cannot parse the reply"
    assert other.cancelled


def test_a_worker_that_returns_is_a_dead_worker():
    async def done():
        await asyncio.sleep(0)

    async def main():
        await supervise({"events": done(), "probes": Worker().run()}, asyncio.Event())

    with pytest.raises(WorkerDied) as died:
        run(main)
    assert died.value.worker == "events" and died.value.error is None
    assert str(died.value) == "worker events returned"


def test_a_worker_that_ends_once_stop_is_set_is_no_error():
    """A worker done by design (a reader at EOF) sets stop and returns, or fails on the way
    out: the daemon stops cleanly."""

    async def reader(stop):
        stop.set()
        raise ConnectionResetError("the peer went away as we stopped")

    async def main():
        stop = asyncio.Event()
        await supervise({"reader": reader(stop), "probes": Worker().run()}, stop)

    run(main)


def test_a_worker_that_dies_of_a_stray_cancellation_stops_the_daemon():
    """A future the worker awaits, cancelled by someone else: the worker is dead, although
    nobody cancelled it. A TaskGroup alone would count it as cancelled and run on."""
    other = Worker()

    async def victim():
        future = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().call_later(0.01, future.cancel)
        await future

    async def main():
        await supervise({"victim": victim(), "other": other.run()}, asyncio.Event())

    with pytest.raises(WorkerDied) as died:
        run(main)
    assert died.value.worker == "victim"
    assert isinstance(died.value.error, asyncio.CancelledError)
    assert other.cancelled


def test_cancelling_the_supervisor_cancels_every_worker():
    workers = [Worker(), Worker()]

    async def main():
        task = asyncio.create_task(
            supervise({"a": workers[0].run(), "b": workers[1].run()}, asyncio.Event()))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run(main)
    assert all(w.cancelled for w in workers)
