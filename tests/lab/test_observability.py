"""The shipped alert rules, Alertmanager routing and dashboards, with a real Prometheus and a
real Alertmanager watching the lab.

One stack for the module, all in the test's own network namespace, on loopback:
- the module's agent in `srv` (the conftest's `agent`), and the lab's controller in `edge`;
  both listen on 127.0.0.1 inside their namespace, so a forwarder per daemon listens on a
  loopback port here and relays each connection through a socket opened inside that
  namespace (`NetnsForwarder`);
- Prometheus (1 s scrape and evaluation intervals, storage in tmp) with every rule file of
  grafana/alerts/, scraping the agent as `srv:9110` and the controller as `edge:9111`, both
  with `site: lab`;
- Alertmanager with grafana/alertmanager.example.yml: its routing tree, matchers and
  inhibitions as shipped; only the receivers' URLs point at a webhook in this test, and the
  group timers are 1 s (the example's 10 s-5 min would make this test take minutes);
  `--cluster.listen-address=` empty: no gossip port.

What a user would notice: `transit-blackhole t2` pages on-call (the webhook named `oncall`)
with NetwatchUpstreamFailed for t2, heal resolves it; stopping the agent pages
NetwatchDaemonDown for it; every query of every rule and dashboard panel runs against this
Prometheus without error and returns data, except those that read a planned metric (listed in
docs/metrics.md, "Planned") or a state the lab never reaches here (`NOT_IN_THE_LAB`, with the
reason); the override panels and alerts read the leases that the test makes on both daemons
through their control sockets (a drain of t4, a forced failover), deleted after. Every
process is stopped by its PID, every file removed. About 90 s, most of it the minute
NetwatchDaemonDown waits.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from netwatch.config import load_site
from netwatch.control.client import request
from netwatch.control.protocol import Command
from netwatch.lab import faults
from netwatch.observability.queries import (
    dashboard_queries,
    metric_names,
    rule_queries,
    selectors,
)

pytestmark = pytest.mark.timeout(300)

REPO = Path(__file__).resolve().parents[2]
RULE_FILES = sorted((REPO / "grafana" / "alerts").glob("*.yml"))
DASHBOARDS = sorted((REPO / "grafana" / "dashboards").glob("*.json"))
ALERTMANAGER_EXAMPLE = REPO / "grafana" / "alertmanager.example.yml"
METRICS_DOC = REPO / "docs" / "metrics.md"
AGENT_INSTANCE, CONTROLLER_INSTANCE = "srv:9110", "edge:9111"
# Selectors that return nothing in this lab by design, with the reason. Everything else a rule
# or panel selects must return data.
NOT_IN_THE_LAB = {
    'up{job=~"netwatch-agent|netwatch-controller", site=""}':
        "every target here has a site label (NetwatchTargetWithoutSite fires without one)",
}
PROMETHEUS_BIN = shutil.which("prometheus")
ALERTMANAGER_BIN = shutil.which("prometheus-alertmanager")
CLONE_NEWNET = 0x40000000


def planned_metrics() -> set[str]:
    """The metric names docs/metrics.md lists under "Planned": named by rules or panels,
    not exported by a daemon yet."""
    text = METRICS_DOC.read_text()
    section = text.split("\n## Planned", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `([a-z_:]+)`", section, re.M))


# --- the plumbing --------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def enter_netns(name: str) -> None:
    """Move the calling thread (only it) into network namespace `name`."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns {name}: {os.strerror(err)}")
    finally:
        os.close(fd)


class NetnsForwarder:
    """Listens on 127.0.0.1:`port` here; relays each connection to `address` (host, port) in
    network namespace `netns`, through a socket that a thread inside `netns` opens. A
    connection refused there closes the client's: Prometheus sees a failed scrape."""

    def __init__(self, netns: str, address: tuple[str, int]):
        self.netns, self.address = netns, address
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.dials: queue.Queue = queue.Queue()
        self.entered = threading.Event()
        self.error: BaseException | None = None
        threading.Thread(target=self._dialer, daemon=True).start()
        if not self.entered.wait(5) or self.error:
            raise RuntimeError(f"forwarder into {netns}: {self.error}")
        threading.Thread(target=self._accept, daemon=True).start()

    def _dialer(self) -> None:
        try:
            enter_netns(self.netns)
        except OSError as exc:
            self.error = exc
            return
        finally:
            self.entered.set()
        while (reply := self.dials.get()) is not None:
            try:
                reply.put(socket.create_connection(self.address, timeout=2))
            except OSError as exc:
                reply.put(exc)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # closed
            reply: queue.Queue = queue.Queue()
            self.dials.put(reply)
            upstream = reply.get()
            if isinstance(upstream, OSError):
                client.close()
                continue
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                src.close()

    def close(self) -> None:
        self.listener.close()
        self.dials.put(None)


