"""The announcement plan: how each session announces our prefixes, interlock applied. Pure.

The plan maps each (upstream, family) to an `Announcement` (or None: withdrawn), from the
upstreams' states and the site's treatments (announce, prepend, tag with communities,
withdraw). The safety interlock keeps every family announced through at least
`min_announcing_upstreams` upstreams whose session of that family is up, re-announcing the
least bad ones (with the degraded treatment) and reporting a `SafetyHold` when it has to. A
session whose state is not known yet (UNKNOWN: a controller that has just started) is
*possibly up*: the interlock holds both when it is up and when it is down, and an UNKNOWN
session never loses an announcement it had (no withdrawal on a guess).

All prefixes of one family go to the same sessions, so the interlock per family *is* the
interlock per prefix.

The same plan holds the *egress* set: per family, the upstreams that may carry our outgoing
traffic and their weights (`egress`): one decision, two effects. An upstream carries
traffic when its session of that family is up (or not known yet: possibly up, as for the
interlock), it is not FAILED and not drained by an operator; a DEGRADED one with the lower
weight. When that leaves none, the ones that are not FAILED carry it, drained or not (never a
FAILED one while another may carry it: half the outbound would go into a blackhole); only
when every upstream with a session that may be up is FAILED do they all stay (every upstream
looking bad at once is our fault, as for the announcements). With no session up at
all (ExaBGP restarting), the same rules over every upstream of the family: a transit forwards
what we send whether our session with it is up or not, and no default route is worse than any.
Recovery follows the upstream's state, so the recovery hold is the same as for the
announcements.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

from netwatch.controller.params import (
    Params,
    SessionState,
    TransitState,
    Treatment,
    TreatmentAction,
    UpstreamParams,
)
from netwatch.core.vocabulary import Family


class AnnouncementMode(enum.Enum):
    """How a prefix is announced to an upstream, as the metrics and `status` name it."""

    NORMAL = "normal"
    PREPEND = "prepend"
    COMMUNITIES = "communities"
    GRACEFUL_SHUTDOWN = "graceful_shutdown"  # an operator's drain, before the withdrawal
    WITHDRAWN = "withdrawn"


@dataclass(frozen=True, order=True)
class Announcement:
    """How one session announces our prefixes of its family. None (elsewhere) = withdrawn."""

    as_path: tuple[int, ...] = ()  # empty: ExaBGP's default, our ASN once
    communities: tuple[str, ...] = ()


@dataclass(frozen=True)
class SafetyHold:
    family: Family
    kept: tuple[str, ...]  # upstreams re-announced against their verdict


GRACEFUL_SHUTDOWN = "65535:0"  # RFC 8326: peers lower the preference of what carries it


@dataclass(frozen=True)
class Drain:
    """An operator's drain of one upstream. `withdraw` False: the graceful phase (announced
    with GRACEFUL_SHUTDOWN, out of the egress set), True: withdrawn. `forced`: the interlock
    may not keep it, nor make-before-break hold its withdrawal (an operator's --force past a
    refusal of the interlock); otherwise the interlock may, still tagged."""

    withdraw: bool = False
    forced: bool = False


@dataclass(frozen=True)
class Overrides:
    """What operators force, as the plan sees it (from the control API's leases)."""

    drains: Mapping[str, Drain] = field(default_factory=dict)
    prepends: Mapping[str, int] = field(default_factory=dict)  # upstream -> prepend count

    @property
    def forced_withdrawals(self) -> frozenset[str]:
        """The upstreams a forced drain withdraws now: neither the interlock nor
        make-before-break may keep them."""
        return frozenset(n for n, d in self.drains.items() if d.forced and d.withdraw)


NO_OVERRIDES = Overrides()


@dataclass(frozen=True)
class Plan:
    """Desired announcement per (upstream, family), the interlock applied; and per family the
    egress set: {upstream: next-hop weight} of the upstreams that may carry outgoing traffic."""

    desired: Mapping[tuple[str, Family], Announcement | None]
    holds: tuple[SafetyHold, ...] = ()
    egress: Mapping[Family, Mapping[str, int]] = field(default_factory=dict)

    def announcing(self, family: Family) -> list[str]:
        return sorted(u for (u, f), a in self.desired.items() if f == family and a is not None)


def _treat(params: Params, up: UpstreamParams, treatment: Treatment | None) -> Announcement | None:
    base = tuple(up.communities)
    if treatment is None or treatment.action is TreatmentAction.ANNOUNCE:
        return Announcement((), base)
    if treatment.action is TreatmentAction.WITHDRAW:
        return None
    extra = tuple(c for c in treatment.communities if c not in base)
    if treatment.action is TreatmentAction.PREPEND:
        return Announcement((params.asn,) * (1 + treatment.prepend), base + extra)
    return Announcement((), base + extra)  # TreatmentAction.COMMUNITIES


def make_plan(
    params: Params,
    levels: Mapping[str, TransitState],
    loss_excess: Mapping[str, float],
    sessions: Mapping[tuple[str, Family], SessionState],
    before_plan: Plan | None,
    overrides: Overrides = NO_OVERRIDES,
) -> Plan:
    """Desired announcements from the upstream states, with the safety interlock applied.

    `levels` is each upstream's state, `loss_excess` its last measured excess loss (the least
    bad are kept first), `sessions` every session's state, `before_plan` the last plan,
    `overrides` what operators force: a drain tags the upstream with GRACEFUL_SHUTDOWN during
    its graceful phase and then withdraws it (the interlock may keep it, still tagged, unless
    the drain is forced); an operator's prepend makes the upstream's announcement at least that
    long (a withdrawal by verdict or drain stays a withdrawal). Drained upstreams leave the
    egress set from the graceful phase on, so traffic leaves before the withdrawal.

    Per family, with m = min_announcing_upstreams: at least m (or all of them, when fewer) of
    the sessions that are UP announce, and at least m (or all) of the sessions that are UP or
    UNKNOWN announce: the interlock holds whether an UNKNOWN session turns out up or down.
    An UNKNOWN session keeps whatever the previous plan announced through it.
    """
    desired: dict[tuple[str, Family], Announcement | None] = {}
    for up in params.upstreams:
        level = levels[up.name]
        treatment = {
            TransitState.HEALTHY: None,
            TransitState.DEGRADED: params.degraded,
            TransitState.FAILED: params.failed,
        }[level]
        for fam in up.families:
            desired[(up.name, fam)] = _overridden(
                params, up.name, _treat(params, up, treatment), overrides)
    before = before_plan.desired if before_plan is not None else {}
    held_before = {h.family: frozenset(h.kept)
                   for h in (before_plan.holds if before_plan is not None else ())}
    forced = overrides.forced_withdrawals
    holds = []
    for fam in Family:
        carriers = [u for u in params.upstreams if fam in u.families]
        session = {u.name: sessions.get((u.name, fam), SessionState.UNKNOWN)
                   for u in carriers}
        announcing = [u.name for u in carriers if desired[(u.name, fam)] is not None]
        need_up = params.min_announcing_upstreams - sum(
            1 for n in announcing if session[n] is SessionState.UP)
        need_maybe_up = params.min_announcing_upstreams - sum(
            1 for n in announcing if session[n] is not SessionState.DOWN)
        # Withdrawn by their verdict or an unforced drain, session up or unknown. A FAILED one
        # comes after every other (it would blackhole what it is kept for); then the ones the
        # last plan's hold of this family kept (a hold does not move from one upstream to
        # another while it lasts: that would be a flap; "announced in the last plan" would
        # prefer an upstream that has just failed to a drained healthy one), then the least
        # bad: by state, sessions known to be up first (fewer kept), not drained before
        # drained, by measured excess loss, by name (stable).
        held = held_before.get(fam, frozenset())
        candidates = sorted(
            (u for u in carriers
             if desired[(u.name, fam)] is None and session[u.name] is not SessionState.DOWN
             and u.name not in forced),
            key=lambda u: (
                levels[u.name] is TransitState.FAILED,
                u.name not in held,
                levels[u.name].severity,
                session[u.name] is not SessionState.UP,
                u.name in overrides.drains,  # of equally bad ones, an operator's drain last
                loss_excess.get(u.name, 0.0),
                u.name,
            ),
        )
        kept = []
        for u in candidates:
            is_up = session[u.name] is SessionState.UP
            # An UNKNOWN session may be up and carrying our traffic: never withdraw on a guess.
            unknown_had_it = (session[u.name] is SessionState.UNKNOWN
                              and before.get((u.name, fam)) is not None)
            if not (unknown_had_it or need_maybe_up > 0 or (is_up and need_up > 0)):
                continue
            kept_as = _treat(params, u, params.degraded) or _treat(params, u, None)
            if u.name in overrides.drains:
                kept_as = _tagged(kept_as, GRACEFUL_SHUTDOWN)
            desired[(u.name, fam)] = kept_as
            kept.append(u.name)
            need_maybe_up -= 1
            if is_up:
                need_up -= 1
        if kept:
            holds.append(SafetyHold(fam, tuple(kept)))
    drained = frozenset(overrides.drains)
    return Plan(desired, tuple(holds), egress_of(params, levels, sessions, drained))


def _tagged(announcement: Announcement, community: str) -> Announcement:
    if community in announcement.communities:
        return announcement
    return Announcement(announcement.as_path, (*announcement.communities, community))


def _overridden(
    params: Params, upstream: str, automatic: Announcement | None, overrides: Overrides
) -> Announcement | None:
    """The automatic announcement of `upstream` with the operators' overrides applied."""
    if automatic is None:
        return None  # withdrawn by its verdict: no override brings a failed upstream back
    drain = overrides.drains.get(upstream)
    if drain is not None and drain.withdraw:
        return None
    count = overrides.prepends.get(upstream)
    if count is not None and len(automatic.as_path) < 1 + count:
        automatic = Announcement((params.asn,) * (1 + count), automatic.communities)
    if drain is not None:
        automatic = _tagged(automatic, GRACEFUL_SHUTDOWN)
    return automatic


def egress_of(
    params: Params,
    levels: Mapping[str, TransitState],
    sessions: Mapping[tuple[str, Family], SessionState],
    drained: frozenset[str] = frozenset(),
) -> dict[Family, dict[str, int]]:
    """Per family, {upstream: weight} of the upstreams that may carry outgoing traffic (see
    the module doc). Never empty for a family some upstream has a session of."""
    egress: dict[Family, dict[str, int]] = {}
    for fam in Family:
        carriers = [u.name for u in params.upstreams if fam in u.families]
        if not carriers:
            continue
        maybe_up = [n for n in carriers
                    if sessions.get((n, fam), SessionState.UNKNOWN) is not SessionState.DOWN]
        # No session up at all: ExaBGP restarting (every session down for seconds, minutes in
        # production) while the transits still forward what we send; the verdicts still
        # count, or a FAILED transit would carry its share of our traffic all that time.
        pool = maybe_up or carriers

        def weighted(names: list[str]) -> dict[str, int]:
            return {n: (params.egress_degraded_weight if levels[n] is TransitState.DEGRADED
                        else params.egress_weight) for n in names}

        working = [n for n in pool if levels[n] is not TransitState.FAILED]
        # Every working upstream drained: they carry it still (a drain moves traffic away, it
        # does not send it into a FAILED one's blackhole). Every one FAILED: the fault is
        # ours (as for the announcements), keep all.
        chosen = (weighted([n for n in working if n not in drained]) or weighted(working)
                  or {n: params.egress_weight for n in pool})
        egress[fam] = chosen
    return egress



def mode_of(params: Params, upstream: str, announcement: Announcement | None) -> AnnouncementMode:
    """The mode of one session's announcement: withdrawn, draining (GRACEFUL_SHUTDOWN),
    prepended, tagged with communities beyond the upstream's own (`upstreams[].communities`,
    always sent), or normal."""
    if announcement is None:
        return AnnouncementMode.WITHDRAWN
    if GRACEFUL_SHUTDOWN in announcement.communities:
        return AnnouncementMode.GRACEFUL_SHUTDOWN
    if announcement.as_path:
        return AnnouncementMode.PREPEND
    if set(announcement.communities) - set(params.upstream(upstream).communities):
        return AnnouncementMode.COMMUNITIES
    return AnnouncementMode.NORMAL
