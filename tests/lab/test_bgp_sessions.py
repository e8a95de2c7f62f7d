"""BGP sessions fit for production, with real ExaBGP 5 and BIRD 2 and both families: a border
speaker restart blackholes nothing (graceful restart, the controller's End-of-RIB), TCP-MD5
and GTSM, and a transit that sends a full table. What the transits' BIRD hold is polled every
50 ms per transit (netwatch.lab.watch) while it happens."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from netwatch.config import load_site
from netwatch.lab import faults, lifecycle
from netwatch.lab.handle import is_running
from netwatch.lab.watch import RouteWatch, graceful_restart_pending

TRANSITS = ("t1", "t2", "t3", "t4")
GR_DONE_S = 20.0  # sessions back and End-of-RIB in, after ExaBGP started again
SETTLE_S = 2.0  # watched on after that: a late flush would show here


def log_mark(lab) -> dict[str, int]:
    """Where each transit's BIRD log ends now."""
    return {t: (lab.run_dir / f"{t}.log").stat().st_size for t in TRANSITS}


def log_since(lab, node: str, mark: dict[str, int]) -> str:
    return (lab.run_dir / f"{node}.log").read_bytes()[mark[node]:].decode("utf-8", "replace")


def wait_graceful_restart_done(lab, eventually) -> float:
    """Every transit's sessions with edge Established and our End-of-RIB received."""
    pending = {}

    def done() -> bool:
        pending.update({t: graceful_restart_pending(lab, t) for t in TRANSITS})
        return not any(pending.values())

    return eventually(done, GR_DONE_S,
                      f"sessions still down or waiting for our End-of-RIB: {pending}")


def assert_restart_was_graceful(lab, mark) -> None:
    """Every transit's BIRD saw the restart as graceful: "Neighbor graceful restart detected",
    no NOTIFICATION received (a Cease would end helper mode: BIRD 2.0.12 and ExaBGP 5.0.15
    do not implement RFC 8538), and the restart done (our End-of-RIB) on both sessions."""
    for t in TRANSITS:
        log = log_since(lab, t, mark)
        for session in ("edge4", "edge6"):
            assert f"{session}: Neighbor graceful restart detected" in log, (t, session, log)
            assert f"{session}: Neighbor graceful restart done" in log, (t, session, log)
        assert "Received:" not in log, f"{t} received a NOTIFICATION from ExaBGP:\n{log}"


def restart_and_watch(lab, eventually, gap_s: float) -> tuple[RouteWatch, float]:
    """Restart ExaBGP as the systemd unit does, `gap_s` between stop and start, watching the
    transits from before the stop until SETTLE_S after every End-of-RIB is in. Returns the
    watch and the seconds from the start until the last End-of-RIB."""
    with RouteWatch(lab) as watch:
        time.sleep(0.3)  # a few samples before the stop
        lifecycle.restart_exabgp(lab, gap_s=gap_s)
        took = wait_graceful_restart_done(lab, eventually)
        time.sleep(SETTLE_S)
    for t in TRANSITS:
        assert watch.polls(t) >= (gap_s + took + SETTLE_S) / 0.1, (t, watch.polls(t))
    return watch, took


def test_exabgp_restart_keeps_our_prefixes_at_every_transit(announced, eventually):
    """SIGTERM (what systemd sends), 2 s, start: the transits keep our routes as stale, the
    restarted controller refreshes them and sends End-of-RIB: never missing, v4 and v6."""
    lab = announced
    mark = log_mark(lab)
    watch, took = restart_and_watch(lab, eventually, gap_s=2.0)
    missing = {t: watch.missing_s(t) for t in TRANSITS}
    assert all(v == 0 for m in missing.values() for v in m.values()), missing
    assert_restart_was_graceful(lab, mark)
    print(f"restart, 2 s gap: End-of-RIB at every transit {took:.2f} s after the start; "
          f"{sum(watch.polls(t) for t in TRANSITS)} polls, prefix missing 0 ms")