class Webhook:
    """Alertmanager's webhook receiver: records every notification as (monotonic time,
    receiver name taken from the URL path, payload)."""

    def __init__(self):
        self.received: list[tuple[float, str, dict]] = []
        self.lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                payload = json.loads(self.rfile.read(length))
                with owner.lock:
                    owner.received.append((time.monotonic(), self.path.strip("/"), payload))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, receiver: str) -> str:
        return f"http://127.0.0.1:{self.port}/{receiver}"

    def alerts(self, since: float = 0.0) -> list[tuple[float, str, str, dict]]:
        """(time, receiver, status, alert) for every alert notified since `since`."""
        with self.lock:
            got = list(self.received)
        return [(t, receiver, alert["status"], alert) for t, receiver, payload in got
                if t >= since for alert in payload["alerts"]]

    def first(self, since: float, receiver: str, status: str, **labels: str):
        """The first alert notified to `receiver` since `since` with that status and those
        labels: (time, alert), or None."""
        for t, rcv, st, alert in self.alerts(since):
            if rcv == receiver and st == status and all(
                    alert["labels"].get(k) == v for k, v in labels.items()):
                return t, alert
        return None

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def http_json(url: str, timeout_s: float = 5.0):
    with urllib.request.urlopen(url, timeout=timeout_s) as answer:
        return json.loads(answer.read())


class Process:
    """A process of ours, logging to a file; stopped by its PID (SIGTERM, then SIGKILL)."""

    def __init__(self, argv: list[str], log_path: Path):
        self.log_path = log_path
        with open(log_path, "ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)

    def tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]

    def running(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)


class Prometheus:
    def __init__(self, port: int):
        self.base = f"http://127.0.0.1:{port}"

    def query(self, expr: str, at: float | None = None) -> dict:
        """The API's answer to an instant query (status, data or error)."""
        params = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        return self._get("/api/v1/query", params)

    def query_range(self, expr: str, start: float, end: float, step_s: float = 1.0) -> dict:
        return self._get("/api/v1/query_range", {
            "query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": str(step_s)})

    def _get(self, path: str, params: dict) -> dict:
        url = f"{self.base}{path}?{urllib.parse.urlencode(params)}"
        try:
            return http_json(url)
        except urllib.error.HTTPError as exc:  # 400/422: the error is in the JSON body
            return json.loads(exc.read())

    def values(self, expr: str) -> list[tuple[dict, float]]:
        answer = self.query(expr)
        assert answer["status"] == "success", f"{expr}: {answer}"
        return [(r["metric"], float(r["value"][1])) for r in answer["data"]["result"]]

    def alerts(self, name: str) -> list[dict]:
        """Prometheus's own alerts of that name (pending and firing)."""
        return [a for a in http_json(f"{self.base}/api/v1/alerts")["data"]["alerts"]
                if a["labels"].get("alertname") == name]


# --- the stack -----------------------------------------------------------------------------


def alertmanager_config(webhook: Webhook) -> dict:
    """The example configuration with the receivers pointed at `webhook` and 1 s timers."""
    config = yaml.safe_load(ALERTMANAGER_EXAMPLE.read_text())
    for receiver in config["receivers"]:
        for hook in receiver["webhook_configs"]:
            hook["url"] = webhook.url(receiver["name"])
            hook["send_resolved"] = True

    def quick(route: dict) -> None:
        for key in ("group_wait", "group_interval"):
            if key in route or route is config["route"]:
                route[key] = "1s"
        for child in route.get("routes", []):
            quick(child)

    quick(config["route"])
    return config


