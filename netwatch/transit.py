"""The transit verdict and the announcement plan. Pure: no I/O, time is injected.

`step(state, observation, now) -> (state, actions)` is the whole decision:

* observations are `ProbeStats` (loss and RTT per (upstream, target) over the rolling window,
  see `ProbeWindow`) and `SessionChange` (a BGP session of one family went up or down);
* each upstream is HEALTHY, DEGRADED or FAILED. A target counts against an upstream only when
  at least one *other* upstream reaches it (a dead target is not a dead provider), and the
  upstream is compared with the median of the other upstreams that reach that target (so three
  blackholed providers out of four do not become "the norm"). At least `min_targets` such
  targets are needed for a verdict (quorum);
* when every upstream looks bad at once (absolute loss above the degraded threshold through
  all of them) the fault is ours: the verdicts freeze, no BGP action is taken, `LocalFault`
  says so. "Every" is every upstream with samples, at least 2 of them: an upstream that is
  not probed at all (no probe path, a prober that failed at start) must not switch the guard
  off, or the others' all-bad picture would be judged relatively and acted on;
* DEGRADED is judged on the whole window (loss and RTT excess). FAILED is judged on the
  most recent probes: the last `Params.recent_probes` (max(fall, 5)) probes of each
  (upstream, target) path, compared like the window with the other upstreams' last probes.
  That look-back of consecutive probes *is* the fall hysteresis of FAILED, so its counter
  falls on one bad judgement (it still needs `rise` good ones). With the lab policy (interval
  200 ms, failed_loss 0.8) a blackhole is FAILED once 4 probes per path were lost, ~1.0 s,
  instead of 1.8 s when FAILED waited for the window's mean loss to pass the threshold and then
  for `fall` more judgements. A path losing 51 % of its probes (the lab's `loss 30`, both
  ways) reaches 0.8 over 20 targets x 5 probes with p ~ 1e-9 per judgement: it stays DEGRADED;
* two saturating counters (netwatch.health.Hysteresis) give `fall`/`rise` hysteresis for
  "degraded or worse" and "failed" (see above); a better state is taken only after it has held for
  `recovery_hold_s` (HoldDown); at most `max_actions_per_hour` state changes (ActionBudget),
  then the controller holds and alerts;
* the plan maps each (upstream, family) to an `Announcement` (or None: withdrawn), and the
  safety interlock keeps every family announced through at least `min_announcing_upstreams`
  upstreams whose session of that family is up, re-announcing the least bad ones (with the
  degraded treatment) and reporting a `SafetyHold` when it has to. A session whose state is
  not known yet (UNKNOWN: a controller that has just started) is *possibly up*: the interlock
  holds both when it is up and when it is down, and an UNKNOWN session never loses an
  announcement it had (no withdrawal on a guess). The upstreams a hold keeps survive a
  restart (`to_json`), so a restarted controller keeps the same ones.

`now` is any monotonic clock (the controller passes time.monotonic(): an NTP step must not
shorten a recovery hold); `to_json` / `initial_state` convert the persisted times to and from
the wall clock with `wall_offset_s` (wall = monotonic + offset), so holds survive a restart.

All prefixes of one family go to the same sessions, so the interlock per family *is* the
interlock per prefix.
"""

from __future__ import annotations

import enum
import math
import statistics
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, replace

from netwatch.health import ActionBudget, HoldDown, Hysteresis
from netwatch.model import Health

HOUR_S = 3600.0
REACHABLE_LOSS = 0.5  # a target "is reachable" through an upstream below this loss ratio
MIN_SAMPLES = 3  # samples per (upstream, target) in the window before the pair counts
# FAILED looks back at least this many probes per path. With 3, a path losing 51 % of its
# probes crossed failed_loss 0.8 over 10 targets (30 probes) with p ~ 4e-4 per judgement (the
# unit simulation found it); with 5 (50 probes) p ~ 1e-5, with 20 targets (100 probes) ~ 1e-9,
# while a blackhole still needs only 4 lost probes per path (0.8 s at 200 ms).
FAILED_LOOKBACK_PROBES = 5


class TransitState(enum.Enum):
    HEALTHY = "healthy"
    DEGRADED = "degraded"
    FAILED = "failed"

    @property
    def severity(self) -> int:
        return _SEVERITY[self]


