"""The transit controller daemon: ExaBGP's API process. One asyncio loop.

It gathers observations (probe results through each upstream, ExaBGP's session events),
feeds them to the pure decision `netwatch.controller.decision.step`, hands the plan to the
pure ExaBGP bookkeeping `netwatch.exabgp.sync.Sync`, and writes the lines Sync returns to
ExaBGP. stdout belongs to ExaBGP: logs are key=value lines on stderr (`netwatch.controller`).

Contract:
* at start it asks ExaBGP for the sessions' state (`show neighbor json`: a respawned
  controller gets no event for sessions already up) and, once the answer is in (or after
  SESSIONS_TIMEOUT_S, sessions not reported staying UNKNOWN), sends the full desired state
  (config + persisted state) before any probe is trusted; again to each neighbor whenever its
  session goes up or down. Before the answer, the plan would be made on guesses: nothing is
  sent. After a session comes up (or is reported up at start), its End-of-RIB goes once
  ExaBGP acknowledged its full desired state, never before (ExaBGP runs with manual-eor: the
  peers keep our routes across an ExaBGP restart until then; see Sync);
* decisions run on the monotonic clock, and so do the state file's times, with the boot's id
  (controller/persistence.py): a recovery hold survives a restart, and no wall-clock step
  can shorten it or refill the action budget. A state file that cannot be read or is not what
  the controller writes is logged (`state_unreadable`) and ignored: the controller starts
  from the site file's defaults. A save that fails (a full disk) is logged once per episode,
  counted, and the controller runs on from its state in memory. Saves run in a thread
  (`save_state`, one worker: at most one in flight, the latest state wins), and the audit
  records go through their own worker (`netwatch.control.audit.AuditWriter`): a stalled
  disk delays neither a withdrawal nor the probes nor the control socket;
* a command ExaBGP rejects (`error`), or does not acknowledge within ACK_TIMEOUT_S of
  reaching the head of the queue, is counted (netwatch_exabgp_commands_rejected_total) and
  retried after 1 s, doubling up to 30 s, per key and per rejected value; late acks of
  timed-out commands are dropped; a diff that fails is retried after the same kind of
  backoff; make-before-break is a wait: withdrawals go only when `safe_withdrawals` lets them
  through, re-checked when the last announcement in flight is acknowledged. The details, and
  why, are in `netwatch.exabgp.sync`;
* verdicts wait for one full probe window after start;
* operators' overrides (drains, restores, prepends: leases in state_dir) are in the plan from
  the first desired state on, and changed through the control socket
  (`netwatch.controller.control.ControllerControl`: two workers, the socket and the lease
  clock); every automatic action goes to its audit log too;
* a failing probe, a bad line from ExaBGP or a failed write is logged and survived;
* with `controller.outbound.mode: kernel` the border's default routes follow the plan's
  egress set (`netwatch.controller.egress.EgressSync`, one worker): adopted at start,
  written at every change, repaired when someone removes or changes them, left in place on
  exit;
* `run` returns 0 when ExaBGP closes our stdin (ExaBGP exited: the supervisor restarts both),
  and EX_SOFTWARE when a worker dies (`netwatch.runtime.supervise`), leaving the
  announcements as they are: ExaBGP respawns a controller that probes again.
"""

from __future__ import annotations

import asyncio
import logging
import math
import sys
import time

from prometheus_client import CollectorRegistry

from netwatch import exitcodes
from netwatch.adapters.exabgp_pipe import ExabgpPipe
from netwatch.controller import egress, probing
from netwatch.controller.control import ControllerControl
from netwatch.controller.decision import (
    BudgetExhausted,
    LocalFault,
    SessionChange,
    SessionSummary,
    Transition,
    step,
)
from netwatch.controller.egress import EgressRoutes, EgressSync
from netwatch.controller.metrics import ControllerMetrics, EgressMetrics
from netwatch.controller.params import SessionState, params_from_site
from netwatch.controller.persistence import restore, to_json
from netwatch.controller.plan import mode_of
from netwatch.controller.probing import (
    PATH_CHECK_S,
    PATH_REPAIR_S,
    ProberFactory,
    ProbeRoutes,
)
from netwatch.controller.schedule import Due, ProbeSchedule
from netwatch.controller.schedule import cadence as schedule_cadence
from netwatch.controller.verdict import REACHABLE_LOSS, ProbeStats, ProbeWindow
from netwatch.core.vocabulary import Family
from netwatch.exabgp import protocol as exabgp
from netwatch.exabgp.sync import (
    AckTimeout,
    DiffFailed,
    LateAck,
    Rejected,
    Report,
    SessionsTimeout,
    SessionsUnanswered,
    Sync,
    WithdrawalsHeld,
)
from netwatch.runtime.logs import kv, setup_logging
from netwatch.runtime.state_store import StateStore, boot_id
from netwatch.runtime.supervise import WorkerDied, supervise