def prometheus_config(am_port: int, agent_port: int, controller_port: int) -> dict:
    def job(name: str, port: int, instance: str) -> dict:
        return {"job_name": name, "static_configs": [{
            "targets": [f"127.0.0.1:{port}"], "labels": {"instance": instance, "site": "lab"}}]}

    return {
        "global": {"scrape_interval": "1s", "scrape_timeout": "900ms",
                   "evaluation_interval": "1s"},
        "rule_files": [str(p) for p in RULE_FILES],
        "alerting": {"alertmanagers": [{"static_configs": [
            {"targets": [f"127.0.0.1:{am_port}"]}]}]},
        "scrape_configs": [job("netwatch-agent", agent_port, AGENT_INSTANCE),
                           job("netwatch-controller", controller_port, CONTROLLER_INSTANCE)],
    }


class Stack:
    """Everything the module's tests talk to."""

    def __init__(self, lab, agent, workdir: Path, wait_for):
        """`agent`: the conftest's AgentProcess, running in srv."""
        self.lab, self.agent, self.workdir, self.wait_for = lab, agent, workdir, wait_for
        self.site = load_site(lab.site_file)
        self.processes: list[Process] = []
        self.closers: list = []
        self.started = time.time()

    def start(self) -> None:
        agent_fwd = NetnsForwarder(self.lab.ns("srv"), self._address(self.site.metrics.agent))
        self.closers.append(agent_fwd.close)
        ctl_fwd = NetnsForwarder(self.lab.ns("edge"),
                                 self._address(self.site.metrics.controller))
        self.closers.append(ctl_fwd.close)
        self.webhook = Webhook()
        self.closers.append(self.webhook.close)

        am_port, prom_port = free_port(), free_port()
        am_file = self.workdir / "alertmanager.yml"
        am_file.write_text(yaml.safe_dump(alertmanager_config(self.webhook)))
        self.alertmanager = self._start("alertmanager", [
            ALERTMANAGER_BIN, f"--config.file={am_file}",
            f"--storage.path={self.workdir / 'am-data'}",
            f"--web.listen-address=127.0.0.1:{am_port}", "--cluster.listen-address=",
            "--log.level=warn"])
        self._ready(f"http://127.0.0.1:{am_port}/-/ready", self.alertmanager)

        prom_file = self.workdir / "prometheus.yml"
        prom_file.write_text(yaml.safe_dump(
            prometheus_config(am_port, agent_fwd.port, ctl_fwd.port)))
        self.prometheus_process = self._start("prometheus", [
            PROMETHEUS_BIN, f"--config.file={prom_file}",
            f"--storage.tsdb.path={self.workdir / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{prom_port}", "--log.level=warn"])
        self._ready(f"http://127.0.0.1:{prom_port}/-/ready", self.prometheus_process)
        self.prometheus = Prometheus(prom_port)

        def both_up() -> bool:
            return sorted(v for _, v in self.prometheus.values("up")) == [1.0, 1.0]

        assert self.wait_for(both_up, 15, 0.2) is not None, \
            f"Prometheus does not scrape both daemons: up = {self.prometheus.values('up')}"
        self.started = time.time()

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()
        for close in reversed(self.closers):
            close()
        for data in ("tsdb", "am-data"):
            shutil.rmtree(self.workdir / data, ignore_errors=True)

    def _start(self, name: str, argv: list[str]) -> Process:
        process = Process(argv, self.workdir / f"{name}.log")
        self.processes.append(process)
        return process

    def _ready(self, url: str, process: Process) -> None:
        def ready() -> bool:
            try:
                with urllib.request.urlopen(url, timeout=1) as answer:
                    return answer.status == 200
            except OSError:
                return False

        assert self.wait_for(lambda: process.running() and ready(), 15, 0.1) is not None, \
            f"{url} not ready within 15 s\n{process.tail()}"

    @staticmethod
    def _address(listen: str) -> tuple[str, int]:
        host, _, port = listen.rpartition(":")
        return host.strip("[]"), int(port)


@pytest.fixture(scope="module")
def stack(lab, agent, tmp_path_factory, wait_for):
    missing = [n for n, p in (("prometheus", PROMETHEUS_BIN),
                              ("prometheus-alertmanager", ALERTMANAGER_BIN)) if not p]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (scripts/install installs them)")
    workdir = tmp_path_factory.mktemp("observability")
    running = Stack(lab, agent, workdir, wait_for)
    try:
        running.start()
        yield running
    finally:
        running.stop()
        shutil.rmtree(workdir, ignore_errors=True)


# --- the tests -----------------------------------------------------------------------------


