"""The uplink agent: one asyncio loop feeding netlink events and probes into `decision.step`.

The loop gathers observations (carrier from netlink events, gateway probes over ARP/ND or
ICMP, beyond-the-gateway probes through each uplink's own routing table, and snapshots of
the kernel's real default routes), passes each one to the pure decision `decision.step`, and
carries out the actions in order on one worker: replace default routes, log, update metrics.

Contract:
- `Agent(agent_config, registry, ...)`, then `await agent.run()`; it returns when `stop()` is
  called (SIGTERM/SIGINT) and raises `WorkerDied` (netwatch.runtime.supervise) when a worker
  dies: `.error` is what killed it, None when it returned. An error while starting (opening
  netlink, the first reads) is raised as it is. The command exits non-zero either way, so
  systemd restarts it. On exit, whatever the cause, the routes are left as they are.
- A worker dies on any error that is not a known transient one: an exception in any worker,
  in a probe's socket callback or in a signal handler (through the loop's exception handler,
  which hands it to the `callbacks` worker), or a worker that returns. Transient netlink
  errors (a refused route write, ENOBUFS on the event socket, a failed dump) are logged,
  counted in netwatch_agent_netlink_errors_total or netwatch_agent_route_errors_total, and
  retried; NETLINK_ATTEMPTS failures in a row of the event socket or of the route snapshot
  make it fatal (a restart reopens everything).
- Time: every decision reads `clock` (time.monotonic unless injected), never the wall clock;
  scheduling uses time.monotonic. The one wall-clock read is the Unix time exported in
  netwatch_agent_last_failover_timestamp_seconds, which is a timestamp by definition.
- SIGUSR1 asks for the primary, SIGUSR2 for the secondary (manual failback, or a one-shot
  move): `systemctl kill -s USR1 netwatch-agent`. While an operator's forced failover (a
  lease) is in force, a signal is logged and ignored: `netwatch failover --auto` ends it.
  A family the asked-for uplink is DOWN in (or whose link is lost) is not moved:
  `event=operator_request_refused` says which and why (a signal has no other answer). With
  failback `auto`, a primary that has served its hold-down takes the routes back at the next
  probe round after SIGUSR2: a move that lasts is `netwatch failover --to secondary` (a lease).
- Given the site file (`site=`), the agent serves the control API on `site.control.agent`
  (`netwatch.agent.control.AgentControl`: status, the forced failover as a lease that
  survives a restart, the audit log of every automatic action); without it, none (tests).
- Logs go to the `netwatch.agent` logger as `event=... uplink=... key=value` lines.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import math
import signal
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from functools import partial
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from prometheus_client import CollectorRegistry
from pyroute2.netlink.exceptions import NetlinkError

from netwatch import __version__
from netwatch.adapters.netlink import Event, EventKind, LinkState, Netlink
from netwatch.adapters.policy_routing import ProbePath
from netwatch.agent import decision as core
from netwatch.agent import router_adverts
from netwatch.agent.control import AgentControl
from netwatch.agent.metrics import AgentMetrics, StreamMetrics
from netwatch.agent.probing import Prober, ProberFactory, RawProbers, probe_paths
from netwatch.agent.routes import DefaultRoutes, RouteTable
from netwatch.core.pacing import Cadence, Pacer
from netwatch.core.vocabulary import Family, Health, UplinkRole
from netwatch.runtime.logs import kv
from netwatch.runtime.supervise import WorkerDied, supervise

if TYPE_CHECKING:
    from netwatch.config.schema import AgentSection

log = logging.getLogger("netwatch.agent")

# The kernel's routes are re-read after every route or link event, and without one at least
# every RESYNC_IDLE_S: a safety net, since a lost event (ENOBUFS under a storm) is an error
# of the event socket, which is reopened and followed by a re-read anyway. While a route
# write is refused (the kernel said ENETUNREACH, say) they are re-read, and the write tried
# again, every RESYNC_INTERVAL_S. Re-reading every 2 s all the time was a fifth of the
# agent's CPU (pyroute2 decodes each route message in Python: docs/agent.md, Cost).
RESYNC_INTERVAL_S = 2.0
RESYNC_IDLE_S = 10.0
# What is due of a stream, for _judge: its probe at its deadline, its probe at its round-trip
# timeout (suspicion), its held probe at its deadline (netwatch.core.pacing).
_PROBE, _SUSPECT, _HELD = "probe", "suspect", "held"
# The probe tables are checked after every link or route event, and otherwise this often:
# a check is two netlink dumps per path, a fifth of the agent's CPU when done every second.
PATH_CHECK_INTERVAL_S = 10.0
# Netlink failures in a row (event socket, or route snapshot) before the agent gives up and
# exits for systemd to restart it; the event socket is reopened after RETRY_S * 2**(n-1) s.
NETLINK_ATTEMPTS = 5
NETLINK_RETRY_S = 0.1


class Kernel(RouteTable, Protocol):
    """The agent's port to the kernel's links and routes: `netwatch.adapters.netlink.Netlink`
    (a recording fake in the unit tests). Errors are NetlinkError or OSError."""

    async def open(self) -> None: ...

    def close(self) -> None: ...

    async def links(self, ifnames: list[str]) -> dict[str, LinkState]: ...

    def events(self) -> AsyncIterator[Event]: ...

    async def reopen_events(self) -> None: ...

    async def ensure_probe_path(self, path: ProbePath) -> bool: ...

    async def address_towards(self, ifname: str, gateway: IPv4Address) -> IPv4Address | None: ...

    def ipv6_tentative(self, ifname: str, address: IPv6Address | None = None) -> bool: ...


def _labels(families: tuple[core.Family, ...]) -> str:
    return ",".join(f.label for f in families)


def carrier_of(link: LinkState) -> core.Carrier:
    if not link.exists:
        return core.Carrier.VANISHED
    if not link.admin_up:
        return core.Carrier.ADMIN_DOWN
    return core.Carrier.UP if link.carrier else core.Carrier.NO_CARRIER


def settings_of(cfg: AgentSection) -> core.Settings:
    """The decision's settings from the site's `agent` section."""
    ups = (cfg.uplinks.primary, cfg.uplinks.secondary)
    families = [core.Family.V4]
    kinds = [core.ProbeKind.GATEWAY]
    if all(u.gateway6 is not None for u in ups):
        families.append(core.Family.V6)
        kinds.append(core.ProbeKind.GATEWAY6)
    versions = {t.version for t in cfg.probe.beyond}
    kinds += [core.ProbeKind.beyond_of(f) for f in core.Family if f.value in versions]
    return core.Settings(
        fall=cfg.probe.fall,
        rise=cfg.probe.rise,
        hold_down_s=cfg.failback.hold_down_s,
        failback_auto=cfg.failback.mode == "auto",
        families=tuple(families),
        kinds=tuple(kinds),
    )


@dataclass(slots=True)
class Stream:
    """One probe stream: an uplink, what it probes, the prober, and its metric counters.
    `tentative()`, for IPv6 streams: True while the address the probe leaves from is still
    in duplicate address detection; `sent_tentative`: what it said when the last probe left.
    """

    role: UplinkRole
    kind: core.ProbeKind
    prober: Prober
    target: str  # for the log lines: the gateway, or the beyond targets
    counters: StreamMetrics
    tentative: Callable[[], bool] | None = None
    sent_tentative: bool = False
    answered: bool = True  # the last probe judged was answered


class Agent:
    """The daemon. `clock` is monotonic seconds; `kernel` and `probers` (an async
    `(uplink, kind) -> (prober, target label)`) default to the real adapters. All three are
    injected by the unit tests, and so are the resync interval and the first netlink retry
    delay (RESYNC_INTERVAL_S, NETLINK_RETRY_S by default)."""

    def __init__(
        self,
        cfg: AgentSection,
        registry: CollectorRegistry,
        clock: Callable[[], float] = time.monotonic,
        kernel: Kernel | None = None,
        probers: ProberFactory | None = None,
        *,
        resync_interval_s: float = RESYNC_INTERVAL_S,
        resync_idle_s: float = RESYNC_IDLE_S,
        netlink_retry_s: float = NETLINK_RETRY_S,
        site=None,
        wall: Callable[[], float] = time.time,
    ):
        self.cfg = cfg
        self.clock = clock
        self.metrics = AgentMetrics(registry)
        self.settings = settings_of(cfg)
        self.state = core.initial_state(self.settings)
        for role in UplinkRole:
            for family in self.settings.families:
                self.metrics.set_family_health(role, family, Health.UNKNOWN)
        self.uplinks = {UplinkRole.PRIMARY: cfg.uplinks.primary,
                        UplinkRole.SECONDARY: cfg.uplinks.secondary}
        self.by_ifname = {u.interface: role for role, u in self.uplinks.items()}
        self.netlink: Kernel = kernel if kernel is not None else Netlink()
        self.routes = DefaultRoutes(self.netlink, cfg, self.settings.families)
        self._make_prober: ProberFactory = probers or RawProbers(cfg, self.netlink.address_towards)
        self._callback_failed: asyncio.Future[BaseException] | None = None
        self._actions: asyncio.Queue = asyncio.Queue()
        self._resync_wanted = asyncio.Event()
        self._stopping = asyncio.Event()
        self._loss_at = 0.0
        self._carrying_out = False  # the actions worker runs
        self._dad: dict[UplinkRole, bool] = {}  # uplinks whose link-local address is in DAD
        self._ifindex: dict[UplinkRole, int | None] = {}  # behind each uplink's name, if any
        self._streams: list[Stream] = []
        self._route_failing: dict[core.Family, tuple[str, object]] = {}  # the error repeated
        interval = cfg.probe.interval_ms / 1000
        self.interval_s = interval
        self.timeout_s = min((cfg.probe.timeout_ms or cfg.probe.interval_ms) / 1000, interval)
        self.resync_interval_s = resync_interval_s
        self.resync_idle_s = max(resync_idle_s, resync_interval_s)
        self.netlink_retry_s = netlink_retry_s
        # Wall-clock times for `status` only ("since"): the decisions never read them.
        self.wall = wall
        self._since: dict[tuple[UplinkRole, Family | None], float] = {}
        self.control: AgentControl | None = None
        if site is not None:
            self.control = AgentControl(self, site, registry, wall=wall)

    # ---------------------------------------------------------------------------- decisions

    def feed(self, obs: core.Observation, metered: bool = False) -> None:
        """Apply one observation; queue its actions for the worker (keeps their order).
        `metered`: probe results already counted in the metrics."""
        if isinstance(obs, core.ProbeResult):
            if not metered:
                self.metrics.probe(obs.uplink, obs.kind, obs.rtt_s)
        elif isinstance(obs, core.CarrierChange):
            up = obs.carrier is core.Carrier.UP
            self.metrics.carrier.labels(obs.uplink.value).set(1 if up else 0)
        before = self.state.routing
        healths = {role: self.state.health(role) for role in UplinkRole}
        self.state, actions = core.step(self.state, obs, self.clock())
        for action in actions:
            if isinstance(action, core.UplinkHealthChanged):
                for family in action.families:
                    self._since[(action.uplink, family)] = self.wall()
                if self.state.health(action.uplink) is not healths[action.uplink]:
                    self._since[(action.uplink, None)] = self.wall()
        if self.state.routing is not before:
            routes = {f: r.active for f, r in self.state.routing.items()}
            if routes != {f: r.active for f, r in before.items()}:
                self.metrics.set_routes(routes)
                adopted = [f for f, r in before.items()
                           if r.mode is core.Mode.STARTING and routes[f] is not None]
                if adopted:
                    log.info(kv("adopted", **{f.label: routes[f] for f in adopted}))
        for action in actions:
            self._actions.put_nowait(action)

    async def _carry_out(self) -> None:
        self._carrying_out = True
        while True:
            action = await self._actions.get()
            try:
                await self._carry_out_one(action)
            finally:
                self._actions.task_done()

    async def _carry_out_one(self, action: core.Action) -> None:
        if self.control is not None:
            self.control.audit_action(action)
        if isinstance(action, core.SetDefaultRoute):
            await self._set_route(action)
        elif isinstance(action, core.Failover):
            self.metrics.failovers.labels(action.cause.value).inc()
            self.metrics.last_failover.set(time.time())
            log.warning(kv("failover", uplink=action.to_uplink, previous=action.from_uplink,
                           families=_labels(action.families), cause=action.cause,
                           reason=action.reason))
        elif isinstance(action, core.UplinkHealthChanged):
            for family in action.families:
                self.metrics.set_family_health(action.uplink, family, action.health)
            self.metrics.set_health(action.uplink, self.state.health(action.uplink))
            level = logging.WARNING if action.health is Health.DOWN else logging.INFO
            log.log(level, kv("uplink_health", uplink=action.uplink,
                              families=_labels(action.families), health=action.health,
                              reason=action.reason))
        elif isinstance(action, core.BeyondSuspect):
            log.warning(kv("beyond_suspect", uplink=action.uplink, family=action.family.label,
                           note=action.note))
        elif isinstance(action, core.RequestRefused):
            log.warning(kv("operator_request_refused", uplink=action.uplink,
                           families=_labels(action.families), reason=action.reason,
                           note="not moved: the routes would come straight back"))
        elif isinstance(action, core.BothDown):
            log.error(kv("both_down", uplink=self.state.active(action.family),
                         family=action.family.label, reason=action.reason))
        self.metrics.both_down.set(1 if self.state.both_down else 0)

    async def _set_route(self, action: core.SetDefaultRoute) -> None:
        started = time.monotonic()
        try:
            via = await self.routes.replace(action.family, action.uplink)
        except (NetlinkError, OSError) as exc:
            # ENETUNREACH while the link is down: the next snapshot retries. Logged once per
            # episode: the same refusal again (every resync) is only counted.
            self.metrics.route_errors.labels(action.family.label).inc()
            code = getattr(exc, "code", None) or getattr(exc, "errno", None)
            key = (action.uplink.value, code)
            first = self._route_failing.get(action.family) != key
            self._route_failing[action.family] = key
            log.log(logging.ERROR if first else logging.DEBUG,
                    kv("route_error", uplink=action.uplink, family=action.family.label,
                       error=exc, reason=action.reason,
                       note=None if first else "the same error again"))
            # Re-read and write again soon, not at the next idle re-read.
            asyncio.get_running_loop().call_later(self.resync_interval_s,
                                                  self._resync_wanted.set)
            return
        self._route_failing.pop(action.family, None)
        took_ms = (time.monotonic() - started) * 1000
        cause = "failover" if action.failover else "repair"
        self.metrics.route_changes.labels(action.family.label, cause).inc()
        log.info(kv("route", uplink=action.uplink, family=action.family.label,
                    via=via.gateway, dev=via.ifname, src=via.source, cause=cause,
                    took_ms=f"{took_ms:.1f}", reason=action.reason))

    # ---------------------------------------------------------------------- routing state

    async def _resync_loop(self) -> None:
        """Re-read the kernel's default routes after each route event, `resync_interval_s`
        after a refused route write (`_set_route`), and otherwise every `resync_idle_s`. A
        failed read is retried after `resync_interval_s`."""
        last_path_check = time.monotonic()
        failures = 0
        while True:
            evented = False
            # asyncio.timeout, not wait_for: in 3.11 wait_for swallows a cancellation that
            # arrives as the event is set, and the agent then hung on exit (seen in the unit
            # test of a fatal netlink error, whose last retry sets this event).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.resync_interval_s if failures
                                           else self.resync_idle_s):
                    await self._resync_wanted.wait()
                evented = True
            self._resync_wanted.clear()
            # Read the kernel only once the queued route writes have landed: a snapshot taken
            # before them would show the old route and trigger a needless repair.
            await self._actions.join()
            try:
                snapshot = await self.routes.snapshot()
            except (NetlinkError, OSError) as exc:
                failures += 1
                self._netlink_error("snapshot", exc, failures)
                continue
            failures = 0
            self.feed(snapshot)
            if evented or time.monotonic() - last_path_check >= PATH_CHECK_INTERVAL_S:
                last_path_check = time.monotonic()
                await self._install_paths(quiet=True)

    async def _events_loop(self) -> None:
        """Feed link events as carrier changes and ask for a route re-read on every event.
        After an error of the event socket, events were lost: reopen it, re-read the links
        and the routes, and go on."""
        failures = 0
        while True:
            try:
                if failures:
                    await asyncio.sleep(self.netlink_retry_s * 2 ** (failures - 1))
                    await self.netlink.reopen_events()
                    await self._read_links()
                    self._resync_wanted.set()
                async for event in self.netlink.events():
                    failures = 0
                    if event.kind is EventKind.LINK and event.link.ifname in self.by_ifname:
                        self._feed_link(event.link)
                    if event.kind is not EventKind.ROUTE:
                        self._note_dad()
                    # An address event too: a source that finished DAD can now carry the
                    # routes and probe tables the kernel refused while it was tentative.
                    self._resync_wanted.set()
            except (NetlinkError, OSError) as exc:
                failures += 1
                self._netlink_error("events", exc, failures)
                continue
            return  # the stream ended, which it never should: a dead worker

    async def _read_links(self) -> None:
        """Feed every uplink's current link state (at start, and after lost events)."""
        links = await self.netlink.links(list(self.by_ifname))
        for link in links.values():
            self._feed_link(link)
        self._note_dad()

    def _feed_link(self, link: LinkState) -> None:
        """Feed the state of an uplink's interface, and log a change once. An interface
        renamed or deleted is VANISHED: the routes through it move to the other uplink and
        the agent waits for an interface of the configured name. When another interface
        stands behind the name (a new one, or none), the probe sockets, bound to the old
        one, are closed: each reopens on its next probe, on whatever has the name then."""
        role = self.by_ifname[link.ifname]
        index = link.index if link.exists else None
        if role in self._ifindex and self._ifindex[role] != index:
            for stream in self._streams:
                if stream.role is role:
                    stream.prober.close()
        self._ifindex[role] = index
        carrier = carrier_of(link)
        if carrier is not self.state.uplinks[role].carrier:
            gone = carrier is core.Carrier.VANISHED
            log.log(logging.WARNING if gone else logging.INFO, kv(
                "carrier", uplink=role, interface=link.ifname, state=carrier,
                renamed_to=link.renamed_to,
                note=f"waiting for an interface named {link.ifname}" if gone else None))
        self.feed(core.CarrierChange(role, carrier))

    def _netlink_error(self, op: str, exc: BaseException, failures: int) -> None:
        """Count and log a netlink error of `op`; raise it once it has failed
        NETLINK_ATTEMPTS times in a row (the worker dies, the agent exits non-zero)."""
        self.metrics.netlink_errors.labels(op).inc()
        code = getattr(exc, "code", None) or getattr(exc, "errno", None)
        name = errno.errorcode.get(code, code) if isinstance(code, int) else code
        fatal = failures >= NETLINK_ATTEMPTS
        log.log(logging.ERROR if fatal else logging.WARNING,
                kv("netlink_error", op=op, error=exc, errno=name, attempt=failures,
                   max_attempts=NETLINK_ATTEMPTS, next="give up" if fatal else "retry"))
        if fatal:
            raise exc

    def _tentative_source(self, role: UplinkRole,
                          kind: core.ProbeKind) -> Callable[[], bool] | None:
        """For an IPv6 stream, the check of its source address: the interface's link-local
        one for the gateway (neighbour solicitation, or echo to a link-local gateway), the
        uplink's `source6` for the beyond targets (the link-local one when it has none)."""
        if kind.family is not core.Family.V6:
            return None
        up = self.uplinks[role]
        source = up.source6 if kind.beyond else None
        return partial(self.netlink.ipv6_tentative, up.interface, source)

    def _note_dad(self) -> None:
        """Log when an uplink's link-local IPv6 address starts or ends DAD: meanwhile its
        unanswered IPv6 probes are no verdict. Once per episode, not per probe."""
        if core.Family.V6 not in self.settings.families:
            return
        for role, up in self.uplinks.items():
            tentative = self.netlink.ipv6_tentative(up.interface)
            if tentative is not self._dad.get(role, False):
                self._dad[role] = tentative
                log.info(kv("ipv6_dad", uplink=role, interface=up.interface,
                            state="tentative" if tentative else "done",
                            note="unanswered IPv6 probes are no verdict until DAD is done"
                            if tentative else None))

    async def _install_paths(self, quiet: bool = False) -> None:
        """Create or repair each uplink's probe table and rule. A link that is down refuses
        (the kernel deleted the table's route with the link): retried on the next resync."""
        for role, path in probe_paths(self.cfg):
            try:
                await self.netlink.ensure_probe_path(path)
            except (NetlinkError, OSError) as exc:
                if not quiet:
                    log.warning(kv("probe_path_error", uplink=role, table=path.table,
                                   gateway=path.gateway, error=exc))

    # ----------------------------------------------------------------------------- probes

    async def _tick_loop(self, streams: list[Stream]) -> None:
        """Send and judge the probes on the schedule of a `Pacer` (netwatch.core.pacing):
        every stream probes on one fixed grid, all in the same wake-up. A probe answered by
        the stream's round-trip timeout is judged then; one that is not is suspect: it stays
        in flight to its own timeout (held) while confirmations are sent at once and at the
        confirmation pace, until an answer or `fall` probes in a row are lost.
        The grid does not drift: a slow wake-up does not shift it, a stalled loop skips slots.

        Every stream probes every slot, the standby uplink's beyond probes too: sending those
        every 4th slot only measured no gain above the noise (8 streams at 20 Hz: 1.75..1.90 %
        of a core, against 1.80..1.85 % at the full rate), and the standby stays as ready to
        carry traffic as the active."""
        probe = self.cfg.probe
        pacer = Pacer(
            Cadence(self.interval_s, self.timeout_s, min(probe.confirm_s, self.timeout_s),
                    probe.fall),
            len(streams), time.monotonic(), suspect=True)
        # A timer callback, not a sleeping task: one epoll_wait per wake-up instead of two
        # (a sleep's timer resolves a future, and the task runs on the loop's next pass).
        loop = asyncio.get_running_loop()  # its time() is time.monotonic()
        failed = loop.create_future()
        handle: list[asyncio.Handle] = []

        def tick() -> None:
            try:
                self._tick(pacer, streams)
                handle[:] = [loop.call_at(pacer.next_at(), tick)]
            except Exception as error:  # to the supervisor, as the task's own would
                if not failed.done():
                    failed.set_exception(error)

        handle.append(loop.call_soon(tick))
        try:
            await failed
        finally:
            handle[0].cancel()

    def _tick(self, pacer: Pacer, streams: list[Stream]) -> None:
        """What is due now: judge, suspect, release, then send."""
        now = time.monotonic()
        judge = pacer.to_judge(now)
        due = [(i, _HELD) for i in pacer.to_release(now)]
        due += [(i, _SUSPECT) for i in pacer.to_suspect(now) if i not in judge]
        due += [(i, _PROBE) for i in judge]
        if due:
            self._judge(pacer, streams, due)
        for i in pacer.to_send(now):
            stream = streams[i]
            if stream.tentative is not None:
                stream.sent_tentative = stream.tentative()
            # Refused (link down): lost, judged at its deadline.
            stream.prober.send(pacer.copies(i))
            pacer.sent(i, now)

    def _judge(self, pacer: Pacer, streams: list[Stream], due: list[tuple[int, str]]) -> None:
        """Judge the probes whose time is up and feed them as one round: families that fail
        in the same round move in one decision (one failover, one log line). `due`: (stream,
        what): _PROBE its probe in flight at its deadline, _SUSPECT at its round-trip
        timeout (judged if answered, else held), _HELD a held probe at its own deadline."""
        now = self.clock()
        mono = time.monotonic()
        results: list[core.ProbeResult] = []
        for i, what in due:
            stream = streams[i]
            if what == _HELD:
                wait = pacer.held_wait(i)
                rtt = stream.prober.held_result(math.inf)
                timed = stream.prober.timed(held=True)
                if rtt is None and stream.tentative is not None and stream.tentative():
                    # DAD began meanwhile: no verdict, as for a probe in flight.
                    pacer.judged_held(i, None, mono)
                    stream.counters.no_verdict()
                    continue
                pacer.judged_held(i, rtt, mono, timed)
                self._verdict(results, stream, rtt, wait, now, timed)
                continue
            wait = pacer.wait(i)
            # Judged at its deadline or later: an answer already read counts, even when our
            # loop read it late (a busy host must not turn its own latency into lost probes).
            rtt = stream.prober.result(math.inf)
            if rtt is None and stream.tentative is not None and (
                    stream.sent_tentative or stream.tentative()):
                # Left from (or refused for) an address still in DAD: no verdict, no loss.
                pacer.judged(i, None, mono, verdict=False)
                stream.counters.no_verdict()
                results.append(core.ProbeResult(stream.role, stream.kind, None, stream.target,
                                                wait, tentative=True))
                continue
            if what == _SUSPECT and rtt is None:
                stream.prober.hold()
                pacer.suspected(i, mono)
                continue
            if rtt is not None and pacer.holds(i):
                # An answer clears the suspicion: the held probe, which left first, is judged
                # first, answered or lost by now.
                held_wait = pacer.held_wait(i)
                held = stream.prober.held_result(math.inf)
                held_timed = stream.prober.timed(held=True)
                pacer.judged_held(i, held, mono, held_timed)
                self._verdict(results, stream, held, held_wait, now, held_timed)
            timed = stream.prober.timed()
            pacer.judged(i, rtt, mono, timed=timed)
            self._verdict(results, stream, rtt, wait, now, timed)
        if results:
            self.feed(core.ProbeRound(tuple(results)), metered=True)
        if now - self._loss_at >= 1.0:
            self._loss_at = now
            self.metrics.update_loss()

    def _verdict(self, results: list[core.ProbeResult], stream: Stream, rtt: float | None,
                 wait: float, now: float, timed: bool = True) -> None:
        """Count one probe's verdict and add it to the round, unless nothing can change."""
        stream.counters.count(rtt, timed)
        if rtt is not None and not stream.answered and stream.kind is core.ProbeKind.GATEWAY6:
            # The IPv6 gateway answers again: check the probe paths now, not at the next
            # periodic check (ensure_probe_path forgets a FAILED neighbour entry, which
            # keeps the marked beyond probes on the table's unreachable default).
            self._resync_wanted.set()
        stream.answered = rtt is not None
        if rtt is not None and core.steady(self.state, stream.role, now):
            return  # nothing can change: no observation built, no step taken
        results.append(core.ProbeResult(stream.role, stream.kind, rtt, stream.target, wait))

    # -------------------------------------------------------------------------------- run

    def stop(self) -> None:
        self._stopping.set()

    def _routes_kv(self) -> dict[str, object]:
        """`ipv4=primary ipv6=secondary`: where each family's default route is."""
        return {f.label: r.active for f, r in self.state.routing.items()}

    def request(self, role: UplinkRole, reason: str) -> None:
        """An operator's one-shot move (SIGUSR1/SIGUSR2): every family to `role`, unless a
        forced failover is in force (the lease wins: it says who, why and until when)."""
        forced = self.state.forced
        if forced is not None:
            log.warning(kv("operator_request", uplink=role, reason=reason, ignored=True,
                           note=f"a forced failover to {forced.uplink.value} is in force "
                                f"({forced.reason}): netwatch failover --auto ends it"))
            return
        log.warning(kv("operator_request", uplink=role, reason=reason))
        self.feed(core.UseUplink(role, reason))

    async def settled(self, timeout_s: float = 2.0) -> None:
        """Wait (at most `timeout_s`) for the queued actions, route writes included, to be
        carried out: an operator's answer then tells where the routes are."""
        if not self._carrying_out:
            return  # not running (a unit test drives the decision alone)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._actions.join()

    def status(self, now: float, host: str, site: str, overrides: list[dict]) -> dict:
        """The `AgentStatus` (netwatch.control.protocol) at wall-clock `now`; each uplink
        also has `families`: per family its state, reason, since, active, and the RTT and
        loss of its gateway and beyond probes."""
        state = self.state
        mono = self.clock()
        modes = {r.mode.value for r in state.routing.values()}
        mode = modes.pop() if len(modes) == 1 else ",".join(
            f"{f.label}:{r.mode.value}" for f, r in state.routing.items())
        stable = [mono - r.primary_stable.since for r in state.routing.values()
                  if r.primary_stable.since is not None]
        streams = {(st.role, st.kind): st.counters for st in self._streams}

        def probed(role: UplinkRole, kind: core.ProbeKind) -> tuple[float | None, float | None]:
            counters = streams.get((role, kind))
            if counters is None or not counters.window:
                return None, None
            rtts = list(counters.rtts)
            rtt = round(sum(rtts) / len(rtts) * 1000, 3) if rtts else None
            return rtt, round(sum(counters.window) / len(counters.window), 3)

        uplinks = []
        for role, up in self.uplinks.items():
            view = state.uplinks[role]
            families = {}
            for family in self.settings.families:
                gateway = (core.ProbeKind.GATEWAY if family is Family.V4
                           else core.ProbeKind.GATEWAY6)
                rtt, loss = probed(role, gateway)
                entry = {"state": view.families[family].value,
                         "reason": view.reasons.get(family, ""),
                         "since": self._since.get((role, family)),
                         "active": state.active(family) is role,
                         "rtt_ms": rtt, "loss_ratio": loss}
                beyond = core.ProbeKind.beyond_of(family)
                if beyond in self.settings.kinds:
                    entry["beyond_rtt_ms"], entry["beyond_loss_ratio"] = probed(role, beyond)
                families[family.label] = entry
            rtt, loss = probed(role, core.ProbeKind.GATEWAY)
            reasons = list(dict.fromkeys(r for r in view.reasons.values() if r))
            uplinks.append({
                "role": role.value, "interface": up.interface,
                "gateway": str(up.gateway),
                "gateway6": None if up.gateway6 is None else str(up.gateway6),
                "state": view.health.value,
                "carrier": None if view.carrier is None else view.carrier.value,
                "rtt_ms": rtt, "loss_ratio": loss, "active": role in state.carrying,
                "since": self._since.get((role, None)), "reason": "; ".join(reasons),
                "families": families,
            })
        forced = state.forced
        return {
            "daemon": "agent", "site": site, "host": host, "version": __version__, "now": now,
            "mode": mode,
            "failback": {"mode": "auto" if self.settings.failback_auto else "manual",
                         "hold_down_s": self.settings.hold_down_s,
                         "primary_stable_for_s": round(min(stable), 1) if stable else None},
            "both_down": state.both_down,
            "forced": None if forced is None else {
                "uplink": forced.uplink.value, "reason": forced.reason,
                "applied": all(r.active is forced.uplink for r in state.routing.values())},
            "uplinks": uplinks,
            "overrides": overrides,
        }

    def _on_loop_error(self, loop: asyncio.AbstractEventLoop, context: dict) -> None:
        """The loop's exception handler: an exception in a callback (a probe socket's reader,
        a signal handler) would otherwise be logged by asyncio and forgotten, leaving a prober
        that never sees a reply, or an operator request that did nothing. The first one goes
        to the `callbacks` worker, which dies of it."""
        exc = context.get("exception")
        failed = self._callback_failed
        if exc is None or self._stopping.is_set() or failed is None or failed.done():
            loop.default_exception_handler(context)
            return
        failed.set_result(exc)

    def warn_router_adverts(self, conf: Path = router_adverts.CONF) -> None:
        """Log once, at start, the uplinks whose kernel takes an IPv6 default route from
        router advertisements: it would fight the agent's (see netwatch.agent.router_adverts)."""
        if core.Family.V6 not in self.settings.families:
            return
        names = [u.interface for u in self.uplinks.values()]
        for ifname in router_adverts.ra_defaults(names, conf):
            log.warning(kv(
                "ra_default_route", interface=ifname,
                note=f"the kernel learns IPv6 default routes from router advertisements on "
                     f"{ifname}, at the metric the agent writes: the next advertisement of a "
                     f"failed gateway puts a default through it back. Set "
                     f"net.ipv6.conf.{ifname}.accept_ra_defrtr=0 (addresses and prefixes "
                     f"are still learnt): see docs/agent.md, Before you deploy"))

    @staticmethod
    async def _callbacks(failed: asyncio.Future[BaseException]) -> None:
        """A worker that dies of the first exception raised in a loop callback."""
        raise await failed

    async def run(self) -> None:
        """Run until stop(). Raises WorkerDied when a worker dies (after logging it), and
        whatever stopped the start (netlink, the first reads) as it is."""
        loop = asyncio.get_running_loop()
        previous_handler = loop.get_exception_handler()
        callback_failed = self._callback_failed = loop.create_future()
        loop.set_exception_handler(self._on_loop_error)
        closers: list[Callable[[], None]] = []
        try:
            await self.netlink.open()
            await self._read_links()
            self.feed(await self.routes.snapshot())
            await self._install_paths()
            self.warn_router_adverts()
            log.info(kv("started", **self._routes_kv(), method=self.cfg.probe.method,
                        kinds=",".join(k.value for k in self.settings.kinds),
                        interval_ms=self.cfg.probe.interval_ms, fall=self.settings.fall,
                        rise=self.settings.rise, hold_down_s=self.settings.hold_down_s,
                        failback="auto" if self.settings.failback_auto else "manual"))
            streams = self._streams
            for role in self.uplinks:
                for kind in self.settings.kinds:
                    prober, target = await self._make_prober(role, kind)
                    closers.append(prober.close)
                    streams.append(Stream(role, kind, prober, target,
                                          self.metrics.stream(role, kind),
                                          self._tentative_source(role, kind)))
            for sig, handler in ((signal.SIGTERM, self.stop), (signal.SIGINT, self.stop),
                                 (signal.SIGUSR1, lambda: self.request(UplinkRole.PRIMARY,
                                                                       "SIGUSR1")),
                                 (signal.SIGUSR2, lambda: self.request(UplinkRole.SECONDARY,
                                                                       "SIGUSR2"))):
                loop.add_signal_handler(sig, handler)
            try:
                await supervise({
                    "actions": self._carry_out(),
                    "netlink-events": self._events_loop(),
                    "resync": self._resync_loop(),
                    "probes": self._tick_loop(streams),
                    "callbacks": self._callbacks(callback_failed),
                    **(self.control.workers() if self.control is not None else {}),
                }, self._stopping)
            except WorkerDied as died:
                error = died.error
                log.error(kv("worker_died", worker=died.worker,
                             error="returned" if error is None
                             else f"{type(error).__name__}: {error}",
                             note="routes left as they are; exiting for a restart"))
                raise
            log.info(kv("stopped", **self._routes_kv(), note="routes left as they are"))
        finally:
            self._stopping.set()  # callback errors from here on are asyncio's to log
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2):
                loop.remove_signal_handler(sig)
            for close in closers:
                with contextlib.suppress(Exception):
                    close()
            self.netlink.close()
            loop.set_exception_handler(previous_handler)