_SEVERITY = {TransitState.HEALTHY: 0, TransitState.DEGRADED: 1, TransitState.FAILED: 2}

# Every state may reach every other one, but only through `_transition`, which checks that the
# move is in this table and that an improvement has served its recovery hold.
ALLOWED = {
    TransitState.HEALTHY: {TransitState.DEGRADED, TransitState.FAILED},
    TransitState.DEGRADED: {TransitState.HEALTHY, TransitState.FAILED},
    TransitState.FAILED: {TransitState.HEALTHY, TransitState.DEGRADED},
}


class SessionState(enum.Enum):
    UNKNOWN = "unknown"  # possibly up: the interlock never withdraws through it on a guess
    UP = "up"
    DOWN = "down"


class Family(enum.IntEnum):
    IPV4 = 4
    IPV6 = 6


# --- parameters -----------------------------------------------------------------------------


class TreatmentAction(enum.Enum):
    ANNOUNCE = "announce"
    PREPEND = "prepend"
    COMMUNITIES = "communities"
    WITHDRAW = "withdraw"


@dataclass(frozen=True)
class Treatment:
    """What a verdict level does to the announcements: announce, prepend, tag or withdraw."""

    action: TreatmentAction
    prepend: int = 0
    communities: tuple[str, ...] = ()


@dataclass(frozen=True)
class UpstreamParams:
    name: str
    families: frozenset[Family]  # the families this upstream has a BGP session for
    communities: tuple[str, ...] = ()


@dataclass(frozen=True)
class Params:
    """Everything the decision needs from the site file (see `params_from_site`)."""

    asn: int
    upstreams: tuple[UpstreamParams, ...]
    degraded_loss: float
    degraded_latency_s: float | None
    failed_loss: float
    failed_latency_s: float | None
    degraded: Treatment
    failed: Treatment
    fall: int = 3
    rise: int = 5
    min_announcing_upstreams: int = 2
    recovery_hold_s: float = 600.0
    max_actions_per_hour: int = 6
    min_targets: int = 3

    @property
    def recent_probes(self) -> int:
        """How many of each path's latest probes FAILED is judged on (see the module doc)."""
        return max(self.fall, FAILED_LOOKBACK_PROBES)

    def upstream(self, name: str) -> UpstreamParams:
        for up in self.upstreams:
            if up.name == name:
                return up
        raise KeyError(name)


def params_from_site(site) -> Params:
    """Build Params from a validated `netwatch.config.Site` with a controller section."""
    ctl = site.controller
    pol = ctl.policy

    def treatment(v) -> Treatment:
        return Treatment(TreatmentAction(v.action), v.prepend or 0, tuple(v.communities))

    ups = []
    for u in ctl.upstreams:
        fams = {Family(u.neighbor.version)}
        if u.neighbor6 is not None:
            fams.add(Family.IPV6)
        ups.append(UpstreamParams(u.name, frozenset(fams), tuple(u.communities)))
    return Params(
        asn=site.asn,
        upstreams=tuple(ups),
        degraded_loss=pol.degraded.loss_ratio,
        degraded_latency_s=pol.degraded.latency_ms / 1000 if pol.degraded.latency_ms else None,
        failed_loss=pol.failed.loss_ratio,
        failed_latency_s=pol.failed.latency_ms / 1000 if pol.failed.latency_ms else None,
        degraded=treatment(pol.degraded),
        failed=treatment(pol.failed),
        fall=pol.fall,
        rise=pol.rise,
        min_announcing_upstreams=pol.min_announcing_upstreams,
        recovery_hold_s=pol.recovery_hold_s,
        max_actions_per_hour=pol.max_actions_per_hour,
        min_targets=ctl.probe.min_targets,
    )


# --- observations ---------------------------------------------------------------------------


@dataclass(frozen=True)
class PathStats:
    """One (upstream, target) over the window: probes answered or lost, median RTT."""

    sent: int
    lost: int
    rtt_s: float | None  # median RTT of the answered probes, None when none answered
    recent_sent: int = 0  # the path's latest probes (Params.recent_probes); 0: use the window
    recent_lost: int = 0

    @property
    def loss(self) -> float:
        return self.lost / self.sent if self.sent else 1.0

    @property
    def recent_loss(self) -> float:
        if not self.recent_sent:
            return self.loss
        return self.recent_lost / self.recent_sent


