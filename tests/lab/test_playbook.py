"""Playbook device steps over real SSH: Debian's OpenSSH server on a loopback port, with its
own config, host key and throwaway users, driven by netmiko; and FRR's vtysh as an IOS-style
router CLI (netmiko's cisco_ios) in a namespace pair where FRR's bgpd peers with a BIRD.

One `rig` for the module (one sshd, one FRR, one BIRD): two throwaway users, `nwpb<hex>l`
with bash (netmiko's `linux`) and `nwpb<hex>r` whose login shell is vtysh, `<hex>` new for
every run. Everything is removed afterwards, whatever happened: the daemons (by PID), the
users, the namespaces (`nwpb-<hex>-frr`, `-bird`), the files. Addresses: 127.0.0.1 for sshd
(checked: it listens nowhere else), 100.64.97.0/30 between FRR and BIRD, inside their
namespaces only.

The users have passwords (the password logins are what is tested), so a run killed before
its cleanup must not leave a usable account behind:
- their login shells are wrappers that start bash or vtysh only in an SSH session to this
  run's sshd port, and refuse any other login (the host's own sshd, su, a console);
- the accounts expire the day after they were made (sshd and login refuse expired ones);
- every run first removes `nwpb<hex>l`/`r` users left by a run whose process is gone (each
  user's comment names the pytest PID that made it).
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from netwatch.adapters.netmiko_device import NetmikoConnector
from netwatch.playbook.loader import load_inventory, load_playbook
from netwatch.playbook.plan import resolve
from netwatch.playbook.runner import Runner

REPO = Path(__file__).resolve().parents[2]
SSHD = "/usr/sbin/sshd"
VTYSH = "/usr/bin/vtysh"
BGPD = "/usr/lib/frr/bgpd"
FRR_ASN, BIRD_ASN = 64600, 64601
FRR_ADDR, BIRD_ADDR = "100.64.97.1", "100.64.97.2"


def _run(*argv: str, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), capture_output=True, text=True, check=check, **kwargs)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


THROWAWAY_USER = re.compile(r"^nwpb[0-9a-f]{6}[lr]$")
THROWAWAY_COMMENT = "netwatch lab test, pid "


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale_users() -> list[str]:
    """Remove the throwaway users of runs whose pytest process is gone; returns their names.
    A user of a run still going (another job on this host) is left alone."""
    removed = []
    for entry in pwd.getpwall():
        if not THROWAWAY_USER.match(entry.pw_name):
            continue
        owner = entry.pw_gecos.removeprefix(THROWAWAY_COMMENT)
        if owner.isdigit() and int(owner) != os.getpid() and _alive(int(owner)):
            continue
        _run("userdel", entry.pw_name, check=False)
        removed.append(entry.pw_name)
    return removed


def _add_user(name: str, home: Path, shell: Path, *extra: str) -> None:
    """A throwaway user: `shell` as its login shell, expiring tomorrow (UTC days, as shadow
    counts them), with this process's PID in its comment for `_remove_stale_users`."""
    expires = (datetime.now(UTC) + timedelta(days=1)).date().isoformat()
    _run("useradd", "-M", "-d", str(home), "-s", str(shell), "-e", expires,
         "-c", f"{THROWAWAY_COMMENT}{os.getpid()}", *extra, name)


def _session_only_shell(path: Path, port: int, program: str) -> Path:
    """A login shell that runs `program` only for an SSH session to 127.0.0.1:`port` (sshd
    sets SSH_CONNECTION to "client port server port"), and refuses every other login."""
    path.write_text(
        "#!/bin/sh\n"
        f'case "$SSH_CONNECTION" in\n  *" 127.0.0.1 {port}") exec {program} "$@" ;;\nesac\n'
        "echo 'not a login account' >&2\nexit 1\n")
    path.chmod(0o755)
    return path


def _listening_addresses(port: int) -> set[str]:
    """Local addresses with a TCP socket listening on `port`, in this namespace."""
    out = _run("ss", "-Hltn", f"sport = :{port}").stdout
    return {line.split()[3].rsplit(":", 1)[0] for line in out.splitlines() if line.strip()}


