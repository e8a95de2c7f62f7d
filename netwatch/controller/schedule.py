"""When the controller probes each (upstream, target) and when it judges: confirmation probing
for FAILED. Pure.

One `netwatch.core.pacing.Pacer` stream per (path, target). Its `fall` is the number of
losses in a row that make a path FAILED on their own (`failed_streak`: ceil(failed_loss x
recent_probes), 4 of FAILED's look-back of 5 with failed_loss 0.8). A stream that loses a
probe is probed again at once and at the confirmation pace (`confirm_interval_ms`) until it
answers or has lost that many in a row; the window gets every probe, confirmations included,
when its fate is known (its deadline), and

* the full judgement runs once per interval, on the probes' grid (`Due.GRID`), as before;
* an early one (`Due.EARLY`) runs in the wake-up in which some stream has just lost
  `failed_streak` probes in a row: the only moment a confirmation can have made a path
  FAILED. The decision takes from it nothing but FAILED (`ProbeStats.early`): DEGRADED's fall
  and every rise still count one judgement per interval.

So a quiet blackhole is FAILED after timeout + (streak - 1) x confirm (the lab: 0.2 + 3 x
0.04 s after the first lost probe) instead of after `streak` intervals, on the same evidence
(docs/controller.md: why the window's statistics are not biased by the extra samples). With
random loss the early judgement is rare (a stream loses `streak` in a row with p^streak per
episode), so judging stays at about once per interval.

    schedule = ProbeSchedule(cadence, interval_s, [(upstream, target), ...], window, now)
    for i in schedule.to_judge(now): schedule.judged(i, answer_read_by_now(i), now)
    for i in schedule.to_send(now): schedule.sent(i, now); send(i, schedule.wait(i))
    if (due := schedule.verdict_due(now)) is not None: judge(early=due is Due.EARLY)
    sleep until schedule.next_at()
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence

from netwatch.controller.params import Params
from netwatch.controller.verdict import ProbeWindow
from netwatch.core.pacing import SLACK_S, Cadence, Pacer


def failed_streak(params: Params) -> int:
    """The losses in a row, per (path, target), that reach FAILED's `failed_loss` over its
    look-back of `recent_probes` on their own: ceil(failed_loss x recent_probes), at least 1.
    (1e-9: 0.8 x 5 is meant to be 4, as in verdict._level.)"""
    recent = params.recent_probes
    return max(1, min(recent, math.ceil(params.failed_loss * recent - 1e-9)))


def cadence(params: Params, interval_s: float, timeout_s: float, confirm_s: float) -> Cadence:
    """The probes' Cadence: the confirmation pace bounded by the timeout, and FAILED's streak
    as the Pacer's fall."""
    return Cadence(interval_s, timeout_s, min(confirm_s, timeout_s), failed_streak(params))


class Due(enum.Enum):
    GRID = "grid"  # the judgement of every interval
    EARLY = "early"  # a stream has just lost FAILED's streak: FAILED only


class ProbeSchedule:
    """The Pacer of every (upstream, target) stream, the window it feeds and when the verdict
    is due (see the module doc). Times are the caller's monotonic clock."""

    def __init__(self, cadence: Cadence, interval_s: float,
                 streams: Sequence[tuple[str, str]], window: ProbeWindow, now: float):
        self.pacer = Pacer(cadence, len(streams), now)
        self.interval_s = interval_s
        self.window = window
        self._streams = list(streams)
        self._sent_at = [now] * len(streams)
        self._misses = [0] * len(streams)
        self._next_grid = now + interval_s
        self._condemned = False  # some stream lost the streak since the last verdict

    def to_judge(self, now: float) -> list[int]:
        return self.pacer.to_judge(now)

    def to_send(self, now: float) -> list[int]:
        return self.pacer.to_send(now)

    def wait(self, i: int) -> float:
        """How long stream i's probe in flight is given (its confirmations: less)."""
        return self.pacer.wait(i)

    def sent(self, i: int, now: float) -> None:
        self.pacer.sent(i, now)
        self._sent_at[i] = now

    def judged(self, i: int, rtt_s: float | None, now: float) -> None:
        """Stream i's probe in flight has reached its deadline: answered in `rtt_s`, or lost.
        It goes into the window now, answered or not: every probe is recorded once its fate is
        known, so which probes the window holds does not depend on their outcome."""
        self.pacer.judged(i, rtt_s, now)
        upstream, target = self._streams[i]
        self.window.record(upstream, target, self._sent_at[i], rtt_s)
        if rtt_s is not None:
            self._misses[i] = 0
            return
        self._misses[i] += 1
        if self._misses[i] == self.pacer.cadence.fall:
            self._condemned = True

    def verdict_due(self, now: float) -> Due | None:
        """Which judgement is due now, if any (GRID wins over EARLY: it takes everything)."""
        if now + SLACK_S >= self._next_grid:
            # The next grid slot after now: a stalled loop skips judgements, it does not
            # run them in a burst.
            missed = math.floor((now + SLACK_S - self._next_grid) / self.interval_s)
            self._next_grid += (missed + 1) * self.interval_s
            self._condemned = False
            return Due.GRID
        if self._condemned:
            self._condemned = False
            return Due.EARLY
        return None

    def next_at(self) -> float:
        """When something is next due: a send, a probe's deadline or the grid's judgement."""
        return min(self.pacer.next_at(), self._next_grid)