@dataclass(frozen=True)
class ProbeStats:
    """The window's statistics: {(upstream name, target label): PathStats}."""

    paths: Mapping[tuple[str, str], PathStats]


@dataclass(frozen=True)
class SessionChange:
    upstream: str
    family: Family
    up: bool


@dataclass(frozen=True)
class SessionSummary:
    """Every session's state at once (ExaBGP's answer to `show neighbor json`).

    It fills in only the sessions still UNKNOWN: an event about a session is as new as the
    answer. One observation, one plan: learnt one session at a time, the interlock would hold
    on whichever session happened to come first and then keep it (a hold migration).
    """

    up: Mapping[tuple[str, Family], bool]


Observation = ProbeStats | SessionChange | SessionSummary


class ProbeWindow:
    """Rolling window of probe results per (upstream, target). Pure: `now` is passed in.

    `recent` is how many of each path's latest results `PathStats.recent_*` count (in the
    order they were recorded: a lost probe is recorded when its timeout expires).
    """

    def __init__(self, window_s: float, recent: int = MIN_SAMPLES):
        if recent < 1:
            raise ValueError(f"recent must be >= 1, got {recent}")
        self.window_s = window_s
        self.recent = recent
        self._samples: dict[tuple[str, str], deque[tuple[float, float | None]]] = {}

    def record(self, upstream: str, target: str, sent_at: float, rtt_s: float | None) -> None:
        self._samples.setdefault((upstream, target), deque()).append((sent_at, rtt_s))

    def stats(self, now: float) -> ProbeStats:
        paths = {}
        for key, samples in self._samples.items():
            while samples and now - samples[0][0] > self.window_s:
                samples.popleft()
            if not samples:
                continue
            rtts = [r for _, r in samples if r is not None]
            latest = list(samples)[-self.recent :]
            paths[key] = PathStats(
                len(samples), len(samples) - len(rtts), statistics.median(rtts) if rtts else None,
                len(latest), sum(1 for _, r in latest if r is None),
            )
        return ProbeStats(paths)


# --- verdict --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Assessment:
    """One upstream's raw verdict on one window, before hysteresis."""

    level: TransitState | None  # None: no quorum of usable targets
    loss_excess: float = 0.0
    rtt_excess_s: float | None = None
    targets: int = 0
    loss: float = 0.0  # absolute, over every target with samples
    recent_loss_excess: float = 0.0  # over each path's latest probes (FAILED's input)


def assess(params: Params, stats: ProbeStats) -> dict[str, Assessment]:
    """The raw verdict of every upstream on one window (see the module docstring)."""
    names = [u.name for u in params.upstreams]
    by_target: dict[str, dict[str, PathStats]] = {}
    for (up, target), ps in stats.paths.items():
        if up in names and ps.sent >= MIN_SAMPLES:
            by_target.setdefault(target, {})[up] = ps
    result = {}
    for name in names:
        losses, recent, rtt_deltas, absolute = [], [], [], []
        for per_up in by_target.values():
            mine = per_up.get(name)
            if mine is None:
                continue
            absolute.append(mine.loss)
            others = [ps for up, ps in per_up.items() if up != name and ps.loss < REACHABLE_LOSS]
            if not others:
                continue  # a dead target, or one only we reach: says nothing against us
            losses.append(mine.loss - statistics.median(ps.loss for ps in others))
            recent.append(mine.recent_loss - statistics.median(ps.recent_loss for ps in others))
            other_rtts = [ps.rtt_s for ps in others if ps.rtt_s is not None]
            if mine.rtt_s is not None and other_rtts:
                rtt_deltas.append(mine.rtt_s - statistics.median(other_rtts))
        loss_abs = statistics.fmean(absolute) if absolute else 0.0
        if len(losses) < params.min_targets:
            result[name] = Assessment(None, targets=len(losses), loss=loss_abs)
            continue
        loss_excess = statistics.fmean(losses)
        recent_excess = statistics.fmean(recent)
        rtt_excess = statistics.median(rtt_deltas) if rtt_deltas else None
        level = _level(params, loss_excess, recent_excess, rtt_excess)
        result[name] = Assessment(
            level, loss_excess, rtt_excess, len(losses), loss_abs, recent_excess
        )
    return result


