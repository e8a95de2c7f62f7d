"""Watching our prefixes at the transits while something happens (a restart, a fault).

`RouteWatch(lab)` polls every transit's BIRD for the site's prefixes in one thread per
transit, every `step_s` (50 ms), for as long as it is entered, and keeps every sample, so a
hole of one poll is seen. The lab tests and bench/transit_failover.py read the same figures:
`missing_s(transit)` (the time each prefix was missing, summed, as the polls saw it) and
`ever_held(transit)`. `graceful_restart_pending(lab, node)` says whether a transit's BIRD still
waits for our End-of-RIB (it keeps our stale routes meanwhile).
"""

from __future__ import annotations

import subprocess
import threading
import time
from dataclasses import dataclass, field

from netwatch.lab.handle import Lab

STEP_S = 0.05


@dataclass
class Sample:
    at: float  # monotonic seconds
    held: frozenset[str]  # our prefixes the transit's BIRD held


@dataclass
class _Track:
    samples: list[Sample] = field(default_factory=list)
    errors: int = 0  # polls birdc did not answer (BIRD busy or restarting): not a sample


class RouteWatch:
    """Polls `birdc show route` of each transit (default: all of them) every `step_s` while
    the `with` block runs. Which prefixes: the lab site's."""

    def __init__(self, lab: Lab, transits: list[str] | None = None, step_s: float = STEP_S):
        topology = lab.topology()
        self.lab = lab
        self.prefixes = tuple(topology.prefixes)
        self.transits = list(transits or [t.name for t in topology.transits])
        self.step_s = step_s
        self.tracks = {t: _Track() for t in self.transits}
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def __enter__(self) -> RouteWatch:
        for transit in self.transits:
            thread = threading.Thread(target=self._poll, args=(transit,), daemon=True,
                                      name=f"watch-{transit}")
            thread.start()
            self._threads.append(thread)
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=10)

    def _poll(self, transit: str) -> None:
        track = self.tracks[transit]
        next_at = time.monotonic()
        while not self._stop.is_set():
            try:
                out = self.lab.birdc(transit, "show route")
            except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
                track.errors += 1
            else:
                lines = [line.split()[0] for line in out.splitlines() if line[:1].isalnum()]
                held = frozenset(p for p in self.prefixes if p in lines)
                track.samples.append(Sample(time.monotonic(), held))
            next_at += self.step_s
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    # --- what was seen --------------------------------------------------------------------

    def polls(self, transit: str) -> int:
        return len(self.tracks[transit].samples)

    def errors(self, transit: str) -> int:
        return self.tracks[transit].errors

    def missing_s(self, transit: str) -> dict[str, float]:
        """{prefix: seconds it was missing at `transit`}: each sample that lacked it counts
        until the next sample (the last one counts one step)."""
        samples = self.tracks[transit].samples
        out = dict.fromkeys(self.prefixes, 0.0)
        for i, sample in enumerate(samples):
            until = samples[i + 1].at if i + 1 < len(samples) else sample.at + self.step_s
            for prefix in self.prefixes:
                if prefix not in sample.held:
                    out[prefix] += until - sample.at
        return out

    def worst_missing_s(self) -> float:
        """The longest any of our prefixes was missing at any watched transit."""
        return max((v for t in self.transits for v in self.missing_s(t).values()), default=0.0)

    def ever_held(self, transit: str) -> frozenset[str]:
        """Our prefixes `transit` held in at least one sample."""
        held: set[str] = set()
        for sample in self.tracks[transit].samples:
            held |= sample.held
        return frozenset(held)


def graceful_restart_pending(lab: Lab, node: str) -> list[str]:
    """`node`'s sessions with edge that are not Established, or are but still wait for our
    End-of-RIB (BIRD: "Neighbor graceful restart active"; it keeps our stale routes until
    then, or until the restart time runs out)."""
    pending = []
    for name, session in lab.bgp_sessions(node).items():
        if not name.startswith("edge"):
            continue
        up = "Established" in session["info"]
        if not up or "graceful restart active" in lab.birdc(node, f"show protocols all {name}"):
            pending.append(name)
    return pending
