"""A transit failure never fails a server over: the agent judges the path to our border, the
controller judges the transits.

With the agent running on srv, `transit-blackhole` and `loss 100` on each of t1..t4 in turn:
srv's default routes never change (polled every 50 ms from outside), the agent counts no
failover and never reports both uplinks down, and once the controller has acted (withdrawn
at that transit, out of the border's default) srv reaches every one of the 20 targets. Each
round heals; the next waits until every transit but the one just healed announces normally
(at most two out at once). About two minutes.
"""

from __future__ import annotations

import socket
import threading

import pytest
from pyroute2 import NetNS

from netwatch.config import load_site
from netwatch.lab import faults

pytestmark = pytest.mark.timeout(400)

TRANSITS = ("t1", "t2", "t3", "t4")
PREFIX4 = "198.51.100.0/24"


class RouteWatch(threading.Thread):
    """srv's default routes every 50 ms, read over netlink inside srv: every change seen."""

    def __init__(self, namespace: str):
        super().__init__(daemon=True)
        self.namespace = namespace
        self.stop = threading.Event()
        self.seen: list[tuple] = []
        self.reads = 0

    def defaults(self, ns: NetNS) -> tuple:
        found = []
        for family in (socket.AF_INET, socket.AF_INET6):
            for route in ns.route("dump", family=family, table=254):
                if route.get("dst_len") == 0:
                    found.append((family, route.get_attr("RTA_OIF"),
                                  route.get_attr("RTA_GATEWAY")))
        return tuple(sorted(found, key=str))

    def run(self) -> None:
        ns = NetNS(self.namespace)
        try:
            while not self.stop.wait(0.05):
                now = self.defaults(ns)
                self.reads += 1
                if not self.seen or self.seen[-1] != now:
                    self.seen.append(now)
        finally:
            ns.close()


def targets(lab) -> list[str]:
    """The controller's probe targets (the lab's 20 addresses on inet), from the site file."""
    return [str(t.address) for t in load_site(lab.site_file).controller.probe.targets]


def _all_answer(lab, addresses: list[str], unreached: list[str]) -> bool:
    """Whether srv reaches every address; the ones it does not are left in `unreached`."""
    unreached[:] = [a for a in addresses if lab.ping("srv", a) != 1]
    return not unreached


@pytest.mark.parametrize("fault", [("transit-blackhole",), ("loss", "100")],
                         ids=["transit-blackhole", "loss-100"])
def test_a_transit_failure_moves_no_server(lab, agent, held, wait_for, eventually, fault):
    watch = RouteWatch(lab.ns("srv"))
    failovers_before = {k: v for k, v in agent.metrics().items()
                        if k.startswith("netwatch_agent_failovers_total")}
    everything = targets(lab)
    assert len(everything) == 20, everything
    log_from = agent.log_path.stat().st_size
    watch.start()
    try:
        previous = None
        for transit in TRANSITS:
            # The previous round's transit may still serve its recovery hold; every other one
            # must announce normally, so that at most two transits are out at once: with a
            # third, the interlock (two announcing) would keep a failed one, rightly.
            others = [t for t in TRANSITS if t != previous]
            eventually(lambda ts=others: all(held(t).get(PREFIX4) == "64500" for t in ts), 40,
                       f"{others} do not all announce {PREFIX4} normally before the round "
                       f"of {transit}")
            previous = transit
            faults.apply(lab, fault[0], transit, *fault[1:])
            try:
                eventually(lambda t=transit: PREFIX4 not in held(t), 15,
                           f"the controller did not withdraw {PREFIX4} from {transit}")
                # The border's default leaves the transit within ~0.2 s of the withdrawal.
                unreached: list[str] = []
                took = wait_for(lambda out=unreached: _all_answer(lab, everything, out), 5, 0.2)
                assert took is not None, (
                    f"{fault[0]} {transit}: srv does not reach {unreached} "
                    f"after the controller acted")
            finally:
                faults.heal(lab, transit)
        eventually(lambda: all(held(t).get(PREFIX4) == "64500" for t in TRANSITS), 40,
                   "not every transit announced normally again after the last heal")
    finally:
        watch.stop.set()
        watch.join(5)
    assert watch.reads > 100, f"the route watch read srv's routes only {watch.reads} times"
    assert len(watch.seen) == 1, f"srv's default routes changed: {watch.seen}"
    samples = agent.metrics()
    failovers_after = {k: v for k, v in samples.items()
                       if k.startswith("netwatch_agent_failovers_total")}
    assert failovers_after == failovers_before, (
        f"the agent failed over: {failovers_before} -> {failovers_after}\n{agent.tail()}")
    with open(agent.log_path) as log:
        log.seek(log_from)
        said = [line for line in log if "event=failover" in line or "event=both_down" in line]
    assert said == [], f"the agent logged during the transit faults: {said}"