def _level(params: Params, loss: float, recent: float, rtt_s: float | None) -> TransitState:
    def over(limit: float | None, value: float | None) -> bool:
        # 1e-9: a mean of 4/5 losses is 0.7999999999999999, and it is meant to reach 0.8
        return limit is not None and value is not None and value >= limit - 1e-9

    failed = over(params.failed_loss, recent) or over(params.failed_loss, loss)
    if failed or over(params.failed_latency_s, rtt_s):
        return TransitState.FAILED
    if over(params.degraded_loss, loss) or over(params.degraded_latency_s, rtt_s):
        return TransitState.DEGRADED
    return TransitState.HEALTHY


def is_local_fault(
    params: Params, assessments: Mapping[str, Assessment], stats: ProbeStats
) -> bool:
    """Every upstream with samples (at least 2 of them) loses at least `degraded_loss` of its
    probes: it is us. Upstreams without samples are left out, not counted as good: one that is
    not probed (found in review: no `interface`, or its prober failed) made the guard
    impossible, and three probed upstreams all losing 30-60 % were judged against each other."""
    seen = {up for (up, _), ps in stats.paths.items() if ps.sent >= MIN_SAMPLES}
    judged = [a for name, a in assessments.items() if name in seen]
    return len(judged) >= 2 and all(a.loss >= params.degraded_loss for a in judged)


# --- state ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class UpstreamState:
    state: TransitState
    degraded: Hysteresis  # DOWN = degraded or worse
    failed: Hysteresis  # DOWN = failed
    recovery: HoldDown  # since when the hysteresis has pointed at a better state
    last: Assessment = Assessment(None)
    changed_at: float | None = None

    @property
    def candidate(self) -> TransitState:
        """The state the hysteresis points at now, before the recovery hold."""
        if self.failed.health is Health.DOWN:
            return TransitState.FAILED
        if self.degraded.health is Health.DOWN:
            return TransitState.DEGRADED
        return TransitState.HEALTHY


@dataclass(frozen=True)
class State:
    params: Params
    upstreams: Mapping[str, UpstreamState]
    sessions: Mapping[tuple[str, Family], SessionState]
    budget: ActionBudget
    local_fault: bool = False
    # (upstream, wanted state) that the exhausted action budget holds back; reported once each
    held_back: frozenset[tuple[str, TransitState]] = frozenset()
    plan: Plan | None = None

    @property
    def budget_exhausted(self) -> bool:
        return bool(self.held_back)


def initial_state(
    params: Params, persisted: Mapping | None = None, *, now: float = 0.0,
    wall_offset_s: float = 0.0,
) -> State:
    """The state at start: HEALTHY everywhere, or what `persisted` (see `to_json`) recorded.

    Persisted times are wall-clock: `t - wall_offset_s` puts them on the decision clock, and a
    time after `now` (the wall clock was stepped back since) counts as `now`. A recovery hold in
    progress goes on where it was; the upstreams a safety hold kept are kept again; upstreams
    the site file no longer has are ignored. Raises ValueError, naming the field, when
    `persisted` is not what `to_json` writes.
    """
    saved = _Persisted.parse(persisted or {})

    def mono(t: float | None) -> float | None:
        return None if t is None else min(now, t - wall_offset_s)

    ups = {}
    for u in params.upstreams:
        rec = saved.upstreams.get(u.name, _PersistedUpstream(TransitState.HEALTHY))
        candidate = rec.candidate or rec.state
        recovering = candidate.severity < rec.state.severity
        deg = Hysteresis(params.fall, params.rise)
        fail = Hysteresis(1, params.rise)  # its fall is in the look-back (module doc)
        # Hysteresis that agrees with the restored candidate: a restart neither condemns nor
        # forgives an upstream; one that was earning its way back goes on doing so.
        if candidate is not TransitState.HEALTHY:
            deg = deg.force(Health.DOWN)
        if candidate is TransitState.FAILED:
            fail = fail.force(Health.DOWN)
        since = mono(rec.recovery_since) if recovering else None
        ups[u.name] = UpstreamState(
            rec.state, deg, fail, HoldDown(params.recovery_hold_s, since),
            changed_at=mono(rec.changed_at),
        )
    sessions = {(u.name, f): SessionState.UNKNOWN for u in params.upstreams for f in u.families}
    budget = ActionBudget(
        params.max_actions_per_hour, HOUR_S, tuple(mono(t) for t in saved.action_times)
    )
    # The last plan's holds, as if just planned: the interlock keeps them first (no migration).
    held = {
        (name, fam): Announcement()
        for fam, names in saved.holds.items() for name in names
        if (name, fam) in sessions
    }
    state = State(params, ups, sessions, budget, plan=Plan(held))
    return replace(state, plan=plan(state))