def test_a_withdrawn_upstream_stays_withdrawn_across_a_2_s_and_a_30_s_restart(
    announced, held, wait_for, eventually
):
    """t2 blackholed and withdrawn, then ExaBGP restarted twice: 2 s, and 30 s (an upgrade
    that takes that long, within the restart time of 120 s). The restarted controller sends
    t2 no announcement, only its End-of-RIB: t2 never holds our prefixes, during or after;
    the others never lose them. (One blackhole for both: each is two actions of the lab's
    hourly budget, which the whole suite shares.)"""
    lab = announced
    faults.apply(lab, "transit-blackhole", "t2")
    assert wait_for(lambda: held("t2") == {}, 10) is not None, "t2 was not withdrawn in 10 s"
    for gap_s in (2.0, 30.0):
        mark = log_mark(lab)
        watch, took = restart_and_watch(lab, eventually, gap_s)
        assert watch.ever_held("t2") == frozenset(), f"t2 held our prefixes ({gap_s:g} s gap)"
        assert held("t2") == {}
        for t in ("t1", "t3", "t4"):
            assert all(v == 0 for v in watch.missing_s(t).values()), (t, watch.missing_s(t))
        assert_restart_was_graceful(lab, mark)
        print(f"restart, {gap_s:g} s gap, t2 withdrawn: t2 never held our prefixes, the "
              f"others never lost them; End-of-RIB {took:.2f} s after the start")


def test_a_crash_looping_controller_until_exabgp_exits_loses_nothing(announced, eventually):
    """The controller dies at once, again and again: ExaBGP respawns it up to 5 times per
    64 s window, then exits ("Too many death"); systemd starts it again 2 s later
    (RestartSec). The transits keep our routes throughout."""
    lab = announced
    mark = log_mark(lab)
    pidfile = lab.pidfile("exabgp")
    deaths = 0
    with RouteWatch(lab) as watch:
        deadline = time.monotonic() + 150  # two 64 s windows and some
        while is_running(pidfile, "exabgp") and time.monotonic() < deadline:
            for pid in lifecycle.exabgp_children(lab):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                    deaths += 1
            time.sleep(0.05)
        assert not is_running(pidfile, "exabgp"), f"ExaBGP still runs after {deaths} deaths"
        time.sleep(2.0)  # systemd's RestartSec
        lifecycle.start_exabgp(lab, load_site(lab.site_file))
        took = wait_graceful_restart_done(lab, eventually)
        time.sleep(SETTLE_S)
    assert "Too many death" in (lab.run_dir / "exabgp.log").read_text()
    missing = {t: watch.missing_s(t) for t in TRANSITS}
    assert all(v == 0 for m in missing.values() for v in m.values()), missing
    assert_restart_was_graceful(lab, mark)
    print(f"crash loop: {deaths} controller deaths, ExaBGP exited and was started again; "
          f"End-of-RIB {took:.2f} s after; prefix missing 0 ms")


def _session_up(lab, listen: str) -> dict[tuple[str, str], float]:
    found = {}
    for sample, value in lab.metrics("edge", listen).items():
        if sample.startswith("netwatch_bgp_session_up{"):
            labels = dict(kv.split("=") for kv in sample[sample.index("{") + 1:-1].split(","))
            found[(labels["upstream"].strip('"'), labels["family"].strip('"'))] = value
    return found


def _established(lab, node: str) -> dict[str, bool]:
    return {name: "Established" in s["info"]
            for name, s in lab.bgp_sessions(node).items() if name.startswith("edge")}


def _md5_failures(lab, node: str) -> int:
    """The kernel's count of TCP segments dropped for a bad or missing MD5 signature, in
    `node`'s namespace."""
    lines = lab.exec(node, "cat", "/proc/net/netstat").stdout.splitlines()
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            return int(dict(zip(names.split(), values.split(), strict=True))["TCPMD5Failure"])
    raise AssertionError("no TcpExt line in /proc/net/netstat")


