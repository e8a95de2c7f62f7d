"""The verdict on one probe window: how bad each upstream looks against the others. Pure.

* `ProbeWindow` keeps every probe's result per (upstream, target) for `window_s`; its
  `stats(now)` are the observation the decision takes (`ProbeStats`).
* `assess` gives each upstream a raw level (HEALTHY, DEGRADED, FAILED) before hysteresis. A
  target counts against an upstream only when at least one *other* upstream reaches it (a dead
  target is not a dead provider), and the upstream is compared with the median of the other
  upstreams that reach that target (so three blackholed providers out of four do not become
  "the norm"). At least `min_targets` such targets are needed for a verdict (quorum).
* DEGRADED is judged on the whole window (loss and RTT excess). FAILED is judged on the most
  recent probes: the last `Params.recent_probes` (max(fall, 5)) probes of each path, compared
  like the window with the other upstreams' probes over the same time (`_recent_excess`).
  That look-back of consecutive probes *is* the fall hysteresis of FAILED. With the lab
  policy (interval 200 ms, failed_loss 0.8, confirmations) a blackhole is FAILED once 4
  probes per path were lost, ~0.4 s. A path losing 51 % of its probes (the lab's `loss 30`,
  both ways) reaches 0.8 over 20 targets x 5 probes with p ~ 1e-9 per judgement: it stays
  DEGRADED.
* `is_local_fault`: every upstream with samples (at least 2 of them) loses at least the
  degraded loss: the fault is ours, and the decision freezes.
"""

from __future__ import annotations

import statistics
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from netwatch.controller.params import Params, TransitState

REACHABLE_LOSS = 0.5  # a target "is reachable" through an upstream below this loss ratio
MIN_SAMPLES = 3  # samples per (upstream, target) in the window before the pair counts


@dataclass(frozen=True)
class PathStats:
    """One (upstream, target) over the window: probes answered or lost, median RTT."""

    sent: int
    lost: int
    rtt_s: float | None  # median RTT of the answered probes, None when none answered
    recent_sent: int = 0  # the path's latest probes (Params.recent_probes); 0: use the window
    recent_lost: int = 0
    # Those latest probes as (sent at, RTT or None if lost), oldest first; () when their
    # times are unknown.
    recent_probes: Sequence[tuple[float, float | None]] = ()

    @property
    def loss(self) -> float:
        return self.lost / self.sent if self.sent else 1.0

    @property
    def recent_loss(self) -> float:
        if not self.recent_sent:
            return self.loss
        return self.recent_lost / self.recent_sent

    @property
    def first_recent_loss_at(self) -> float | None:
        """When the oldest lost probe of the latest ones was sent (None: none lost, or the
        times are unknown)."""
        if not self.recent_lost:
            return None
        return next((at for at, rtt in self.recent_probes if rtt is None), None)

    @property
    def last_sent_at(self) -> float | None:
        """When the latest probe whose fate is known was sent (None: times unknown)."""
        return self.recent_probes[-1][0] if self.recent_probes else None

    def loss_since(self, at: float) -> float:
        """The loss of the latest probes sent at or after `at` (the recent loss when none
        was, or the times are unknown)."""
        sent = lost = 0
        for sent_at, rtt in self.recent_probes:
            if sent_at >= at:
                sent += 1
                lost += rtt is None
        return lost / sent if sent else self.recent_loss


@dataclass(frozen=True)
class ProbeStats:
    """The window's statistics: {(upstream name, target label): PathStats}. `early`: taken
    between two judgements of the interval because a confirmation completed (controller/
    schedule.py); the decision takes only FAILED from it."""

    paths: Mapping[tuple[str, str], PathStats]
    early: bool = False