def to_json(state: State, wall_offset_s: float = 0.0) -> dict:
    """What survives a restart: states, candidates and recovery holds, the action budget, the
    upstreams the safety holds keep. Times are `t + wall_offset_s` (the wall clock)."""

    def wall(t: float | None) -> float | None:
        return None if t is None else t + wall_offset_s

    holds = state.plan.holds if state.plan is not None else ()
    return {
        "upstreams": {
            name: {
                "state": u.state.value,
                "candidate": u.candidate.value,
                "recovery_since": wall(u.recovery.since),
                "changed_at": wall(u.changed_at),
            }
            for name, u in state.upstreams.items()
        },
        "action_times": [wall(t) for t in state.budget.times],
        "holds": {f"ipv{int(h.family)}": list(h.kept) for h in holds},
    }


@dataclass(frozen=True)
class _PersistedUpstream:
    state: TransitState
    candidate: TransitState | None = None
    recovery_since: float | None = None
    changed_at: float | None = None


@dataclass(frozen=True)
class _Persisted:
    """`to_json`'s output, checked field by field (a state file may be damaged or old)."""

    upstreams: Mapping[str, _PersistedUpstream]
    action_times: tuple[float, ...]
    holds: Mapping[Family, tuple[str, ...]]

    @classmethod
    def parse(cls, data: object) -> _Persisted:
        """Raises ValueError naming the first field that is not what `to_json` writes."""
        if not isinstance(data, Mapping):
            raise ValueError(f"expected an object, got {type(data).__name__}")
        ups = {}
        for name, rec in _mapping(data.get("upstreams", {}), "upstreams").items():
            where = f"upstreams.{name}"
            rec = _mapping(rec, where)
            ups[name] = _PersistedUpstream(
                _transit_state(rec.get("state"), f"{where}.state"),
                None if rec.get("candidate") is None
                else _transit_state(rec["candidate"], f"{where}.candidate"),
                _time(rec.get("recovery_since"), f"{where}.recovery_since", optional=True),
                _time(rec.get("changed_at"), f"{where}.changed_at", optional=True),
            )
        times = data.get("action_times", [])
        if not isinstance(times, list):
            raise ValueError(f"action_times: expected a list, got {type(times).__name__}")
        action_times = tuple(_time(t, f"action_times[{i}]") for i, t in enumerate(times))
        holds = {}
        for key, names in _mapping(data.get("holds", {}), "holds").items():
            fam = {"ipv4": Family.IPV4, "ipv6": Family.IPV6}.get(key)
            if fam is None:
                raise ValueError(f"holds.{key}: not ipv4 or ipv6")
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                raise ValueError(f"holds.{key}: expected a list of upstream names")
            holds[fam] = tuple(names)
        return cls(ups, action_times, holds)


def _mapping(value: object, where: str) -> Mapping:
    if not isinstance(value, Mapping):
        raise ValueError(f"{where}: expected an object, got {type(value).__name__}")
    return value


def _transit_state(value: object, where: str) -> TransitState:
    for s in TransitState:
        if value == s.value:
            return s
    raise ValueError(f"{where}: {value!r} is not one of {', '.join(s.value for s in TransitState)}")


def _time(value: object, where: str, optional: bool = False) -> float | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{where}: {value!r} is not a time in seconds")
    return float(value)


# --- actions --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Transition:
    upstream: str
    old: TransitState
    new: TransitState
    reason: str


