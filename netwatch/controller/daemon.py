"""The transit controller daemon: ExaBGP's API process. One asyncio loop.

It gathers observations (probe results through each upstream, ExaBGP's session events),
feeds them to `netwatch.transit.step`, and carries out the plan as a diff of ExaBGP commands
against what ExaBGP has acknowledged (`netwatch.exabgp.diff`). stdout belongs to ExaBGP:
logs are key=value lines on stderr.

Contract:
* at start it asks ExaBGP for the sessions' state (`show neighbor json`: a respawned
  controller gets no event for sessions already up) and, once the answer is in (or after
  SESSIONS_TIMEOUT_S, sessions not reported staying UNKNOWN), sends the full desired state
  (config + persisted state) before any probe is trusted; again to each neighbor whenever its
  session comes up. Before the answer, the plan would be made on guesses: nothing is sent;
* decisions run on the monotonic clock; the state file holds wall-clock times (a recovery
  hold survives a restart, an NTP step does not shorten it). A state file that cannot be read
  or is not what the controller writes is logged (`state_unreadable`) and ignored: the
  controller starts from the site file's defaults;
* a command ExaBGP rejects (`error`), or does not acknowledge within ACK_TIMEOUT_S of
  reaching the head of the queue, is counted and retried after 1 s, doubling up to 30 s
  while the rejections go on. The backoff is per key (neighbor, prefix) and per rejected
  value: other keys, and a new decision about the same key, go out at once (one command
  ExaBGP keeps rejecting must not hold back the announcements the interlock needs). A diff
  that fails is retried after the same kind of backoff, for the whole diff. ExaBGP answers
  every command once, in order, and its acks carry no command id: the acks of commands that
  timed out are still owed, and the next that many acks are dropped (`orphan_acks`) before
  one is matched to a command again. What a timed-out command did is unknown: its keys
  leave `acked`, so the next diff sends their desired state again;
* make-before-break is a wait: a sync sends its announcements, then only the withdrawals
  that leave every prefix announced through `min_announcing_upstreams` sessions that are up,
  counting only acknowledged announcements (`exabgp.safe_withdrawals`). The others are held
  and looked at again when the last announcement in flight is acknowledged; a rejected or
  timed-out announcement keeps holding the withdrawals that need it until a retry of it is
  acknowledged;
* verdicts wait for one full probe window after start;
* a failing probe, a bad line from ExaBGP or a failed write is logged and survived;
* it returns 0 when ExaBGP closes our stdin (ExaBGP exited: the supervisor restarts both),
  and EX_SOFTWARE when the probe loop dies, leaving the announcements as they are: ExaBGP
  respawns a controller that probes again.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections import deque
from dataclasses import dataclass

from prometheus_client import CollectorRegistry

from netwatch import exitcodes
from netwatch.adapters.exabgp_pipe import ExabgpPipe
from netwatch.adapters.probes.icmp import IcmpProber
from netwatch.adapters.probes.tcp import TcpProber
from netwatch.controller.decision import (
    BudgetExhausted,
    LocalFault,
    SessionChange,
    SessionSummary,
    Transition,
    step,
)
from netwatch.controller.metrics import ControllerMetrics
from netwatch.controller.params import SessionState, params_from_site
from netwatch.controller.persistence import restore, to_json
from netwatch.controller.plan import Announcement, mode_of
from netwatch.controller.verdict import REACHABLE_LOSS, ProbeWindow
from netwatch.core.vocabulary import Family
from netwatch.exabgp import protocol as exabgp
from netwatch.runtime.state_store import StateStore

PATH_REPAIR_S = 10.0  # re-install policy routes this often (a link flap removes them)
RETRY_MIN_S = 1.0  # a rejected command is retried after this long ...
RETRY_MAX_S = 30.0  # ... doubling up to this while ExaBGP keeps rejecting
# The first diff waits this long at most for the answer to `show neighbor json` (tens of ms in
# the lab); then it goes out with the sessions not reported still UNKNOWN (possibly up).
SESSIONS_TIMEOUT_S = 3.0
# A command at the head of the queue unacknowledged this long counts as rejected. ExaBGP
# 5.0.15 takes ~0.45 s for a line of 1,000 prefixes (docs/controller.md): 20x that.
ACK_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Backoff:
    """A key whose command was rejected (or timed out): `effect` is not sent again before
    `retry_at`; if it is rejected again, the next wait is `next_s`."""

    effect: Announcement | None
    retry_at: float
    next_s: float


def log(event: str, **fields) -> None:
    parts = [f"ts={time.time():.3f}", f"event={event}"]
    for key, value in fields.items():
        text = str(value)
        parts.append(f"{key}={text!r}" if (" " in text or not text) else f"{key}={text}")
    print(" ".join(parts), file=sys.stderr, flush=True)


class Controller:
    def __init__(self, site, registry: CollectorRegistry | None = None, pipe=None,
                 clock=time.time, mono=time.monotonic):
        """`clock` is the wall clock (the state file's times), `mono` the decision clock.
        Raises ValueError for a site the controller cannot run (tcp probes without a port)."""
        self.site = site
        self.ctl = site.controller
        self.params = params_from_site(site)
        if self.ctl.probe.method == "tcp":
            missing = [t.label for t in self.ctl.probe.targets if t.port is None]
            if missing:
                raise ValueError(f"probe method tcp: no port for {', '.join(missing)}")
        self.clock, self.mono = clock, mono  # wall clock for the state file; decisions: mono
        self.metrics = ControllerMetrics(registry or CollectorRegistry())
        self.store = StateStore(f"{site.state_dir}/controller.json")
        try:
            self.state = restore(self.params, self.store.load(), now=mono(),
                                          wall_offset_s=self.wall_offset_s())
        except ValueError as exc:  # unreadable, not JSON, or not what to_json writes
            self.metrics.errors.labels("state").inc()
            log("state_unreadable", path=self.store.path, error=exc,
                note="starting from the site file's defaults")
            self.state = restore(self.params, now=mono())
        self.pipe = pipe or ExabgpPipe()
        self.sessions: dict[tuple[str, int], str] = {}
        for u in self.ctl.upstreams:
            self.sessions[(u.name, u.neighbor.version)] = str(u.neighbor)
            if u.neighbor6 is not None:
                self.sessions[(u.name, 6)] = str(u.neighbor6)
        self.by_address = {addr: key for key, addr in self.sessions.items()}
        self.acked: dict[exabgp.Key, Announcement | None] = {}
        self.pending: deque[exabgp.Command] = deque()
        self.head_since = 0.0  # since when pending[0] has waited for its acknowledgement
        # Acks still owed for commands that timed out: they come first (ExaBGP answers in
        # order) and belong to no command in `pending`.
        self.orphan_acks = 0
        self.backoff: dict[exabgp.Key, Backoff] = {}
        self.next_retry: float | None = None  # the first backoff to end, of the keys held back
        self.sync_retry_at = 0.0  # a diff that raised: the whole diff waits
        self.sync_retry_s = RETRY_MIN_S
        self.dirty = True  # the plan or ExaBGP's side changed since the last sync
        # Withdrawals the last sync held back until more announcements are acknowledged:
        # looked at again when the last announcement in flight is answered.
        self.withdrawals_held = 0
        # None: not asked yet; a number: asked, nothing is sent before the answer or this time
        self.sessions_deadline: float | None = None
        self.sessions_known = False
        self.window = ProbeWindow(self.ctl.probe.window_s, self.params.recent_probes)
        self.started = mono()
        self._persisted = to_json(self.state)  # on the decision clock: compared, not saved

    # --- ExaBGP side -----------------------------------------------------------------------

    def known(self) -> dict:
        known = dict(self.acked)
        for command in self.pending:
            known.update(command.effect)
        return known

    def ask_sessions(self) -> None:
        """Send `show neighbor json`; the first diff waits for its answer (see sync)."""
        self.sessions_deadline = self.mono() + SESSIONS_TIMEOUT_S
        self.send(exabgp.show_neighbors())

    def _may_send(self) -> bool:
        if self.sessions_known:
            return True
        if self.sessions_deadline is None or self.mono() < self.sessions_deadline:
            return False
        self.sessions_known = True
        unknown = sorted(f"{n}/{f.label}" for (n, f), s in self.state.sessions.items()
                         if s is SessionState.UNKNOWN)
        log("sessions_timeout", after_s=SESSIONS_TIMEOUT_S, unknown=",".join(unknown) or "-",
            note="sending the desired state; unknown sessions count as possibly up")
        return True

    def sync(self) -> None:
        """Send what the plan wants and ExaBGP has not acknowledged (or been sent) yet.

        Nothing before the sessions' state is known (or SESSIONS_TIMEOUT_S has passed). A key
        whose rejected value is still wanted waits for its own backoff; every other key goes
        out now. A diff that raises is counted, logged and retried after a backoff of its own
        (the plan is still to be sent).
        """
        self.expire_acks()
        now = self.mono()
        if self.next_retry is not None and now >= self.next_retry:
            self.dirty = True  # a held-back key may go again
        if not self.dirty or self.sync_retry_at > now or not self._may_send():
            return
        try:
            desired = exabgp.expand(self.state.plan.desired, self.sessions, self.site.prefixes)
            waiting = [b.retry_at for k, b in self.backoff.items()
                       if b.retry_at > now and k in desired and desired[k] == b.effect]
            if waiting:
                desired = {k: v for k, v in desired.items() if not self._held_back(k, v, now)}
            commands = exabgp.diff(desired, self.known())
        except Exception as exc:
            self.metrics.errors.labels("sync").inc()
            log("sync_failed", error=repr(exc), retry_in_s=self.sync_retry_s)
            self.sync_retry_at = now + self.sync_retry_s
            self.sync_retry_s = min(RETRY_MAX_S, 2 * self.sync_retry_s)
            return
        self.sync_retry_s = RETRY_MIN_S
        self.next_retry = min(waiting) if waiting else None
        self.dirty = False
        announcements = [c for c in commands if not c.withdraws]
        withdrawals = [c for c in commands if c.withdraws]
        for command in announcements:
            if not self.send(command):
                self.dirty = True  # try again at the next sync
        if withdrawals:
            # Make-before-break as a wait, not only an order: see exabgp.safe_withdrawals.
            ready = exabgp.safe_withdrawals(withdrawals, self.acked, self.pending,
                                            self.neighbors_up(),
                                            self.params.min_announcing_upstreams)
            self.withdrawals_held = len(withdrawals) - len(ready)
            if self.withdrawals_held:
                log("withdrawals_held", commands=self.withdrawals_held,
                    in_flight=len(self.pending),
                    note="until enough announcements are acknowledged")
            for command in ready:
                if not self.send(command):
                    self.dirty = True
        else:
            self.withdrawals_held = 0

    def neighbors_up(self) -> set[str]:
        """The neighbor addresses whose session is known to be up."""
        return {address for (name, fam), address in self.sessions.items()
                if self.state.sessions.get((name, Family(fam))) is SessionState.UP}

    def _held_back(self, key: exabgp.Key, want: Announcement | None, now: float) -> bool:
        b = self.backoff.get(key)
        return b is not None and b.retry_at > now and b.effect == want

    def back_off(self, command: exabgp.Command) -> float:
        """Hold back each key of a rejected (or timed-out) command: 1 s, doubling up to 30 s
        while the same value keeps being rejected. Returns the wait."""
        now = self.mono()
        wait = RETRY_MIN_S
        for key, effect in command.effect.items():
            b = self.backoff.get(key)
            wait = b.next_s if b is not None and b.effect == effect else RETRY_MIN_S
            self.backoff[key] = Backoff(effect, now + wait, min(RETRY_MAX_S, 2 * wait))
        self.dirty = True
        return wait

    def expire_acks(self) -> None:
        """Give up on acknowledgements that have not come: ExaBGP answers in command order, so
        once the head is late every command behind it is unconfirmed too. They count as
        rejected; their acks may still come and are dropped when they do (`orphan_acks`).
        What they did is unknown: their keys leave `acked`, and the next diff sends the
        desired state of those keys again (after the backoff)."""
        if not self.pending or self.mono() - self.head_since < ACK_TIMEOUT_S:
            return
        self.metrics.rejected.inc(len(self.pending))
        self.orphan_acks += len(self.pending)
        waits = []
        for command in self.pending:
            for key in command.effect:
                self.acked.pop(key, None)
            waits.append(self.back_off(command))
        log("ack_timeout", line=self.pending[0].line[:200], commands=len(self.pending),
            after_s=ACK_TIMEOUT_S, retry_in_s=max(waits), owed_acks=self.orphan_acks)
        self.pending.clear()
        self.dirty = True

    def send(self, command: exabgp.Command) -> bool:
        """Write one command and expect its acknowledgement. False when the write failed."""
        try:
            self.pipe.send(command.line)
        except (ValueError, OSError, RuntimeError) as exc:
            self.metrics.errors.labels("send").inc()
            log("send_failed", error=exc)
            return False
        if not self.pending:
            self.head_since = self.mono()
        self.pending.append(command)
        log("command", line=command.line[:200], prefixes=len(command.effect))
        return True

    def on_event(self, line: str) -> None:
        try:
            event = exabgp.parse_event(line)
        except ValueError as exc:
            self.metrics.errors.labels("event").inc()
            log("bad_event", error=exc)
            return
        if isinstance(event, exabgp.Ack):
            if self.orphan_acks:
                # The late answer to a command that timed out, not to pending[0]: ExaBGP is
                # answering again, so the head has not been waiting at ExaBGP's head yet.
                self.orphan_acks -= 1
                self.head_since = self.mono()
                log("late_ack", ack=event.kind.value, still_owed=self.orphan_acks)
                return
            if not self.pending:
                return
            command = self.pending.popleft()
            self.head_since = self.mono()
            if command.line == exabgp.SHOW_NEIGHBORS:
                # The answer comes before its ack: no answer by now means none is coming.
                if not self.sessions_known:
                    self.sessions_known = True
                    log("sessions_unanswered", ack=event.kind.value,
                        note="sending the desired state; unknown sessions count as possibly up")
                    self.sync()
                return
            if event.kind is exabgp.AckKind.DONE:
                self.acked.update(command.effect)
                for key in command.effect:
                    self.backoff.pop(key, None)
                if (self.withdrawals_held and not command.withdraws
                        and all(c.withdraws for c in self.pending)):
                    # The last announcement in flight is in: the held withdrawals may be safe
                    # now (one ack round trip after the announcements, not a probe interval).
                    self.dirty = True
                    self.sync()
            else:
                self.metrics.rejected.inc()
                wait = self.back_off(command)
                log("command_rejected", line=command.line[:200], retry_in_s=wait)
            return
        if isinstance(event, exabgp.NeighborSummary):
            reported = {}
            for peer, up in event.sessions.items():
                key = self.by_address.get(peer)
                if key is not None:
                    reported[(key[0], Family(key[1]))] = up
            before = dict(self.state.sessions)
            # One observation for every session: one plan, no hold moving on the way.
            self.apply(SessionSummary(reported))
            for (name, fam), state in self.state.sessions.items():
                if before[(name, fam)] is not state:
                    self.metrics.session.labels(name, fam.label).set(
                        1 if state is SessionState.UP else 0)
                    log("session", upstream=name, family=fam.label, state=state.value,
                        reason="show neighbor")
            self.sessions_known = True
            self.sync()
            return
        if isinstance(event, exabgp.NeighborState):
            key = self.by_address.get(event.peer)
            if key is None or event.state not in (exabgp.PeerState.UP, exabgp.PeerState.DOWN):
                return
            up = event.state is exabgp.PeerState.UP
            name, fam = key
            self.metrics.session.labels(name, Family(fam).label).set(1 if up else 0)
            log("session", upstream=name, family=Family(fam).label, state=event.state.value,
                reason=event.reason)
            # Whatever ExaBGP held for this neighbor, resend the full desired state on up.
            for k in [k for k in self.acked if k[0] == event.peer]:
                del self.acked[k]
            self.dirty = True
            self.apply(SessionChange(name, Family(fam), up))
            self.sync()

    # --- decisions -------------------------------------------------------------------------

    def wall_offset_s(self) -> float:
        """wall clock - decision clock: converts the state file's times."""
        return self.clock() - self.mono()

    def apply(self, observation) -> None:
        old_plan = self.state.plan
        self.state, actions = step(self.state, observation, self.mono())
        for action in actions:
            if isinstance(action, Transition):
                self.metrics.actions.labels(action.new.value).inc()
                log("transition", upstream=action.upstream, old=action.old.value,
                    new=action.new.value, reason=action.reason)
            elif isinstance(action, LocalFault):
                log("local_fault", active=action.active,
                    note="every upstream looks bad: no BGP action")
            elif isinstance(action, BudgetExhausted):
                log("action_budget_exhausted", upstream=action.upstream,
                    wanted=action.wanted.value)
        old_holds = {h.family: h.kept for h in old_plan.holds}
        for hold in self.state.plan.holds:
            if old_holds.get(hold.family) != hold.kept:
                log("safety_hold", family=hold.family.label, kept=",".join(hold.kept))
        if self.state.plan != old_plan:
            self.dirty = True
        self.publish(modes=self.state.plan != old_plan)
        self.persist()

    def publish(self, modes: bool = True) -> None:
        """Set the gauges from the state; the announcement modes only when asked: 10,000
        prefixes x 4 upstreams x 4 modes at every 200 ms judgement would be the controller's
        main CPU load."""
        holds = {h.family for h in self.state.plan.holds}
        for fam in Family:
            self.metrics.safety_hold.labels(fam.label).set(1 if fam in holds else 0)
        self.metrics.local_fault.set(1 if self.state.local_fault else 0)
        self.metrics.budget_exhausted.set(1 if self.state.budget_exhausted else 0)
        for name, u in self.state.upstreams.items():
            self.metrics.set_state(name, u.state)
        if modes:
            for (name, fam), ann in self.state.plan.desired.items():
                for p in self.site.prefixes:
                    if p.version == int(fam):
                        self.metrics.set_mode(name, str(p), mode_of(self.params, name, ann))

    def persist(self) -> None:
        snapshot = to_json(self.state)  # decision clock: changes only when the state does
        if snapshot == self._persisted:
            return
        try:
            self.store.save(to_json(self.state, self.wall_offset_s()))
            self._persisted = snapshot
        except OSError as exc:
            self.metrics.errors.labels("persist").inc()
            log("persist_failed", error=exc)

    def judge(self) -> None:
        if self.mono() - self.started < self.ctl.probe.window_s:
            return  # not one full window yet: do not trust the probes
        stats = self.window.stats(self.mono())
        self.apply(stats)
        for name, u in self.state.upstreams.items():
            self.metrics.loss.labels(name).set(u.last.loss)
            self.metrics.loss_excess.labels(name).set(u.last.loss_excess)
        rtts: dict[str, list[float]] = {}
        for (name, target), ps in stats.paths.items():
            self.metrics.reachable.labels(name, target).set(1 if ps.loss < REACHABLE_LOSS else 0)
            if ps.rtt_s is not None:
                rtts.setdefault(name, []).append(ps.rtt_s)
        for name, values in rtts.items():
            self.metrics.rtt.labels(name).set(sorted(values)[len(values) // 2])

    # --- probes ----------------------------------------------------------------------------

    def probe_paths(self):
        """[(upstream name, ProbePath, [targets of that family])]."""
        from netwatch.adapters.policy_routing import ProbePath

        out = []
        targets = self.ctl.probe.targets
        for i, u in enumerate(self.ctl.upstreams):
            if u.interface is None:
                log("no_probe_path", upstream=u.name, reason="no interface in the site file")
                continue
            for j, gateway in enumerate((u.probe_nexthop, u.probe_nexthop6)):
                if gateway is None:
                    continue
                mine = [t for t in targets if t.address.version == gateway.version]
                if not mine:
                    continue
                n = 2 * i + j
                out.append((u.name, ProbePath(self.ctl.fwmark_base + n,
                                              self.ctl.route_table_base + n,
                                              gateway, u.interface), mine))
        return out

    def report_probed(self, probed: set[str]) -> None:
        """Set `netwatch_transit_probed` for every upstream and log each one that is not probed
        at all, once (at start: probers are made once). Such an upstream gets no verdict, and
        the all-bad guard is judged over the others (transit.is_local_fault)."""
        for u in self.ctl.upstreams:
            self.metrics.probed.labels(u.name).set(1 if u.name in probed else 0)
            if u.name not in probed:
                log("unprobed", upstream=u.name,
                    note="no verdict for it; the all-bad guard is judged over the others")

    async def install_paths(self, paths) -> None:
        from pyroute2 import AsyncIPRoute

        from netwatch.adapters.policy_routing import install_probe_path

        try:
            async with AsyncIPRoute() as ipr:
                for name, path, _ in paths:
                    try:
                        await install_probe_path(ipr, path)
                    except Exception as exc:  # a down link must not kill us
                        self.metrics.errors.labels("probe_path").inc()
                        log("probe_path_failed", upstream=name, table=path.table, error=exc)
        except Exception as exc:
            log("netlink_failed", error=exc)

    async def probe_loop(self) -> None:
        paths = self.probe_paths()
        await self.install_paths(paths)
        tcp = self.ctl.probe.method == "tcp"
        probers = []
        for name, path, targets in paths:
            try:
                prober = TcpProber(path.family, path.mark) if tcp else IcmpProber(path.family,
                                                                                   path.mark)
                probers.append((name, prober, targets))
            except OSError as exc:
                log("prober_failed", upstream=name, error=exc)
        self.report_probed({name for name, _, _ in probers})
        interval = self.ctl.probe.interval_ms / 1000
        timeout = (self.ctl.probe.timeout_ms or self.ctl.probe.interval_ms) / 1000
        last_repair = self.mono()

        async def one(name, prober, target):
            sent = self.mono()
            where = (target.address, target.port) if tcp else target.address
            try:
                rtt = await prober.ping(where, timeout)
            except Exception as exc:
                self.metrics.errors.labels("probe").inc()
                log("probe_failed", upstream=name, target=target.label, error=exc)
                rtt = None
            self.window.record(name, target.label, sent, rtt)

        tasks: set[asyncio.Task] = set()
        next_at = self.mono()
        while True:
            for name, prober, targets in probers:
                for target in targets:
                    task = asyncio.create_task(one(name, prober, target))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
            if self.mono() - last_repair > PATH_REPAIR_S:
                last_repair = self.mono()
                await self.install_paths(paths)
            next_at += interval
            await asyncio.sleep(max(0.0, next_at - self.mono()))
            try:
                self.judge()
                self.sync()
                await self.pipe.flush()
            except Exception as exc:  # log and survive
                self.metrics.errors.labels("judge").inc()
                log("judge_failed", error=repr(exc))

    async def read_events(self) -> None:
        async for line in self.pipe.lines():
            try:
                self.on_event(line)
                await self.pipe.flush()
            except Exception as exc:  # a bad event must not kill us
                self.metrics.errors.labels("event").inc()
                log("event_failed", error=repr(exc), line=line[:200])

    async def run(self) -> int:
        """Until ExaBGP closes the pipe (0), or the probe loop dies (EX_SOFTWARE)."""
        await self.pipe.open()
        log("start", upstreams=",".join(u.name for u in self.ctl.upstreams),
            prefixes=len(self.site.prefixes),
            states=",".join(f"{n}:{u.state.value}" for n, u in self.state.upstreams.items()))
        try:
            self.publish()  # the restored state's metrics
            self.ask_sessions()  # the desired state goes out with the answer (see sync)
        except Exception as exc:  # log and survive: sync runs again at every probe round
            self.metrics.errors.labels("start").inc()
            log("start_failed", error=repr(exc))
        reader = asyncio.create_task(self.read_events(), name="exabgp-events")
        prober = asyncio.create_task(self.probe_loop(), name="probes")
        try:
            await asyncio.wait({reader, prober}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (reader, prober):
                task.cancel()
            for task in (reader, prober):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if reader.done() and not reader.cancelled() and reader.exception() is None:
            log("stop", reason="ExaBGP closed the pipe")
            return exitcodes.OK
        # A dead worker stops the daemon (STYLE rule 8). The announcements stay as ExaBGP
        # holds them (the last plan); ExaBGP respawns a controller that probes again.
        dead = reader if reader.done() and not reader.cancelled() else prober
        error = None if dead.cancelled() else dead.exception()
        log("worker_died", worker=dead.get_name(), error=repr(error),
            note="announcements left as they are; exiting for a respawn")
        return exitcodes.SOFTWARE


def run_controller(site, registry: CollectorRegistry | None = None) -> int:
    """Run until ExaBGP goes away. Returns an exit code."""
    registry = registry or CollectorRegistry()
    import logging

    from netwatch.runtime.metrics_http import serve_metrics

    serve_metrics(site.metrics.controller, registry, logging.getLogger("netwatch.controller"))
    return asyncio.run(Controller(site, registry).run())