def test_transit_blackhole_pages_oncall_and_heal_resolves(stack, announced, eventually):
    """`announced`: every transit holds our prefixes before (a lab left degraded by an earlier
    test fails there, by name) and again after the heal."""
    lab, hook, prom = announced, stack.webhook, stack.prometheus
    eventually(lambda: len(prom.values('netwatch_transit_state{state="healthy"} == 1')) == 4,
               30, "Prometheus sees the four upstreams healthy before the fault")
    want = {"alertname": "NetwatchUpstreamFailed", "upstream": "t2", "severity": "critical",
            "state": "failed", "site": "lab", "job": "netwatch-controller",
            "instance": CONTROLLER_INSTANCE}
    since = time.monotonic()
    faults.apply(lab, "transit-blackhole", "t2")
    try:
        eventually(lambda: hook.first(since, "oncall", "firing", **want), 30,
                   "NetwatchUpstreamFailed{upstream=t2} at the oncall webhook")
        at, alert = hook.first(since, "oncall", "firing", **want)
        paged = at - since
        assert alert["labels"] == want, f"the page's labels: {alert['labels']}"
        assert "t2" in alert["annotations"]["summary"], alert["annotations"]
        assert alert["annotations"]["runbook_url"].endswith(
            "playbooks/runbooks/upstream-failed.yaml"), alert["annotations"]
        others = [a["labels"] for _, _, _, a in hook.alerts(since)
                  if a["labels"]["alertname"] == "NetwatchUpstreamFailed"
                  and a["labels"]["upstream"] != "t2"]
        assert others == [], f"other upstreams paged as failed: {others}"
        firing = [a["labels"]["upstream"] for a in prom.alerts("NetwatchUpstreamFailed")
                  if a["state"] == "firing"]
        assert firing == ["t2"], f"Prometheus's firing NetwatchUpstreamFailed: {firing}"
    finally:
        faults.heal(lab)
    healed = time.monotonic()
    # Back to HEALTHY after rise (5 judgements) and the lab's 10 s recovery hold.
    eventually(lambda: hook.first(healed, "oncall", "resolved", **want), 40,
               "NetwatchUpstreamFailed{upstream=t2} resolved at the oncall webhook")
    resolved = hook.first(healed, "oncall", "resolved", **want)[0] - healed
    print(f"\nfault -> page at the webhook: {paged:.1f} s; heal -> resolved: {resolved:.1f} s")


def ensure_activity(stack, lab, eventually) -> None:
    """What the event panels and annotations show must have happened since the stack started:
    an agent failover (SIGUSR2: an operator's) and an automatic transit action (a blackhole on
    t2 until it is FAILED, then heal: the blackhole test above did it when it ran first)."""
    prom, since = stack.prometheus, time.time() - stack.started
    window = f"[{int(since) + 5}s]"
    failovers = f"sum(increase(netwatch_agent_failovers_total{window})) > 0"
    if not prom.values(failovers):
        # With failback.mode auto and a primary stable for longer than the hold-down, the
        # agent fails back at once: two failovers counted either way.
        os.kill(stack.agent.pid, signal.SIGUSR2)
        seen = stack.wait_for(lambda: prom.values(failovers), 10, 0.2)
        assert seen is not None, \
            f"SIGUSR2: Prometheus sees no failover within 10 s\n{stack.agent.tail()}"
    if not prom.values(f"sum(increase(netwatch_transit_actions_total{window})) > 0"):
        faults.apply(lab, "transit-blackhole", "t2")
        try:
            eventually(lambda: prom.values('netwatch_transit_state{state="failed"} == 1'), 20,
                       "t2 FAILED after transit-blackhole (seen by Prometheus)")
        finally:
            faults.heal(lab)
    time.sleep(2)  # two more scrapes and evaluations after the last event


@contextlib.contextmanager
def operator_overrides(stack, eventually):
    """For the block, one lease on each daemon through its control socket, as an operator's
    CLI makes them: a drain of t4 (no graceful stage: withdrawn at once; t1-t3 still announce)
    on the controller, a forced failover to the secondary on the agent. Both deleted
    afterwards, by id (deleting the drain restores t4 at once)."""
    control, reason = stack.site.control, "tests/lab/test_observability.py"
    made = []
    try:
        for path, cmd, args in (
                (control.controller, Command.DRAIN, {"upstream": "t4", "graceful_s": 0}),
                (control.agent, Command.FAILOVER, {"to": "secondary"})):
            change = request(path, cmd, {**args, "reason": reason, "for_s": 600})
            made.append((path, change["lease"]["id"]))
        eventually(lambda: len(stack.prometheus.values(
            "netwatch_override_expiry_timestamp_seconds")) == 2, 10,
            "Prometheus sees both overrides (netwatch_override_expiry_timestamp_seconds)")
        yield
    finally:
        for path, lease_id in made:
            request(path, Command.OVERRIDE_DELETE, {"id": lease_id, "reason": reason})