@dataclass(frozen=True)
class LocalFault:
    active: bool


@dataclass(frozen=True)
class BudgetExhausted:
    """The action budget holds back a change: reported once until the change is no longer
    wanted or has been made (`State.held_back`)."""

    upstream: str
    wanted: TransitState


@dataclass(frozen=True, order=True)
class Announcement:
    """How one session announces our prefixes of its family. None (elsewhere) = withdrawn."""

    as_path: tuple[int, ...] = ()  # empty: ExaBGP's default, our ASN once
    communities: tuple[str, ...] = ()


@dataclass(frozen=True)
class SafetyHold:
    family: Family
    kept: tuple[str, ...]  # upstreams re-announced against their verdict


@dataclass(frozen=True)
class Plan:
    """Desired announcement per (upstream, family); the interlock has been applied."""

    desired: Mapping[tuple[str, Family], Announcement | None]
    holds: tuple[SafetyHold, ...] = ()

    def announcing(self, family: Family) -> list[str]:
        return sorted(u for (u, f), a in self.desired.items() if f == family and a is not None)


Action = Transition | LocalFault | BudgetExhausted | SafetyHold | Plan


def _treat(params: Params, up: UpstreamParams, treatment: Treatment | None) -> Announcement | None:
    base = tuple(up.communities)
    if treatment is None or treatment.action is TreatmentAction.ANNOUNCE:
        return Announcement((), base)
    if treatment.action is TreatmentAction.WITHDRAW:
        return None
    extra = tuple(c for c in treatment.communities if c not in base)
    if treatment.action is TreatmentAction.PREPEND:
        return Announcement((params.asn,) * (1 + treatment.prepend), base + extra)
    return Announcement((), base + extra)  # TreatmentAction.COMMUNITIES


def plan(state: State) -> Plan:
    """Desired announcements from the upstream states, with the safety interlock applied.

    Per family, with m = min_announcing_upstreams: at least m (or all of them, when fewer) of
    the sessions that are UP announce, and at least m (or all) of the sessions that are UP or
    UNKNOWN announce: the interlock holds whether an UNKNOWN session turns out up or down.
    An UNKNOWN session keeps whatever the previous plan announced through it.
    """
    params = state.params
    desired: dict[tuple[str, Family], Announcement | None] = {}
    for up in params.upstreams:
        level = state.upstreams[up.name].state
        treatment = {
            TransitState.HEALTHY: None,
            TransitState.DEGRADED: params.degraded,
            TransitState.FAILED: params.failed,
        }[level]
        for fam in up.families:
            desired[(up.name, fam)] = _treat(params, up, treatment)
    before = state.plan.desired if state.plan is not None else {}
    holds = []
    for fam in Family:
        carriers = [u for u in params.upstreams if fam in u.families]
        session = {u.name: state.sessions.get((u.name, fam), SessionState.UNKNOWN)
                   for u in carriers}
        announcing = [u.name for u in carriers if desired[(u.name, fam)] is not None]
        need_up = params.min_announcing_upstreams - sum(
            1 for n in announcing if session[n] is SessionState.UP)
        need_maybe_up = params.min_announcing_upstreams - sum(
            1 for n in announcing if session[n] is not SessionState.DOWN)
        # Withdrawn by their verdict, session up or unknown. The ones the last plan announced
        # come first (a hold does not move from one upstream to another while it lasts: that
        # would be a flap), then sessions known to be up, then the least bad: by state, by
        # measured excess loss, by name (stable).
        candidates = sorted(
            (u for u in carriers
             if desired[(u.name, fam)] is None and session[u.name] is not SessionState.DOWN),
            key=lambda u: (
                before.get((u.name, fam)) is None,
                session[u.name] is not SessionState.UP,
                state.upstreams[u.name].state.severity,
                state.upstreams[u.name].last.loss_excess,
                u.name,
            ),
        )
        kept = []
        for u in candidates:
            is_up = session[u.name] is SessionState.UP
            # An UNKNOWN session may be up and carrying our traffic: never withdraw on a guess.
            unknown_had_it = (session[u.name] is SessionState.UNKNOWN
                              and before.get((u.name, fam)) is not None)
            if not (unknown_had_it or need_maybe_up > 0 or (is_up and need_up > 0)):
                continue
            desired[(u.name, fam)] = _treat(params, u, params.degraded) or _treat(params, u, None)
            kept.append(u.name)
            need_maybe_up -= 1
            if is_up:
                need_up -= 1
        if kept:
            holds.append(SafetyHold(fam, tuple(kept)))
    return Plan(desired, tuple(holds))


