"""The uplink agent with IPv6 duplicate address detection left on, and with an uplink's
interface renamed or deleted under it, in namespaces of its own.

The lab turns DAD off everywhere (its faults re-add addresses with `nodad`), so no lab test
sees a tentative address. Here a small network is built per test with the kernel's DAD on
(`accept_dad=1`, no `nodad`) and `keep_addr_on_down=1` (as the lab, so an admin flap keeps
the addresses and makes them tentative again):

    srv  eth0 ==== srv  gwa   (100.64.1.0/24, 2001:db8:1::/64; gwa: fe80::1)
         eth1 ==== srv  gwb   (100.64.2.0/24, 2001:db8:2::/64; gwb: fe80::1)

Each gateway also holds the beyond targets (198.51.100.1, 2001:db8:100::1) on its loopback,
so the beyond probes through either uplink are answered by its gateway. srv's interfaces
repeat DAD three times (about 4 s instead of 1-2), so that an agent that starts in a second
surely meets a tentative address. The namespaces are `dad-<random>-srv/gwa/gwb`, removed
whatever happens; the agent is stopped by its PID.
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.timeout(180)

HOLD_DOWN_S = 2
METRICS = "127.0.0.1:9110"
# Beyond targets inside the site's prefixes (a target of our own network, as the site file's
# rules want), held by both gateways.
PREFIXES = ["198.51.100.0/24", "2001:db8:100::/48"]
TARGETS = ("198.51.100.1", "2001:db8:100::1")
UPLINKS = {  # srv's interface: (gateway namespace, IPv4 net, IPv6 net)
    "eth0": ("gwa", "100.64.1", "2001:db8:1"),
    "eth1": ("gwb", "100.64.2", "2001:db8:2"),
}
FAILOVER = re.compile(r"event=failover uplink=(\w+) previous=(\w+) families=([\w,]+) "
                      r"cause=(\w+)")


def ip(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *argv], check=check, capture_output=True, text=True)


@dataclass
class Net:
    """The namespaces of one test: `ns(node)` is a node's namespace name."""

    prefix: str

    def ns(self, node: str) -> str:
        return f"{self.prefix}-{node}"

    def run(self, node: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        return ip("-n", self.ns(node), *argv, check=check)

    def sysctl(self, node: str, **values: str) -> None:
        args = [f"{k.replace('__', '.')}={v}" for k, v in values.items()]
        subprocess.run(["ip", "netns", "exec", self.ns(node), "sysctl", "-qw", *args],
                       check=True, capture_output=True)

    def default_dev(self, version: int) -> str | None:
        """The interface of srv's default route of that IP version, or None."""
        out = self.run("srv", f"-{version}", "route", "show", "default").stdout
        found = re.search(r"\bdev (\S+)", out)
        return found.group(1) if found else None

    def routes(self) -> dict[str, str | None]:
        return {"IPv4": self.default_dev(4), "IPv6": self.default_dev(6)}

    def tentative(self, dev: str) -> bool:
        """True while srv's `dev` has an address in DAD."""
        out = self.run("srv", "-6", "addr", "show", "dev", dev, "tentative", check=False)
        return "inet6" in out.stdout

    def ping(self, target: str) -> bool:
        argv = ["ip", "netns", "exec", self.ns("srv"), "ping", "-c", "1", "-W", "1", target]
        return subprocess.run(argv, capture_output=True).returncode == 0

    def metrics(self) -> dict[str, float]:
        argv = ["ip", "netns", "exec", self.ns("srv"), "curl", "-s", "--max-time", "2",
                f"http://{METRICS}/metrics"]
        out = subprocess.run(argv, capture_output=True, text=True).stdout
        samples = {}
        for line in out.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                samples[name] = float(value)
        return samples

    def connect(self, dev: str, up: bool = True) -> None:
        """A veth from srv's `dev` to its gateway (`srv` on that side), addressed without
        `nodad`; srv's end brought up only when `up`."""
        gw, v4, v6 = UPLINKS[dev]
        self.run("srv", "link", "add", dev, "type", "veth", "peer", "name", "srv", "netns",
                 self.ns(gw))
        self.run("srv", "addr", "add", f"{v4}.10/24", "dev", dev)
        self.run("srv", "addr", "add", f"{v6}::10/64", "dev", dev)
        self.run(gw, "addr", "add", f"{v4}.1/24", "dev", "srv")
        self.run(gw, "addr", "add", "fe80::1/64", "dev", "srv")
        self.run(gw, "addr", "add", f"{v6}::1/64", "dev", "srv")
        self.run(gw, "link", "set", "srv", "up")
        if up:
            self.run("srv", "link", "set", dev, "up")


@pytest.fixture
def net():
    """srv, gwa and gwb with DAD on, srv's links not yet up (each test says when); always
    removed."""
    if not (Path("/usr/bin/curl").exists() or Path("/bin/curl").exists()):
        pytest.skip("curl is needed to read the agent's metrics inside its namespace")
    built = Net(f"dad-{secrets.token_hex(3)}")
    try:
        for node in ("srv", "gwa", "gwb"):
            ip("netns", "add", built.ns(node))
            built.run(node, "link", "set", "lo", "up")
            built.sysctl(node, net__ipv6__conf__all__accept_dad="1",
                         net__ipv6__conf__default__accept_dad="1",
                         net__ipv6__conf__all__keep_addr_on_down="1",
                         net__ipv6__conf__default__keep_addr_on_down="1",
                         net__ipv4__conf__all__rp_filter="0",
                         net__ipv4__conf__default__rp_filter="0")
        built.sysctl("srv", net__ipv6__conf__default__dad_transmits="3")
        for gw in ("gwa", "gwb"):
            for target in TARGETS:
                built.run(gw, "addr", "add", target, "dev", "lo")
        yield built
    finally:
        for node in ("srv", "gwa", "gwb"):
            ip("netns", "del", built.ns(node), check=False)


class Agent:
    """`netwatch agent` in srv, on a site file of this network, logging to `log`."""

    def __init__(self, net: Net, tmp_path: Path):
        self.net, self.log = net, tmp_path / "agent.log"
        self.site = tmp_path / "site.yaml"
        uplink = {dev: {"interface": dev, "gateway": f"{v4}.1", "gateway6": "fe80::1",
                        "source": f"{v4}.10", "source6": f"{v6}::10"}
                  for dev, (_, v4, v6) in UPLINKS.items()}
        self.site.write_text(yaml.safe_dump({
            "site": "dad", "asn": 64500, "prefixes": PREFIXES,
            "agent": {
                "uplinks": {"primary": uplink["eth0"], "secondary": uplink["eth1"]},
                "probe": {"interval_ms": 50, "fall": 3, "rise": 5, "beyond": list(TARGETS)},
                "failback": {"mode": "auto", "hold_down_s": HOLD_DOWN_S},
            },
            "state_dir": str(tmp_path / "state"),
        }, sort_keys=False))
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        with open(self.log, "a") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "netwatch.cli", "agent", "--config", str(self.site),
                 "--netns", self.net.ns("srv"), "--metrics-listen", METRICS],
                stdout=out, stderr=subprocess.STDOUT)

    def text(self) -> str:
        return self.log.read_text()

    def metrics(self) -> dict[str, float]:
        return self.net.metrics()

    def tail(self) -> str:
        return self.text()[-4000:]

    def failovers(self) -> list[tuple[str, str, str]]:
        """(to, families, cause) of every failover logged so far."""
        return [(m[1], m[3], m[4]) for m in FAILOVER.finditer(self.text())]

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        try:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGTERM)
                code = proc.wait(10)
                assert code == 0, f"the agent exited {code} on SIGTERM\n{self.tail()}"
            else:
                assert proc.returncode == 0, \
                    f"the agent had exited {proc.returncode}\n{self.tail()}"
        finally:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(5)


