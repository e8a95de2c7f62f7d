"""The uplink state machine: observations in, the desired default route out. Pure.

One server, two uplinks (primary, secondary), one active uplink that carries the IPv4 and
IPv6 default routes. `step(state, observation, now) -> (state, actions)` is the whole decision:

- Each uplink is judged on its own: its carrier (a hard fact from netlink) and one rise/fall
  hysteresis per probe kind (the gateway over ARP/ICMP, the IPv6 gateway over neighbour
  solicitation, the targets beyond the gateway per family). An uplink is DOWN when its carrier
  is lost or any of its probe kinds is DOWN, UP when its carrier is up and every kind is UP,
  and UNKNOWN otherwise (at start, or while a kind climbs back).
- Fail over when the active uplink is DOWN and the other one is UP. Fail back to the primary
  once it has been UP for `hold_down_s` without interruption, when failback is automatic;
  never by itself when it is manual (an operator's `UseUplink` does it).
- Both uplinks DOWN: keep the current routes (a route that may still work beats no route)
  and report it once, with a `BothDown` action.
- The active uplink's link is gone (carrier lost, admin down, vanished) while the other's
  carrier is up: move to the other at once, whatever its probes say. The kernel has deleted
  (or cannot use) every route through a dead link, so "keeping" it would leave the server
  with no default route at all; a probe-dead uplink with a link beats that.
- Route snapshots (the kernel's real default routes, read after every route or link event
  and periodically) are compared with the desired state; any difference, whether an
  operator's manual change or the kernel deleting the routes of a link set admin-down, gives
  a `SetDefaultRoute` to repair it. The first snapshot adopts the uplink it finds.

Nothing here reads a clock or touches a socket: `now` is seconds on any monotonic origin.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace

from netwatch.core.hysteresis import HoldDown, Hysteresis
from netwatch.core.vocabulary import Family, Health, TransitionError, UplinkRole


class ProbeKind(enum.Enum):
    """What one probe stream of an uplink watches. The value is the metric label.

    `family`: the address family it probes; `beyond`: True for the targets past the gateway
    (a gateway that answers but forwards nothing), False for the gateway itself.
    """

    GATEWAY = ("gateway", Family.V4, False)  # ARP, or ICMP echo with `method: icmp`
    GATEWAY6 = ("gateway6", Family.V6, False)  # neighbour solicitation, or ICMPv6 echo
    BEYOND4 = ("beyond4", Family.V4, True)  # echo to the IPv4 `beyond` targets
    BEYOND6 = ("beyond6", Family.V6, True)  # echo to the IPv6 `beyond` targets

    def __new__(cls, label: str, family: Family, beyond: bool) -> ProbeKind:
        member = object.__new__(cls)
        member._value_ = label
        # Plain attributes behind the properties: read per probe on the agent's hot path.
        member._family = family
        member._beyond = beyond
        return member

    @property
    def family(self) -> Family:
        return self._family

    @property
    def beyond(self) -> bool:
        return self._beyond

    @staticmethod
    def beyond_of(family: Family) -> ProbeKind:
        return ProbeKind.BEYOND4 if family is Family.V4 else ProbeKind.BEYOND6


class Mode(enum.Enum):
    """Which uplink carries the default routes. STARTING lasts until the first route snapshot."""

    STARTING = "starting"
    ON_PRIMARY = "on_primary"
    ON_SECONDARY = "on_secondary"

    @property
    def role(self) -> UplinkRole | None:
        return {Mode.ON_PRIMARY: UplinkRole.PRIMARY, Mode.ON_SECONDARY: UplinkRole.SECONDARY}.get(
            self
        )

    @staticmethod
    def using(role: UplinkRole) -> Mode:
        return Mode.ON_PRIMARY if role is UplinkRole.PRIMARY else Mode.ON_SECONDARY


# Every mode change must be in this table; anything else is a bug and raises.
_TRANSITIONS: dict[Mode, frozenset[Mode]] = {
    Mode.STARTING: frozenset({Mode.ON_PRIMARY, Mode.ON_SECONDARY}),
    Mode.ON_PRIMARY: frozenset({Mode.ON_SECONDARY}),
    Mode.ON_SECONDARY: frozenset({Mode.ON_PRIMARY}),
}


class FailoverCause(enum.Enum):
    """Why the active uplink changed. The value is the `reason` label of
    netwatch_agent_failovers_total, which dashboards and alerts read."""

    CARRIER = "carrier"  # the active uplink's link is gone (carrier, admin down, vanished)
    GATEWAY = "gateway"  # its gateway stopped answering (a gray failure)
    BEYOND = "beyond"  # its gateway answers, the targets beyond it do not
    FAILBACK = "failback"  # the primary has been stable for the hold-down
    OPERATOR = "operator"  # an operator's UseUplink


class Carrier(enum.Enum):
    UP = "up"
    NO_CARRIER = "carrier lost"
    ADMIN_DOWN = "admin down"
    VANISHED = "interface vanished"


# ---------------------------------------------------------------------------- observations


@dataclass(frozen=True)
class ProbeResult:
    """One probe of one kind through one uplink: `rtt_s` None means no answer in time."""

    uplink: UplinkRole
    kind: ProbeKind
    rtt_s: float | None
    target: str = ""
    timeout_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.rtt_s is not None


@dataclass(frozen=True)
class CarrierChange:
    """The link of an uplink changed (netlink): carrier, admin state, or existence."""

    uplink: UplinkRole
    carrier: Carrier


@dataclass(frozen=True)
class RouteSnapshot:
    """The kernel's preferred default route per family: the uplink it goes through, or None
    (no default route, or one through an interface or gateway that is not an uplink's)."""

    v4: UplinkRole | None
    v6: UplinkRole | None = None

    def get(self, family: Family) -> UplinkRole | None:
        return self.v4 if family is Family.V4 else self.v6


@dataclass(frozen=True)
class UseUplink:
    """An operator's order: carry the default routes through `uplink` (manual failback)."""

    uplink: UplinkRole
    reason: str = "operator request"


Observation = ProbeResult | CarrierChange | RouteSnapshot | UseUplink


# --------------------------------------------------------------------------------- actions


@dataclass(frozen=True)
class SetDefaultRoute:
    """Replace the default route of `family` with one via `uplink` (its gateway and source)."""

    family: Family
    uplink: UplinkRole
    reason: str
    failover: bool  # True: the active uplink changed; False: a repair of the same choice


@dataclass(frozen=True)
class BothDown:
    """Both uplinks are DOWN: the routes are kept as they are. Reported once per episode."""

    reason: str


@dataclass(frozen=True)
class UplinkHealthChanged:
    """An uplink's verdict changed (for logs and metrics)."""

    uplink: UplinkRole
    health: Health
    reason: str


@dataclass(frozen=True)
class Failover:
    """The active uplink changed, for `cause`; `reason` says what happened, for the log."""

    from_uplink: UplinkRole | None
    to_uplink: UplinkRole
    cause: FailoverCause
    reason: str


Action = SetDefaultRoute | BothDown | UplinkHealthChanged | Failover


# ----------------------------------------------------------------------------------- state


@dataclass(frozen=True)
class UplinkView:
    """Everything known about one uplink."""

    carrier: Carrier | None
    probes: tuple[tuple[ProbeKind, Hysteresis], ...]  # in config order
    health: Health = Health.UNKNOWN
    failing_since: dict[ProbeKind, float] = field(default_factory=dict, compare=False)
    failures: dict[ProbeKind, int] = field(default_factory=dict, compare=False)
    reason: str = ""  # why it is in its current health

    def kind(self, kind: ProbeKind) -> Hysteresis:
        for known, hyst in self.probes:
            if known is kind:
                return hyst
        raise KeyError(f"no probe kind {kind!r} on this uplink")

    def with_kind(self, kind: ProbeKind, hyst: Hysteresis) -> UplinkView:
        return replace(self, probes=tuple((k, hyst if k is kind else h) for k, h in self.probes))

    def verdict(self) -> Health:
        if self.carrier is not None and self.carrier is not Carrier.UP:
            return Health.DOWN
        healths = [h.health for _, h in self.probes]
        if Health.DOWN in healths:
            return Health.DOWN
        if self.carrier is Carrier.UP and all(h is Health.UP for h in healths):
            return Health.UP
        return Health.UNKNOWN


@dataclass(frozen=True)
class Settings:
    fall: int = 3
    rise: int = 5
    hold_down_s: float = 30.0
    failback_auto: bool = True
    families: tuple[Family, ...] = (Family.V4,)  # which default routes are managed
    kinds: tuple[ProbeKind, ...] = (ProbeKind.GATEWAY,)  # probe streams per uplink

    def __post_init__(self) -> None:
        # A bare string here would never match a ProbeResult's kind: refuse it at once.
        for kind in self.kinds:
            if not isinstance(kind, ProbeKind):
                raise TypeError(f"probe kind {kind!r} is not a ProbeKind")


@dataclass(frozen=True)
class State:
    settings: Settings
    mode: Mode
    uplinks: dict[UplinkRole, UplinkView]
    primary_stable: HoldDown
    both_down: bool = False
    routes: RouteSnapshot | None = None  # the last snapshot seen

    @property
    def active(self) -> UplinkRole | None:
        return self.mode.role

    def health(self, role: UplinkRole) -> Health:
        return self.uplinks[role].health


def initial_state(settings: Settings) -> State:
    """The state before any observation: STARTING, both uplinks UNKNOWN."""
    fresh = Hysteresis(fall=settings.fall, rise=settings.rise)
    view = UplinkView(carrier=None, probes=tuple((k, fresh) for k in settings.kinds))
    return State(
        settings=settings,
        mode=Mode.STARTING,
        uplinks={UplinkRole.PRIMARY: view, UplinkRole.SECONDARY: view},
        primary_stable=HoldDown(settings.hold_down_s),
    )


def _transition(state: State, mode: Mode) -> State:
    if mode not in _TRANSITIONS[state.mode]:
        raise TransitionError(f"uplink mode {state.mode.value} -> {mode.value} is not allowed")
    return replace(state, mode=mode)


# ------------------------------------------------------------------------------------ step


def step(state: State, obs: Observation, now: float) -> tuple[State, list[Action]]:
    """Apply one observation at time `now`; return the new state and the actions to carry out.

    Raises TransitionError on a mode change the transition table forbids (a bug), and
    KeyError for a probe kind the settings do not declare.
    """
    actions: list[Action] = []
    if isinstance(obs, ProbeResult):
        if obs.ok and steady(state, obs.uplink, now):
            # The common case, 20 times a second per kind and uplink: nothing can change.
            # Skipping the copies cut the agent's CPU by a third (measured, 160 probes/s).
            return state, actions
        state = _observe_probe(state, obs, now, actions)
    elif isinstance(obs, CarrierChange):
        state = _observe_carrier(state, obs, now, actions)
    elif isinstance(obs, RouteSnapshot):
        state = replace(state, routes=obs)
        if state.mode is Mode.STARTING:
            adopted = obs.v4 or obs.v6 or UplinkRole.PRIMARY
            state = _transition(state, Mode.using(adopted))
    elif isinstance(obs, UseUplink):
        if state.mode is not Mode.STARTING and obs.uplink is not state.active:
            state = _switch(state, obs.uplink, FailoverCause.OPERATOR, obs.reason, actions)
    else:
        raise TypeError(f"not an observation: {obs!r}")
    state = _decide(state, now, actions)
    state = _repair_routes(state, actions)
    return state, actions


def steady(state: State, role: UplinkRole, now: float) -> bool:
    """True when a *good* probe of any kind on uplink `role` at `now` changes nothing, so
    `step` would return `state` and no action: the uplink is UP with every kind saturated at
    +rise and no failure pending (the hysteresis stays put), the primary's hold-down has
    started (its update is a no-op), the routes seen match the active uplink (no repair), and
    no failback is due. Any other decision was already taken by the step that led to `state`:
    a saturated good probe changes no input of it but the clock, and only failback reads it.
    The agent asks this before building an observation (the cheapest path per probe)."""
    active = state.mode.role
    if active is None:
        return False
    view = state.uplinks[role]
    if (
        view.health is not Health.UP
        or view.failing_since
        or not all(h.score == h.rise for _, h in view.probes)
        or state.routes is None
        or not all(state.routes.get(f) is active for f in state.settings.families)
    ):
        return False
    if role is UplinkRole.PRIMARY and state.primary_stable.since is None:
        return False
    return not (
        active is UplinkRole.SECONDARY
        and state.settings.failback_auto
        and state.primary_stable.ready(now)
    )


def _observe_probe(state: State, obs: ProbeResult, now: float, actions: list[Action]) -> State:
    view = state.uplinks[obs.uplink]
    view = view.with_kind(obs.kind, view.kind(obs.kind).observe(obs.ok))
    failing_since = dict(view.failing_since)
    failures = dict(view.failures)
    if obs.ok:
        failing_since.pop(obs.kind, None)
        failures.pop(obs.kind, None)
    else:
        failing_since.setdefault(obs.kind, now - obs.timeout_s)
        failures[obs.kind] = failures.get(obs.kind, 0) + 1
    view = replace(view, failing_since=failing_since, failures=failures)
    if obs.ok:
        why = f"{_what(obs)} answers again: {obs.rtt_s * 1000:.1f} ms"
    else:
        silent_ms = (now - failing_since[obs.kind]) * 1000
        why = f"{_what(obs)} silent: {failures[obs.kind]} probes, {silent_ms:.0f} ms"
    return _set_view(state, obs.uplink, view, why, now, actions)


def _what(obs: ProbeResult) -> str:
    label = "beyond target" if obs.kind.beyond else "gateway"
    return f"{label} {obs.target}" if obs.target else label


def _observe_carrier(state: State, obs: CarrierChange, now: float, actions: list[Action]) -> State:
    view = state.uplinks[obs.uplink]
    if obs.carrier is view.carrier:
        return state
    if obs.carrier is Carrier.UP:
        # The carrier is back, but the gateway has to prove itself: probes restart from zero
        # (UNKNOWN), so the uplink becomes UP only after `rise` good probes of every kind.
        probes = tuple((k, h.force(Health.UNKNOWN)) for k, h in view.probes)
        why = "carrier up"
    else:
        probes = tuple((k, h.force(Health.DOWN)) for k, h in view.probes)
        why = obs.carrier.value
    view = replace(view, carrier=obs.carrier, probes=probes, failing_since={}, failures={})
    return _set_view(state, obs.uplink, view, why, now, actions)


def _set_view(
    state: State, role: UplinkRole, view: UplinkView, why: str, now: float, actions: list[Action]
) -> State:
    health = view.verdict()
    if health is not view.health:
        view = replace(view, health=health, reason=why)
        actions.append(UplinkHealthChanged(role, health, why))
    uplinks = dict(state.uplinks)
    uplinks[role] = view
    state = replace(state, uplinks=uplinks)
    if role is UplinkRole.PRIMARY:
        # Stable means UP with no failed probe since: one lost probe restarts the hold-down.
        stable = health is Health.UP and not _failing_now(view)
        state = replace(state, primary_stable=state.primary_stable.update(stable, now))
    return state


def _cause(view: UplinkView) -> FailoverCause:
    if view.carrier is not None and view.carrier is not Carrier.UP:
        return FailoverCause.CARRIER
    down = [k for k, h in view.probes if h.health is Health.DOWN]
    if down and all(k.beyond for k in down):
        return FailoverCause.BEYOND
    return FailoverCause.GATEWAY


def _failing_now(view: UplinkView) -> bool:
    """True while any probe kind's latest run is bad: an UP uplink that is starting to fail
    (and both gateways going silent together reach it a probe apart) is no place to go."""
    return any(h.score < 0 for _, h in view.probes)


def _link_lost(view: UplinkView) -> bool:
    """True when the uplink's link is known to be unusable (carrier lost, admin down,
    vanished): no default route through it can carry a packet, and the kernel deletes them
    on admin down. Unknown (None, before the first link read) is not lost."""
    return view.carrier is not None and view.carrier is not Carrier.UP


def _decide(state: State, now: float, actions: list[Action]) -> State:
    active = state.active
    if active is None:
        return state
    other = active.other
    a, o = state.health(active), state.health(other)
    if _link_lost(state.uplinks[active]) and state.uplinks[other].carrier is Carrier.UP:
        # Checked before the health rule: an UP other that is failing now, or one DOWN or
        # still UNKNOWN on its probes, is a worse place than usual but still better than no
        # route at all (with the secondary's gateway silent and the primary set admin-down,
        # keeping the primary meant re-adding a route the kernel refuses, for ever). It
        # cannot flap: the new active's carrier is up, so this rule needs another carrier
        # event to fire again, and going back through the health rule needs the old active
        # UP, `rise` good probes after its carrier returned (and failback its hold-down).
        state = _switch(state, other, FailoverCause.CARRIER, _link_lost_reason(state, active),
                        actions)
    elif a is Health.DOWN and o is Health.UP and _failing_now(state.uplinks[other]) is False:
        view = state.uplinks[active]
        state = _switch(state, other, _cause(view), f"{active.value}: {view.reason}", actions)
    elif (
        active is UplinkRole.SECONDARY
        and state.settings.failback_auto
        and state.primary_stable.ready(now)
    ):
        held = now - (state.primary_stable.since or now)
        reason = f"primary stable for {held:.1f} s (hold-down {state.settings.hold_down_s:g} s)"
        state = _switch(state, UplinkRole.PRIMARY, FailoverCause.FAILBACK, reason, actions)

    both = all(v.health is Health.DOWN for v in state.uplinks.values())
    if both and not state.both_down:
        reasons = "; ".join(f"{r.value}: {v.reason}" for r, v in state.uplinks.items())
        if state.active is active:
            where = f"keeping the routes via {active.value}"
        else:
            where = f"routes moved to {state.active.value}, whose link is up"
        actions.append(BothDown(f"both uplinks down, {where}: {reasons}"))
    return replace(state, both_down=both)


def _link_lost_reason(state: State, active: UplinkRole) -> str:
    """`primary: admin down`, and when the other uplink is not UP, why it is used anyway."""
    lost, other = state.uplinks[active], state.uplinks[active.other]
    reason = f"{active.value}: {lost.carrier.value}"
    if other.health is Health.UP:
        return reason
    state_of = f"{other.health.value.upper()}" + (f" ({other.reason})" if other.reason else "")
    return (f"{reason}; {active.other.value} is {state_of} but its link is up: "
            f"a route that may work beats none")


def _switch(
    state: State, to: UplinkRole, cause: FailoverCause, reason: str, actions: list[Action]
) -> State:
    previous = state.active
    state = _transition(state, Mode.using(to))
    actions.append(Failover(previous, to, cause, reason))
    for family in state.settings.families:
        actions.append(SetDefaultRoute(family, to, reason, failover=True))
    # The routes now match the new choice as far as this state knows: a later snapshot that
    # still shows the old uplink (read before the replace landed) is repaired again, which
    # is idempotent.
    routes = RouteSnapshot(v4=to, v6=to if Family.V6 in state.settings.families else None)
    return replace(state, routes=routes)


def _repair_routes(state: State, actions: list[Action]) -> State:
    active, routes = state.active, state.routes
    if active is None or routes is None:
        return state
    for family in state.settings.families:
        seen = routes.get(family)
        if seen is active:
            continue
        if any(isinstance(a, SetDefaultRoute) and a.family is family for a in actions):
            continue
        what = f"via {seen.value}" if seen is not None else "missing or foreign"
        actions.append(SetDefaultRoute(
            family, active, f"IPv{family.value} default route {what}, expected via {active.value}",
            failover=False,
        ))
    # Assume the repair lands; the next snapshot tells.
    fixed = RouteSnapshot(
        v4=active if Family.V4 in state.settings.families else routes.v4,
        v6=active if Family.V6 in state.settings.families else routes.v6,
    )
    return replace(state, routes=fixed)
