"""The operators' leases as the transit plan sees them: drains (with their stage) and
prepends. Pure.

The control API keeps the controller's overrides as leases (`netwatch.control.leases`); the
plan takes `netwatch.controller.plan.Overrides`. `overrides_of(leases, now, default)` is the
one conversion, at wall-clock `now`:

- a DRAIN lease is in its *graceful* stage (announced with GRACEFUL_SHUTDOWN, out of the
  egress set) from its `created_at` until `created_at + graceful_s`, then *withdrawn*. The
  stage is derived from the lease alone, on the wall clock the lease is written in, so it
  survives a restart of the controller or of ExaBGP: nothing else about a drain is kept.
  `graceful_s` None (a lease that left it to the site) is the site's `drain_graceful_s`;
- a PREPEND lease makes the upstream's path at least `count` prepends long;
- a lease past its expiry forces nothing, even before the keeper has dropped it.

`interlock_refusal(state, upstream)` is the safety rule a drain that is not forced must pass:
it looks at the plan once every drain has reached its withdrawal, not at the plan of this
instant (while other drains are still graceful, they still announce).

`next_change_at` says when the result changes next by time alone (a drain's withdrawal, a
lease's expiry), so the daemon wakes then and not only once a second. `restored_by` names the
upstreams whose drain an operator ended (a restore, a delete): they skip what is left of their
recovery hold (netwatch.controller.decision.OperatorOverrides). A drain that expires by itself
is not passed to it: that upstream returns through its normal recovery.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace

from netwatch.control.leases import Lease, LeaseKind
from netwatch.controller.decision import State, drain_refusal, plan_of
from netwatch.controller.params import SessionState
from netwatch.controller.plan import Drain, Overrides


@dataclass(frozen=True)
class DrainStage:
    """Where one drain is: graceful until `withdraw_at` (wall clock), withdrawn after."""

    upstream: str
    withdraw_at: float
    forced: bool

    def withdrawn(self, now: float) -> bool:
        return now >= self.withdraw_at

    def to_json(self, now: float) -> dict:
        """The `drain` of an UpstreamStatus (netwatch.control.protocol)."""
        return {"stage": "withdrawn" if self.withdrawn(now) else "graceful",
                "withdraw_at": self.withdraw_at}


def graceful_s_of(lease: Lease, default_graceful_s: float) -> float:
    """How long drain `lease` announces GRACEFUL_SHUTDOWN before withdrawing."""
    return default_graceful_s if lease.graceful_s is None else lease.graceful_s


def drain_stage(lease: Lease, default_graceful_s: float) -> DrainStage:
    """The stage of DRAIN lease `lease`. Raises ValueError for another kind (a caller's bug)."""
    if lease.kind is not LeaseKind.DRAIN:
        raise ValueError(f"{lease.id} is a {lease.kind.value} lease, not a drain")
    return DrainStage(lease.target, lease.created_at + graceful_s_of(lease, default_graceful_s),
                      lease.forced)


def live(leases: Iterable[Lease], now: float) -> list[Lease]:
    """The leases not expired at `now`, in their order."""
    return [lease for lease in leases if not lease.expired(now)]


def drains(leases: Iterable[Lease], now: float, default_graceful_s: float
           ) -> dict[str, DrainStage]:
    """{upstream: its drain's stage} for the live DRAIN leases at `now`."""
    return {lease.target: drain_stage(lease, default_graceful_s)
            for lease in live(leases, now) if lease.kind is LeaseKind.DRAIN}


def overrides_of(leases: Iterable[Lease], now: float, default_graceful_s: float) -> Overrides:
    """What the live leases force at wall-clock `now` (see the module doc)."""
    leases = live(leases, now)
    return Overrides(
        drains={name: Drain(withdraw=stage.withdrawn(now), forced=stage.forced)
                for name, stage in drains(leases, now, default_graceful_s).items()},
        prepends={lease.target: lease.count for lease in leases
                  if lease.kind is LeaseKind.PREPEND and lease.count is not None},
    )


def next_change_at(leases: Iterable[Lease], now: float, default_graceful_s: float
                   ) -> float | None:
    """The earliest wall-clock time after `now` at which `overrides_of` changes by itself (a
    graceful stage ends, a lease expires), or None when nothing is pending."""
    leases = live(leases, now)
    times = [lease.expires_at for lease in leases]
    times += [stage.withdraw_at for stage in drains(leases, now, default_graceful_s).values()
              if not stage.withdrawn(now)]
    return min(times, default=None)


def restored_by(ended: Iterable[Lease]) -> frozenset[str]:
    """The upstreams whose drain is among `ended` (leases an operator removed; not a lease
    replaced by a new one of its slot: that upstream is still drained; not one that expired:
    see the module doc)."""
    return frozenset(lease.target for lease in ended if lease.kind is LeaseKind.DRAIN)


def interlock_refusal(state: State, upstream: str) -> str | None:
    """Why a drain of `upstream` that is not forced must be refused, or None when it may go.

    `decision.drain_refusal` judges the drain against the overrides in force now. Other drains
    still in their graceful stage announce now but will not in a moment: draining t1, t2 and
    t3 one after the other within their graceful periods would each pass that check, and the
    plan's interlock would then have to keep one of them announced against the operator's
    will. So the plan is also made with every drain already withdrawn: if it then keeps a
    drained upstream announced for some family, this drain is one too many.

    The reason counts the other upstreams that would announce with a session known to be up.
    A session not known yet (a controller that has just started, a session ExaBGP has not
    reported) is possibly up and possibly down, and the interlock holds for both: the reason
    names those sessions, since they, not a lack of upstreams, are why. Raises ValueError for
    an unknown upstream."""
    refusal = drain_refusal(state, upstream)
    drained = {name: Drain(withdraw=True, forced=d.forced)
               for name, d in state.overrides.drains.items()}
    drained[upstream] = Drain(withdraw=True)
    plan = plan_of(replace(state, overrides=replace(state.overrides, drains=drained)))
    for hold in plan.holds:
        if not any(name in drained for name in hold.kept):
            continue
        fam = hold.family
        others = [n for n in plan.announcing(fam) if n not in drained
                  and state.sessions.get((n, fam)) is SessionState.UP]
        unknown = sorted(f"{name}/{f.label}" for (name, f), session in state.sessions.items()
                         if f is fam and session is SessionState.UNKNOWN)
        text = (f"draining {upstream} would leave {fam.label} announced through {len(others)} "
                f"other upstream(s) ({', '.join(others) or 'none'})")
        graceful = sorted(n for n, d in state.overrides.drains.items()
                          if n != upstream and not d.withdraw)
        if graceful:
            text += f" once the drain(s) of {', '.join(graceful)}, still graceful, withdraw"
        text += (f", fewer than min_announcing_upstreams "
                 f"({state.params.min_announcing_upstreams})")
        if unknown:
            text += (f"; sessions not known yet: {', '.join(unknown)} (the controller has just "
                     "started, or ExaBGP has not reported them): try again once `netwatch "
                     "status` shows them")
        return text + "; --force overrides the interlock"
    return refusal