@pytest.fixture
def agent(net, tmp_path):
    started = Agent(net, tmp_path)
    try:
        yield started
    finally:
        started.stop()


def uplinks_up(agent: Agent) -> dict[str, float | None]:
    samples = agent.metrics()
    return {role: samples.get(f'netwatch_agent_uplink_up{{uplink="{role}"}}')
            for role in ("primary", "secondary")}


def all_up(agent: Agent) -> bool:
    return uplinks_up(agent) == {"primary": 1.0, "secondary": 1.0}


def watch(net: Net, seconds: float) -> set[tuple[str, str | None]]:
    """Every (family, device) srv's default routes were seen on, polled for `seconds`."""
    seen = set()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        seen |= set(net.routes().items())
        time.sleep(0.05)
    return seen


def settle(net: Net, agent: Agent, wait_for) -> None:
    """Both uplinks UP in every family, both routes on eth0, DAD over everywhere."""
    took = wait_for(lambda: all_up(agent) and net.routes() == {"IPv4": "eth0", "IPv6": "eth0"}
                    and not net.tentative("eth0") and not net.tentative("eth1"), 20, 0.2)
    assert took is not None, (
        f"not settled after 20 s: routes {net.routes()}, uplink_up {uplinks_up(agent)}"
        f"\n{agent.tail()}")