def test_every_rule_and_panel_query_runs_and_returns_data(stack, lab, eventually):
    with operator_overrides(stack, eventually):
        ensure_activity(stack, lab, eventually)
        check_every_query(stack)


def check_every_query(stack) -> None:
    prom, planned = stack.prometheus, planned_metrics()
    start, end = stack.started, time.time()
    queries = rule_queries(RULE_FILES, REPO) + dashboard_queries(DASHBOARDS, REPO)
    problems, waived = [], []
    for q in queries:
        answer = prom.query(q.expr)
        if answer["status"] != "success":
            problems.append(f"{q.source}: {answer.get('error')}")
            continue
        if q.kind == "record":
            if not prom.values(q.name):
                problems.append(f"{q.source}: no series recorded")
        elif q.kind in ("panel", "annotation", "variable"):
            excused = sorted(metric_names(q.expr) & planned)
            got = prom.query_range(q.expr, start, end)
            has_data = got["status"] == "success" and got["data"]["result"]
            if excused and not has_data:
                waived.append(f"{q.source}: reads {', '.join(excused)}")
            elif not has_data:
                problems.append(f"{q.source}: no data since the stack started: {q.expr}")
        # Alerts: their condition is false in a healthy lab; what they select must exist.
        for selector in selectors(q.expr):
            name = selector.split("{", 1)[0]
            if name in planned or selector in NOT_IN_THE_LAB:
                continue
            if not prom.values(selector):
                problems.append(f"{q.source}: {selector} selects nothing")
    assert not problems, "\n".join(problems)
    # These ran without error and returned nothing: they read a planned metric (data is
    # required as soon as it is exported and off the list).
    print("\nno data, excused (planned metrics):\n" + "\n".join(waived))


def test_every_metric_a_rule_or_panel_names_is_exported(stack):
    queries = rule_queries(RULE_FILES, REPO) + dashboard_queries(DASHBOARDS, REPO)
    named = set().union(*(metric_names(q.expr) for q in queries))
    recorded = {q.name for q in queries if q.kind == "record"}
    # Every name scraped since the stack started: the overrides' series live only while a
    # lease does (the test before this one made two).
    seen = {m["__name__"] for m, _ in stack.prometheus.values(
        'group by (__name__) (last_over_time({job=~"netwatch-agent|netwatch-controller"}'
        f'[{int(time.time() - stack.started) + 5}s]))')}
    missing = sorted(named - recorded - seen - planned_metrics() - {"up"})
    assert missing == [], f"named by rules or panels, exported by neither daemon: {missing}"


def test_stopping_the_agent_pages_daemon_down(stack, eventually):
    hook, prom = stack.webhook, stack.prometheus
    want = {"alertname": "NetwatchDaemonDown", "job": "netwatch-agent",
            "instance": AGENT_INSTANCE, "severity": "critical", "site": "lab"}
    since = time.monotonic()
    stack.agent.stop()
    eventually(lambda: [a for a in prom.alerts("NetwatchDaemonDown") if a["state"] == "pending"
                        and a["labels"]["job"] == "netwatch-agent"], 10,
               "NetwatchDaemonDown pending in Prometheus after the agent stopped")
    pending = time.monotonic() - since
    # `for: 1m` in grafana/alerts/netwatch-scrape.yml, then 1 s of Alertmanager's group_wait.
    eventually(lambda: hook.first(since, "oncall", "firing", **want), 90,
               "NetwatchDaemonDown for the agent at the oncall webhook")
    at, alert = hook.first(since, "oncall", "firing", **want)
    paged = at - since
    assert alert["labels"] == want, f"the page's labels: {alert['labels']}"
    assert paged >= 60, f"paged {paged:.1f} s after the agent stopped, before its `for: 1m`"
    print(f"\nagent stopped -> pending: {pending:.1f} s, page at the webhook: {paged:.1f} s")
