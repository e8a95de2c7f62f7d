"""What of the transit decision survives a restart, and how it comes back. Pure.

`to_json(state, wall_offset_s)` is what the controller writes to its state file: states,
candidates and recovery holds, the action budget, the upstreams the safety holds keep.
`restore(params, persisted, now, wall_offset_s)` is the state at start from it. Times are
stored on the wall clock (wall = monotonic + offset) and brought back onto the decision's
monotonic clock, so a recovery hold goes on where it was after a restart.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace

from netwatch.controller.decision import State, UpstreamState, plan_of
from netwatch.controller.params import HOUR_S, Params, SessionState, TransitState
from netwatch.controller.plan import Announcement, Plan
from netwatch.core.hysteresis import ActionBudget, HoldDown, Hysteresis
from netwatch.core.vocabulary import Family, Health


def restore(
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
    return replace(state, plan=plan_of(state))


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
        "holds": {h.family.label: list(h.kept) for h in holds},
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
            try:
                fam = Family.from_label(key)
            except ValueError:
                raise ValueError(f"holds.{key}: not ipv4 or ipv6") from None
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
    try:
        ok = not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value)
    except OverflowError:  # an integer of hundreds of digits
        ok = False
    if not ok:
        raise ValueError(f"{where}: {str(value)[:40]!r} is not a time in seconds")
    return float(value)