def _wait(check, timeout_s: float, step_s: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(step_s)
    return check()


@dataclass
class Rig:
    home: Path  # 0755, root's: configs, inventory, keys
    port: int
    linux_user: str
    linux_password: str
    linux_home: Path  # the linux user's own directory
    router_user: str
    router_password: str
    host_key_pub: str
    ns_frr: str
    ns_bird: str
    bird_socket: Path

    def bird_session(self) -> str:
        """BIRD's view of its session to FRR: "Established" or what it is doing instead."""
        out = _run("ip", "netns", "exec", self.ns_bird, "birdc", "-s", str(self.bird_socket),
                   "show", "protocols", "frr", check=False).stdout
        for line in out.splitlines():
            if line.startswith("frr "):
                return " ".join(line.split()[5:]) or line.split()[3]
        return out.strip()

    def vtysh(self, *commands: str) -> str:
        argv = [VTYSH, "--vty_socket", str(self.home / "frr")]
        for command in commands:
            argv += ["-c", command]
        return _run(*argv, check=False).stdout

    def neighbor_up(self) -> None:
        """Undo any shutdown of the neighbor, and wait until BIRD has it Established."""
        self.vtysh("configure terminal", f"router bgp {FRR_ASN}",
                   f"no neighbor {BIRD_ADDR} shutdown")
        assert _wait(lambda: self.bird_session() == "Established", 20), self.bird_session()

    def inventory(self, **extra: str) -> Path:
        path = self.home / f"inventory-{secrets.token_hex(2)}.yaml"
        box = {"host": "127.0.0.1", "port": self.port, "device_type": "linux",
               "username": self.linux_user, "password_env": "NWPB_LINUX_PW"}
        box.update(extra)
        router = {"host": "127.0.0.1", "port": self.port, "device_type": "cisco_ios",
                  "username": self.router_user, "password_env": "NWPB_ROUTER_PW"}
        path.write_text(json.dumps({"devices": {"box": box, "border1": router}}))
        return path

    @property
    def env(self) -> dict[str, str]:
        return {"NWPB_LINUX_PW": self.linux_password, "NWPB_ROUTER_PW": self.router_password}


@pytest.fixture(scope="module")
def rig():
    for program in (SSHD, VTYSH, BGPD):
        if not os.path.exists(program):
            pytest.skip(f"{program} missing: scripts/install installs openssh-server and frr")
    _remove_stale_users()
    tag = secrets.token_hex(3)
    home = Path(tempfile.mkdtemp(prefix=f"nwpb-{tag}-", dir="/tmp"))
    home.chmod(0o755)  # the throwaway users read their shell wrapper and keys here
    users: list[str] = []
    procs: list[subprocess.Popen] = []
    namespaces = [f"nwpb-{tag}-frr", f"nwpb-{tag}-bird"]
    made_privsep = not os.path.isdir("/run/sshd")
    try:
        # --- FRR's bgpd in one namespace, BIRD in the other ---
        frr_dir = home / "frr"
        frr_dir.mkdir()
        shutil.chown(frr_dir, "frr", "frr")  # bgpd drops to user frr: its pid file and socket
        for ns in namespaces:
            _run("ip", "netns", "add", ns)
            _run("ip", "-n", ns, "link", "set", "lo", "up")
        _run("ip", "-n", namespaces[0], "link", "add", "f0", "type", "veth", "peer", "name",
             "b0", "netns", namespaces[1])
        _run("ip", "-n", namespaces[0], "addr", "add", f"{FRR_ADDR}/30", "dev", "f0")
        _run("ip", "-n", namespaces[1], "addr", "add", f"{BIRD_ADDR}/30", "dev", "b0")
        _run("ip", "-n", namespaces[0], "link", "set", "f0", "up")
        _run("ip", "-n", namespaces[1], "link", "set", "b0", "up")
        bgpd_conf = home / "bgpd.conf"
        bgpd_conf.write_text(
            f"hostname border1\nrouter bgp {FRR_ASN}\n bgp router-id {FRR_ADDR}\n"
            f" no bgp ebgp-requires-policy\n neighbor {BIRD_ADDR} remote-as {BIRD_ASN}\n"
            f" neighbor {BIRD_ADDR} timers 1 3\n neighbor {BIRD_ADDR} timers connect 1\n")
        bgpd_conf.chmod(0o644)
        bird_conf = home / "bird.conf"
        bird_conf.write_text(
            f"router id {BIRD_ADDR};\nprotocol device {{}}\n"
            f"protocol bgp frr {{ local {BIRD_ADDR} as {BIRD_ASN}; neighbor {FRR_ADDR} as "
            f"{FRR_ASN}; hold time 3; connect retry time 1; error wait time 1,2;\n"
            "  ipv4 { import all; export none; }; }\n")
        bird_socket = home / "bird.ctl"
        # BIRD daemonizes: stopped below by the PID in its pid file
        _run("ip", "netns", "exec", namespaces[1], "bird", "-c", str(bird_conf), "-s",
             str(bird_socket), "-P", str(home / "bird.pid"))
        procs.append(subprocess.Popen(
            ["ip", "netns", "exec", namespaces[0], BGPD, "--vty_socket", str(frr_dir), "-f",
             str(bgpd_conf), "-i", str(frr_dir / "bgpd.pid"), "-Z", "-n", "-P", "0",
             "--log", f"file:{frr_dir}/bgpd.log"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

        # --- the throwaway users ---
        port = _free_port()
        linux_user, router_user = f"nwpb{tag}l", f"nwpb{tag}r"
        linux_home = home / "linux"
        linux_home.mkdir()
        bash = _session_only_shell(home / "bash-shell", port, "/bin/bash")
        vtysh = _session_only_shell(home / "vtysh-shell", port,
                                    f"{VTYSH} --vty_socket {frr_dir}")
        users.append(linux_user)
        _add_user(linux_user, linux_home, bash)
        users.append(router_user)
        _add_user(router_user, home, vtysh, "-G", "frrvty")
        shutil.chown(linux_home, linux_user, linux_user)
        passwords = {u: secrets.token_urlsafe(12) for u in users}
        _run("chpasswd", input="".join(f"{u}:{p}\n" for u, p in passwords.items()))
        (home / "keys").mkdir()

        # --- sshd, its own config, host key and port ---
        _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(home / "host_key"))
        config = home / "sshd_config"
        config.write_text(
            f"AddressFamily inet\nListenAddress 127.0.0.1:{port}\nHostKey {home}/host_key\n"
            f"PidFile {home}/sshd.pid\n"
            "UsePAM no\nPasswordAuthentication yes\nKbdInteractiveAuthentication no\n"
            f"PubkeyAuthentication yes\nAuthorizedKeysFile {home}/keys/%u\n"
            f"AllowUsers {linux_user} {router_user}\nPermitRootLogin no\n"
            # StrictModes would refuse keys under /tmp, which is world-writable
            "StrictModes no\n"
            "PrintMotd no\nPrintLastLog no\nX11Forwarding no\nAllowTcpForwarding no\n"
            "Subsystem sftp none\n")
        if made_privsep:
            os.makedirs("/run/sshd", mode=0o755)
        procs.append(subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)],
                                      stdout=subprocess.DEVNULL,
                                      stderr=open(home / "sshd.log", "w")))  # noqa: SIM115

        def listening() -> bool:
            with socket.socket() as sock:
                return sock.connect_ex(("127.0.0.1", port)) == 0

        assert _wait(listening, 10), (home / "sshd.log").read_text()
        assert _listening_addresses(port) == {"127.0.0.1"}
        rig = Rig(home, port, linux_user, passwords[linux_user], linux_home, router_user,
                  passwords[router_user], (home / "host_key.pub").read_text().strip(),
                  namespaces[0], namespaces[1], bird_socket)
        assert _wait(lambda: rig.bird_session() == "Established", 20), rig.bird_session()
        yield rig
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
        with contextlib.suppress(OSError, ValueError):
            os.kill(int((home / "bird.pid").read_text().split()[0]), 15)
        for user in users:
            _run("userdel", user, check=False)
        _remove_stale_users()
        for ns in namespaces:
            _run("ip", "netns", "del", ns, check=False)
        if made_privsep:
            shutil.rmtree("/run/sshd", ignore_errors=True)
        shutil.rmtree(home, ignore_errors=True)


