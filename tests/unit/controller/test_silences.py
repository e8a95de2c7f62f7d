"""A drain through the controller's control API opens an Alertmanager silence, and a restore
or the lease's expiry expires it, through the real HTTP adapter against an in-memory
Alertmanager API; an Alertmanager that fails never fails the operator's drain."""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from prometheus_client import CollectorRegistry

from netwatch.config import load_site
from netwatch.control.protocol import Command, Peer, Request, validate_args
from netwatch.controller.daemon import Controller
from netwatch.observability.silences import rfc3339

WALL = 1_800_000_000.0
ROOT = Peer(pid=1, uid=0, gid=0, user="root", may_write=True)
INSTANCE = "edge1.test:9111"


class FakeAlertmanagerApi:
    """Alertmanager's API v2 silences, in memory, over HTTP on loopback. `fail` answers 500."""

    def __init__(self):
        self.silences: dict[str, dict] = {}
        self.fail = False
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _answer(self, code: int, body=None):
                data = b"" if body is None else json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                if api.fail:
                    return self._answer(500, {"error": "down"})
                self._answer(200, list(api.silences.values()))

            def do_POST(self):
                if api.fail:
                    return self._answer(500, {"error": "down"})
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                silence_id = body.get("id") or str(uuid.uuid4())
                api.silences[silence_id] = {**body, "id": silence_id,
                                            "status": {"state": "active"}}
                self._answer(200, {"silenceID": silence_id})

            def do_DELETE(self):
                if api.fail:
                    return self._answer(500, {"error": "down"})
                api.silences[self.path.rsplit("/", 1)[1]]["status"] = {"state": "expired"}
                self._answer(200)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def live(self) -> list[dict]:
        return [s for s in self.silences.values() if s["status"]["state"] == "active"]


@pytest.fixture
def am_api():
    api = FakeAlertmanagerApi()
    yield api
    api.server.shutdown()


class Pipe:
    def __init__(self):
        self.written: list[str] = []

    def send(self, line: str) -> None:
        self.written.append(line)

    async def flush(self) -> None:
        pass


class WallClock:
    def __init__(self, now: float):
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def controller(site_copy, clock, am_api, quiet_probes):
    path = site_copy(alertmanager={"url": am_api.url, "timeout_s": 1,
                                   "instance": {"controller": INSTANCE}})
    pipe, wall = Pipe(), WallClock(WALL)
    registry = CollectorRegistry()
    c = Controller(load_site(path), registry, pipe, mono=clock, wall=wall,
                   boot=lambda: "boot-1", routes=quiet_probes, prober=quiet_probes)
    c.start()
    peers = [str(u.neighbor) for u in c.ctl.upstreams] + [
        str(u.neighbor6) for u in c.ctl.upstreams if u.neighbor6 is not None]
    c.on_event(json.dumps([{"fsm": "ESTABLISHED", "peer": {"address": p}} for p in peers]))
    c.on_event("done")
    while pipe.written:  # ExaBGP accepts the full desired state and the End-of-RIBs
        lines = list(pipe.written)
        pipe.written.clear()
        for line in lines:
            if line != "show neighbor json":
                c.on_event("done")
    return c, wall, registry


def request(cmd: Command, **args) -> Request:
    return Request(7, cmd, validate_args(cmd, args))


async def settle(c: Controller, check) -> None:
    """Run the silence worker until `check()` holds (2 s at most)."""
    worker = asyncio.create_task(c.control.silences.run())
    try:
        for _ in range(200):
            if check():
                return
            await asyncio.sleep(0.01)
        raise AssertionError("the silence worker did not get there")
    finally:
        worker.cancel()


def test_a_drain_opens_a_silence_until_its_expiry_and_restore_expires_it(controller, am_api):
    c, _, _ = controller

    async def scenario():
        change = await c.control.handle(
            request(Command.DRAIN, upstream="t2", reason="CHG-7 maintenance", graceful_s=0,
                    for_s=3600), ROOT)
        assert change["lease"]["target"] == "t2"  # answered before Alertmanager was asked
        await settle(c, lambda: len(am_api.live()) == 1)
        [silence] = am_api.live()
        assert silence["createdBy"] == "netwatch"
        assert silence["endsAt"] == rfc3339(WALL + 3600) == "2027-01-15T09:00:00.000Z"
        assert {m["name"]: m["value"] for m in silence["matchers"]}["upstream"] == "t2"
        assert "CHG-7 maintenance" in silence["comment"] and INSTANCE in silence["comment"]
        await c.control.handle(request(Command.RESTORE, upstream="t2", reason="done"), ROOT)
        await settle(c, lambda: am_api.live() == [])

    asyncio.run(scenario())


def test_an_expired_drain_expires_its_silence(controller, am_api):
    c, wall, _ = controller

    async def scenario():
        await c.control.handle(request(Command.DRAIN, upstream="t2", reason="CHG-8",
                                       graceful_s=0, for_s=60), ROOT)
        await settle(c, lambda: len(am_api.live()) == 1)
        wall.now += 61
        await c.control.tick()
        await settle(c, lambda: am_api.live() == [])

    asyncio.run(scenario())


def test_an_alertmanager_that_fails_never_fails_the_drain(controller, am_api, caplog):
    c, _, registry = controller
    am_api.fail = True

    def errors() -> float:
        return registry.get_sample_value("netwatch_controller_errors_total",
                                         {"where": "silence"})

    async def scenario():
        assert errors() == 0
        for upstream in ("t2", "t3"):
            change = await c.control.handle(
                request(Command.DRAIN, upstream=upstream, reason="CHG-9", graceful_s=0,
                        for_s=600, force=True), ROOT)
            assert change["lease"]["target"] == upstream
        await settle(c, lambda: errors() == 2)

    asyncio.run(scenario())
    failed = [r for r in caplog.records if "event=silence_failed" in r.getMessage()]
    assert len(failed) == 1  # once per episode
    assert am_api.silences == {}
