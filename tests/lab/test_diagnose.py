"""`netwatch diagnose upstream` in the lab: the real scapy tracer on the controller's probe
tables in the edge namespace, against a real blackhole beyond a transit."""

from __future__ import annotations

import json
import sys

from netwatch.config import load_site
from netwatch.lab import faults


def diagnose(lab, node: str, *argv: str):
    return lab.exec(node, sys.executable, "-m", "netwatch.cli", "diagnose", "upstream", *argv,
                    "--config", str(lab.site_file), timeout_s=60)


def gateway_of(lab, name: str) -> str:
    upstream = next(u for u in load_site(lab.site_file).controller.upstreams if u.name == name)
    return str(upstream.probe_nexthop)


def test_a_transit_blackhole_is_named_at_the_transit_s_hop(announced):
    """The controller withdraws t2 meanwhile: `announced` heals and waits until every
    transit holds our prefixes again, so the next test finds the lab as this one did."""
    lab = announced
    faults.apply(lab, "transit-blackhole", "t2")
    done = diagnose(lab, "edge", "t2", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    t2 = gateway_of(lab, "t2")
    assert report["compare"] and report["compare"] != "t2"
    assert len(report["targets"]) == 3
    for target in report["targets"]:
        through, beside = target["through"], target["beside"]
        assert not through["reached"]
        assert through["stops_after"] == {"hop": 1, "addresses": [t2]}  # t2's own router
        assert through["loss_starts_at_hop"] == 2
        assert beside["reached"] and beside["loss_starts_at_hop"] is None
        assert beside["hops"][-1]["addresses"] == [target["target"]]
    assert f"traffic stops after hop 1, {t2} (t2's router), for 3 of 3 target(s)" in \
        report["verdict"]
    assert report["verdict"].endswith("the fault is on t2's side, not ours.")

    text = diagnose(lab, "edge", "t2", "--targets", "1", "--family", "ipv6")
    assert text.returncode == 0, text.stderr
    t2_v6 = str(next(u for u in load_site(lab.site_file).controller.upstreams
                     if u.name == "t2").probe_nexthop6)
    assert f"Verdict: through t2, traffic stops after hop 1, {t2_v6} (t2's router)" in text.stdout


def test_a_healthy_transit_reaches_every_target(lab):
    done = diagnose(lab, "edge", "t1", "--json", "--compare", "t3")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["compare"] == "t3" and report["compare_note"] == "chosen by the operator"
    for target in report["targets"]:
        for side in ("through", "beside"):
            assert target[side]["reached"], target
            assert target[side]["hops"][-1]["addresses"] == [target["target"]]
    assert report["verdict"].startswith("through t1, all 3 target(s) are reached")


def test_without_the_probe_tables_nothing_is_traced(lab):
    """In a namespace where the controller installed no probe table (srv), the mark leads
    nowhere near t2: refused with exit 69 before a packet leaves."""
    done = diagnose(lab, "srv", "t2")
    assert done.returncode == 69
    assert "packets marked 0x4e582 do not go through t2" in done.stderr