def test_the_throwaway_users_log_in_only_through_the_rigs_sshd(rig):
    today = int(time.time() // 86400)
    for user in (rig.linux_user, rig.router_user):
        done = _run("su", "-", user, "-c", "id -un", check=False)
        assert done.returncode != 0, done.stdout
        assert "not a login account" in done.stderr
        expires_day = int(_run("getent", "shadow", user).stdout.split(":")[7])
        assert today <= expires_day <= today + 1


def run_playbook(rig: Rig, *argv: str, trail: Path, env: dict | None = None):
    return subprocess.run(
        [sys.executable, "-m", "netwatch.cli", "playbook", "run", *argv, "--yes",
         "--trail", str(trail)],
        capture_output=True, text=True, timeout=120, cwd=REPO,
        env={**os.environ, **rig.env, **(env or {})},
    )


def trail_records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def assert_no_password(rig: Rig, *texts: str) -> None:
    for text in texts:
        assert rig.linux_password not in text and rig.router_password not in text


COMMANDS = """\
name: ssh-commands
description: commands on a Linux box, with an expect that fails when asked to
params:
  word: {type: string, required: true}
  marker: {type: string, required: true}
  expect: {type: string, default: hello}
steps:
  - device:
      device: box
      commands: ["echo hello-{{ word }}", "id -un", "touch {{ marker }}.applied"]
      expect: "{{ expect }}-{{ word }}"
    on_failure: rollback
rollback:
  - device: {device: box, commands: ["touch {{ marker }}.rolled-back"]}
"""


def test_device_commands_over_real_ssh(rig, tmp_path):
    playbook = tmp_path / "ssh-commands.yaml"
    playbook.write_text(COMMANDS)
    trail = tmp_path / "trail.jsonl"
    marker = rig.linux_home / "run1"
    started = time.monotonic()
    done = run_playbook(rig, str(playbook), "--inventory", str(rig.inventory()),
                        "-p", "word=world", "-p", f"marker={marker}", trail=trail)
    took = time.monotonic() - started
    assert done.returncode == 0, done.stdout + done.stderr
    records = trail_records(trail)
    step = next(r for r in records if r["kind"] == "step")
    assert "box> echo hello-world\nhello-world" in step["output"]
    assert f"box> id -un\n{rig.linux_user}" in step["output"]
    assert Path(f"{marker}.applied").exists() and not Path(f"{marker}.rolled-back").exists()
    assert_no_password(rig, done.stdout, done.stderr, trail.read_text())
    assert took < 15, f"a one-step SSH playbook took {took:.1f} s"


def test_a_failing_expect_triggers_the_rollback_steps(rig, tmp_path):
    playbook = tmp_path / "ssh-commands.yaml"
    playbook.write_text(COMMANDS)
    trail = tmp_path / "trail.jsonl"
    marker = rig.linux_home / "run2"
    done = run_playbook(rig, str(playbook), "--inventory", str(rig.inventory()),
                        "-p", "word=world", "-p", f"marker={marker}", "-p", "expect=goodbye",
                        trail=trail)
    assert done.returncode == 1
    assert "expected /goodbye-world/: not found" in done.stdout
    assert "playbook ssh-commands: rolled back" in done.stdout
    assert Path(f"{marker}.applied").exists() and Path(f"{marker}.rolled-back").exists()
    kinds = [r["kind"] for r in trail_records(trail)]
    assert kinds == ["playbook_start", "step", "rollback_start", "rollback_step",
                     "rollback_end", "playbook_end"]
    assert_no_password(rig, done.stdout, done.stderr, trail.read_text())


@pytest.mark.parametrize("word", ["x; touch {marker}.pwned", "x\ntouch {marker}.pwned",
                                  "$(touch {marker}.pwned)", "x && touch {marker}.pwned"])
def test_a_hostile_value_never_reaches_the_shell(rig, tmp_path, word):
    playbook = tmp_path / "ssh-commands.yaml"
    playbook.write_text(COMMANDS)
    marker = rig.linux_home / f"run3-{secrets.token_hex(2)}"
    done = run_playbook(rig, str(playbook), "--inventory", str(rig.inventory()),
                        "-p", f"word={word.format(marker=marker)}", "-p", f"marker={marker}",
                        trail=tmp_path / "trail.jsonl")
    assert done.returncode == 64
    assert not Path(f"{marker}.pwned").exists() and not Path(f"{marker}.applied").exists()
    assert not (tmp_path / "trail.jsonl").exists()  # refused before anything ran


def test_a_key_file_and_a_known_hosts_file(rig, tmp_path):
    key = rig.home / f"key-{secrets.token_hex(2)}"
    _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key))
    authorized = rig.home / "keys" / rig.linux_user
    authorized.write_text(Path(f"{key}.pub").read_text())
    known = rig.home / "known_hosts"
    known.write_text(f"[127.0.0.1]:{rig.port} {rig.host_key_pub}\n")
    playbook = tmp_path / "whoami.yaml"
    playbook.write_text("name: whoami\ndescription: d\nsteps:\n"
                        "  - device: {device: box, commands: [id -un], expect: nwpb}\n")
    inventory = rig.inventory(password_env=None, key_file=str(key), known_hosts=str(known))
    text = json.loads(inventory.read_text())
    del text["devices"]["box"]["password_env"]
    inventory.write_text(json.dumps(text))
    done = run_playbook(rig, str(playbook), "--inventory", str(inventory),
                        trail=tmp_path / "t1.jsonl", env={"NWPB_LINUX_PW": ""})
    assert done.returncode == 0, done.stdout + done.stderr
    other = rig.home / "other_host_key"
    _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other))
    known.write_text(f"[127.0.0.1]:{rig.port} {Path(f'{other}.pub').read_text()}")
    done = run_playbook(rig, str(playbook), "--inventory", str(inventory),
                        trail=tmp_path / "t2.jsonl")
    assert done.returncode == 1
    assert "box: cannot open a session to 127.0.0.1:" in done.stdout  # host key refused


