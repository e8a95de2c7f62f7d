"""The controller's ExaBGP side with a recording pipe and fake clocks: what it writes at
start, how it retries a rejected command, what it learns from `show neighbor json`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry

from netwatch import exabgp
from netwatch.config import load_site
from netwatch.controller import Controller

ROOT = Path(__file__).resolve().parents[2]


class RecordingPipe:
    def __init__(self):
        self.lines: list[str] = []

    def send(self, line: str) -> None:
        self.lines.append(line)


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def controller(tmp_path):
    raw = yaml.safe_load((ROOT / "probes/lab-site.yaml").read_text())
    raw["state_dir"] = str(tmp_path / "state")
    raw["controller"]["probe"]["targets_file"] = str(ROOT / "probes/targets/lab.yaml")
    site_file = tmp_path / "site.yaml"
    site_file.write_text(yaml.safe_dump(raw))
    clock = Clock()
    registry = CollectorRegistry()
    ctl = Controller(load_site(site_file), registry, RecordingPipe(), clock=clock, mono=clock)
    ctl.registry, ctl.clock_ = registry, clock
    return ctl


def test_rejected_commands_back_off_up_to_the_cap_and_are_counted(controller):
    c, clock = controller, controller.clock_
    c.sync()
    first = list(c.pipe.lines)
    assert len(first) == 8  # 4 upstreams x 2 families, one prefix each: announce
    gaps = []
    for _ in range(8):
        c.pipe.lines.clear()
        c.on_event("error")  # ExaBGP rejects the first command in flight
        for _ in range(len(c.pending)):
            c.on_event("done")
        sent_at = clock.now
        while not c.pipe.lines:
            clock.now += 0.5
            c.sync()
        gaps.append(clock.now - sent_at)
        assert len(c.pipe.lines) == 1  # only what was rejected is sent again
    # 1 s after the first (the 7 others were accepted, which resets the backoff), then doubling
    assert gaps == [1.0, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert c.registry.get_sample_value("netwatch_exabgp_commands_rejected_total") == 8
    c.on_event("done")  # accepted at last: the next rejection waits 1 s again
    assert c.retry_s == 1.0


def test_show_neighbor_answer_counts_sessions_that_are_already_up(controller):
    c = controller
    answer = [
        # "state" is "down" for a session up < 1 s in ExaBGP 5.0.15: "fsm" is what counts
        {"state": "down", "fsm": "ESTABLISHED", "peer": {"address": str(u.neighbor)}}
        for u in c.ctl.upstreams
    ] + [{"state": "down", "fsm": "ACTIVE", "peer": {"address": str(u.neighbor6)}}
         for u in c.ctl.upstreams]
    c.pending.append(exabgp.show_neighbors())
    c.on_event('{"type": "state", "neighbor": {"address": {"peer": "2001:db8:ffff:1::1"}, '
               '"state": "up"}}')  # an event wins over the answer that follows it
    c.on_event(json.dumps(answer))
    up = c.registry.get_sample_value("netwatch_bgp_session_up", {"upstream": "t2",
                                                                  "family": "ipv4"})
    assert up == 1
    assert c.state.plan.announcing(4) == ["t1", "t2", "t3", "t4"]
    assert all(str(s.value) == "up" for (n, f), s in c.state.sessions.items() if f == 4)
    assert c.state.sessions[("t1", 6)].value == "up"
    assert all(s.value == "down" for (n, f), s in c.state.sessions.items() if f == 6 and n != "t1")
