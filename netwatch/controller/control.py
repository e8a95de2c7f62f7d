"""The controller's side of the control API: operators' drains, restores and prepends as
leases, the drain stages, lease expiry, `status`, and the audit trail of automatic actions.

`ControllerControl(controller, registry)` is built by the `Controller` once its state is
restored; it owns the control socket (`ControlServer`), the lease book (`LeaseKeeper`, in
state_dir: it survives a restart of the controller and of ExaBGP) and the audit log::

    self.control = ControllerControl(self, registry)
    self.state = self.control.with_overrides(self.state)   # before the first desired state
    ...
    self.control.audit(old, self.state, actions)            # in Controller.apply
    ...
    supervise({..., **self.control.workers()}, stop)        # the socket, the lease clock

Contract:

* every write (drain, restore, prepend, override extend/delete) goes through the keeper:
  validated, refused if it breaks a safety rule, saved, and only then in force; its effect
  (`netwatch.controller.overrides.overrides_of`) is fed to the decision as an
  `OperatorOverrides` observation at once, and what Sync says is due is written to ExaBGP
  before the answer goes back. Writes are serialised: two drains at once are judged one
  after the other, each against the plan with the other in it;
* a drain that is not forced is refused (`Refused`, exit 3 in the CLI) when the plan, once
  every drain has withdrawn, would keep a drained upstream announced to hold some family at
  `min_announcing_upstreams` (`overrides.interlock_refusal`). A forced one is accepted, said
  so in its answer, logged as a warning and audited (`interlock_overridden`). Only then is
  the lease stored forced: a `--force` that overrode nothing leaves the interlock free to
  keep the upstream later. Renewing a forced drain (`override_extend`) judges it again: still
  refused, it stays forced and is logged and audited again; no longer, it is stored unforced;
* a drain announces GRACEFUL_SHUTDOWN for `graceful_s` (the request's, or the site's
  `controller.drain_graceful_s`, written into the lease), then withdraws. The stage is
  derived from the lease on the wall clock, so it survives restarts. A drain that replaces
  one already withdrawn withdraws at once: no second graceful stage re-announces it;
* a restore and a deleted drain are an operator's restores: the upstream skips what is left
  of its recovery hold (`OperatorOverrides.restored`). A lease that expires by itself (or
  that a wall-clock step ends) is not: the upstream returns through its normal recovery;
* the lease clock (`keep_time`) wakes at every drain's withdrawal and lease expiry, and at
  least once a second;
* the audit log gets every request (the server writes those) and every automatic action:
  `transition`, `local_fault`, `action_budget_exhausted`, `safety_hold` (each change of a
  family's hold), `announcement` (each session's announcement mode that changed: a
  withdrawal, a re-announcement, a prepend, a graceful shutdown), `drain_stage`,
  `interlock_overridden`, and the keeper's `lease_expired`;
* with `alertmanager` in the site file, each lease that makes alerts expected (a drain) opens
  an Alertmanager silence (`netwatch.observability.silences`), extended with the lease and
  expired when it ends (restore, delete, replacement, expiry); the live leases' silences are
  opened or extended again at start. A worker does it, in order, in a thread: the operator's
  answer never waits for Alertmanager, and an Alertmanager that fails is counted
  (`errors_total{where="silence"}`) and logged once per episode (`silence_failed`);
* the control socket cannot be opened (another daemon on it, a bad path): logged as an
  error and tried again, backing off to 30 s. The controller goes on steering BGP meanwhile:
  an operator's socket is no reason to stop failing over, and ExaBGP would respawn a
  controller that exits for it in a loop.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry

from netwatch import __version__
from netwatch.control.audit import AuditLog, AuditWriter, audit_path
from netwatch.control.keeper import LeaseKeeper
from netwatch.control.leases import Lease, LeaseKind
from netwatch.control.metrics import ControlMetrics
from netwatch.control.protocol import Command, Peer, Refused, Request
from netwatch.control.server import ControlServer
from netwatch.control.silencing import SilenceWorker
from netwatch.control.store import LeaseStore
from netwatch.controller.decision import (
    BudgetExhausted,
    LocalFault,
    OperatorOverrides,
    State,
    Transition,
    step,
)
from netwatch.controller.overrides import (
    drain_stage,
    interlock_refusal,
    live,
    next_change_at,
    overrides_of,
    restored_by,
)
from netwatch.controller.plan import mode_of
from netwatch.controller.status import controller_status
from netwatch.observability import silences
from netwatch.runtime.logs import kv

if TYPE_CHECKING:
    from netwatch.controller.daemon import Controller

log = logging.getLogger("netwatch.controller")

TICK_S = 1.0  # the lease clock wakes at least this often


class ControllerControl:
    def __init__(self, controller: Controller, registry: CollectorRegistry | None = None, *,
                 wall=time.time, host: str | None = None):
        """Load the lease book and open (not yet serve) the audit log. `wall` is the wall
        clock the leases are written in; `host` the name `status` reports (default: this
        host's). Never raises for a damaged lease file (the keeper sets it aside)."""
        self.c = controller
        site = controller.site
        self.wall = wall
        self.host = host or socket.gethostname()
        self.default_graceful_s = site.controller.drain_graceful_s
        self.names = frozenset(u.name for u in site.controller.upstreams)
        self.audit_log = AuditLog(audit_path(site.state_dir, "controller"), clock=wall)
        # The automatic actions' records: queued, written by their own worker (fsync).
        self.audit_writer = AuditWriter(self.audit_log, logger=log)
        store = LeaseStore(site.state_dir, "controller", clock=wall)
        self.keeper = LeaseKeeper(store, self.audit_log, clock=wall)
        self.metrics = ControlMetrics(registry, "controller")
        self.server = ControlServer(
            site.control.controller, "controller", self, audit=self.audit_log,
            mode=int(site.control.mode, 8), group=site.control.group,
            on_request=self.metrics.count_request,
        )
        self._writes = asyncio.Lock()  # one write at a time: each judged with the last in force
        self._changed = asyncio.Event()  # wakes the lease clock early
        controller.metrics.errors.labels("control")  # known from the start: at 0
        self.metrics.show_leases(self.keeper.book.leases)
        self.silences = SilenceWorker.for_site(
            site, "controller", wall, controller.metrics.errors.labels("silence").inc)
        if self.silences is not None:  # a restart finds and extends their silences
            self.silences.queue(silences.SilenceJob(lease, opens=True) for lease in self.leases())
        for lease in self.keeper.book.leases:
            if lease.target not in self.names:
                log.warning(kv("override_ignored", id=lease.id, forces=lease.describe(),
                               reason="no such upstream in the site file"))

    # --- the leases as the plan sees them ----------------------------------------------------

    def leases(self) -> list[Lease]:
        """The live leases on upstreams the site file has."""
        return [x for x in live(self.keeper.book.leases, self.wall()) if x.target in self.names]

    def with_overrides(self, state: State) -> State:
        """`state` with the leases in force: what the controller starts from, so the first
        desired state sent to ExaBGP already has them."""
        leases = self.leases()
        overrides = overrides_of(leases, self.wall(), self.default_graceful_s)
        state, _ = step(state, OperatorOverrides(overrides), self.c.mono())
        for lease in leases:
            log.info(kv("override_in_force", id=lease.id, forces=lease.describe(),
                        who=lease.who.user, left_s=round(lease.left_s(self.wall()), 1),
                        reason=lease.reason))
        return state

    def enact(self, restored: frozenset[str] = frozenset()) -> bool:
        """Feed the leases' effect now to the decision, when it changed (or an upstream was
        restored), and write what is due to ExaBGP. True when something was fed."""
        now = self.wall()
        overrides = overrides_of(self.leases(), now, self.default_graceful_s)
        before = self.c.state.overrides
        if overrides == before and not restored:
            return False
        for name, drain in overrides.drains.items():
            was = before.drains.get(name)
            if drain.withdraw and was is not None and not was.withdraw:
                log.info(kv("drain_stage", upstream=name, stage="withdrawn",
                            note="graceful stage over"))
                self.audit_writer.record("drain_stage", upstream=name, stage="withdrawn")
        self.c.apply(OperatorOverrides(overrides, restored))
        self.c.send_due()
        self._changed.set()
        return True

    # --- the control API ---------------------------------------------------------------------

    async def handle(self, request: Request, peer: Peer) -> Any:
        """The answer to `request` (netwatch.control.server.Handler)."""
        if request.cmd is Command.STATUS:
            return self.status()
        if request.cmd is Command.OVERRIDES:
            return self.keeper.listing()
        return await self.change(request, peer)

    def status(self) -> dict:
        """The `ControllerStatus` now."""
        mono = self.c.mono()
        return controller_status(
            site=self.c.site, state=self.c.state, stats=self.c.window.stats(mono),
            leases=self.leases(), wall_now=self.wall(), mono_now=mono, host=self.host,
            version=__version__, default_graceful_s=self.default_graceful_s,
        )

    async def change(self, request: Request, peer: Peer) -> dict:
        """Carry out a write command (see the module doc); the `Change` answer. Raises
        NotFound, Refused or Unavailable (nothing changed then)."""
        async with self._writes:
            request, note = self._prepared(request)
            # Judged here, on the event loop (the only writer of the state), before the keeper
            # saves anything: a drain the interlock would refuse is refused unless forced, and
            # only a drain (or the renewal of one) that the interlock refused is stored forced.
            upstream, refusal = self._interlock(request)
            if refusal is not None and request.cmd is Command.DRAIN and not request.args["force"]:
                raise Refused(refusal, request_id=request.id)
            if request.cmd in (Command.DRAIN, Command.OVERRIDE_EXTEND) and upstream is not None:
                request = replace(request, args={**request.args, "force": refusal is not None})
            # The keeper fsyncs the lease file: off the event loop, which probes meanwhile.
            change = await asyncio.to_thread(
                self.keeper.apply, request, peer, upstreams=self.names)
            if refusal is not None:
                note += f"; FORCED past the interlock: {refusal}"
            if note:
                change = replace(change, message=change.message + note)
            self.metrics.show_leases(self.keeper.book.leases)
            target = request.args.get("upstream") or request.args.get("id")
            log.info(kv("override", cmd=request.cmd.value, target=target, user=peer.user,
                        uid=peer.uid, reason=request.args.get("reason"), result=change.message))
            if refusal is not None:
                log.warning(kv("interlock_overridden", upstream=upstream, cmd=request.cmd.value,
                               id=change.lease.id, user=peer.user, uid=peer.uid,
                               refusal=refusal))
                await asyncio.to_thread(
                    self.audit_log.record, "interlock_overridden", upstream=upstream,
                    cmd=request.cmd.value, id=change.lease.id, uid=peer.uid, user=peer.user,
                    reason=request.args["reason"], refusal=refusal)
            self.silence(silences.jobs_for(change.lease, change.replaced, change.removed))
            restored = restored_by(change.removed)
            if request.cmd is Command.RESTORE:
                restored |= {request.args["upstream"]}
            self.enact(restored)
        await self.c.pipe.flush()
        return change.to_json()

    def _interlock(self, request: Request) -> tuple[str | None, str | None]:
        """(the drained upstream, why the interlock would refuse its drain now, or None) for a
        drain, or for the renewal of a forced drain (forced for as long again: judged again);
        (None, None) for anything else, or an upstream the site file does not have (the
        keeper answers NotFound)."""
        if request.cmd is Command.DRAIN:
            upstream = request.args["upstream"]
        elif request.cmd is Command.OVERRIDE_EXTEND:
            lease = self.keeper.book.get(request.args["id"])
            if (lease is None or lease.kind is not LeaseKind.DRAIN or not lease.forced
                    or lease.expired(self.wall())):
                return None, None
            upstream = lease.target
        else:
            return None, None
        if upstream not in self.names:
            return None, None
        return upstream, interlock_refusal(self.c.state, upstream)

    def _prepared(self, request: Request) -> tuple[Request, str]:
        """A drain with its graceful period settled: the site's default when not given, none
        when it replaces a drain already withdrawn. Returns it and a note for the answer."""
        if request.cmd is not Command.DRAIN:
            return request, ""
        args = dict(request.args)
        note = ""
        if args["graceful_s"] is None:
            args["graceful_s"] = self.default_graceful_s
        now = self.wall()
        old = self.keeper.book.find(LeaseKind.DRAIN, args["upstream"])
        if (old is not None and not old.expired(now) and args["graceful_s"] > 0
                and drain_stage(old, self.default_graceful_s).withdrawn(now)):
            args["graceful_s"] = 0.0
            note = f"; {args['upstream']} is withdrawn already: no second graceful stage"
        return replace(request, args=args), note

    # --- the automatic actions, audited ------------------------------------------------------

    def audit(self, old: State, new: State, actions: Sequence[object]) -> None:
        """Record the automatic actions of one decision step (see the module doc). Cheap when
        nothing changed: the plan is compared, not walked."""
        record = self.audit_writer.record
        for action in actions:
            if isinstance(action, Transition):
                record("transition", upstream=action.upstream, old=action.old.value,
                       new=action.new.value, reason=action.reason)
            elif isinstance(action, LocalFault):
                record("local_fault", active=action.active)
            elif isinstance(action, BudgetExhausted):
                record("action_budget_exhausted", upstream=action.upstream,
                       wanted=action.wanted.value)
        if new.plan == old.plan:
            return
        old_holds = {h.family: h.kept for h in old.plan.holds}
        new_holds = {h.family: h.kept for h in new.plan.holds}
        for fam in sorted(set(old_holds) | set(new_holds)):
            if old_holds.get(fam) != new_holds.get(fam):
                kept = list(new_holds.get(fam, ()))
                record("safety_hold", family=fam.label, active=bool(kept), kept=kept)
        cause = ("overrides" if new.overrides != old.overrides
                 else "sessions" if new.sessions != old.sessions else "verdict")
        params = new.params
        for key in sorted(set(old.plan.desired) | set(new.plan.desired)):
            before = mode_of(params, key[0], old.plan.desired.get(key))
            after = mode_of(params, key[0], new.plan.desired.get(key))
            if before is not after:
                record("announcement", upstream=key[0], family=key[1].label,
                       old=before.value, new=after.value, cause=cause)

    # --- workers -----------------------------------------------------------------------------

    def workers(self) -> dict:
        """The workers `Controller.run` supervises: the control socket, the lease clock and
        the audit writer."""
        workers = {"control": self.serve(), "overrides": self.keep_time(),
                   "audit": self.audit_writer.run()}
        if self.silences is not None:
            workers["silences"] = self.silences.run()
        return workers

    def silence(self, jobs: Sequence[silences.SilenceJob]) -> None:
        """Queue `jobs` for the silence worker (nothing without `alertmanager`)."""
        if self.silences is not None:
            self.silences.queue(jobs)

    async def serve(self) -> None:
        """Serve the control socket until cancelled; while it cannot be opened, log and try
        again (see the module doc)."""
        await self.server.serve_retrying(self._unavailable)

    def _unavailable(self, exc: OSError, retry_in_s: float) -> None:
        self.c.metrics.errors.labels("control").inc()
        log.error(kv("control_unavailable", path=self.server.path, error=exc,
                     retry_in_s=retry_in_s, note="steering BGP on; overrides in force stay"))

    async def tick(self) -> None:
        """Expire what expired, move drains past their graceful stage; write what is due."""
        async with self._writes:
            if any(lease.expired(self.wall()) for lease in self.keeper.book.leases):
                gone = await asyncio.to_thread(self.keeper.expire)  # saves: off the loop
                self.metrics.show_leases(self.keeper.book.leases)
                self.silence(silences.jobs_for(None, removed=gone))
            # An expiry (or a wall-clock step past it) is no operator's restore: the upstream
            # comes back through its own recovery hold, which it may have served already.
            changed = self.enact()
        if changed:
            await self.c.pipe.flush()

    async def keep_time(self) -> None:
        """The lease clock: `tick` at every drain's withdrawal and lease expiry, at every
        change, and at least every TICK_S. A failing tick is logged and counted, and tried
        again at the next one (as a failing judgement is)."""
        while True:
            self._changed.clear()
            try:
                await self.tick()
            except Exception:
                self.c.metrics.errors.labels("control").inc()
                log.exception(kv("overrides_failed"))
            now = self.wall()
            due = next_change_at(self.leases(), now, self.default_graceful_s)
            wait = TICK_S if due is None else min(TICK_S, max(0.0, due - now) + 0.001)
            try:
                async with asyncio.timeout(wait):
                    await self._changed.wait()
            except TimeoutError:
                pass

