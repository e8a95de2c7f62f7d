"""What of the transit decision survives a restart, and how it comes back. Pure.

`to_json(state, saved_at=now, boot_id=...)` is what the controller writes to its state file:
states, candidates and recovery holds, the action budget, the upstreams the safety holds
keep. `restore(params, persisted, now=..., boot_id=...)` is the state at start from it. Times
are stored on the decision clock (CLOCK_MONOTONIC, which every process of one boot shares and
no one steps), never on the wall clock: a wall-clock step across a restart used to shorten a
recovery hold or empty the action budget.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace

from netwatch.controller.decision import State, UpstreamState, plan_of
from netwatch.controller.params import HOUR_S, Params, SessionState, TransitState
from netwatch.controller.plan import Announcement, Plan, SafetyHold
from netwatch.core.hysteresis import ActionBudget, HoldDown, Hysteresis
from netwatch.core.vocabulary import Family, Health


def restore(
    params: Params, persisted: Mapping | None = None, *, now: float = 0.0,
    boot_id: str | None = None,
) -> State:
    """The state at start: HEALTHY everywhere, or what `persisted` (see `to_json`) recorded.

    Persisted times are on the decision clock (CLOCK_MONOTONIC: one per boot, shared by every
    process, never stepped). Saved in this boot (`boot_id` matches), they are used as they are,
    so a recovery hold counts the time the controller was down and a wall-clock step changes
    nothing. Saved in another boot (or by an older netwatch), every time moves forward by
    `now - saved_at`: the downtime counts as nothing, so a hold resumes where it was at the
    last save and the action budget is not refilled by a reboot (the safe direction). A time
    after `now` counts as `now`. The upstreams a safety hold kept are kept again; upstreams
    the site file no longer has are ignored. Raises ValueError, naming the field, when
    `persisted` is not what `to_json` writes.
    """
    saved = _Persisted.parse(persisted or {})
    if saved.boot_id is not None and saved.boot_id == boot_id:
        shift = 0.0
    else:
        times = [t for t in (*saved.action_times, *(
            v for rec in saved.upstreams.values() for v in (rec.recovery_since, rec.changed_at)
        )) if t is not None]
        latest = saved.saved_at if saved.saved_at is not None else max(times, default=now)
        shift = now - latest

    def mono(t: float | None) -> float | None:
        return None if t is None else min(now, t + shift)

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
    # The last plan's holds, as if just planned: the interlock keeps them first (no migration)
    # and an UNKNOWN session keeps the announcement it had.
    kept = {fam: tuple(n for n in names if (n, fam) in sessions)
            for fam, names in saved.holds.items()}
    held = {(name, fam): Announcement() for fam, names in kept.items() for name in names}
    holds = tuple(SafetyHold(fam, names) for fam, names in sorted(kept.items()) if names)
    state = State(params, ups, sessions, budget, plan=Plan(held, holds))
    return replace(state, plan=plan_of(state))


def to_json(
    state: State, *, saved_at: float | None = None, boot_id: str | None = None
) -> dict:
    """What survives a restart: states, candidates and recovery holds, the action budget, the
    upstreams the safety holds keep, on the decision clock; with `saved_at` (the decision
    clock's now) and `boot_id` when written to disk (see `restore`). Without them the result
    changes only when the state does: the daemon compares it to know when to save."""

    holds = state.plan.holds if state.plan is not None else ()
    stamp = {} if saved_at is None else {"saved_at": saved_at, "boot_id": boot_id}
    return {
        **stamp,
        "upstreams": {
            name: {
                "state": u.state.value,
                "candidate": u.candidate.value,
                "recovery_since": u.recovery.since,
                "changed_at": u.changed_at,
            }
            for name, u in state.upstreams.items()
        },
        "action_times": list(state.budget.times),
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
    saved_at: float | None = None
    boot_id: str | None = None

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
        boot = data.get("boot_id")
        if boot is not None and not isinstance(boot, str):
            raise ValueError(f"boot_id: expected a string, got {type(boot).__name__}")
        return cls(ups, action_times, holds,
                   _time(data.get("saved_at"), "saved_at", optional=True), boot)


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