class ProbeWindow:
    """Rolling window of probe results per (upstream, target). Pure: `now` is passed in.

    Only probes whose fate is known count: those sent at least `settle_s` (the probe timeout)
    ago, over the `window_s` before that. An answered probe is recorded at once but a lost one
    only when its timeout expires, so a window that ended at `now` held the recent answers but
    not the recent losses: loss was under-counted by about timeout/window (a 1 s timeout in a
    2 s window halved it). `recent` is how many of each path's latest settled probes (by send
    time) `PathStats.recent_*` count.
    """

    def __init__(self, window_s: float, recent: int = MIN_SAMPLES, settle_s: float = 0.0):
        if recent < 1:
            raise ValueError(f"recent must be >= 1, got {recent}")
        if not 0 <= settle_s < window_s:
            raise ValueError(f"settle_s must be in [0, window_s), got {settle_s}")
        self.window_s = window_s
        self.recent = recent
        self.settle_s = settle_s
        self._samples: dict[tuple[str, str], deque[tuple[float, float | None]]] = {}
        self._unordered: set[tuple[str, str]] = set()  # paths recorded out of sending order

    def record(self, upstream: str, target: str, sent_at: float, rtt_s: float | None) -> None:
        key = (upstream, target)
        samples = self._samples.get(key)
        if samples is None:
            samples = self._samples[key] = deque()
        elif sent_at < samples[-1][0]:
            self._unordered.add(key)
        samples.append((sent_at, rtt_s))

    def stats(self, now: float) -> ProbeStats:
        paths = {}
        settled_at = now - self.settle_s
        for key, samples in self._samples.items():
            # Recorded in order of fate, not of sending: drop the head only when it is old.
            while samples and settled_at - samples[0][0] > self.window_s:
                samples.popleft()
            if (not self.settle_s and key not in self._unordered and samples
                    and samples[-1][0] <= now):
                # Recorded at their fate in sending order (the controller's schedule: one
                # probe in flight per path): every sample left is in the window, sorted.
                settled = list(samples)
            else:
                settled = sorted(
                    (s for s in samples if 0 <= settled_at - s[0] <= self.window_s),
                    key=lambda s: s[0],
                )
            if not settled:
                continue
            rtts = [r for _, r in settled if r is not None]
            latest = settled[-self.recent :]
            paths[key] = PathStats(
                len(settled), len(settled) - len(rtts), statistics.median(rtts) if rtts else None,
                len(latest), sum(1 for _, r in latest if r is None), latest,
            )
        return ProbeStats(paths)


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
            excess = _recent_excess(mine, others)
            if excess is not None:
                recent.append(excess)
            other_rtts = [ps.rtt_s for ps in others if ps.rtt_s is not None]
            if mine.rtt_s is not None and other_rtts:
                rtt_deltas.append(mine.rtt_s - statistics.median(other_rtts))
        loss_abs = statistics.fmean(absolute) if absolute else 0.0
        if len(losses) < params.min_targets:
            result[name] = Assessment(None, targets=len(losses), loss=loss_abs)
            continue
        loss_excess = statistics.fmean(losses)
        # No early verdict on the targets whose other upstreams have not yet been probed
        # since our losses began: too few of them, and FAILED waits for their probes.
        recent_excess = statistics.fmean(recent) if len(recent) >= params.min_targets else 0.0
        rtt_excess = statistics.median(rtt_deltas) if rtt_deltas else None
        level = _level(params, loss_excess, recent_excess, rtt_excess)
        result[name] = Assessment(
            level, loss_excess, rtt_excess, len(losses), loss_abs, recent_excess
        )
    return result


def _recent_excess(mine: PathStats, others: list[PathStats]) -> float | None:
    """FAILED's input on one target: our latest probes' loss minus the other upstreams' over
    the same time, or None while no other upstream has a probe sent since our first loss
    whose fate is known (a fault common to all would be judged on our probes alone).

    Same time, not the same count: streams need not probe at the same instant (the pacer
    keeps them on one grid, but a confirmation or a late send moves one for a slot, and they
    once drifted tens of ms apart), and confirmations pack several of a path's probes into
    one interval. Compared with the others' last N probes, a path whose probes happened to
    leave first after a fault common to every upstream looked 0.8 worse for the ~0.2 s until
    the others' probes since the fault were judged (the lab: 9 of 52 runs withdrew one).
    So the others count only from our oldest latest probe on, and only once they have a
    probe since our first loss to show how the target looked through them then.
    """
    first_loss = mine.first_recent_loss_at
    if first_loss is None:  # nothing lost (or times unknown): the counts compare
        return mine.recent_loss - statistics.median(ps.recent_loss for ps in others)
    since = mine.recent_probes[0][0]
    witnesses = [ps.loss_since(since) for ps in others
                 if (ps.last_sent_at is None or ps.last_sent_at >= first_loss)]
    if not witnesses:
        return None
    return mine.recent_loss - statistics.median(witnesses)


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
    not probed (its prober failed) would make the guard impossible, and three probed upstreams
    all losing 30-60 % would be judged against each other."""
    seen = {up for (up, _), ps in stats.paths.items() if ps.sent >= MIN_SAMPLES}
    judged = [a for name, a in assessments.items() if name in seen]
    return len(judged) >= 2 and all(a.loss >= params.degraded_loss for a in judged)