# --- FRR's vtysh as the border router ----------------------------------------------------------


def border_params() -> list[str]:
    return ["-p", "device=border1", "-p", f"local_asn={FRR_ASN}", "-p",
            f"neighbor={BIRD_ADDR}", "-p", "reason=CHG-77 link maintenance"]


def test_border_shutdown_neighbor_shuts_the_session(rig, tmp_path):
    rig.neighbor_up()
    trail = tmp_path / "trail.jsonl"
    try:
        started = time.monotonic()
        done = run_playbook(rig, "border-shutdown-neighbor", "--inventory",
                            str(rig.inventory()), *border_params(), trail=trail)
        took = time.monotonic() - started
        assert done.returncode == 0, done.stdout + done.stderr
        assert _wait(lambda: rig.bird_session() != "Established", 10)
        assert "Established" not in rig.bird_session()
        records = trail_records(trail)
        checks = [r for r in records if r["kind"] == "step" and r["step_kind"] == "check"]
        assert f"neighbor={BIRD_ADDR}: state_pfxrcd 'Idle (Admin)' matches" in \
            checks[-1]["output"]
        config = next(r for r in records if r["kind"] == "step" and r["step_kind"] == "device")
        assert f"neighbor {BIRD_ADDR} shutdown" in config["output"]
        assert_no_password(rig, done.stdout, done.stderr, trail.read_text())
        assert took < 30, f"border-shutdown-neighbor took {took:.1f} s"
    finally:
        rig.neighbor_up()


