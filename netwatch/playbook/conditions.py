"""A wait's or a check's condition judged on a daemon's status. Pure.

`evaluate(condition, status, now)` takes a condition whose placeholders are filled in
(`netwatch.playbook.plan`) and the status a daemon answered (the shapes of
`netwatch.control.protocol`: AgentStatus, ControllerStatus), or None when it did not answer,
and returns an `Observation`: whether the condition holds, and what was seen, in words an
operator reads in the progress line and the trail ("t1: 198.51.100.0/24 graceful_shutdown").

A status that lacks a key the condition needs (an older daemon) never holds: the observation
says which key is missing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from netwatch.control.protocol import format_duration
from netwatch.playbook.schema import Condition


@dataclass(frozen=True)
class Observation:
    ok: bool
    text: str


def describe(condition: Condition) -> str:
    """The condition in words: `t1 announced: false`, `uplink secondary active: true`."""
    c = condition
    subject = c.subject
    if subject == "upstream":
        test = next(t for t in Condition.UPSTREAM_TESTS if getattr(c, t) is not None)
        family = f" ({c.family})" if c.family else ""
        return f"{c.upstream} {test}: {_word(getattr(c, test))}{family}"
    if subject == "uplink":
        test = next(t for t in Condition.UPLINK_TESTS if getattr(c, t) is not None)
        return f"uplink {c.uplink} {test}: {_word(getattr(c, test))}"
    if subject == "no_override_expiring_within":
        return (f"no {c.source} override expiring within "
                f"{_seconds(c.no_override_expiring_within)}")
    if subject == "answers":
        return f"the {c.answers} answers"
    return f"{subject}: {_word(getattr(c, subject))}"


def _word(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def _seconds(value: Any) -> str:
    return format_duration(float(value)) if isinstance(value, int | float) else str(value)


def evaluate(condition: Condition, status: Mapping[str, Any] | None, now: float | None = None,
             error: str | None = None) -> Observation:
    """Whether `condition` holds on `status` (None: the daemon did not answer, `error` says
    why). `now` is wall-clock seconds for override expiries (default: the status's own)."""
    c = condition
    if c.answers is not None:
        if status is None:
            return Observation(False, f"{c.answers} does not answer: {error or 'no status'}")
        return Observation(True, f"{c.answers} answers (version {status.get('version', '?')})")
    if status is None:
        return Observation(False, f"{c.source} does not answer: {error or 'no status'}")
    try:
        return _evaluate(c, status, now)
    except _Missing as exc:
        return Observation(False, f"the {c.source}'s status has no {exc}")


class _Missing(Exception):
    """A key the condition needs is not in the status."""


def _get(data: Mapping[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    value = data.get(key) if isinstance(data, Mapping) else None
    if not isinstance(value, kind):
        raise _Missing(key)
    return value


def _evaluate(c: Condition, status: Mapping[str, Any], now: float | None) -> Observation:
    subject = c.subject
    if subject == "upstream":
        return _upstream(c, status)
    if subject == "uplink":
        return _uplink(c, status)
    if subject == "local_fault":
        seen = _get(status, "local_fault", bool)
        return Observation(seen == c.local_fault, f"local_fault: {_word(seen)}")
    if subject == "budget_exhausted":
        budget = _get(status, "budget", dict)
        seen = _get(budget, "exhausted", bool)
        used = budget.get("used", "?")
        limit = budget.get("max_actions_per_hour", "?")
        return Observation(seen == c.budget_exhausted,
                           f"budget_exhausted: {_word(seen)} ({used} of {limit} actions this hour)")
    if subject == "safety_hold":
        holds = _get(status, "safety_holds", list)
        text = "; ".join(
            f"{h.get('family', '?')}: kept {', '.join(map(str, h.get('kept', [])))}"
            for h in holds if isinstance(h, Mapping)
        ) or "none"
        return Observation(bool(holds) == c.safety_hold, f"safety holds: {text}")
    if subject == "no_override_expiring_within":
        return _overrides(c, status, now)
    raise AssertionError(f"condition subject {subject!r} has no evaluation")


def _upstream(c: Condition, status: Mapping[str, Any]) -> Observation:
    upstreams = _get(status, "upstreams", list)
    found = [u for u in upstreams if isinstance(u, Mapping) and u.get("name") == c.upstream]
    if not found:
        known = ", ".join(str(u.get("name")) for u in upstreams if isinstance(u, Mapping))
        return Observation(False, f"no upstream {c.upstream} (known: {known or 'none'})")
    u = found[0]
    if c.state is not None:
        seen = _get(u, "state", str)
        reason = f" ({u['reason']})" if isinstance(u.get("reason"), str) and u["reason"] else ""
        return Observation(seen == c.state, f"{c.upstream} is {seen}{reason}")
    if c.session is not None:
        sessions = _get(u, "sessions", dict)
        chosen = {f: s for f, s in sessions.items() if c.family in (None, f)}
        if not chosen:
            return Observation(False, f"{c.upstream} has no {c.family or ''} session".replace(
                "  ", " "))
        text = ", ".join(f"{f} {s}" for f, s in sorted(chosen.items()))
        return Observation(all(s == c.session for s in chosen.values()),
                           f"{c.upstream} sessions: {text}")
    if c.announced is not None:
        announcements = [
            a for a in _get(u, "announcements", list)
            if isinstance(a, Mapping) and c.family in (None, a.get("family"))
        ]
        if not announcements:
            return Observation(False, f"{c.upstream}: no announcement listed"
                                      + (f" for {c.family}" if c.family else ""))
        modes = [str(a.get("mode")) for a in announcements]
        text = ", ".join(f"{a.get('prefix')} {m}" for a, m in zip(announcements, modes,
                                                                  strict=True))
        if c.announced is True:
            ok = all(m != "withdrawn" for m in modes)
        elif c.announced is False:
            ok = all(m == "withdrawn" for m in modes)
        else:
            ok = all(m == c.announced for m in modes)
        return Observation(ok, f"{c.upstream}: {text}")
    seen = _get(u, "egress", bool)
    return Observation(seen == c.egress, f"{c.upstream} egress: {_word(seen)}")


def _uplink(c: Condition, status: Mapping[str, Any]) -> Observation:
    uplinks = _get(status, "uplinks", list)
    found = [u for u in uplinks if isinstance(u, Mapping) and u.get("role") == c.uplink]
    if not found:
        return Observation(False, f"no uplink {c.uplink} in the agent's status")
    u = found[0]
    if c.state is not None:
        seen = _get(u, "state", str)
        reason = f" ({u['reason']})" if isinstance(u.get("reason"), str) and u["reason"] else ""
        return Observation(seen == c.state, f"uplink {c.uplink} is {seen}{reason}")
    seen = _get(u, "active", bool)
    mode = status.get("mode")
    return Observation(seen == c.active, f"uplink {c.uplink} active: {_word(seen)}"
                                         + (f" (mode {mode})" if mode else ""))


def _overrides(c: Condition, status: Mapping[str, Any], now: float | None) -> Observation:
    overrides = _get(status, "overrides", list)
    clock = now if now is not None else status.get("now")
    if not isinstance(clock, int | float):
        raise _Missing("now")
    window = float(c.no_override_expiring_within)
    parts, ok = [], True
    for lease in overrides:
        if not isinstance(lease, Mapping) or not isinstance(lease.get("expires_at"), int | float):
            continue
        left = lease["expires_at"] - clock
        ok = ok and left > window
        parts.append(f"{lease.get('id')} {lease.get('kind')} {lease.get('target')} "
                     f"expires in {format_duration(left)} ({lease.get('reason', '')})")
    return Observation(ok, "; ".join(parts) or "no overrides")
