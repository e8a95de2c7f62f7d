"""Fixtures for the tests of what ships in grafana/ (rules, routing, dashboards) and of
netwatch.observability, with the real tools Debian 12 ships (scripts/install installs them):

- `repo` (Path): the repository's top; `rule_files`, `rule_tests`, `dashboards` (sorted Paths);
- `promtool`, `amtool` (str): the tools' paths; the test is skipped, with the reason, where
  one is missing;
- `alertmanager` -> Running: a real Alertmanager for the whole session with
  grafana/alertmanager.example.yml as shipped, but for the receivers' URLs (a closed loopback
  port: no notification leaves the machine); loopback only, no gossip port (`--cluster.
  listen-address=` empty), storage in a temporary directory; stopped by its PID.
  `.url`, `.post_alerts(alerts)`, `.alerts(**filter)` -> the API's alerts;
- `run(argv)` -> CompletedProcess (text, never raising on a non-zero exit).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def rule_files() -> list[Path]:
    return sorted((REPO / "grafana" / "alerts").glob("*.yml"))


@pytest.fixture(scope="session")
def rule_tests() -> list[Path]:
    return sorted((REPO / "grafana" / "alerts" / "tests").glob("*.yml"))


@pytest.fixture(scope="session")
def dashboards() -> list[Path]:
    return sorted((REPO / "grafana" / "dashboards").glob("*.json"))


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (scripts/install installs prometheus and "
                    f"prometheus-alertmanager)")
    return path


@pytest.fixture(scope="session")
def promtool() -> str:
    return _tool("promtool")


@pytest.fixture(scope="session")
def amtool() -> str:
    return _tool("amtool")


@pytest.fixture(scope="session")
def run():
    def call(argv: list[str]) -> subprocess.CompletedProcess:
        return subprocess.run(argv, capture_output=True, text=True, timeout=60)

    return call


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Running:
    url: str
    proc: subprocess.Popen
    log_path: Path

    def post_alerts(self, alerts: list[dict]) -> None:
        request = urllib.request.Request(f"{self.url}/api/v2/alerts", method="POST",
                                         data=json.dumps(alerts).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=5):
            pass

    def alerts(self, **labels: str) -> list[dict]:
        """The API's alerts whose labels include `labels`."""
        query = urllib.parse.urlencode(
            [("filter", f'{k}="{v}"') for k, v in labels.items()])
        with urllib.request.urlopen(f"{self.url}/api/v2/alerts?{query}", timeout=5) as r:
            return json.loads(r.read())

    def tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]


@pytest.fixture(scope="session")
def alertmanager():
    binary = _tool("prometheus-alertmanager")
    workdir = Path(tempfile.mkdtemp(prefix="netwatch-am-"))
    config = yaml.safe_load((REPO / "grafana" / "alertmanager.example.yml").read_text())
    closed = _free_port()  # nothing listens there: every notification is refused at once
    for receiver in config["receivers"]:
        for hook in receiver["webhook_configs"]:
            hook["url"] = f"http://127.0.0.1:{closed}/{receiver['name']}"
    (workdir / "alertmanager.yml").write_text(yaml.safe_dump(config))
    port = _free_port()
    log_path = workdir / "alertmanager.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [binary, f"--config.file={workdir / 'alertmanager.yml'}",
             f"--storage.path={workdir / 'data'}", f"--web.listen-address=127.0.0.1:{port}",
             "--cluster.listen-address=", "--log.level=error"],
            stdout=log, stderr=subprocess.STDOUT)
    running = Running(f"http://127.0.0.1:{port}", proc, log_path)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                with urllib.request.urlopen(f"{running.url}/-/ready", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"Alertmanager not ready within 15 s\n{running.tail()}")
            time.sleep(0.1)
        yield running
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(5)
        shutil.rmtree(workdir, ignore_errors=True)
