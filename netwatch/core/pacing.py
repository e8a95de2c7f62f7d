"""When each probe stream sends and when each probe is judged: confirmation probing. Pure.

A stream probes on a fixed grid, one probe every `interval_s`, judged lost when `timeout_s`
passes without an answer. A stream that loses one is *suspect*: it is probed again at once,
and again each time a confirmation is judged, every `confirm_s` (the confirmation pace),
until either an answer clears the suspicion or `fall` probes in a row are lost. A path that
has stopped forwarding is then known after

    timeout_s + (fall - 1) x confirm_s        instead of        timeout_s + (fall - 1) x interval_s

(50 ms probes, fall 3, confirm 10 ms: 70 ms instead of 150 ms). Nothing else changes: the
decision still needs `fall` losses in a row (it is fed every verdict, confirmations
included), and one answer still restarts the count. The evidence does not shrink either:
under independent loss p, `fall` losses in a row that include fall-1 confirmations of
CONFIRM_COPIES requests each happen with p^(1 + 2 (fall-1)), less often than the p^fall of
unconfirmed probes (docs/agent.md has the soak that measures it).

A confirmation is judged lost after `wait = srtt + max(G, 4 x rttvar)` (RFC 6298's
retransmission timeout, from the stream's own answered probes, with MIN_CONFIRM_S as its
granularity G), bounded below by `confirm_s` and above by `timeout_s`: a path whose round
trip is 30 ms is not condemned for missing a 10 ms deadline. Before any answer the wait is
`timeout_s`. A confirmation is CONFIRM_COPIES identical requests (see there). The
confirmations stop once `fall` probes in a row are lost (the path is down: it goes back to
the grid, so a dead path costs no more than a live one); a stream in confirmation skips the
grid until its episode ends.

Early suspicion (`Pacer(..., suspect=True)`, the agent's): a routine probe still unanswered
at its suspicion time is suspect at once. It stays in flight, *held* to its own deadline, and
the confirmations start beside it: so `fall` losses in a row are known at

    max(timeout_s, S + (fall - 1) x W)        (50 ms probes: 50 ms instead of 70)

where W is the confirmation's wait (as above) and the suspicion time S is as late as that
allows: max(W, timeout_s - (fall - 1) x W), 30 ms with the lab's 50 ms, fall 3, W 10 ms. A
suspicion costs a wake-up per slot (the answers are read then), not per probe.

The evidence is the same: the held probe is still judged at its full timeout (an answer by
then clears the suspicion, however late), and the caller feeds the decision every verdict,
the held one after its confirmations. One answer clears: a confirmation answered first makes
the caller judge the held probe at once.

Streams share the grid, so every stream not in confirmation sends in the same wake-up. A
routine probe's timeout of up to the interval (the default: equal) ends by the next slot, so
that the probe never holds its stream's next one past the slot: judged at send + timeout,
each probe left the loop's latency later than the one before, and streams drifted apart
(each confirmation episode put one back on the grid). A routine probe whose deadline is past
its next slot anyway (a longer timeout: the slots it covers are skipped; a send late by more
than MAX_CUT of the timeout) is followed on the first slot after that deadline; after a
confirmation episode the stream probes at once if its slot is past, and is back on the grid
by the next slot. When the caller wakes late (a stalled loop), each stream sends one probe at
once and then returns to the grid: missed slots are skipped, not sent in a burst.

    pacer = Pacer(Cadence(0.05, 0.05, 0.01, fall=3), streams=8, now=clock())
    for i in pacer.to_judge(now): pacer.judged(i, rtt_of(i, pacer.wait(i)), now)
    for i in pacer.to_send(now): send(i); pacer.sent(i, now)
    sleep until pacer.next_at()
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# A judgement due within this much of `now` is taken now: the loop's timer fires a little
# early or late, and one more wake-up for 1 ms costs more than it gains.
SLACK_S = 0.001
_NEVER = math.inf
# A confirmation is this many identical requests sent back to back, any answer answering it:
# under independent loss p a confirmation is lost with probability p^2, so `fall` losses in a
# row that include fall-1 confirmations happen with p^(2 fall - 1) (fall 3, 4 % round-trip
# loss: 1e-7 per lost probe, where p^fall is 6e-5: 8 false failovers in 10 minutes of the
# lab's noise soak). A dead path loses them all the same.
CONFIRM_COPIES = 2
# A routine probe sent late gives up at most this share of its timeout to end by the next
# slot and keep its stream on the grid (Pacer.sent). Later than that, the loop is badly
# behind: the probe keeps its whole timeout and the stream skips a slot instead.
MAX_CUT = 0.25
# The default confirmation pace is a fifth of the interval, never under this (a 10 ms
# interval confirms every 5 ms, not every 2: a round trip on a busy LAN can take 2 ms).
MIN_CONFIRM_S = 0.005


def default_confirm_s(interval_s: float, timeout_s: float) -> float:
    """`confirm_interval_ms` left unset: interval/5, at least MIN_CONFIRM_S, at most the
    timeout."""
    return min(timeout_s, max(MIN_CONFIRM_S, interval_s / 5))


@dataclass(frozen=True)
class Cadence:
    """`interval_s`: the grid; `timeout_s`: a routine probe's deadline (one probe in flight
    per stream: a timeout longer than the interval skips the slots it covers);
    `confirm_s`: the confirmation pace, 0 to confirm at the grid's pace (no confirmation);
    `fall`: the losses in a row that condemn a path (the confirmations stop there)."""

    interval_s: float
    timeout_s: float
    confirm_s: float
    fall: int

    def __post_init__(self) -> None:
        if self.interval_s <= 0 or self.timeout_s <= 0:
            raise ValueError(f"interval_s and timeout_s must be > 0, got {self.interval_s}, "
                             f"{self.timeout_s}")
        if not 0 <= self.confirm_s <= self.timeout_s:
            raise ValueError(f"confirm_s must be in [0, timeout_s], got {self.confirm_s}")
        if self.fall < 1:
            raise ValueError(f"fall must be >= 1, got {self.fall}")


class _Stream:
    __slots__ = ("deadline", "held_deadline", "held_wait", "misses", "next_send", "routine",
                 "rttvar", "sent_at", "slot_end", "srtt", "suspect_at", "wait")

    def __init__(self, now: float):
        self.next_send = now
        self.sent_at = -math.inf
        self.slot_end = now  # the end of the grid slot the last probe left for
        self.routine = True  # the last probe was a routine one (not a confirmation)
        self.deadline = _NEVER  # the probe in flight is judged then; _NEVER: none in flight
        self.wait = 0.0  # ... and was given this long
        self.suspect_at = _NEVER  # a routine probe unanswered by then is suspect
        self.held_deadline = _NEVER  # a suspect routine probe, still in flight: judged then
        self.held_wait = 0.0
        self.misses = 0  # probes lost in a row
        self.srtt: float | None = None  # smoothed round trip and its variation (RFC 6298)
        self.rttvar = 0.0


class Pacer:
    """The schedule of `streams` probe streams (numbered 0..streams-1). See the module doc."""

    def __init__(self, cadence: Cadence, streams: int, now: float, *, suspect: bool = False):
        self.cadence = cadence
        self._origin = now
        self._streams = [_Stream(now) for _ in range(streams)]
        # Early suspicion (see the module doc): the caller looks at `to_suspect()` probes.
        self._suspect = suspect and cadence.confirm_s > 0 and cadence.fall > 1

    # --- what is due -----------------------------------------------------------------------

    def to_judge(self, now: float) -> list[int]:
        """The streams whose probe in flight has reached its deadline."""
        due = now + SLACK_S
        return [i for i, s in enumerate(self._streams) if s.deadline <= due]

    def to_send(self, now: float) -> list[int]:
        """The streams to probe now: nothing in flight, and their time has come."""
        due = now + SLACK_S
        return [i for i, s in enumerate(self._streams)
                if s.deadline == _NEVER and s.next_send <= due]

    def to_suspect(self, now: float) -> list[int]:
        """The streams whose routine probe has gone its round-trip timeout unjudged: if it is
        answered by now, judge it (`judged`); if not, hold it (`suspected`)."""
        due = now + SLACK_S
        return [i for i, s in enumerate(self._streams) if s.suspect_at <= due]

    def to_release(self, now: float) -> list[int]:
        """The streams whose held (suspect) routine probe has reached its own deadline:
        judge it with `judged_held`."""
        due = now + SLACK_S
        return [i for i, s in enumerate(self._streams) if s.held_deadline <= due]

    def next_at(self) -> float:
        """When something is next due (a send, a suspicion or a judgement)."""
        return min((min(s.next_send if s.deadline == _NEVER else s.deadline, s.suspect_at,
                        s.held_deadline) for s in self._streams), default=_NEVER)

    def holds(self, i: int) -> bool:
        """Stream i has a suspect routine probe in flight (besides its confirmations)."""
        return self._streams[i].held_deadline != _NEVER

    def held_wait(self, i: int) -> float:
        return self._streams[i].held_wait

    def wait(self, i: int) -> float:
        """How long stream i's probe in flight was given: an answer later than this is lost."""
        return self._streams[i].wait

    def copies(self, i: int) -> int:
        """How many identical requests stream i's next probe is sent as."""
        return CONFIRM_COPIES if self.confirming(i) else 1

    def confirming(self, i: int) -> bool:
        """Stream i is suspect: it lost its last probe but not yet `fall` in a row."""
        return self.cadence.confirm_s > 0 and 0 < self._streams[i].misses < self.cadence.fall

    # --- what happened ---------------------------------------------------------------------

    def sent(self, i: int, now: float) -> None:
        """Stream i's probe left at `now`."""
        s = self._streams[i]
        c = self.cadence
        s.routine = not self.confirming(i)
        # Sent up to SLACK_S early, a probe is for the slot it was due in: count from there.
        s.slot_end = self._slot_after(max(now, s.next_send))
        if not s.routine:
            s.wait = self._confirm_wait(s)
        else:
            s.wait = c.timeout_s
            # A timeout of up to the interval (the default: equal) ends by the next slot, when
            # that cuts at most MAX_CUT of it: judged later, the probe would hold the stream's
            # next one past its slot, and every interval would add the loop's latency to the
            # stream's phase (streams drifted apart by tens of ms, each confirmation episode
            # putting one back on the grid). A send later than that keeps its whole timeout,
            # and the stream goes back to the grid after it (`_next_slot`).
            if (c.timeout_s <= c.interval_s
                    and now + (1 - MAX_CUT) * s.wait <= s.slot_end < now + s.wait):
                s.wait = s.slot_end - now
        s.sent_at = now
        s.deadline = now + s.wait
        s.suspect_at = _NEVER
        if self._suspect and s.misses == 0 and s.held_deadline == _NEVER:
            # As late as the confirmations allow without being later than the held probe's
            # timeout: less suspicion of a path that is merely slow, for the same speed.
            rto = self._confirm_wait(s)  # the timeout itself while no round trip is known
            at = max(rto, self.cadence.timeout_s - (self.cadence.fall - 1) * rto)
            if at < s.wait - SLACK_S:
                s.suspect_at = now + at

    def suspected(self, i: int, now: float) -> None:
        """Stream i's routine probe is unanswered at its suspicion time: it stays in flight
        (held, judged at its own deadline by `judged_held`), counts as a miss for the
        confirmations' sake, and the confirmations start now."""
        s = self._streams[i]
        s.held_deadline, s.held_wait = s.deadline, s.wait
        s.deadline = s.suspect_at = _NEVER
        s.misses += 1
        s.next_send = now

    def judged_held(self, i: int, rtt_s: float | None, now: float, timed: bool = True) -> None:
        """Stream i's held probe: answered in `rtt_s` (late, but within its timeout), or lost.
        Lost changes nothing (its miss was counted when it became suspect); answered clears
        the suspicion, and a stream with no confirmation in flight goes back to the grid.
        `timed` False: answered, but `rtt_s` is no round-trip sample (an ARP or ND reply that
        may have been the next request's)."""
        s = self._streams[i]
        s.held_deadline = _NEVER
        if rtt_s is None:
            return
        if timed:
            self._learn(s, rtt_s)
        s.misses = 0
        if s.deadline == _NEVER:
            s.next_send = self._next_slot(s)

    def judged(self, i: int, rtt_s: float | None, now: float, verdict: bool = True,
               timed: bool = True) -> None:
        """Stream i's probe in flight: answered in `rtt_s` seconds, or lost (None). A probe
        that is no verdict (`verdict` False: left from an address still in duplicate address
        detection) neither clears nor feeds a suspicion; `timed` False: answered, but `rtt_s`
        is no round-trip sample (see `judged_held`)."""
        s = self._streams[i]
        s.deadline = s.suspect_at = _NEVER
        if not verdict:
            s.next_send = self._next_slot(s)
            return
        if rtt_s is not None:
            if timed:
                self._learn(s, rtt_s)
            s.misses = 0
            s.next_send = self._next_slot(s)
            return
        s.misses += 1
        if self.confirming(i):
            s.next_send = now  # confirm at once; the next one when this one is judged
        else:
            s.next_send = self._next_slot(s)

    # --- inside ----------------------------------------------------------------------------

    def _next_slot(self, s: _Stream) -> float:
        """The grid slot after the one the stream's last probe left for. It may be past
        already (the loop woke late, or stalled, or a confirmation ended after it): the
        stream then probes at once, one probe, and the slot after that one is its next; one
        probe in flight per stream means a stalled loop never sends a burst. A routine probe
        whose whole timeout ran past that slot (a timeout longer than the interval: the
        slots it covers are skipped; a send later than MAX_CUT of the timeout) is followed
        on the first slot after its deadline, back on the grid."""
        if s.routine and s.sent_at + s.wait > s.slot_end + SLACK_S:
            return self._slot_after(s.sent_at + s.wait)
        return s.slot_end

    def _slot_after(self, t: float) -> float:
        """The start of the grid slot after the one `t` is in (within SLACK_S of its start)."""
        interval = self.cadence.interval_s
        slot = math.floor((t + SLACK_S - self._origin) / interval)
        return self._origin + (slot + 1) * interval

    def _confirm_wait(self, s: _Stream) -> float:
        """RFC 6298's RTO, srtt + max(G, 4 rttvar), with MIN_CONFIRM_S as the granularity G:
        a steady path 80 ms away is given 85 ms, not 80.3 (its jitter alone), so the time a
        busy loop takes to read the answer cannot make it late. At least the confirmation
        pace, at most the timeout."""
        c = self.cadence
        if s.srtt is None:
            return c.timeout_s
        rto = s.srtt + max(MIN_CONFIRM_S, 4 * s.rttvar)
        return min(c.timeout_s, max(c.confirm_s, rto))

    @staticmethod
    def _learn(s: _Stream, rtt: float) -> None:
        """RFC 6298 section 2: alpha 1/8, beta 1/4."""
        if s.srtt is None:
            s.srtt, s.rttvar = rtt, rtt / 2
        else:
            s.rttvar += (abs(s.srtt - rtt) - s.rttvar) / 4
            s.srtt += (rtt - s.srtt) / 8