def test_md5_right_password_establishes_and_a_wrong_one_shows_in_status_and_metrics(
    announced, held, wait_for, eventually
):
    lab = announced
    site = load_site(lab.site_file)
    listen = site.metrics.controller
    topology = lab.topology()
    assert [t.name for t in topology.transits if t.md5 and t.ttl_security] == ["t3", "t4"]
    # Right password (and GTSM on both sides): t3 and t4 are up like t1 and t2, and edge's
    # sockets to them carry an MD5 key.
    for t in TRANSITS:
        assert all(_established(lab, t).values()), (t, _established(lab, t))
    # (`ss -i` prints the keys: its output goes into no message.)
    sockets = lab.exec("edge", "ss", "-tnHi", "state", "established", "sport", "= :179",
                       "or", "dport", "= :179").stdout
    assert sockets.count("md5keys") == 4, "expected 4 MD5-signed sessions (t3, t4 x v4, v6)"
    # The secret is in no log: not ExaBGP's, not the controller's (exabgp.out), not BIRD's.
    passwords = lab.md5_passwords()
    for name in ("exabgp.log", "exabgp.out", *(f"{t}.log" for t in TRANSITS)):
        text = (lab.run_dir / name).read_text(errors="replace")
        assert not any(p in text for p in passwords.values()), f"a password is in {name}"

    failures = _md5_failures(lab, "t3")
    normal = dict.fromkeys(topology.prefixes, str(topology.asn))
    with RouteWatch(lab, ["t1", "t2", "t4"]) as watch:
        faults.apply(lab, "md5-mismatch", "t3")
        eventually(lambda: not any(_established(lab, "t3").values()), 10,
                   "t3's sessions did not go down with a wrong password")
        eventually(lambda: {f: v for (u, f), v in _session_up(lab, listen).items()
                            if u == "t3"} == {"ipv4": 0.0, "ipv6": 0.0}, 10,
                   "netwatch_bgp_session_up for t3 is not 0 for both families")
        time.sleep(3)  # ExaBGP keeps trying; nothing gets through
        assert not any(_established(lab, "t3").values())
        assert _md5_failures(lab, "t3") > failures
        status = subprocess.run(
            [sys.executable, "-m", "netwatch.cli", "lab", "status", "--name", lab.name],
            capture_output=True, text=True, timeout=60,
        )
        assert status.returncode == 0, status.stderr
        rows = [line.split() for line in status.stdout.splitlines()]
        for session in ("edge4", "edge6"):
            row = next(r for r in rows if r[:2] == ["t3", session])
            assert "Established" not in row, row
        metrics = _session_up(lab, listen)
        assert all(v == 1.0 for (u, _), v in metrics.items() if u != "t3"), metrics
        # nothing else disturbed
        for t in ("t1", "t2", "t4"):
            assert held(t) == normal, (t, held(t))
            assert all(_established(lab, t).values()), t
    for t in ("t1", "t2", "t4"):
        assert all(v == 0 for v in watch.missing_s(t).values()), (t, watch.missing_s(t))
    faults.heal(lab, "t3")
    took = eventually(lambda: all(_established(lab, "t3").values()), 30,
                      "t3's sessions did not come back with the right password")
    eventually(lambda: _session_up(lab, listen)[("t3", "ipv4")] == 1.0, 10,
               "netwatch_bgp_session_up for t3 did not come back")
    print(f"md5: wrong password -> t3 down, metric 0, others untouched; healed -> "
          f"Established after {took:.2f} s")


def _edge_exported(lab, node: str) -> int:
    """How many IPv4 routes `node`'s BIRD exports to edge."""
    for line in lab.birdc(node, "show protocols all edge4").splitlines():
        if "Routes:" in line:
            return int(line.split("imported,")[1].split()[0])
    return 0


def _cpu_rss(pid: int) -> tuple[float, float]:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu_s = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return cpu_s, int(fields[21]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def test_a_full_table_from_one_transit_costs_exabgp_nothing_and_slows_no_withdrawal(
    announced, held, wait_for
):
    """t1 sends 100,000 routes. ExaBGP (adj-rib-in false, no receive subscription) does not
    decode them: its RSS stays put; and a blackhole of t2 is still acted on as fast as usual
    (the lab's figure is ~1.2 s: 200 ms probes, a look-back of 5)."""
    lab = announced
    pid = int(lab.pidfile("exabgp").read_text())
    cpu0, rss0 = _cpu_rss(pid)
    started = time.monotonic()
    faults.apply(lab, "full-table", "t1", "100000")
    assert wait_for(lambda: _edge_exported(lab, "t1") == 100_000, 60, 0.5) is not None
    time.sleep(2)  # ExaBGP reads them all
    cpu1, rss1 = _cpu_rss(pid)
    assert rss1 - rss0 < 5, f"ExaBGP's RSS grew {rss0:.1f} -> {rss1:.1f} MiB"
    assert held("t1") == dict.fromkeys(lab.topology().prefixes, "64500")
    faults.apply(lab, "transit-blackhole", "t2")
    took = wait_for(lambda: held("t2") == {}, 10)
    assert took is not None, "t2 was not withdrawn within 10 s while t1 sent a full table"
    assert took < 4.0, f"withdrawal took {took:.2f} s with a full table at t1"
    for t in ("t1", "t3", "t4"):
        assert set(held(t)) == set(lab.topology().prefixes), t
    print(f"full table (100,000 routes from t1): ExaBGP CPU {cpu1 - cpu0:.2f} s over "
          f"{time.monotonic() - started:.1f} s, RSS {rss0:.1f} -> {rss1:.1f} MiB; blackholed t2 "
          f"withdrawn after {took:.2f} s")
