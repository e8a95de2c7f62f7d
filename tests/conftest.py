"""Fixtures shared by every test package: the lab's site file (and a copy whose state lives in
the test's tmp_path), a fake clock, wait helpers, and the lab itself.

Tests take these as fixtures (a test module never imports another one or this file):

- `lab_site` (Path): the lab's site file, as the package ships it;
- `site_copy(**changes)` -> Path: a copy of it in tmp_path, state_dir and control sockets
  inside tmp_path and the targets file by absolute path; `changes` replace top-level keys;
- `clock`: a `FakeClock` at 1000.0 s; `clock.now += 5` moves it;
- `wait_for(check, timeout_s, step_s=0.05) -> float | None`: seconds until check() held, or
  None; `eventually(check, timeout_s, message)`: the same, failing the test with `message`;
- `new_lab_name()`: a fresh unique lab name, for tests that build a lab of their own;
- `lab`: one converged lab (namespaces, BIRD, ExaBGP) for the whole session, under a unique
  name, always removed; `healed`: the lab, healed of every fault after the test;
- `held(node)` -> {our prefix: its AS path}: what `node`'s BIRD holds of the lab site's
  prefixes; `announced`: the lab with every transit holding both prefixes with our AS path
  alone, before the test and again after it (every fault healed);
- `netns_pair` -> (a, b): two throwaway namespaces joined by a veth (a 100.64.99.1 and
  2001:db8:99::1, b .2 and ::2), always removed; `fwmark_tables` -> (a, b): the same pair where
  fwmark 77 in a selects table 77, routing 100.64.98.0/24 via b (b holds 100.64.98.2), and
  fwmark 78 selects the empty table 78;
- `in_netns(ns, coro_fn)`: what `await coro_fn()` returned in a child process inside `ns`;
- `agent` (one per test module): `netwatch agent` running in the lab's srv namespace on the
  lab's site file, both uplinks UP, stopped by PID at the module's end (`.metrics()`,
  `.tail()`, `.pid`); `own_agent(tmp_path, **agent_section)`: a context manager that runs
  another agent in its place for the block.

`wait_for` and `eventually` are session-scoped, so module-scoped fixtures can wait too.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import io
import os
import pickle
import secrets
import shutil
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

import pytest
import yaml

from netwatch.config import load_site
from netwatch.lab.lifecycle import DEFAULT_CONFIG as LAB_SITE

PURE_LAB_TESTS = {"test_lab.py"}  # tests/unit/lab: pure, no namespaces


class FakeClock:
    """Monotonic seconds that move only when told (decisions read this, nothing else)."""

    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def _wait_for(check, timeout_s: float, step_s: float = 0.05) -> float | None:
    start = time.monotonic()
    while True:
        if check():
            return time.monotonic() - start
        if time.monotonic() - start > timeout_s:
            return None
        time.sleep(step_s)


def _eventually(check, timeout_s: float, message: str, step_s: float = 0.1) -> float:
    took = _wait_for(check, timeout_s, step_s)
    if took is None:
        pytest.fail(f"{message} (not within {timeout_s} s)")
    return took


@pytest.fixture
def lab_site() -> Path:
    return LAB_SITE


@pytest.fixture
def site_copy(tmp_path):
    def make(**changes) -> Path:
        raw = yaml.safe_load(LAB_SITE.read_text())
        raw["state_dir"] = str(tmp_path / "state")
        # Sockets of its own: a test's daemon must not bind the lab's (another run's) paths.
        raw["control"] = {**raw.get("control", {}), "agent": str(tmp_path / "agent.sock"),
                          "controller": str(tmp_path / "controller.sock")}
        probe = raw["controller"]["probe"]
        probe["targets_file"] = str((LAB_SITE.parent / probe["targets_file"]).resolve())
        raw.update(changes)
        path = tmp_path / "site.yaml"
        path.write_text(yaml.safe_dump(raw, sort_keys=False))
        return path

    return make


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(scope="session")
def wait_for():
    return _wait_for


@pytest.fixture(scope="session")
def eventually():
    return _eventually


# --- the lab ------------------------------------------------------------------------------


def lab_unavailable_reason() -> str | None:
    """Why the lab cannot run here, or None."""
    from netwatch.lab.lifecycle import exabgp_program

    if os.geteuid() != 0:
        return "the lab needs root (network namespaces)"
    if not (shutil.which("bird") and shutil.which("birdc")):
        return "BIRD 2 is not installed (apt-get install bird2)"
    if not exabgp_program():
        return "exabgp is not installed (pip install exabgp)"
    if not (shutil.which("ip") and shutil.which("nft")):
        return "iproute2 and nftables are needed"
    return None


def pytest_collection_modifyitems(config, items):
    """Every test under tests/lab/ builds namespaces: mark it `lab` (so `-m "not lab"` runs
    what needs no root) and skip it, with the reason, where the lab cannot run."""
    reason = lab_unavailable_reason()
    for item in items:
        if item.path.parent.name != "lab" or item.path.parent.parent.name != "tests":
            continue
        item.add_marker(pytest.mark.lab)
        if reason:
            item.add_marker(pytest.mark.skip(reason=reason))


def _unique_lab_name() -> str:
    return "t" + secrets.token_hex(3)


@pytest.fixture
def new_lab_name():
    """A function giving a fresh, unique lab name at each call (for tests that build their
    own labs beside the session's one)."""
    return _unique_lab_name


@pytest.fixture(scope="session")
def lab():
    """A converged lab for the whole test session; removed afterwards whatever happened."""
    reason = lab_unavailable_reason()
    if reason:
        pytest.skip(reason)
    from netwatch.lab import lifecycle

    name = _unique_lab_name()
    try:
        handle = lifecycle.up(name, LAB_SITE, out=io.StringIO())
    except BaseException:
        lifecycle.down(name, quiet=True)
        raise
    try:
        yield handle
    finally:
        lifecycle.down(name, quiet=True)


@pytest.fixture
def healed(lab):
    """The lab, healed of every fault after the test."""
    from netwatch.lab import faults

    try:
        yield lab
    finally:
        faults.heal(lab)


@pytest.fixture
def held(lab):
    """`held(node)` -> {prefix: AS path} for each of the lab site's prefixes that `node`'s BIRD
    holds. A transit imports from edge only, so it holds one route per prefix; were there
    several, their AS paths would be joined by " | " (and never compare equal to one path)."""
    prefixes = lab.topology().prefixes

    def query(node: str) -> dict[str, str]:
        routes = lab.routes(node)
        return {p: " | ".join(r["as_path"] for r in routes[p]) for p in prefixes if p in routes}

    return query


@pytest.fixture
def announced(lab, held):
    """The lab with every transit holding every prefix of ours with our AS path alone, waited
    for before the test; after it every fault is healed and that state waited for again (30 s:
    the controller's recovery hold is 10 s, then rise). Fails naming the transits that differ."""
    from netwatch.lab import faults

    topology = lab.topology()
    normal = dict.fromkeys(topology.prefixes, str(topology.asn))
    transits = [t.name for t in topology.transits]

    def astray() -> dict[str, dict[str, str]]:
        return {t: seen for t in transits if (seen := held(t)) != normal}

    def settle(when: str) -> None:
        if _wait_for(lambda: not astray(), 30, 0.1) is None:
            pytest.fail(f"{when}: transits holding other than {normal}: {astray()} (30 s)")

    settle("before the test")
    try:
        yield lab
    finally:
        faults.heal(lab)
        settle("after the test and heal")


# --- a pair of throwaway namespaces, for the probers against a real kernel ---------------


def _ip(*argv: str) -> None:
    subprocess.run(["ip", *argv], check=True, capture_output=True)


@pytest.fixture
def netns_pair():
    """Two namespaces `nwct-<random>-a/-b` joined by a veth (va in a, vb in b); b answers on
    100.64.99.2 and 2001:db8:99::2, a is .1 and ::1. Always removed."""
    if os.geteuid() != 0:
        pytest.skip("needs root for network namespaces and raw sockets")
    name = f"nwct-{secrets.token_hex(3)}"
    a, b = f"{name}-a", f"{name}-b"
    try:
        _ip("netns", "add", a)
        _ip("netns", "add", b)
        _ip("-n", a, "link", "add", "va", "type", "veth", "peer", "name", "vb", "netns", b)
        for ns, dev, v4, v6 in (
            (a, "va", "100.64.99.1/24", "2001:db8:99::1/64"),
            (b, "vb", "100.64.99.2/24", "2001:db8:99::2/64"),
        ):
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", ns, "addr", "add", v4, "dev", dev)
            _ip("-n", ns, "addr", "add", v6, "dev", dev, "nodad")
            _ip("-n", ns, "link", "set", dev, "up")
        yield a, b
    finally:
        for ns in (a, b):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


@pytest.fixture
def fwmark_tables(netns_pair):
    """`netns_pair` where a probe marked 77 in a follows table 77 (100.64.98.0/24 via b, which
    holds 100.64.98.2) and one marked 78 follows table 78, which has no route for it; main has
    none either."""
    a, b = netns_pair
    _ip("-n", a, "addr", "add", "100.64.98.9/32", "dev", "lo")
    _ip("-n", b, "addr", "add", "100.64.98.2/32", "dev", "lo")
    _ip("-n", a, "route", "add", "100.64.98.0/24", "via", "100.64.99.2", "table", "77")
    _ip("-n", a, "rule", "add", "fwmark", "77", "table", "77", "priority", "100")
    _ip("-n", a, "rule", "add", "fwmark", "78", "table", "78", "priority", "101")
    return a, b


def _in_netns(ns: str, coro_fn):
    """What `asyncio.run(coro_fn())` returned (it must pickle) in a child process that entered
    namespace `ns`. Fails the test with the child's traceback if it raised."""
    from pyroute2 import netns

    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        try:
            try:
                netns.setns(ns)
                outcome = ("returned", asyncio.run(coro_fn()))
            except BaseException:
                outcome = ("raised", traceback.format_exc())
            with os.fdopen(write_fd, "wb") as out:
                pickle.dump(outcome, out)
        finally:
            os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as inp:
        data = inp.read()
    _, status = os.waitpid(pid, 0)
    if not data:
        pytest.fail(f"the child in {ns} died (exit {os.waitstatus_to_exitcode(status)})")
    kind, value = pickle.loads(data)
    if kind == "raised":
        pytest.fail(f"in {ns}:\n{value}")
    return value


@pytest.fixture
def in_netns():
    return _in_netns


# --- the agent in the lab ---------------------------------------------------------------


class AgentProcess:
    """`netwatch agent --config SITE --netns <srv>`, logging to `log_path`; stopped by PID.
    Its metrics are read inside srv at the site file's `metrics.agent`."""

    def __init__(self, lab, site_file, log_path, wait_for):
        self.lab, self.site_file, self.log_path = lab, site_file, log_path
        self.wait_for = wait_for
        self.listen = load_site(site_file).metrics.agent
        self.proc: subprocess.Popen | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def tail(self) -> str:
        return self.log_path.read_text()[-3000:]

    def metrics(self) -> dict[str, float]:
        """{sample: value} from the agent's /metrics."""
        return self.lab.metrics("srv", self.listen)

    def uplinks_up(self) -> dict[str, float | None]:
        samples = self.metrics()
        return {role: samples.get(f'netwatch_agent_uplink_up{{uplink="{role}"}}')
                for role in ("primary", "secondary")}

    def start(self) -> None:
        """Start it and wait until both uplinks are judged UP (a fresh process)."""
        with open(self.log_path, "a") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "netwatch.cli", "agent", "--config",
                 str(self.site_file), "--netns", self.lab.ns("srv")],
                stdout=log, stderr=subprocess.STDOUT,
            )
        both_up = dict.fromkeys(("primary", "secondary"), 1.0)
        took = self.wait_for(
            lambda: self.proc.poll() is None and self.uplinks_up() == both_up, 10, 0.2)
        assert took is not None, (
            f"agent ({self.site_file}, exit status {self.proc.poll()}): uplink_up "
            f"{self.uplinks_up()} after 10 s, expected {both_up}\n{self.tail()}"
        )

    def stop(self) -> None:
        """SIGTERM, and it must exit 0; SIGKILL if it did not exit at all."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            assert proc is None or proc.returncode == 0, \
                f"the agent had exited {proc.returncode} before it was stopped\n{self.tail()}"
            return
        os.kill(proc.pid, signal.SIGTERM)
        try:
            code = proc.wait(10)
            assert code == 0, f"the agent exited {code} on SIGTERM, expected 0\n{self.tail()}"
        finally:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(5)


@pytest.fixture(scope="module")
def agent(lab, tmp_path_factory, wait_for):
    log_path = tmp_path_factory.mktemp("agent") / "agent.log"
    shared = AgentProcess(lab, lab.site_file, log_path, wait_for)
    try:
        shared.start()
        yield shared
    finally:
        shared.stop()


@pytest.fixture
def own_agent(agent):
    """own_agent(tmp_path, **agent_section): a context manager that replaces the module's
    agent, for the block, by one running a copy of the lab's site file whose `agent` section
    is updated with `agent_section` (one level deep); the shared one starts again after."""
    return functools.partial(_own_agent, agent)


@contextlib.contextmanager
def _own_agent(shared: AgentProcess, tmp_path, **agent_section):
    raw = yaml.safe_load(shared.lab.site_file.read_text())
    for key, value in agent_section.items():
        raw["agent"][key] = {**raw["agent"].get(key, {}), **value}
    site_file = tmp_path / "site.yaml"
    site_file.write_text(yaml.safe_dump(raw, sort_keys=False))
    mine = AgentProcess(shared.lab, site_file, tmp_path / "agent.log", shared.wait_for)
    shared.stop()
    try:
        mine.start()
        yield mine
    finally:
        try:
            mine.stop()
        finally:
            shared.start()
