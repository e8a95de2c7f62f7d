"""The agent's side of the control API: `status`, the forced failover as a lease, and the audit
trail of automatic actions.

`AgentControl(agent, site, registry)` is built by the `Agent` when it is given the site file;
it owns the control socket (`site.control.agent`, mode and group from the site file), the
lease book (`LeaseKeeper` in state_dir: it survives a restart) and the audit log::

    self.control = AgentControl(self, site, registry)   # feeds the lease in force, if any
    ...
    self.control.audit_action(action)                    # each action the worker carries out
    ...
    supervise({..., **self.control.workers()}, stop)     # socket, lease clock, audit writer

Contract:

* `failover to=primary|secondary` opens a FAILOVER lease (`netwatch.control.overrides`), saved
  before it is in force; its effect is fed to the decision at once as `decision.Force`, so
  the routes have moved (or the answer says why not yet) before the answer goes back.
  `to=auto`, `override_delete` and the lease's expiry feed `Force(None)`: normal behaviour
  returns (a primary that served its hold-down while forced away takes the routes back at
  once). What the decision does with a forced uplink that is down is in
  `netwatch.agent.decision`: never a route through a dead link or a silent gateway;
* the lease clock (`keep_time`) wakes at the lease's expiry and at least every TICK_S;
* the audit log gets every request (the server writes those) and every automatic action:
  `failover`, `both_down`, `uplink_health`, `beyond_suspect`, and the keeper's
  `lease_expired`. Records are written (fsync) by their own worker, in order, so a route
  write never waits for the disk;
* with `alertmanager` in the site file, a failover to the secondary opens an Alertmanager
  silence for the alerts it makes expected (`netwatch.observability.silences`), extended with
  the lease and expired when it ends (to=auto, delete, replacement, expiry), opened or
  extended again at start. A worker does it, in order, in a thread: the answer never waits
  for Alertmanager, and a failure is counted (netwatch_agent_silence_errors_total) and logged
  once per episode (`silence_failed`);
* the control socket cannot be opened: logged as an error and tried again, backing off to
  30 s (`ControlServer.serve_retrying`); the agent goes on failing over meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry

from netwatch.agent import decision as core
from netwatch.control.audit import AuditLog, audit_path
from netwatch.control.keeper import LeaseKeeper
from netwatch.control.leases import Lease, LeaseKind
from netwatch.control.metrics import ControlMetrics
from netwatch.control.protocol import Command, Peer, Request, Unavailable
from netwatch.control.server import ControlServer
from netwatch.control.silencing import SilenceWorker
from netwatch.control.store import LeaseStore
from netwatch.core.vocabulary import Health, UplinkRole
from netwatch.observability import silences
from netwatch.runtime.logs import kv

if TYPE_CHECKING:
    from netwatch.agent.daemon import Agent

log = logging.getLogger("netwatch.agent")

TICK_S = 1.0  # the lease clock wakes at least this often
AUDIT_QUEUE = 1000  # automatic actions waiting for their fsync; beyond, counted and dropped


class AgentControl:
    def __init__(self, agent: Agent, site, registry: CollectorRegistry | None = None, *,
                 wall=time.time, host: str | None = None):
        """Load the lease book, open (not yet serve) the audit log, and feed the forced
        failover in force, if any, to the agent's decision. `wall` is the clock the leases
        are written in. Never raises for a damaged lease file (the keeper sets it aside)."""
        self.agent = agent
        self.site = site
        self.wall = wall
        self.host = host or socket.gethostname()
        self.audit_log = AuditLog(audit_path(site.state_dir, "agent"), clock=wall)
        self.keeper = LeaseKeeper(LeaseStore(site.state_dir, "agent", clock=wall), self.audit_log,
                                  clock=wall)
        self.metrics = ControlMetrics(registry, "agent")
        self.server = ControlServer(
            site.control.agent, "agent", self, audit=self.audit_log,
            mode=int(site.control.mode, 8), group=site.control.group,
            on_request=self.metrics.count_request,
        )
        self._writes = asyncio.Lock()  # one write at a time
        self._changed = asyncio.Event()  # wakes the lease clock early
        self._audit: asyncio.Queue[tuple[str, dict]] = asyncio.Queue(AUDIT_QUEUE)
        self.audit_dropped = 0
        self.metrics.show_leases(self.keeper.book.leases)
        self.silences = SilenceWorker.for_site(site, "agent", wall,
                                               self.agent.metrics.silence_errors.inc)
        self.silence(silences.jobs_for(self.forced()))  # a restart extends its silence
        lease = self.forced()
        if lease is not None:
            log.info(kv("override_in_force", id=lease.id, forces=lease.describe(),
                        who=lease.who.user, left_s=round(lease.left_s(wall()), 1),
                        reason=lease.reason))
        self.enact()

    # --- the lease as the decision sees it -----------------------------------------------

    def forced(self) -> Lease | None:
        """The live forced failover, if any."""
        lease = self.keeper.book.find(LeaseKind.FAILOVER)
        return None if lease is None or lease.expired(self.wall()) else lease

    def enact(self) -> bool:
        """Feed the forced failover in force (or its end) to the decision when it changed.
        True when something was fed."""
        lease = self.forced()
        wanted = (None if lease is None
                  else core.Force(UplinkRole(lease.target), f"{lease.id} {lease.reason}"))
        if wanted == self.agent.state.forced:
            return False
        self.agent.feed(wanted or core.Force(None))
        self._changed.set()
        return True

    # --- the control API -------------------------------------------------------------------

    async def handle(self, request: Request, peer: Peer) -> Any:
        """The answer to `request` (netwatch.control.server.Handler)."""
        if request.cmd is Command.STATUS:
            return self.agent.status(self.wall(), self.host, self.site.site,
                                     self.keeper.live())
        if request.cmd is Command.OVERRIDES:
            return self.keeper.listing()
        return await self.change(request, peer)

    async def change(self, request: Request, peer: Peer) -> dict:
        """Carry out a write command: saved, then fed to the decision. The `Change` answer;
        its message says where the routes are once the decision has taken it. Raises
        NotFound or Unavailable (nothing changed then)."""
        async with self._writes:
            # The keeper fsyncs the lease file: off the event loop, which probes meanwhile.
            change = await asyncio.to_thread(self.keeper.apply, request, peer)
            self.metrics.show_leases(self.keeper.book.leases)
            self.silence(silences.jobs_for(change.lease, change.replaced, change.removed))
            self.enact()
            await self.agent.settled()
            note = self._where()
            log.info(kv("override", cmd=request.cmd.value,
                        target=request.args.get("to") or request.args.get("id"),
                        user=peer.user, uid=peer.uid, reason=request.args.get("reason"),
                        result=change.message, routes=note))
        answer = change.to_json()
        answer["message"] = f"{change.message}; {note}"
        return answer

    def _where(self) -> str:
        """Where the routes are, and, when a forced uplink does not carry them, why."""
        state = self.agent.state
        where = ", ".join(f"{f.label} via {r.active.value if r.active else '-'}"
                          for f, r in state.routing.items())
        forced = state.forced
        if forced is None or (not state.starting and all(
                r.active is forced.uplink for r in state.routing.values())):
            return f"routes: {where}"
        view = state.uplinks[forced.uplink]
        if view.link_lost:
            why = f"{forced.uplink.value}'s link is down ({view.carrier.value})"
        else:
            bad = {f.label: view.families[f].value for f in state.routing
                   if view.families[f] is not Health.UP}
            held = [r.stable(forced.uplink) for r in state.routing.values()
                    if r.left_forced and r.active is not forced.uplink]
            if bad:
                why = (f"{forced.uplink.value} is not UP ("
                       + ", ".join(f"{k} {v}" for k, v in bad.items()) + ")")
            elif held:
                now = self.agent.clock()
                left = max(h.hold_s - (now - h.since) if h.since is not None else h.hold_s
                           for h in held)
                why = (f"{forced.uplink.value} failed under the lease and is UP again: its "
                       f"hold-down ends in {max(left, 0.0):.1f} s")
            else:
                why = "starting"
        return (f"routes: {where}; not on {forced.uplink.value} yet: {why}; they move there "
                "once it is UP (after a failure, once stable for the hold-down), the lease "
                "holds meanwhile")

    # --- the automatic actions, audited ----------------------------------------------------

    def audit_action(self, action: core.Action) -> None:
        """Queue the audit record of one automatic action (the route writes are not audited:
        each belongs to a failover, or is a repair that the log and metrics show)."""
        if isinstance(action, core.Failover):
            self.audit("failover", uplink=action.to_uplink.value,
                       previous=action.from_uplink.value if action.from_uplink else None,
                       families=",".join(f.label for f in action.families),
                       cause=action.cause.value, reason=action.reason)
        elif isinstance(action, core.UplinkHealthChanged):
            self.audit("uplink_health", uplink=action.uplink.value,
                       families=",".join(f.label for f in action.families),
                       health=action.health.value, reason=action.reason)
        elif isinstance(action, core.BeyondSuspect):
            self.audit("beyond_suspect", uplink=action.uplink.value,
                       family=action.family.label, note=action.note)
        elif isinstance(action, core.RequestRefused):
            self.audit("operator_request_refused", uplink=action.uplink.value,
                       families=",".join(f.label for f in action.families),
                       reason=action.reason)
        elif isinstance(action, core.BothDown):
            self.audit("both_down", family=action.family.label, reason=action.reason)

    def audit(self, kind: str, **fields: Any) -> None:
        """Queue one record for the audit writer; never blocks. A full queue (a disk that
        stalls) drops the record, counts and logs it: the agent's job comes first."""
        try:
            self._audit.put_nowait((kind, fields))
        except asyncio.QueueFull:
            self.audit_dropped += 1
            log.error(kv("audit_dropped", record_kind=kind, dropped=self.audit_dropped))

    async def write_audit(self) -> None:
        """The audit writer: each queued record, in order, fsynced in a worker thread."""
        while True:
            kind, fields = await self._audit.get()
            await asyncio.to_thread(self.audit_log.record, kind, **fields)

    # --- workers ---------------------------------------------------------------------------

    def workers(self) -> dict:
        """The workers `Agent.run` supervises: the socket, the lease clock, the audit writer."""
        workers = {"control": self.server.serve_retrying(self._unavailable),
                   "overrides": self.keep_time(), "audit": self.write_audit()}
        if self.silences is not None:
            workers["silences"] = self.silences.run()
        return workers

    def silence(self, jobs: list[silences.SilenceJob]) -> None:
        """Queue `jobs` for the silence worker (nothing without `alertmanager`)."""
        if self.silences is not None:
            self.silences.queue(jobs)

    def _unavailable(self, exc: OSError, retry_in_s: float) -> None:
        log.error(kv("control_unavailable", path=self.server.path, error=exc,
                     retry_in_s=retry_in_s, note="failing over on; the override in force stays"))

    async def tick(self) -> None:
        """Expire what expired; feed the end of a forced failover."""
        async with self._writes:
            if any(lease.expired(self.wall()) for lease in self.keeper.book.leases):
                gone = await asyncio.to_thread(self.keeper.expire)  # saves, audits: off the loop
                self.metrics.show_leases(self.keeper.book.leases)
                self.silence(silences.jobs_for(None, removed=gone))
            self.enact()

    async def keep_time(self) -> None:
        """The lease clock: `tick` at the lease's expiry, at every change, and at least every
        TICK_S. A tick that fails on the lease book's I/O (`Unavailable`, OSError) is logged
        and tried again at the next one. Anything else (a TransitionError from the decision
        the lease's end is fed to) raises: retried every second, it would keep a forced
        failover in force for ever; raised, it stops the daemon, and systemd restarts it."""
        while True:
            self._changed.clear()
            try:
                await self.tick()
            except (Unavailable, OSError) as exc:
                log.error(kv("overrides_failed", error=exc, note="tried again in a second"))
            now = self.wall()
            ends = [lease.expires_at for lease in self.keeper.book.leases]
            wait = TICK_S if not ends else min(TICK_S, max(0.0, min(ends) - now) + 0.001)
            try:
                async with asyncio.timeout(wait):
                    await self._changed.wait()
            except TimeoutError:
                pass