# --- step -----------------------------------------------------------------------------------


def _transition(u: UpstreamState, new: TransitState, now: float) -> UpstreamState:
    if new not in ALLOWED[u.state]:
        raise ValueError(f"transition {u.state.name} -> {new.name} is not allowed")
    if new.severity < u.state.severity and not u.recovery.ready(now):
        raise ValueError(f"recovery {u.state.name} -> {new.name} before its hold")
    return replace(u, state=new, changed_at=now, recovery=HoldDown(u.recovery.hold_s))


def step(state: State, observation: Observation, now: float) -> tuple[State, list[Action]]:
    """Feed one observation; return the new state and what to do (the last action is the Plan).

    Raises ValueError for an observation about an unknown upstream or family.
    """
    actions: list[Action] = []
    if isinstance(observation, SessionChange):
        key = (observation.upstream, observation.family)
        if key not in state.sessions:
            raise ValueError(f"no session {observation.upstream}/IPv{int(observation.family)}")
        sessions = dict(state.sessions)
        sessions[key] = SessionState.UP if observation.up else SessionState.DOWN
        state = replace(state, sessions=sessions)
    elif isinstance(observation, SessionSummary):
        sessions = dict(state.sessions)
        for key, up in observation.up.items():
            if key not in sessions:
                raise ValueError(f"no session {key[0]}/IPv{int(key[1])}")
            if sessions[key] is SessionState.UNKNOWN:
                sessions[key] = SessionState.UP if up else SessionState.DOWN
        state = replace(state, sessions=sessions)
    elif isinstance(observation, ProbeStats):
        state, actions = _judge(state, observation, now)
    else:
        raise ValueError(f"unknown observation {observation!r}")
    new_plan = plan(state)
    state = replace(state, plan=new_plan)
    return state, [*actions, *new_plan.holds, new_plan]


def _judge(state: State, stats: ProbeStats, now: float) -> tuple[State, list[Action]]:
    params = state.params
    actions: list[Action] = []
    assessments = assess(params, stats)
    local = is_local_fault(params, assessments, stats)
    if local != state.local_fault:
        actions.append(LocalFault(local))
    ups = dict(state.upstreams)
    for name, a in assessments.items():
        ups[name] = replace(ups[name], last=a)
    if local:
        # Our own fault: freeze every verdict, restart every recovery hold.
        for name, u in ups.items():
            ups[name] = replace(u, recovery=HoldDown(u.recovery.hold_s))
        return replace(state, upstreams=ups, local_fault=True), actions
    budget = state.budget
    held_back: set[tuple[str, TransitState]] = set()
    for name in sorted(ups):
        u = ups[name]
        a = u.last
        if a.level is not None:
            u = replace(
                u,
                degraded=u.degraded.observe(a.level is TransitState.HEALTHY),
                failed=u.failed.observe(a.level is not TransitState.FAILED),
            )
        target = u.candidate
        better = target.severity < u.state.severity
        u = replace(u, recovery=u.recovery.update(better, now))
        if target is not u.state and (not better or u.recovery.ready(now)):
            if budget.available(now) < 1:
                held_back.add((name, target))
                if (name, target) not in state.held_back:  # once per episode, not per judgement
                    actions.append(BudgetExhausted(name, target))
            else:
                budget = budget.spend(now)
                reason = (
                    f"loss_excess={a.loss_excess:.3f} "
                    f"recent_loss_excess={a.recent_loss_excess:.3f} rtt_excess_s="
                    f"{'-' if a.rtt_excess_s is None else f'{a.rtt_excess_s:.4f}'} "
                    f"targets={a.targets}"
                )
                actions.append(Transition(name, u.state, target, reason))
                u = _transition(u, target, now)
        ups[name] = u
    return replace(
        state, upstreams=ups, budget=budget, local_fault=False, held_back=frozenset(held_back)
    ), actions