log = logging.getLogger("netwatch.controller")

LINE_LOGGED = 200  # characters of an ExaBGP line that go into a log message
# While a session's state is unknown (no event since start, and the answer to `show neighbor
# json` was missing or did not name it), the interlock cannot withdraw through it: asked again
# after this long, doubling up to SESSIONS_ASK_MAX_S while some session stays unknown.
SESSIONS_ASK_MIN_S = 5.0
SESSIONS_ASK_MAX_S = 60.0
# `show neighbor json` is asked again this often for its UPDATE counts
# (netwatch_bgp_updates_received: a transit that sends a full table). The answer changes
# nothing else: the decision takes from it only sessions still unknown, and Sync owes one
# End-of-RIB per session up however often it is reported up.
UPDATES_ASK_S = 30.0


class Controller:
    def __init__(self, site, registry: CollectorRegistry | None = None, pipe=None,
                 mono=time.monotonic, routes: ProbeRoutes | None = None,
                 wall=time.time,
                 prober: ProberFactory = probing.open_prober, boot=boot_id,
                 egress_routes: EgressRoutes | None = None,
                 updates_ask_s: float | None = None, sleep=asyncio.sleep):
        """`mono` is the decision clock (CLOCK_MONOTONIC: the state file's times too),
        `boot()` this boot's id, `routes` the kernel's policy routing (default: netlink,
        opened when the probes start), `prober` opens the probers, `egress_routes` the
        border's default routes (outbound.mode kernel; None leaves them alone: only
        `run_controller` passes the kernel's, so no controller built elsewhere can touch the
        default route of the host it runs on).
        `wall` is the clock the operators' leases are written in (a drain's stages too).
        `updates_ask_s`: how often `show neighbor json` is asked again for the sessions' UPDATE
        counts (None: never; `run_controller` passes UPDATES_ASK_S, so a test that plays
        ExaBGP line by line decides when it is asked).
        `sleep(seconds)` is how the probe loop waits for its next wake-up, on `mono`'s time
        (a test passes one that moves its fake clock).
        Raises ValueError for a site the controller cannot run (tcp probes without a port, a
        prefix ExaBGP's lines cannot carry)."""
        self.site = site
        self.ctl = site.controller
        self.params = params_from_site(site)
        if self.ctl.probe.method == "tcp":
            missing = [t.label for t in self.ctl.probe.targets if t.port is None]
            if missing:
                raise ValueError(f"probe method tcp: no port for {', '.join(missing)}")
        self.mono = mono  # decisions and the state file: never the wall clock
        registry = registry or CollectorRegistry()
        self.metrics = ControllerMetrics(registry)
        self.metrics.min_announcing.set(self.params.min_announcing_upstreams)
        self.store = StateStore(f"{site.state_dir}/controller.json")
        self.boot_id = boot()
        self._save_failing = False  # logged once per episode of failed saves (a full disk)
        self._save_wanted = asyncio.Event()  # wakes `save_state`
        self._saver_running = False  # before (and without) the worker, saves happen at once
        try:
            self.state = restore(self.params, self.store.load(), now=mono(),
                                 boot_id=self.boot_id)
        except ValueError as exc:  # unreadable, not JSON, or not what to_json writes
            self.metrics.errors.labels("state").inc()
            log.error(kv("state_unreadable", path=self.store.path, error=exc,
                         note="starting from the site file's defaults"))
            self.state = restore(self.params, now=mono())
        # The operators' leases are in the plan before anything is sent.
        self.control = ControllerControl(self, registry, wall=wall)
        self.state = self.control.with_overrides(self.state)
        self.pipe = pipe or ExabgpPipe(on_oversized=self._oversized_line)
        self.routes = routes
        self.prober = prober
        self.sleep = sleep
        self.sessions: dict[tuple[str, int], str] = {}
        for u in self.ctl.upstreams:
            self.sessions[(u.name, u.neighbor.version)] = str(u.neighbor)
            if u.neighbor6 is not None:
                self.sessions[(u.name, 6)] = str(u.neighbor6)
        self.by_address = {addr: key for key, addr in self.sessions.items()}
        self.sync = Sync(self.params.min_announcing_upstreams)
        self.sync.want(self.desired(), self.neighbors_up(), self.forced_neighbors())
        # Every probe goes into the window at its deadline, answered or lost (schedule.py):
        # nothing in it waits for a fate, so nothing needs to settle.
        self.window = ProbeWindow(self.ctl.probe.window_s, self.params.recent_probes)
        self._shown: dict[tuple, float] = {}  # the probe gauges' values: set on change only
        # The announcement-mode gauges wait for the first commands written at start: with
        # 10,000 prefixes they are 200,000 series, 2.5 s before the first announcement.
        self._modes_published = False
        self.started = mono()
        self._ask_at: float | None = None  # next `show neighbor json` while sessions are unknown
        self._ask_wait_s = SESSIONS_ASK_MIN_S
        self._acked_since_ask = False  # ExaBGP answered something since the last ask
        self._updates_ask_s = updates_ask_s
        self._updates_at: float | None = None  # next `show neighbor json` for the UPDATE counts
        self._persisted = to_json(self.state)  # on the decision clock: compared, not saved
        self._egress_setup(registry, egress_routes)

    # --- ExaBGP side -----------------------------------------------------------------------

    def desired(self) -> exabgp.Desired:
        """The plan per (neighbor address, prefix). Raises UnsafeValue (a ValueError) for a
        prefix that is not a plain prefix."""
        return exabgp.expand(self.state.plan.desired, self.sessions, self.site.prefixes)

    def neighbors_up(self) -> set[str]:
        """The neighbor addresses whose session is known to be up."""
        return {address for (name, fam), address in self.sessions.items()
                if self.state.sessions.get((name, Family(fam))) is SessionState.UP}

    def forced_neighbors(self) -> set[str]:
        """The neighbor addresses an operator's forced drain withdraws: make-before-break
        lets their withdrawals through (Sync)."""
        forced = self.state.overrides.forced_withdrawals
        return {address for (name, _), address in self.sessions.items() if name in forced}

    def start(self) -> None:
        """What `run` does before its workers: the restored state's metrics, and `show
        neighbor json` (the desired state goes out with its answer: see Sync)."""
        self.publish(modes=False)
        self.write(self.sync.ask_sessions(self.mono()))
        self._ask_at = self.mono() + SESSIONS_ASK_MIN_S
        if self._updates_ask_s is not None:
            self._updates_at = self.mono() + self._updates_ask_s
        self._acked_since_ask = False

    def send_due(self) -> None:
        """Write what Sync says is due now (at every probe round and after every event)."""
        due = self.sync.due(self.mono())
        for report in due.reports:
            self.report(report)
        for command in due.commands:
            self.write(command)
        if due.commands and not self._modes_published:
            self.publish()
        self.ask_unknown_sessions()
        self.ask_update_counts()

    def unknown_sessions(self) -> list[str]:
        """The sessions whose state is unknown, as `upstream/family`."""
        return sorted(f"{n}/{f.label}" for (n, f), s in self.state.sessions.items()
                      if s is SessionState.UNKNOWN)

    def ask_unknown_sessions(self) -> None:
        """While some session is unknown (its state never reported: `show neighbor json`
        acknowledged without an answer, an answer that could not be read or did not name it),
        ask ExaBGP again: after SESSIONS_ASK_MIN_S, doubling up to SESSIONS_ASK_MAX_S. Without
        it such a session stays unknown until it flaps, and a failed upstream behind it is never
        withdrawn. Nothing before `start`, and nothing while ExaBGP has acknowledged nothing
        since the last ask: an ExaBGP that answers nothing gets no queries piled up behind the
        one it owes (its answer, however late, is used when it comes)."""
        if self._ask_at is None:
            return
        now = self.mono()
        unknown = self.unknown_sessions()
        if not unknown:  # all known: a session unknown again later starts the backoff afresh
            self._ask_wait_s = SESSIONS_ASK_MIN_S
            self._ask_at = now + SESSIONS_ASK_MIN_S
            return
        if now < self._ask_at or not self._acked_since_ask:
            return
        self._ask_wait_s = min(SESSIONS_ASK_MAX_S, 2 * self._ask_wait_s)
        self._ask_at = now + self._ask_wait_s
        log.warning(kv("sessions_unknown", unknown=",".join(unknown),
                       action="asking show neighbor json again", next_in_s=self._ask_wait_s))
        self._acked_since_ask = False
        self.write(self.sync.ask_sessions(now))

    def ask_update_counts(self) -> None:
        """Every `updates_ask_s` after `start`, `show neighbor json` again: its answer carries
        each session's UPDATE count (`on_summary`). Skipped while ExaBGP has acknowledged
        nothing since the last ask, like `ask_unknown_sessions`."""
        if self._updates_at is None or self._updates_ask_s is None:
            return
        now = self.mono()
        if now < self._updates_at:
            return
        self._updates_at = now + self._updates_ask_s
        if not self._acked_since_ask:
            return
        self._acked_since_ask = False
        self.write(self.sync.ask_sessions(now))

    def write(self, command: exabgp.Command) -> bool:
        """Write one command line. False (and Sync told) when the pipe refused it."""
        try:
            self.pipe.send(command.line)
        except (ValueError, OSError, RuntimeError) as exc:
            self.metrics.errors.labels("send").inc()
            log.error(kv("send_failed", error=exc, line=command.line[:LINE_LOGGED]))
            self.sync.unsent(command)
            return False
        log.info(kv("command", line=command.line[:LINE_LOGGED], prefixes=len(command.effect)))
        return True

    def report(self, report: Report | None) -> None:
        """Count and log what Sync reports."""
        match report:
            case Rejected(command, wait):
                self.metrics.rejected.inc()
                log.warning(kv("command_rejected", line=command.line[:LINE_LOGGED],
                               retry_in_s=wait))
            case AckTimeout(commands, after_s, wait, owed):
                self.metrics.rejected.inc(len(commands))
                log.warning(kv("ack_timeout", line=commands[0].line[:LINE_LOGGED],
                               commands=len(commands), after_s=after_s, retry_in_s=wait,
                               owed_acks=owed))
            case LateAck(kind, owed):
                log.info(kv("late_ack", ack=kind, still_owed=owed))
            case SessionsUnanswered(kind):
                log.warning(kv("sessions_unanswered", ack=kind, note="sending the desired "
                               "state; unknown sessions count as possibly up"))
            case SessionsTimeout(after_s):
                unknown = self.unknown_sessions()
                log.warning(kv("sessions_timeout", after_s=after_s,
                               unknown=",".join(unknown) or "-", note="sending the desired "
                               "state; unknown sessions count as possibly up"))
            case DiffFailed(error, wait):
                self.metrics.errors.labels("sync").inc()
                log.error(kv("sync_failed", error=repr(error), retry_in_s=wait))
            case WithdrawalsHeld(commands, in_flight):
                log.warning(kv("withdrawals_held", commands=commands, in_flight=in_flight,
                               note="until enough announcements are acknowledged"))

    def _oversized_line(self, size: int) -> None:
        """ExaBGP wrote a line over the pipe's limit: it was dropped, the rest goes on."""
        self.metrics.errors.labels("event").inc()
        log.error(kv("exabgp_line_too_long", bytes=size, note="dropped; reading on"))

    def on_event(self, line: str) -> None:
        """One line from ExaBGP: an acknowledgement, a session event, the answer to `show
        neighbor json`; then whatever is due."""
        try:
            event = exabgp.parse_event(line)
        except ValueError as exc:
            self.metrics.errors.labels("event").inc()
            log.error(kv("bad_event", error=exc, line=line[:LINE_LOGGED]))
            return
        if isinstance(event, exabgp.Ack):
            self._acked_since_ask = True
            self.report(self.sync.on_ack(event.kind, self.mono()))
        elif isinstance(event, exabgp.NeighborSummary):
            self.on_summary(event)
        elif isinstance(event, exabgp.NeighborState):
            self.on_neighbor(event)
        self.send_due()

    def on_summary(self, event: exabgp.NeighborSummary) -> None:
        """ExaBGP's answer to `show neighbor json` (at start, while sessions are unknown, and
        every UPDATES_ASK_S): the sessions still unknown, and every UPDATE count."""
        for peer, count in event.updates_received.items():
            key = self.by_address.get(peer)
            if key is not None:
                self.metrics.updates_received.labels(key[0], Family(key[1]).label).set(count)
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
                up = state is SessionState.UP
                self.metrics.session.labels(name, fam.label).set(1 if up else 0)
                (log.info if up else log.warning)(kv(
                    "session", upstream=name, family=fam.label, state=state,
                    reason="show neighbor"))
        for peer, up in event.sessions.items():
            if up and peer in self.by_address:
                # Up before this controller started (respawned; or ExaBGP restarted and the
                # controller before it died first): its End-of-RIB may still be owed.
                self.sync.session_up(peer)
        self.sync.sessions_reported()

    def on_neighbor(self, event: exabgp.NeighborState) -> None:
        key = self.by_address.get(event.peer)
        if key is None or event.state not in (exabgp.PeerState.UP, exabgp.PeerState.DOWN):
            return
        up = event.state is exabgp.PeerState.UP
        name, fam = key[0], Family(key[1])
        self.metrics.session.labels(name, fam.label).set(1 if up else 0)
        (log.info if up else log.warning)(kv(
            "session", upstream=name, family=fam.label, state=event.state,
            reason=event.reason))
        self.sync.peer_reset(event.peer)
        if up:  # its End-of-RIB goes out after its full desired state (Sync)
            self.sync.session_up(event.peer)
        self.apply(SessionChange(name, fam, up))

    # --- decisions -------------------------------------------------------------------------

    def apply(self, observation) -> None:
        """Feed one observation to the decision: log and count its actions, hand a changed
        plan (or changed sessions) to Sync and write what is due to ExaBGP, steer egress,
        publish the gauges; only then audit the actions and persist the state (both queued
        for their workers): the disk never comes before a withdrawal."""
        old = self.state
        self.state, actions = step(self.state, observation, self.mono())
        for action in actions:
            if isinstance(action, Transition):
                self.metrics.actions.labels(action.new.value).inc()
                log.warning(kv("transition", upstream=action.upstream, old=action.old,
                               new=action.new, reason=action.reason))
            elif isinstance(action, LocalFault):
                log.warning(kv("local_fault", active=action.active,
                               note="every upstream looks bad: no BGP action"))
            elif isinstance(action, BudgetExhausted):
                log.warning(kv("action_budget_exhausted", upstream=action.upstream,
                               wanted=action.wanted))
        old_holds = {h.family: h.kept for h in old.plan.holds}
        for hold in self.state.plan.holds:
            if old_holds.get(hold.family) != hold.kept:
                log.warning(kv("safety_hold", family=hold.family.label, kept=",".join(hold.kept)))
        plan_changed = self.state.plan != old.plan
        if plan_changed or self.state.sessions != old.sessions:
            self.sync.want(self.desired(), self.neighbors_up(), self.forced_neighbors())
            self.send_due()
        self.steer_egress()
        self.publish(modes=plan_changed or not self._modes_published)
        self.control.audit(old, self.state, actions)
        self.persist()

    def publish(self, modes: bool = True) -> None:
        """Set the gauges from the state; the announcement modes only when asked: 10,000
        prefixes x 4 upstreams x 4 modes at every 200 ms judgement would be the controller's
        main CPU load."""
        holds = {h.family for h in self.state.plan.holds}
        for fam in Family:
            self.metrics.safety_hold.labels(fam.label).set(1 if fam in holds else 0)
        self.metrics.local_fault.set(1 if self.state.local_fault else 0)
        self.metrics.sessions_unknown.set(len(self.unknown_sessions()))
        self.metrics.budget_exhausted.set(1 if self.state.budget_exhausted else 0)
        self.metrics.budget_remaining.set(self.state.budget.available(self.mono()))
        for name, u in self.state.upstreams.items():
            self.metrics.set_state(name, u.state)
        if modes:
            self._modes_published = True
            for (name, fam), ann in self.state.plan.desired.items():
                mode = mode_of(self.params, name, ann)
                for p in self.site.prefixes:
                    if p.version == int(fam):
                        self.metrics.set_mode(name, str(p), mode)

    def persist(self) -> None:
        """Save the state when it changed: through `save_state` (a thread) while that worker
        runs, at once before it does (start, tests). A failed save (a full disk, a read-only
        file system) is counted every time, logged once per episode, and tried again at the
        next judgement; the controller runs on from its state in memory meanwhile."""
        snapshot = to_json(self.state)  # changes only when the state does
        if snapshot == self._persisted:
            return
        if self._saver_running:
            self._save_wanted.set()
            return
        try:
            self.store.save(to_json(self.state, saved_at=self.mono(), boot_id=self.boot_id))
        except OSError as exc:
            self._save_failed(exc)
            return
        self._saved(snapshot)

    async def save_state(self) -> None:
        """The state saver (a worker): whenever `persist` wakes it, the latest state, saved in
        a thread; one save at a time, changes meanwhile coalesced into the next. Runs until
        cancelled; a save then in flight completes in its thread."""
        self._saver_running = True
        try:
            while True:
                await self._save_wanted.wait()
                self._save_wanted.clear()
                snapshot = to_json(self.state)
                if snapshot == self._persisted:
                    continue
                data = to_json(self.state, saved_at=self.mono(), boot_id=self.boot_id)
                try:
                    await asyncio.to_thread(self.store.save, data)
                except OSError as exc:
                    self._save_failed(exc)
                    continue
                self._saved(snapshot)
        finally:
            self._saver_running = False

    def _save_failed(self, exc: OSError) -> None:
        self.metrics.errors.labels("persist").inc()
        self.metrics.state_stale.set(1)
        if not self._save_failing:
            self._save_failing = True
            log.error(kv("persist_failed", path=self.store.path, error=exc,
                         note="running on the state in memory; retried at each change"))

    def _saved(self, snapshot) -> None:
        self._persisted = snapshot
        self.metrics.state_stale.set(0)
        if self._save_failing:
            self._save_failing = False
            log.info(kv("persist_recovered", path=self.store.path))

    def judge(self, early: bool = False) -> None:
        """Judge the window (`early`: a confirmation completed, FAILED only; see
        controller/schedule.py) and show what it saw."""
        if self.mono() - self.started < self.ctl.probe.window_s:
            return  # not one full window yet: do not trust the probes
        stats = self.window.stats(self.mono())
        if early:
            stats = ProbeStats(stats.paths, early=True)
        self.apply(stats)
        m = self.metrics
        for name, u in self.state.upstreams.items():
            self._show(m.loss, (name,), u.last.loss)
            self._show(m.loss_excess, (name,), u.last.loss_excess)
            if u.last.rtt_excess_s is not None:
                self._show(m.rtt_excess, (name,), u.last.rtt_excess_s)
        rtts: dict[str, list[float]] = {}
        for (name, target), ps in stats.paths.items():
            self._show(m.reachable, (name, target), 1 if ps.loss < REACHABLE_LOSS else 0)
            if ps.rtt_s is not None:
                rtts.setdefault(name, []).append(ps.rtt_s)
        for name, values in rtts.items():
            self._show(m.rtt, (name,), sorted(values)[len(values) // 2])

    def _show(self, gauge, labels: tuple[str, ...], value: float) -> None:
        """Set a probe gauge when its value changed: 80 (upstream, target) gauges at every
        judgement were a tenth of the controller's probing CPU (docs/controller.md)."""
        key = (gauge, labels)
        if self._shown.get(key) != value:
            self._shown[key] = value
            gauge.labels(*labels).set(value)

    # --- outbound steering (controller.outbound) ---------------------------------------------

    def _egress_setup(self, registry: CollectorRegistry, routes: EgressRoutes | None) -> None:
        """The egress gauges, and with outbound.mode kernel and `routes` the EgressSync that
        keeps the border's default routes (`self.egress`, its worker started by `run`), told
        the plan the controller starts with: not settled, a route that is there stays."""
        self.egress_metrics = EgressMetrics(
            registry, {u.name: u.families for u in self.params.upstreams})
        self.egress: EgressSync | None = None
        if self.ctl.outbound.mode != "kernel" or routes is None:
            self.steer_egress()
            return
        errors = self.metrics.errors.labels("egress")  # known from the start: at 0
        self.egress = EgressSync(self.ctl, routes, self.egress_metrics.show, self.mono,
                                 errors.inc)
        self.egress.want(self.state.plan.egress, settled=False)

    def steer_egress(self) -> None:
        """After every decision: the plan's egress set to EgressSync, or (outbound.mode off)
        to the gauges, since nothing else applies it."""
        if self.egress is not None:
            self.egress.want(self.state.plan.egress)
            return
        for fam, weights in self.state.plan.egress.items():
            self.egress_metrics.show(fam, weights)

    def egress_workers(self) -> dict:
        """The worker `run` supervises with the others: none with outbound.mode off."""
        return {"egress": self.egress.run()} if self.egress is not None else {}

    # --- probes ----------------------------------------------------------------------------

    def report_probed(self, probed: set[str]) -> None:
        """Set `netwatch_transit_probed` for every upstream and log each one that is not probed
        at all, once (at start: probers are made once). Such an upstream gets no verdict, and
        the all-bad guard is judged over the others (verdict.is_local_fault)."""
        for u in self.ctl.upstreams:
            self.metrics.probed.labels(u.name).set(1 if u.name in probed else 0)
            if u.name not in probed:
                log.warning(kv("unprobed", upstream=u.name,
                               note="no verdict for it; the all-bad guard is judged over the "
                               "others"))

    async def check_paths(self, routes: ProbeRoutes, paths) -> None:
        """Install the probe paths that are missing; log and count what fails."""
        try:
            checks = await probing.check_paths(routes, paths)
        except Exception as exc:
            log.error(kv("netlink_failed", error=exc))
            return
        for check in checks:
            where = dict(upstream=check.path.upstream, table=check.path.path.table)
            if check.error is not None:
                self.metrics.errors.labels("probe_path").inc()
                log.error(kv("probe_path_failed", **where, error=check.error))
            elif check.written:
                log.info(kv("probe_path_installed", **where, mark=check.path.path.mark))

    async def probe_loop(self) -> None:
        """Probe every target through every upstream on the schedule of
        `netwatch.controller.schedule.ProbeSchedule` (once per interval, and a lost probe
        confirmed at once and at the confirmation pace), judge the window once per interval and
        as soon as a confirmation makes a path FAILED, write what is due. One wake-up sends
        every probe that is due and reads every result whose deadline has come: no task or
        future per probe (ICMP). Runs until cancelled; raises only on a bug."""
        layout = probing.layout(self.ctl)
        routes = self.routes or probing.netlink_routes()
        await self.check_paths(routes, layout.paths)
        method = self.ctl.probe.method
        opened = probing.open_probers(method, layout.paths, self.prober)
        for p, exc in opened.failed:
            log.error(kv("prober_failed", upstream=p.upstream, family=Family(
                p.path.gateway.version).label, error=exc))
        self.report_probed(opened.probed)
        probe = self.ctl.probe
        interval = probe.interval_ms / 1000
        # Each target through every upstream, then the next target: a fault that lands in
        # the middle of a round's sends (a common cause, the Internet dark behind every
        # transit) then costs every upstream the same targets of that round. Upstream by
        # upstream, the ones sent last lost a whole round more than the others, and their
        # confirmations made them FAILED before the all-bad guard could see it was everyone.
        streams = [(p.upstream, prober, t.label, probing.destination(method, t))
                   for j in range(max((len(p.targets) for p, _ in opened.probers), default=0))
                   for p, prober in opened.probers if j < len(p.targets)
                   for t in (p.targets[j],)]
        schedule = ProbeSchedule(
            schedule_cadence(self.params, interval, probe.timeout_s, probe.confirm_s), interval,
            [(name, label) for name, _, label, _ in streams], self.window, self.mono())
        last_check = self.mono()
        refused = False  # a probe was refused since the last check: a route may be gone
        try:
            while True:
                now = self.mono()
                for i in schedule.to_judge(now):
                    name, prober, label, dest = streams[i]
                    try:
                        # Judged at its deadline or later: an answer that came counts, even
                        # when it measured longer than its wait. An echo reply carries the
                        # kernel's stamp; a TCP probe's round trip ends when the loop runs its
                        # task (a busy loop must not turn its own latency into lost probes).
                        rtt = prober.result(dest, math.inf)
                    except Exception as exc:
                        self.metrics.errors.labels("probe").inc()
                        log.error(kv("probe_failed", upstream=name, target=label, error=exc))
                        rtt = None
                    schedule.judged(i, rtt, now)
                for i in schedule.to_send(now):
                    schedule.sent(i, now)
                    _, prober, _, dest = streams[i]
                    if not prober.send(dest, schedule.wait(i)):
                        refused = True  # lost, judged at its deadline
                due = schedule.verdict_due(now)
                if due is not None:
                    try:
                        self.judge(early=due is Due.EARLY)
                        self.send_due()
                        await self.pipe.flush()
                    except Exception as exc:  # log and survive
                        self.metrics.errors.labels("judge").inc()
                        log.error(kv("judge_failed", error=repr(exc)))
                since = now - last_check
                if since > PATH_CHECK_S or (refused and since > PATH_REPAIR_S):
                    last_check, refused = now, False
                    await self.check_paths(routes, layout.paths)
                await self.sleep(max(0.0, schedule.next_at() - self.mono()))
        finally:
            for _, prober in opened.probers:
                close = getattr(prober, "close", None)
                if close is not None:
                    close()

    async def read_events(self, stop: asyncio.Event) -> None:
        """Feed every line from ExaBGP to `on_event`; at EOF (ExaBGP is gone) set `stop`."""
        async for line in self.pipe.lines():
            try:
                self.on_event(line)
                await self.pipe.flush()
            except Exception as exc:  # a bad event must not kill us
                self.metrics.errors.labels("event").inc()
                log.error(kv("event_failed", error=repr(exc), line=line[:LINE_LOGGED]))
        stop.set()

    async def run(self) -> int:
        """Until ExaBGP closes the pipe (0), or a worker dies (EX_SOFTWARE)."""
        await self.pipe.open()
        log.info(kv("start", upstreams=",".join(u.name for u in self.ctl.upstreams),
                    prefixes=len(self.site.prefixes),
                    states=",".join(f"{n}:{u.state.value}"
                                    for n, u in self.state.upstreams.items())))
        try:
            self.start()
        except Exception as exc:  # log and survive: Sync is asked again at every probe round
            self.metrics.errors.labels("start").inc()
            log.error(kv("start_failed", error=repr(exc)))
        stop = asyncio.Event()
        try:
            await supervise({"exabgp-events": self.read_events(stop), **self.control.workers(),
                             "probes": self.probe_loop(), "state": self.save_state(),
                             **self.egress_workers()}, stop)
        except WorkerDied as died:
            # A dead worker stops the daemon. The announcements stay as ExaBGP holds them
            # (the last plan); ExaBGP respawns a controller that probes again.
            log.error(kv("worker_died", worker=died.worker, error=repr(died.error),
                         note="announcements left as they are; exiting for a respawn"),
                      exc_info=died.error)
            return exitcodes.SOFTWARE
        finally:
            self.persist()  # the saver is gone: the last change, if not saved yet, at once
        log.info(kv("stop", reason="ExaBGP closed the pipe"))
        return exitcodes.OK


def serve(site, config_path: str) -> int:
    """`netwatch controller` once its site file is read (in a fresh image, see
    netwatch.runtime.lean): `run_controller`, and a site it cannot run (tcp probes without a
    port) is exit 65."""
    try:
        return run_controller(site)
    except ValueError as exc:
        print(f"{config_path}: {exc}", file=sys.stderr)
        return exitcodes.DATAERR


def run_controller(site, registry: CollectorRegistry | None = None) -> int:
    """Run until ExaBGP goes away. Returns an exit code. Logs go to stderr: stdout is
    ExaBGP's."""
    from netwatch.runtime.metrics_http import serve_metrics

    setup_logging()
    registry = registry or CollectorRegistry()
    serve_metrics(site.metrics.controller, registry, log)
    return asyncio.run(Controller(site, registry,
                                  egress_routes=egress.kernel_routes(site.controller),
                                  updates_ask_s=UPDATES_ASK_S).run())
