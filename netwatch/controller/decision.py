"""The transit decision: `step(state, observation, now) -> (state, actions)`. Pure.

Observations are `ProbeStats` (a probe window's statistics, see `netwatch.controller.verdict`),
`SessionChange` (a BGP session of one family went up or down) and `SessionSummary` (every
session at once, ExaBGP's answer to `show neighbor json`).

* Each upstream is HEALTHY, DEGRADED or FAILED (the raw verdict: `verdict.assess`). When every
  upstream looks bad at once the fault is ours: the verdicts freeze, no BGP action is taken,
  `LocalFault` says so.
* Two saturating counters (netwatch.core.hysteresis.Hysteresis) give `fall`/`rise` hysteresis
  for "degraded or worse" and "failed" (FAILED's fall is its look-back of recent probes, so its
  counter falls on one bad judgement and still needs `rise` good ones); a better state is
  taken only after it has held for `recovery_hold_s` (HoldDown); at most
  `max_actions_per_hour` state changes (ActionBudget), then the controller holds and reports
  `BudgetExhausted` once per episode.
* Every step ends with the plan (`netwatch.controller.plan`): the announcements, with the
  safety interlock applied, and its safety holds.

`now` is any monotonic clock (the controller passes time.monotonic(): an NTP step must not
shorten a recovery hold); `netwatch.controller.persistence` converts the persisted times to
and from the wall clock, so holds survive a restart.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

from netwatch.controller.params import HOUR_S, Params, SessionState, TransitState
from netwatch.controller.plan import (
    NO_OVERRIDES,
    Drain,
    Overrides,
    Plan,
    SafetyHold,
    make_plan,
)
from netwatch.controller.verdict import Assessment, ProbeStats, assess, is_local_fault
from netwatch.core.hysteresis import ActionBudget, HoldDown, Hysteresis
from netwatch.core.vocabulary import Family, Health, TransitionError


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


@dataclass(frozen=True)
class OperatorOverrides:
    """The operators' overrides changed (a lease added, ended or expired, a drain's graceful
    phase over): plan with them from now on. `restored` are the upstreams an operator restored
    just now: one earning its way back from a bad state skips the rest of its recovery hold
    (an operator's restore does not wait for the automatic one); it still needs its probes'
    `rise` (the hysteresis must point at the better state)."""

    overrides: Overrides
    restored: frozenset[str] = frozenset()


Observation = ProbeStats | SessionChange | SessionSummary | OperatorOverrides




@dataclass(frozen=True)
class UpstreamState:
    state: TransitState
    degraded: Hysteresis  # DOWN = degraded or worse
    failed: Hysteresis  # DOWN = failed
    recovery: HoldDown  # since when the hysteresis has pointed at a better state
    last: Assessment = Assessment(None)  # noqa: RUF009 (frozen: safe to share)
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
    overrides: Overrides = NO_OVERRIDES  # what operators force (leases of the control API)

    @property
    def budget_exhausted(self) -> bool:
        return bool(self.held_back)



def initial_state(params: Params, *, now: float = 0.0) -> State:
    """The state at start with nothing persisted: every upstream HEALTHY, every session
    UNKNOWN (possibly up), the whole action budget. `netwatch.controller.persistence.restore`
    starts from what the last run saved instead."""
    ups = {
        u.name: UpstreamState(
            TransitState.HEALTHY, Hysteresis(params.fall, params.rise), Hysteresis(1, params.rise),
            HoldDown(params.recovery_hold_s),
        )
        for u in params.upstreams
    }
    sessions = {(u.name, f): SessionState.UNKNOWN for u in params.upstreams for f in u.families}
    state = State(params, ups, sessions, ActionBudget(params.max_actions_per_hour, HOUR_S))
    return replace(state, plan=plan_of(state))


def plan_of(state: State) -> Plan:
    """The plan for `state` (its upstreams' states and sessions, its last plan)."""
    return make_plan(
        state.params,
        {name: u.state for name, u in state.upstreams.items()},
        {name: u.last.loss_excess for name, u in state.upstreams.items()},
        state.sessions,
        state.plan,
        state.overrides,
    )


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



Action = Transition | LocalFault | BudgetExhausted | SafetyHold | Plan


def _transition(
    u: UpstreamState, new: TransitState, now: float, operator: bool = False
) -> UpstreamState:
    """The one way an upstream changes state. Any state may get worse at once; it may get
    better only once its recovery hold has been served, or at an operator's restore. Raises
    TransitionError otherwise, and for a "change" to the same state."""
    if new is u.state:
        raise TransitionError(f"transition {u.state.name} -> {new.name}: no change")
    if new.severity < u.state.severity and not (operator or u.recovery.ready(now)):
        raise TransitionError(f"recovery {u.state.name} -> {new.name} before its hold")
    return replace(u, state=new, changed_at=now, recovery=HoldDown(u.recovery.hold_s))


def step(state: State, observation: Observation, now: float) -> tuple[State, list[Action]]:
    """Feed one observation; return the new state and what to do (the last action is the Plan).

    Raises ValueError for an observation about an unknown upstream or family, and
    TransitionError for a state change the rules forbid (a bug).
    """
    actions: list[Action] = []
    if isinstance(observation, SessionChange):
        key = (observation.upstream, observation.family)
        if key not in state.sessions:
            raise ValueError(f"no session {observation.upstream}/{observation.family.label}")
        sessions = dict(state.sessions)
        sessions[key] = SessionState.UP if observation.up else SessionState.DOWN
        state = replace(state, sessions=sessions)
    elif isinstance(observation, SessionSummary):
        sessions = dict(state.sessions)
        for key, up in observation.up.items():
            if key not in sessions:
                raise ValueError(f"no session {key[0]}/{Family(key[1]).label}")
            if sessions[key] is SessionState.UNKNOWN:
                sessions[key] = SessionState.UP if up else SessionState.DOWN
        state = replace(state, sessions=sessions)
    elif isinstance(observation, ProbeStats):
        state, actions = _judge(state, observation, now)
    elif isinstance(observation, OperatorOverrides):
        state, actions = _operator(state, observation, now)
    else:
        raise ValueError(f"unknown observation {observation!r}")
    new_plan = plan_of(state)
    state = replace(state, plan=new_plan)
    return state, [*actions, *new_plan.holds, new_plan]


def _judge(state: State, stats: ProbeStats, now: float) -> tuple[State, list[Action]]:
    params = state.params
    actions: list[Action] = []
    assessments = assess(params, stats)
    local = is_local_fault(params, assessments, stats)
    if stats.early and (local or state.local_fault):
        return state, []  # the all-bad guard is the interval's judgement's business
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
    held_back: set[tuple[str, TransitState]] = set(state.held_back) if stats.early else set()
    for name in sorted(ups):
        u = ups[name]
        a = u.last
        if stats.early:
            # An early look (a confirmation just completed) may only condemn: DEGRADED's
            # fall and every rise count the judgements of the interval, as without it.
            if a.level is not TransitState.FAILED or u.state is TransitState.FAILED:
                ups[name] = replace(u, last=state.upstreams[name].last)
                continue
            held_back.discard((name, TransitState.FAILED))
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


def _operator(state: State, obs: OperatorOverrides, now: float) -> tuple[State, list[Action]]:
    """New overrides; restored upstreams skip what is left of their recovery hold."""
    unknown = [n for n in (*obs.overrides.drains, *obs.overrides.prepends, *obs.restored)
               if n not in state.upstreams]
    if unknown:
        raise ValueError(f"no upstream {unknown[0]}")
    actions: list[Action] = []
    ups = dict(state.upstreams)
    for name in sorted(obs.restored):
        u = ups[name]
        if u.candidate.severity < u.state.severity:
            actions.append(Transition(name, u.state, u.candidate, "operator restore"))
            ups[name] = _transition(u, u.candidate, now, operator=True)
    return replace(state, upstreams=ups, overrides=obs.overrides), actions


def drain_refusal(state: State, upstream: str) -> str | None:
    """Why draining `upstream` (not forced) would break the interlock, or None when it may go.

    It would when the plan with that upstream withdrawn has to keep it announced (a safety
    hold) for some family: fewer than `min_announcing_upstreams` others would announce."""
    if upstream not in state.upstreams:
        raise ValueError(f"no upstream {upstream}")
    drains = {**state.overrides.drains, upstream: Drain(withdraw=True)}
    overrides = replace(state.overrides, drains=drains)
    plan = plan_of(replace(state, overrides=overrides))
    for hold in plan.holds:
        if upstream in hold.kept:
            others = [n for n in plan.announcing(hold.family) if n != upstream]
            return (f"draining {upstream} would leave {hold.family.label} announced through "
                    f"{len(others)} other upstream(s) ({', '.join(others) or 'none'}), fewer "
                    f"than min_announcing_upstreams ({state.params.min_announcing_upstreams}); "
                    "--force overrides the interlock")
    return None


def what_if(
    state: State,
    failed: frozenset[str] = frozenset(),
    degraded: frozenset[str] = frozenset(),
    sessions_down: frozenset[str] = frozenset(),
) -> Plan:
    """The plan if these upstreams were FAILED / DEGRADED and these upstreams' sessions down,
    now, on top of `state` (its other states, sessions and overrides): `netwatch simulate`.
    Touches nothing; hysteresis and holds are skipped (the picture is taken as settled)."""
    unknown = sorted((failed | degraded | sessions_down) - set(state.upstreams))
    if unknown:
        raise ValueError(f"no upstream {unknown[0]}")
    ups = {
        name: replace(u, state=TransitState.FAILED if name in failed
                      else TransitState.DEGRADED if name in degraded else u.state)
        for name, u in state.upstreams.items()
    }
    sessions = {key: SessionState.DOWN if key[0] in sessions_down else s
                for key, s in state.sessions.items()}
    return plan_of(replace(state, upstreams=ups, sessions=sessions))