def test_dad_at_start_moves_nothing(net, agent, wait_for):
    """The secondary's link has long been up; the primary's comes up as the agent starts:
    its IPv6 addresses are tentative for about 4 s, its IPv4 answers at once. The agent
    installs the primary's routes (IPv6 as soon as its source may be used) and never fails
    over: before each family followed its own health and a tentative source meant no
    verdict, the routes left a working primary within a second."""
    net.connect("eth1")
    net.connect("eth0", up=False)
    assert wait_for(lambda: not net.tentative("eth1"), 10) is not None, "eth1's DAD never ended"
    net.run("srv", "link", "set", "eth0", "up")
    agent.start()
    seen = watch(net, 6.0)  # the DAD, and more
    assert ("IPv4", "eth1") not in seen and ("IPv6", "eth1") not in seen, (
        f"srv's default routes were seen on {sorted(seen, key=str)} after a start during "
        f"DAD, expected never on eth1\n{agent.tail()}")
    assert "event=ipv6_dad uplink=primary interface=eth0 state=tentative" in agent.text(), (
        f"the agent never saw eth0's addresses tentative: the test proved nothing\n"
        f"{agent.tail()}")
    settle(net, agent, wait_for)
    assert agent.failovers() == [], f"failovers at start: {agent.failovers()}\n{agent.tail()}"
    samples = agent.metrics()
    no_verdict = samples.get('netwatch_agent_probes_total{kind="gateway6",result="no_verdict",'
                             'uplink="primary"}', 0)
    assert no_verdict > 0, f"no IPv6 probe of the primary was no verdict\n{agent.tail()}"
    assert all(net.ping(t) for t in TARGETS), f"srv reaches not all of {TARGETS}"


def carrier_back(net: Net, agent: Agent, wait_for, what: str,
                 away: tuple[str, ...] = ("carrier",)) -> None:
    """After a flap of the primary's link: the routes went to eth1 (for a cause in `away`)
    and come back to eth0 by failback only, IPv4 and IPv6; never a failover on probes once
    the link is back."""
    assert wait_for(lambda: net.routes() == {"IPv4": "eth0", "IPv6": "eth0"},
                    20, 0.1) is not None, (
        f"{what}: srv's default routes are on {net.routes()} 20 s on, expected back on eth0"
        f"\n{agent.tail()}")
    moves = agent.failovers()
    gone = [m for m in moves if m[0] == "secondary"]
    back = [m for m in moves if m[0] == "primary"]
    assert moves == gone + back, f"{what}: failovers {moves}\n{agent.tail()}"
    for name, part, causes in (("away", gone, away), ("back", back, ("failback",))):
        families = sorted(f for _, fams, _ in part for f in fams.split(","))
        assert families == ["ipv4", "ipv6"] and {c for _, _, c in part} <= set(causes), (
            f"{what}: failovers {moves}: {name}, expected IPv4 and IPv6 once each, for "
            f"{causes}\n{agent.tail()}")
    assert all(net.ping(t) for t in TARGETS), f"{what}: srv reaches not all of {TARGETS}"


def test_a_carrier_flap_of_the_primary_is_no_failure_of_ipv6(net, agent, wait_for):
    """gwa's side of the link goes down for 1.5 s: srv's eth0 loses its carrier (the routes
    move to eth1), then gets it back while gwa's fe80::1 is in DAD again and cannot answer
    for a second or two (srv's own addresses stay usable: the kernel reruns DAD on them
    without making them tentative). The routes come back after the hold-down, by failback
    only. When the silence lasts about 3 s, srv's neighbour entry of fe80::1 ends FAILED and
    the marked beyond probes were kept on the probe table's unreachable default for a minute
    (it failed in about half of the full runs): the agent now forgets that entry when the
    gateway answers again."""
    net.connect("eth0")
    net.connect("eth1")
    agent.start()
    settle(net, agent, wait_for)
    net.run("gwa", "link", "set", "srv", "down")
    time.sleep(1.5)  # the kernel reports a carrier change up to a second late (linkwatch)
    net.run("gwa", "link", "set", "srv", "up")
    # The kernel drops link-local addresses on link down, keep_addr_on_down or not: gwa's
    # fe80::1 is configured again, as a router's own configuration would, and goes through
    # DAD before it answers.
    net.run("gwa", "addr", "replace", "fe80::1/64", "dev", "srv")
    # Away on the carrier, or on the silent gateway when the probes notice first (3 probes,
    # 150 ms, against up to a second for the carrier event): both are the link's failure.
    carrier_back(net, agent, wait_for, "gwa's link flapped", away=("carrier", "gateway"))


