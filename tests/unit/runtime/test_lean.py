"""netwatch.runtime.lean: the daemons' plain copy of the site (`freeze`), and the handover
across a real exec. The daemons in a fresh image are checked in the lab (tests/lab)."""

from __future__ import annotations

import pickle
import subprocess
import sys
from ipaddress import IPv4Address

import pytest

from netwatch.config import load_site
from netwatch.runtime.lean import Frozen, freeze


@pytest.fixture
def site(lab_site):
    return load_site(lab_site)


def test_freeze_keeps_every_field_and_property(site):
    frozen = freeze(site)
    assert isinstance(frozen, Frozen) and isinstance(frozen.agent.probe, Frozen)
    assert frozen.agent.probe.interval_ms == site.agent.probe.interval_ms
    assert frozen.agent.probe.timeout_s == site.agent.probe.timeout_s  # properties, too
    assert frozen.agent.probe.confirm_s == site.agent.probe.confirm_s
    assert frozen.agent.probe.beyond == site.agent.probe.beyond
    t1 = frozen.controller.upstreams[0]
    assert t1.probe_nexthop == site.controller.upstreams[0].probe_nexthop
    assert isinstance(t1.neighbor, IPv4Address)
    assert [t.label for t in frozen.controller.probe.targets] == \
        [t.label for t in site.controller.probe.targets]
    assert frozen.controller.outbound == freeze(site.controller.outbound)
    assert not hasattr(frozen, "model_dump")  # pydantic's own API is not copied
    with pytest.raises(AttributeError, match="read-only"):
        frozen.agent = None


def test_frozen_compares_hashes_and_pickles_by_value(site):
    a, b = freeze(site.controller.probe.targets[0]), freeze(site.controller.probe.targets[0])
    assert a == b and hash(a) == hash(b) and len({a, b}) == 1
    assert a != freeze(site.controller.probe.targets[1])
    again = pickle.loads(pickle.dumps(freeze(site)))
    assert again == freeze(site) and again.agent.probe.timeout_s == site.agent.probe.timeout_s


ENTRY = """
import os, sys


def describe_image(answer):
    comm = open("/proc/self/comm").read().strip()
    cmdline = open("/proc/self/cmdline").read().rstrip("\\0").replace("\\0", " ")
    print(f"pid={os.getpid()} argv={' '.join(sys.argv[1:])} comm={comm} "
          f"optimize={sys.flags.optimize} pydantic={'pydantic' in sys.modules}", flush=True)
    print(cmdline, flush=True)
    return answer
"""


def test_the_handover_crosses_a_real_exec_and_keeps_the_pid(tmp_path):
    """exec_daemon in a child: the entry runs in the new image with the handed-over value,
    under the same PID, with the command line, process name, interpreter flags and sys.path
    it was started with (the entry's module is found only on a path the CLI added), and
    without pydantic."""
    (tmp_path / "handover_entry.py").write_text(ENTRY)
    script = tmp_path / "start.py"
    script.write_text(
        "import os, sys\n"
        f"sys.path.insert(0, {str(tmp_path)!r})\n"
        "from netwatch.runtime.lean import exec_daemon\n"
        "open('/proc/self/comm', 'w').write('nwtest')\n"
        "print(os.getpid(), flush=True)\n"
        "sys.exit(exec_daemon('handover_entry:describe_image', answer=42))\n"
    )
    out = subprocess.run([sys.executable, "-O", str(script), "agent", "--config", "x.yaml"],
                         capture_output=True, text=True, timeout=30, cwd="/")
    assert out.returncode == 42, out.stderr
    before, after, cmdline = out.stdout.strip().split("\n")
    assert after == (f"pid={before} argv=agent --config x.yaml comm=nwtest "
                     "optimize=1 pydantic=False")
    # ps and pgrep -f see the command line as it was started, after the handover's words
    assert cmdline.endswith(f"{sys.executable} -O {script} agent --config x.yaml"), cmdline


def test_the_daemons_modules_import_no_pydantic():
    """What the fresh image imports: the daemons, their metrics listener, never the config
    schema (type hints only) nor importlib.metadata (the version is a literal)."""
    code = ("import sys, netwatch.agent.main, netwatch.agent.daemon, netwatch.controller.daemon,"
            " netwatch.runtime.metrics_http, netwatch.runtime.lean;"
            " print(sorted({m.partition('.')[0] for m in sys.modules}"
            " & {'pydantic', 'pydantic_core', 'yaml', 'netmiko', 'scapy'}),"
            " [m for m in sys.modules if m.startswith(('netwatch.config', 'netwatch.commands',"
            " 'importlib.metadata'))])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[] []"


def test_the_frozen_site_holds_nothing_of_pydantic(site):
    """What crosses the exec must load without pydantic: every value in the frozen site is
    a Frozen, a container of them, or a value of the standard library."""
    def walk(value, path):
        if isinstance(value, Frozen):
            for name, field in value._fields.items():
                yield from walk(field, f"{path}.{name}")
        elif isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                yield from walk(item, f"{path}[{i}]")
        elif isinstance(value, dict):
            for key, item in value.items():
                yield from walk(item, f"{path}[{key!r}]")
        else:
            yield path, type(value).__module__

    modules = dict(walk(freeze(site), "site"))
    assert len(modules) > 50
    assert {p: m for p, m in modules.items() if m.partition(".")[0].startswith("pydantic")} == {}
