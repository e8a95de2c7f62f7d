"""Hysteresis, hold-down and action budgets: the time-aware building blocks. Pure.

Every function takes `now` (seconds, any monotonic origin) from the caller; nothing here
reads a clock, so tests drive it with a fake one.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from netwatch.core.vocabulary import Health


@dataclass(frozen=True)
class Hysteresis:
    """Rise/fall hysteresis as one saturating counter (the keepalived way).

    `score` counts the current run of observations: +n after n good ones in a row, -n after n
    bad ones, saturating at +rise and -fall. Health becomes UP when the score reaches +rise and
    DOWN when it reaches -fall, and stays put in between, so "how close to flipping" is always
    one number and one contradicting observation restarts the count.
    """

    fall: int
    rise: int
    health: Health = Health.UNKNOWN
    score: int = 0

    def __post_init__(self) -> None:
        if self.fall < 1 or self.rise < 1:
            raise ValueError(f"fall and rise must be >= 1, got fall={self.fall} rise={self.rise}")

    def observe(self, ok: bool) -> Hysteresis:
        """Return the hysteresis after one observation (`ok` True = good)."""
        score = max(self.score, 0) + 1 if ok else min(self.score, 0) - 1
        score = max(-self.fall, min(self.rise, score))
        health = self.health
        if score >= self.rise:
            health = Health.UP
        elif score <= -self.fall:
            health = Health.DOWN
        return replace(self, health=health, score=score)

    def force(self, health: Health) -> Hysteresis:
        """Set the state outright for hard facts (carrier lost, BGP session down)."""
        score = {Health.UP: self.rise, Health.DOWN: -self.fall, Health.UNKNOWN: 0}[health]
        return replace(self, health=health, score=score)


@dataclass(frozen=True)
class HoldDown:
    """ "Stable for at least `hold_s`": tracks since when a thing has been continuously good.

    `since` is None while the thing is bad; `ready(now)` is true once it has been good for
    `hold_s` seconds without interruption.
    """

    hold_s: float
    since: float | None = None

    def update(self, good: bool, now: float) -> HoldDown:
        if not good:
            return replace(self, since=None) if self.since is not None else self
        return self if self.since is not None else replace(self, since=now)

    def ready(self, now: float) -> bool:
        return self.since is not None and now - self.since >= self.hold_s


@dataclass(frozen=True)
class ActionBudget:
    """Flap dampening: at most `max_actions` automatic actions in any `window_s` seconds."""

    max_actions: int
    window_s: float
    times: tuple[float, ...] = ()

    def _recent(self, now: float) -> tuple[float, ...]:
        return tuple(t for t in self.times if now - t < self.window_s)

    def available(self, now: float) -> int:
        return max(0, self.max_actions - len(self._recent(now)))

    def spend(self, now: float, count: int = 1) -> ActionBudget:
        """Record `count` actions at `now`. Raises ValueError if the budget does not allow it."""
        if count > self.available(now):
            raise ValueError(f"action budget exhausted: {count} > {self.available(now)} left")
        return replace(self, times=self._recent(now) + (now,) * count)