def test_an_admin_flap_of_the_primary_waits_for_its_dad(net, agent, wait_for):
    """srv's own eth0 set down and up: the kernel flushes its routes (they move to eth1 at
    once), and when it is back its addresses are tentative for about 4 s: IPv6 probes are
    no verdict meanwhile, so IPv6 is never judged DOWN, and both families come back after
    their hold-downs."""
    net.connect("eth0")
    net.connect("eth1")
    agent.start()
    settle(net, agent, wait_for)
    net.run("srv", "link", "set", "eth0", "down")
    time.sleep(0.3)
    net.run("srv", "link", "set", "eth0", "up")
    assert wait_for(lambda: net.tentative("eth0"), 3, 0.05) is not None, \
        "eth0's addresses never tentative after its admin flap: the test proved nothing"
    carrier_back(net, agent, wait_for, "srv's eth0 set down and up")
    down = re.findall(r"event=uplink_health uplink=primary families=ipv6 health=down",
                      agent.text())
    assert down == [], f"the primary's IPv6 was judged DOWN during DAD\n{agent.tail()}"


def route_errors(agent: Agent) -> float:
    samples = agent.metrics()
    return sum(v for k, v in samples.items()
               if k.startswith("netwatch_agent_route_errors_total{"))


def test_a_renamed_primary_is_a_vanished_link(net, agent, wait_for):
    """`ip link set eth0 name wan0` under the agent: the configured name is gone, the routes
    go to eth1, logged once; no route write through the missing name is tried (they used to
    fail with ENODEV every 2 s). Named eth0 again, the primary comes back after its
    hold-down, its probes (reopened on it) answering."""
    net.connect("eth0")
    net.connect("eth1")
    agent.start()
    settle(net, agent, wait_for)
    errors = route_errors(agent)
    net.run("srv", "link", "set", "eth0", "down")
    net.run("srv", "link", "set", "eth0", "name", "wan0")
    net.run("srv", "link", "set", "wan0", "up")
    assert wait_for(lambda: net.routes() == {"IPv4": "eth1", "IPv6": "eth1"}, 3, 0.05) \
        is not None, f"eth0 renamed: srv's routes are on {net.routes()}\n{agent.tail()}"
    time.sleep(5)  # two and a half resyncs
    text = agent.text()
    assert text.count('renamed_to=wan0 note="waiting for an interface named eth0"') == 1, \
        agent.tail()
    assert route_errors(agent) == errors and "ENODEV" not in text, agent.tail()
    assert net.routes() == {"IPv4": "eth1", "IPv6": "eth1"}
    net.run("srv", "link", "set", "wan0", "down")
    net.run("srv", "link", "set", "wan0", "name", "eth0")
    net.run("srv", "link", "set", "eth0", "up")
    carrier_back(net, agent, wait_for, "eth0 renamed back")


def test_a_deleted_primary_is_waited_for_and_a_new_one_used(net, agent, wait_for):
    """`ip link del eth0`: the routes go to eth1 at once; a new eth0 (a new interface,
    another index, its addresses in DAD) is probed on its own sockets, its probe tables
    rewritten through it, and the routes come back after the hold-down."""
    net.connect("eth0")
    net.connect("eth1")
    agent.start()
    settle(net, agent, wait_for)
    net.run("srv", "link", "del", "eth0")
    assert wait_for(lambda: net.routes() == {"IPv4": "eth1", "IPv6": "eth1"}, 3, 0.05) \
        is not None, f"eth0 deleted: srv's routes are on {net.routes()}\n{agent.tail()}"
    time.sleep(3)
    assert agent.text().count('interface=eth0 state="interface vanished"') == 1, agent.tail()
    assert "ENODEV" not in agent.text(), agent.tail()
    net.connect("eth0")
    carrier_back(net, agent, wait_for, "eth0 deleted and created again")
    table = net.run("srv", "route", "show", "table", "1000").stdout
    assert "dev eth0" in table, f"the primary's probe table is {table!r} after eth0 came back"
