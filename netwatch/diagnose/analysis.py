"""Traceroute replies into hops, the hop where loss starts, and the report. Pure.

A trace sends `probes` ICMP echoes per TTL towards a target through one upstream; each probe
ends as a `Reply`: answered by a router on the way (time exceeded), by the target itself
(reached), or not at all. `build_trace` groups them into `Hop`s (addresses, RTTs, loss).

Where loss starts is read the way mtr's users learn to read it: loss at a hop that does not
go on to the later hops is a router rate-limiting its ICMP errors (Linux sends at most about
one time-exceeded per second per destination after a burst of 6), not lost traffic. So:

- a trace that never reaches its target loses everything after its last answering hop:
  loss starts at the hop after it, and traffic `stops_after` that hop;
- a trace that reaches its target with loss: loss starts at the first hop from which every
  later hop, the target included, lost probes too;
- a trace that reaches its target without loss has no loss start.

`Report` puts the traces through the diagnosed upstream beside those through a healthy one,
target by target, and says in one sentence what they show (`verdict`).
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Reply:
    """One probe's fate."""

    path: str  # the upstream it went through
    target: str
    ttl: int
    address: str | None  # who answered; None: nobody
    rtt_ms: float | None
    reached: bool = False  # the target itself answered (echo reply)


@dataclass(frozen=True)
class Hop:
    ttl: int
    addresses: tuple[str, ...]
    sent: int
    received: int
    rtts_ms: tuple[float, ...]
    reached: bool

    @property
    def loss_ratio(self) -> float:
        return 1.0 - self.received / self.sent if self.sent else 1.0

    @property
    def rtt_avg_ms(self) -> float | None:
        return statistics.fmean(self.rtts_ms) if self.rtts_ms else None

    def to_json(self) -> dict:
        rtt = None
        if self.rtts_ms:
            rtt = {"min": round(min(self.rtts_ms), 3), "avg": round(self.rtt_avg_ms or 0, 3),
                   "max": round(max(self.rtts_ms), 3)}
        return {"hop": self.ttl, "addresses": list(self.addresses), "sent": self.sent,
                "received": self.received, "loss_ratio": round(self.loss_ratio, 3),
                "rtt_ms": rtt, "reached": self.reached}


SILENT_HOPS_SHOWN = 2  # after the last answer, how many silent hops a trace keeps


@dataclass(frozen=True)
class PathTrace:
    upstream: str
    target: str
    hops: tuple[Hop, ...]
    max_ttl: int

    @property
    def reached(self) -> bool:
        return any(h.reached for h in self.hops)

    @property
    def loss_starts_at(self) -> int | None:
        """The hop (TTL) from which probes are lost to the end (see the module doc)."""
        if not self.hops:
            return None
        if not self.reached:
            answering = [h.ttl for h in self.hops if h.received]
            return (max(answering) + 1) if answering else 1
        last = self.hops[-1]
        if last.received == last.sent:
            return None
        start = last.ttl
        for hop in reversed(self.hops[:-1]):
            if hop.received == hop.sent:
                break
            start = hop.ttl
        return start

    def rate_limited(self, hop: Hop) -> bool:
        """Whether `hop`'s loss looks like ICMP rate limiting: a later hop answered more."""
        return 0 < hop.received < hop.sent and any(
            h.received > hop.received for h in self.hops if h.ttl > hop.ttl)

    @property
    def stops_after(self) -> Hop | None:
        """The last hop that answered, when the target was not reached."""
        if self.reached:
            return None
        answering = [h for h in self.hops if h.received]
        return answering[-1] if answering else None

    def to_json(self) -> dict:
        stop = self.stops_after
        return {
            "upstream": self.upstream, "target": self.target, "reached": self.reached,
            "loss_starts_at_hop": self.loss_starts_at,
            "stops_after": None if stop is None else {"hop": stop.ttl,
                                                      "addresses": list(stop.addresses)},
            "hops": [h.to_json() for h in self.hops],
        }


def build_trace(upstream: str, target: str, replies: Iterable[Reply], probes: int,
                max_ttl: int) -> PathTrace:
    """The trace of `upstream` towards `target` from every reply of theirs (others ignored):
    `probes` sent per TTL from 1 to `max_ttl`; hops end at the first that reached the target,
    else two silent hops after the last answer."""
    mine = [r for r in replies if r.path == upstream and r.target == target]
    hops = []
    for ttl in range(1, max_ttl + 1):
        at = [r for r in mine if r.ttl == ttl and r.address is not None]
        addresses = tuple(dict.fromkeys(r.address for r in at if r.address))
        hops.append(Hop(ttl, addresses, probes, min(len(at), probes),
                        tuple(r.rtt_ms for r in at if r.rtt_ms is not None),
                        any(r.reached for r in at)))
    reached = [h.ttl for h in hops if h.reached]
    if reached:
        hops = hops[: reached[0]]
    else:
        answering = [h.ttl for h in hops if h.received]
        hops = hops[: (answering[-1] if answering else 0) + SILENT_HOPS_SHOWN]
    return PathTrace(upstream, target, tuple(hops), max_ttl)