@dataclass
class _Operator:
    rig: Rig
    stop: object = None
    bird_when_asked: str = ""

    def confirm(self, question: str) -> bool:
        # the session was shut by step 2; BIRD must see it down before the rollback
        _wait(lambda: self.rig.bird_session() != "Established", 10)
        self.bird_when_asked = self.rig.bird_session()
        return question.startswith("Run the rollback steps now")

    def show(self, text: str) -> None:
        pass

    def step_started(self, label, total, name) -> None:
        pass

    def waiting(self, label, elapsed_s, limit_s, observed) -> None:
        pass

    def step_done(self, label, name, status, elapsed_s, output) -> None:
        if label == "2":
            self.stop.set()  # Ctrl-C while the shutdown was being applied


class _Flag:
    def __init__(self) -> None:
        self.value = False

    def set(self) -> None:
        self.value = True

    def is_set(self) -> bool:
        return self.value


class _NoControl:
    def call(self, daemon, command, args):
        raise AssertionError("border-shutdown-neighbor talks to no daemon")


class _Trail:
    def __init__(self) -> None:
        self.records: list = []

    def record(self, kind: str, **fields) -> None:
        self.records.append((kind, fields))


def test_its_rollback_brings_the_session_back(rig, monkeypatch):
    """Ctrl-C after the shutdown, the rollback accepted: BIRD saw the session go down, and
    `no neighbor ... shutdown` brings it back (the real netmiko adapter, the real runner)."""
    rig.neighbor_up()
    for name, value in rig.env.items():
        monkeypatch.setenv(name, value)
    pf = load_playbook(REPO / "playbooks" / "border-shutdown-neighbor.yaml")
    given = dict(p.split("=", 1) for p in border_params()[1::2])
    plan = resolve(pf, given, load_inventory(rig.inventory()))
    operator, stop, trail = _Operator(rig), _Flag(), _Trail()
    operator.stop = stop
    try:
        result = Runner(plan, control=_NoControl(), devices=NetmikoConnector(), diagnoser=None,
                        operator=operator, trail=trail, stop=stop, run_id="lab").run()
        assert "Established" not in operator.bird_when_asked, operator.bird_when_asked
        assert result.outcome == "rolled back", [r.output for r in result.steps]
        assert [r.status for r in result.rollback] == ["ok", "ok"]
        assert _wait(lambda: rig.bird_session() == "Established", 20), rig.bird_session()
        assert_no_password(rig, repr(trail.records), repr(result))
    finally:
        rig.neighbor_up()
