"""Where loss starts, read from traceroute replies the way mtr's users read them; the report
side by side; the choice of the upstream to compare with; the check of the probe marks.
All on fakes: the scapy tracer is tested in the lab (tests/lab/test_diagnose.py)."""

from __future__ import annotations

import pytest

from netwatch.config import load_site
from netwatch.diagnose.analysis import Reply, build_trace, render_text
from netwatch.diagnose.run import DiagnoseError, NoProbeRoute, diagnose

PROBES = 3


def replies(path: str, target: str, hops: list[tuple[str | None, int]],
            reached_at: int | None = None) -> list[Reply]:
    """`hops[i]` = (address, answers of PROBES) at TTL i+1; the target answers from
    `reached_at` on."""
    out = []
    for ttl in range(1, 9):
        if reached_at is not None and ttl >= reached_at:
            out += [Reply(path, target, ttl, target, 1.0, True)] * PROBES
            continue
        address, answered = hops[ttl - 1] if ttl <= len(hops) else (None, 0)
        out += [Reply(path, target, ttl, address, 0.5)] * answered
        out += [Reply(path, target, ttl, None, None)] * (PROBES - answered)
    return out


def test_a_blackhole_after_the_first_hop():
    trace = build_trace("t2", "203.0.113.1",
                        replies("t2", "203.0.113.1", [("192.0.2.5", 1)]), PROBES, 8)
    assert not trace.reached
    assert trace.loss_starts_at == 2
    assert trace.stops_after.ttl == 1 and trace.stops_after.addresses == ("192.0.2.5",)
    assert [h.ttl for h in trace.hops] == [1, 2, 3]  # two silent hops shown, not eight


def test_loss_at_a_hop_that_does_not_persist_is_rate_limiting():
    trace = build_trace("t1", "203.0.113.1", replies(
        "t1", "203.0.113.1", [("192.0.2.1", 1), ("198.51.100.1", 3)], reached_at=3),
        PROBES, 8)
    assert trace.reached and trace.loss_starts_at is None
    assert trace.rate_limited(trace.hops[0]) and not trace.rate_limited(trace.hops[1])


def test_loss_that_persists_to_the_target_starts_where_it_starts():
    rs = replies("t1", "x", [("a", 3), ("b", 2), ("c", 1)])
    rs += [Reply("t1", "x", 4, "x", 1.0, True)] * 1 + [Reply("t1", "x", 4, None, None)] * 2
    trace = build_trace("t1", "x", rs, PROBES, 4)
    assert trace.reached and trace.loss_starts_at == 2


def test_nothing_answers():
    trace = build_trace("t3", "x", replies("t3", "x", []), PROBES, 8)
    assert trace.loss_starts_at == 1 and trace.stops_after is None


# --- the whole diagnosis, on a fake tracer and fake kernel routes ------------------------------


class FakeTracer:
    def __init__(self, broken: set[str]):
        self.broken = broken
        self.requests = []

    def trace(self, requests, *, max_ttl, probes, timeout_s, spacing_s):
        self.requests = list(requests)
        gateways = {"t1": "192.0.2.1", "t2": "192.0.2.5", "t3": "192.0.2.9", "t4": "192.0.2.13"}
        out = []
        for r in requests:
            hop = [(gateways[r.path], probes)]
            out += replies(r.path, r.target, hop, None if r.path in self.broken else 2)
        return out


class FakeRoutes:
    def __init__(self, site, missing=()):
        from netwatch.diagnose.run import probe_paths

        self.by_mark = {p.mark: (p.gateway, p.ifname) for by_family in probe_paths(site).values()
                        for p in by_family.values() if p.upstream not in missing}
        self.asked = []

    def route(self, family, mark, target):
        self.asked.append((family, mark, target))
        return self.by_mark.get(mark, ("192.0.2.1", "t1"))  # the main table's multipath


@pytest.fixture
def site(lab_site):
    return load_site(lab_site)


def status_with(states: dict) -> dict:
    return {"upstreams": [{"name": n, "state": s} for n, s in states.items()]}


def test_a_blackholed_upstream_beside_a_healthy_one(site):
    tracer = FakeTracer(broken={"t2"})
    report = diagnose(site, "t2", tracer=tracer, routes=FakeRoutes(site),
                      status=lambda: status_with({"t1": "degraded", "t3": "healthy"}))
    assert report.compare == "t3" and report.compare_note == "healthy, by the controller's status"
    assert {(r.path, r.mark, r.target) for r in tracer.requests} == {
        ("t2", 0x4E582, "203.0.113.1"), ("t2", 0x4E582, "203.0.113.2"),
        ("t2", 0x4E582, "203.0.113.3"), ("t3", 0x4E584, "203.0.113.1"),
        ("t3", 0x4E584, "203.0.113.2"), ("t3", 0x4E584, "203.0.113.3")}
    assert report.verdict == (
        "through t2, traffic stops after hop 1, 192.0.2.5 (t2's router), for 3 of 3 target(s); "
        "through t3, 3 of 3 reached; the fault is on t2's side, not ours.")
    text = render_text(report)
    assert "Diagnosis of upstream t2 (ipv4: mark 0x4e582, table 2002, via 192.0.2.5 dev t2)" \
        in text
    assert "through t2: not reached within 16 hops; loss starts at hop 2 (nothing answers " \
        "after hop 1, 192.0.2.5 (t2's router))" in text
    assert "through t3: reached in 2 hop(s), no loss" in text
    data = report.to_json()
    first = data["targets"][0]
    assert first["through"]["stops_after"] == {"hop": 1, "addresses": ["192.0.2.5"]}
    assert first["through"]["loss_starts_at_hop"] == 2
    assert first["beside"]["reached"] is True


def test_both_failing_points_at_us(site):
    report = diagnose(site, "t2", tracer=FakeTracer({"t2", "t1"}), routes=FakeRoutes(site),
                      status=lambda: None, family=6, targets=1)
    assert report.family == "ipv6" and report.compare == "t1"
    assert report.compare_note == "the controller did not answer: its health is not known"
    assert report.verdict.endswith("both fail: the fault is more likely ours or the targets'.")


def test_no_trace_when_the_mark_does_not_lead_through_the_upstream(site):
    tracer = FakeTracer(set())
    with pytest.raises(NoProbeRoute, match=r"packets marked 0x4e582 do not go through t2: the "
                                           r"kernel routes them via 192\.0\.2\.1 dev t1"):
        diagnose(site, "t2", tracer=tracer, routes=FakeRoutes(site, missing={"t2"}),
                 status=lambda: None)
    assert tracer.requests == []  # not one packet


@pytest.mark.parametrize(("name", "options", "message"), [
    ("t9", {}, "no upstream 't9' in the site file"),
    ("t2", {"compare": "t2"}, "--compare t2: not another upstream"),
    ("t3", {"family": 6, "compare": "t9"}, "--compare t9: not another upstream"),
])
def test_wrong_names_are_refused(site, name, options, message):
    with pytest.raises(DiagnoseError, match=message):
        diagnose(site, name, tracer=FakeTracer(set()), routes=FakeRoutes(site),
                 status=lambda: None, **options)