@dataclass(frozen=True)
class Comparison:
    target: str
    name: str | None
    through: PathTrace  # the diagnosed upstream
    beside: PathTrace | None  # the healthy one, when there is one


@dataclass(frozen=True)
class Report:
    upstream: str
    family: str
    path: str  # how the probes were routed: "mark 0x4e582, table 2002, via 192.0.2.5 dev t2"
    compare: str | None
    compare_note: str  # why that one: "healthy, by the controller's status"
    rows: tuple[Comparison, ...]
    labels: Mapping[str, str] = field(default_factory=dict)  # address -> "t2's router"

    def label(self, address: str) -> str:
        name = self.labels.get(address)
        return f"{address} ({name})" if name else address

    @property
    def verdict(self) -> str:
        n = len(self.rows)
        through = [c.through for c in self.rows]
        lost = [t for t in through if not t.reached]
        parts = []
        if not lost:
            lossy = [t for t in through if t.loss_starts_at is not None]
            if lossy:
                parts.append(f"through {self.upstream}, all {n} target(s) are reached, with "
                             f"loss from hop {min(t.loss_starts_at or 0 for t in lossy)} "
                             f"towards {len(lossy)} of them")
            else:
                parts.append(f"through {self.upstream}, all {n} target(s) are reached "
                             "without loss")
        else:
            stops: dict[str, int] = {}
            for t in lost:
                stop = t.stops_after
                where = (f"hop {stop.ttl}, {', '.join(map(self.label, stop.addresses))},"
                         if stop else "hop 0 (nothing answers, not even the first hop)")
                stops[where] = stops.get(where, 0) + 1
            detail = "; ".join(f"after {where} for {count} of {n} target(s)"
                               for where, count in stops.items())
            parts.append(f"through {self.upstream}, traffic stops {detail}")
        beside = [c.beside for c in self.rows if c.beside is not None]
        if self.compare and beside:
            reached = sum(t.reached for t in beside)
            parts.append(f"through {self.compare}, {reached} of {len(beside)} reached")
            if lost and reached == len(beside):
                parts.append(f"the fault is on {self.upstream}'s side, not ours")
            elif lost and not reached:
                parts.append("both fail: the fault is more likely ours or the targets'")
        return "; ".join(parts) + "."

    def to_json(self) -> dict:
        return {
            "upstream": self.upstream, "family": self.family, "path": self.path,
            "compare": self.compare, "compare_note": self.compare_note,
            "verdict": self.verdict, "labels": dict(self.labels),
            "targets": [
                {"target": c.target, "name": c.name, "through": c.through.to_json(),
                 "beside": None if c.beside is None else c.beside.to_json()}
                for c in self.rows
            ],
        }


def _cell(report: Report, trace: PathTrace | None, hop: Hop | None) -> str:
    if hop is None or trace is None:
        return ""
    if not hop.received:
        return f"{'*':<34} {'':>9} {hop.loss_ratio:>5.0%}"
    who = ", ".join(report.label(a) for a in hop.addresses)
    rtt = f"{hop.rtt_avg_ms:.2f} ms" if hop.rtt_avg_ms is not None else "-"
    mark = " reached" if hop.reached else (" rate-limited" if trace.rate_limited(hop) else "")
    return f"{who:<34} {rtt:>9} {hop.loss_ratio:>5.0%}{mark}"


def render_text(report: Report) -> str:
    """The report for a terminal or an incident channel: the verdict, then per target the two
    traces side by side (hop, address, average RTT, loss)."""
    lines = [
        f"Diagnosis of upstream {report.upstream} ({report.family}: {report.path})"
        + (f", beside {report.compare} ({report.compare_note})" if report.compare else
           f" ({report.compare_note})"),
        f"Verdict: {report.verdict}",
    ]
    width = 64
    for c in report.rows:
        title = f"{c.name} {c.target}" if c.name else c.target
        lines += ["", f"target {title}"]
        left = f"through {report.upstream}"
        right = f"through {report.compare}" if c.beside is not None else ""
        lines.append(f"  hop  {left:<{width}}  {right}".rstrip())
        depth = max(len(c.through.hops), len(c.beside.hops) if c.beside else 0)
        for i in range(depth):
            mine = c.through.hops[i] if i < len(c.through.hops) else None
            other = c.beside.hops[i] if c.beside and i < len(c.beside.hops) else None
            lines.append(f"  {i + 1:>3}  {_cell(report, c.through, mine):<{width}}  "
                         f"{_cell(report, c.beside, other)}".rstrip())
        for trace in (c.through, c.beside):
            if trace is None:
                continue
            start = trace.loss_starts_at
            stop = trace.stops_after
            if not trace.reached:
                after = (f" (nothing answers after hop {stop.ttl}, "
                         f"{', '.join(map(report.label, stop.addresses))})" if stop else
                         " (no hop answers)")
                lines.append(f"  through {trace.upstream}: not reached within "
                             f"{trace.max_ttl} hops; loss starts at hop {start}{after}")
            elif start is not None:
                lines.append(f"  through {trace.upstream}: reached; loss starts at hop {start}")
            else:
                lines.append(f"  through {trace.upstream}: reached in {len(trace.hops)} "
                             "hop(s), no loss")
    return "\n".join(lines)
