"""What ExaBGP has been told and what to tell it next: the controller's command bookkeeping. Pure.

`Sync` keeps ExaBGP's RIB in step with the plan through the text API, where every command is
answered once, in order, by a bare `done` or `error` that carries no command id. It is fed
events and asked for lines; it never reads a clock (every call that needs the time takes
`now`, on the monotonic decision clock) and it writes nothing itself:

    sync = Sync(min_announcing_upstreams)
    write(sync.ask_sessions(now))           # `show neighbor json` goes first
    sync.want(expand(plan), neighbors_up)   # whenever the plan or the sessions change
    sync.sessions_reported()                # the answer to `show neighbor json` is in
    sync.peer_reset(neighbor)               # a session went up or down
    sync.session_up(neighbor)               # ... up: its End-of-RIB follows its full state
    report = sync.on_ack(AckKind.DONE, now) # one acknowledgement from ExaBGP
    due = sync.due(now)                     # at every round and after every event:
    for command in due.commands: write(command.line)   # `sync.unsent(command)` if that fails

Reports (`Accepted`, `Rejected`, `LateAck`, `AckTimeout`, ...) say what happened, for the
caller's logs and counters.

Contract:
* nothing is sent before the sessions' state is known: the answer to `show neighbor json`
  (`sessions_reported`), its acknowledgement without an answer (`SessionsUnanswered`), or
  SESSIONS_TIMEOUT_S after `ask_sessions` (`SessionsTimeout`; sessions not reported count as
  possibly up). A respawned controller gets no event for sessions already up: a plan made
  before the answer would be made on guesses;
* `due` sends what `want` asked for and ExaBGP has neither acknowledged nor been sent
  (`protocol.diff` against the acknowledged state plus the commands in flight);
* a command ExaBGP rejects (`Rejected`), or does not acknowledge within ACK_TIMEOUT_S of
  reaching the head of the queue (`AckTimeout`), is retried after RETRY_MIN_S, doubling up to
  RETRY_MAX_S while the rejections go on. The backoff is per key (neighbor, prefix) and per
  rejected value: other keys, and a new decision about the same key, go out at once (one
  command ExaBGP keeps rejecting must not hold back the announcements the interlock needs);
* once the head is late, every command behind it is unconfirmed too (ExaBGP answers in
  order): they all time out. Their acks are still owed: the next that many acks are dropped
  (`LateAck`) before one is matched to a command again. What a timed-out command did is
  unknown: its keys leave the acknowledged state, so their desired state is sent again;
* a diff that raises (a value `protocol` refuses to format) is reported (`DiffFailed`) and
  retried, the whole diff, after the same kind of backoff;
* End-of-RIB (ExaBGP runs with `manual-eor true`): after `session_up(neighbor)`, once ExaBGP
  has acknowledged every key of that neighbor's desired state, its End-of-RIB is due, once.
  Never before: a peer in graceful-restart helper mode drops every stale route it has not
  been sent again when the End-of-RIB arrives, so an early one withdraws everything for as
  long as the announcements take, and one behind a rejected announcement drops the route
  that announcement was to refresh (acknowledged, not only written: one ack round trip
  later). A neighbor withdrawn in the plan gets no announcement, its withdrawal and its
  End-of-RIB, so it stays withdrawn; one whose withdrawal is held (make-before-break) or
  whose announcement is rejected waits with it (its stale routes stay until then, at most
  the restart time). A rejected or timed-out End-of-RIB (ExaBGP refuses it for a session
  that is not established) is sent again after the same kind of backoff while the
  neighbor's session is up;
* make-before-break is a wait: `due` returns the announcements, then only the withdrawals
  that leave every prefix announced through `minimum` neighbors whose session is up,
  counting only acknowledged announcements (`protocol.safe_withdrawals`), and those of an
  operator's forced drain (`want(..., forced=...)`), which go whatever they leave (and so
  does that neighbor's End-of-RIB). The others are held (`WithdrawalsHeld`) and looked at
  again as soon as the last announcement in flight is acknowledged (one ack round trip, not
  a probe interval); a rejected or timed-out announcement keeps holding the withdrawals
  that need it until a retry of it is acknowledged.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from netwatch.controller.plan import Announcement
from netwatch.exabgp import protocol
from netwatch.exabgp.protocol import AckKind, Command, Desired, EndOfRib, Key

RETRY_MIN_S = 1.0  # a rejected command is retried after this long ...
RETRY_MAX_S = 30.0  # ... doubling up to this while ExaBGP keeps rejecting it
# The first diff waits this long at most for the answer to `show neighbor json` (tens of ms in
# the lab); then it goes out with the sessions not reported still UNKNOWN (possibly up).
SESSIONS_TIMEOUT_S = 3.0
# A command at the head of the queue unacknowledged this long counts as rejected. ExaBGP
# 5.0.15 takes ~0.45 s for a line of 1,000 prefixes (docs/controller.md): 20x that.
ACK_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Backoff:
    """A key whose command was rejected (or timed out): `effect` is not sent again before
    `retry_at`; if it is rejected again, the next wait is `next_s`."""

    effect: Announcement | None
    retry_at: float
    next_s: float


# --- what happened, for the caller's logs and counters ---------------------------------------


@dataclass(frozen=True)
class Accepted:
    """ExaBGP acknowledged `command` (`done`): its effect is known now."""

    command: Command


@dataclass(frozen=True)
class Rejected:
    """ExaBGP answered `command` with `error`; its keys wait `retry_in_s`."""

    command: Command
    retry_in_s: float


@dataclass(frozen=True)
class LateAck:
    """The late answer to a command that had timed out, dropped; `still_owed` more to come."""

    kind: AckKind
    still_owed: int


@dataclass(frozen=True)
class SessionsUnanswered:
    """`show neighbor json` was acknowledged without an answer: the desired state goes out,
    sessions not reported counting as possibly up."""

    kind: AckKind


@dataclass(frozen=True)
class AckTimeout:
    """`commands` (the whole queue) were not acknowledged within `after_s`: they count as
    rejected, their keys wait up to `retry_in_s`, `owed_acks` late answers will be dropped."""

    commands: tuple[Command, ...]
    after_s: float
    retry_in_s: float
    owed_acks: int


@dataclass(frozen=True)
class SessionsTimeout:
    """No answer to `show neighbor json` within `after_s`: the desired state goes out anyway."""

    after_s: float


@dataclass(frozen=True)
class DiffFailed:
    """The diff raised `error`; the whole diff is tried again in `retry_in_s`."""

    error: Exception
    retry_in_s: float


@dataclass(frozen=True)
class WithdrawalsHeld:
    """`commands` withdrawals wait for more announcements to be acknowledged (`in_flight`
    commands are in ExaBGP's queue)."""

    commands: int
    in_flight: int


Report = (Accepted | Rejected | LateAck | SessionsUnanswered | AckTimeout | SessionsTimeout
          | DiffFailed | WithdrawalsHeld)


@dataclass(frozen=True)
class Due:
    """What `Sync.due` wants written now, in this order, and what happened on the way."""

    commands: tuple[Command, ...] = ()
    reports: tuple[Report, ...] = ()


class Sync:
    """The bookkeeping between the plan and ExaBGP (module docstring). `minimum` is the
    site's `min_announcing_upstreams`: make-before-break keeps that many announcements."""

    def __init__(self, minimum: int):
        self._minimum = minimum
        self._desired: Desired = {}
        self._up: frozenset[str] = frozenset()
        self._forced: frozenset[str] = frozenset()
        self._acked: dict[Key, Announcement | None] = {}
        self._pending: deque[Command] = deque()
        self._head_since = 0.0  # since when pending[0] has waited for its acknowledgement
        # Acks still owed for commands that timed out: they come first (ExaBGP answers in
        # order) and belong to no command in `pending`.
        self._orphan_acks = 0
        self._backoff: dict[Key, Backoff] = {}
        self._next_retry: float | None = None  # the first backoff to end, of the keys held
        self._diff_retry_at = 0.0  # a diff that raised: the whole diff waits
        self._diff_retry_s = RETRY_MIN_S
        self._dirty = True  # the plan or ExaBGP's side changed since the last diff
        # Withdrawals the last diff held back until more announcements are acknowledged:
        # looked at again when the last announcement in flight is answered.
        self._withdrawals_held = 0
        # None: not asked yet; a number: asked, nothing is sent before the answer or this time
        self._sessions_deadline: float | None = None
        self._sessions_known = False
        # Neighbors whose End-of-RIB is owed (their session came up), and the backoff of
        # those ExaBGP refused it for (effect unused).
        self._eor_owed: set[str] = set()
        self._eor_backoff: dict[str, Backoff] = {}
        # Neighbors whose End-of-RIB went out (acknowledged) since their last reset: a
        # session reported up again (another `show neighbor json`) owes none.
        self._eor_done: set[str] = set()

    # --- read-only views (status, tests) --------------------------------------------------

    @property
    def acknowledged(self) -> Mapping[Key, Announcement | None]:
        """What ExaBGP has acknowledged, per (neighbor, prefix); None: withdrawn. A key that
        is missing is unknown."""
        return MappingProxyType(self._acked)

    @property
    def in_flight(self) -> int:
        """Commands written and not answered yet."""
        return len(self._pending)

    # --- inputs ---------------------------------------------------------------------------

    def want(self, desired: Desired, up: Collection[str], forced: Collection[str] = ()) -> None:
        """The plan, per (neighbor address, prefix) (`protocol.expand`), the neighbors whose
        session is known to be up (make-before-break counts only those), and the neighbors
        an operator's forced drain withdraws (make-before-break lets their withdrawals
        through: `protocol.safe_withdrawals`). Call it when any changes: the next `due`
        diffs again."""
        self._desired = dict(desired)
        self._up = frozenset(up)
        self._forced = frozenset(forced)
        self._dirty = True

    def ask_sessions(self, now: float) -> Command:
        """The `show neighbor json` command, to write first: nothing else goes out before its
        answer (`sessions_reported`) or SESSIONS_TIMEOUT_S. It counts as written."""
        self._sessions_deadline = now + SESSIONS_TIMEOUT_S
        command = protocol.show_neighbors()
        self._sent(command, now)
        return command

    def sessions_reported(self) -> None:
        """ExaBGP answered `show neighbor json` (the caller has fed it to the plan)."""
        self._sessions_known = True

    def peer_reset(self, neighbor: str) -> None:
        """`neighbor`'s session went up or down: what ExaBGP holds for it is no longer known
        to be what was acknowledged, so its full desired state is sent again."""
        for key in [k for k in self._acked if k[0] == neighbor]:
            del self._acked[key]
        self._eor_done.discard(neighbor)
        self._dirty = True

    def session_up(self, neighbor: str) -> None:
        """`neighbor`'s session is up (an event, or the answer to `show neighbor json`): its
        End-of-RIB is due once its full desired state is acknowledged (module docstring).
        Call it with `peer_reset` on an `up` event. Once per session: after its End-of-RIB
        was acknowledged, only a `peer_reset` makes it owe another."""
        if neighbor in self._eor_done:
            return
        self._eor_owed.add(neighbor)
        self._eor_backoff.pop(neighbor, None)

    def on_ack(self, kind: AckKind, now: float) -> Report | None:
        """One `done` or `error`, matched to the oldest command in flight (none: None)."""
        if self._orphan_acks:
            # The late answer to a command that timed out, not to pending[0]: ExaBGP is
            # answering again, so the head has not been waiting at ExaBGP's head yet.
            self._orphan_acks -= 1
            self._head_since = now
            return LateAck(kind, self._orphan_acks)
        if not self._pending:
            return None
        command = self._pending.popleft()
        self._head_since = now
        if command.line == protocol.SHOW_NEIGHBORS:
            # The answer comes before its ack: no answer by now means none is coming.
            if self._sessions_known:
                return None
            self._sessions_known = True
            return SessionsUnanswered(kind)
        if isinstance(command, EndOfRib):
            if kind is AckKind.ERROR:
                return Rejected(command, self._eor_again(command.neighbor, now))
            self._eor_backoff.pop(command.neighbor, None)
            if command.neighbor not in self._eor_owed:  # not owed again by a reset since
                self._eor_done.add(command.neighbor)
            return Accepted(command)
        if kind is AckKind.ERROR:
            return Rejected(command, self._back_off(command, now))
        self._acked.update(command.effect)
        for key in command.effect:
            self._backoff.pop(key, None)
        if (self._withdrawals_held and not command.withdraws
                and all(c.withdraws or isinstance(c, EndOfRib) for c in self._pending)):
            self._dirty = True  # the last announcement in flight is in: look at them again
        return Accepted(command)

    def unsent(self, command: Command) -> None:
        """The pipe refused `command` (returned by `due` or `ask_sessions`): no answer will
        come for it, and the next `due` diffs again."""
        for i, c in enumerate(self._pending):
            if c is command:
                del self._pending[i]
                break
        if isinstance(command, EndOfRib):
            self._eor_owed.add(command.neighbor)
        self._dirty = True

    # --- output ---------------------------------------------------------------------------

    def due(self, now: float) -> Due:
        """The commands to write now, announcements first (they count as written), and the
        reports of what happened: commands timed out, the session gate opened by its
        timeout, a diff that failed, withdrawals held."""
        reports: list[Report] = []
        timeout = self._expire(now)
        if timeout is not None:
            reports.append(timeout)
        if self._next_retry is not None and now >= self._next_retry:
            self._dirty = True  # a held-back key may go again
        if not self._may_send(now, reports):
            return Due((), tuple(reports))
        commands = self._diff(now, reports) if self._dirty and self._diff_retry_at <= now else []
        return Due((*commands, *self._end_of_ribs(now)), tuple(reports))

    def _diff(self, now: float, reports: list[Report]) -> list[Command]:
        """The announcements, then the withdrawals make-before-break lets through, of the
        diff between the plan and what ExaBGP knows; marked written."""
        try:
            desired = self._desired
            waiting = [b.retry_at for k, b in self._backoff.items()
                       if b.retry_at > now and k in desired and desired[k] == b.effect]
            if waiting:
                desired = {k: v for k, v in desired.items() if not self._held_back(k, v, now)}
            commands = protocol.diff(desired, self._known())
        except Exception as exc:  # the plan is still to be sent: retried after a backoff
            reports.append(DiffFailed(exc, self._diff_retry_s))
            self._diff_retry_at = now + self._diff_retry_s
            self._diff_retry_s = min(RETRY_MAX_S, 2 * self._diff_retry_s)
            return []
        self._diff_retry_s = RETRY_MIN_S
        self._next_retry = min(waiting) if waiting else None
        self._dirty = False
        out = [c for c in commands if not c.withdraws]
        for command in out:
            self._sent(command, now)
        withdrawals = [c for c in commands if c.withdraws]
        ready = protocol.safe_withdrawals(withdrawals, self._acked, self._pending, self._up,
                                          self._minimum, self._forced) if withdrawals else []
        self._withdrawals_held = len(withdrawals) - len(ready)
        if self._withdrawals_held:
            reports.append(WithdrawalsHeld(self._withdrawals_held, len(self._pending)))
        for command in ready:
            self._sent(command, now)
        return [*out, *ready]

    def _end_of_ribs(self, now: float) -> list[Command]:
        """The End-of-RIBs due now: owed, session up, not backing off, and every desired key
        of the neighbor acknowledged by ExaBGP with its desired value."""
        ready = [n for n in self._eor_owed if n in self._up and not (
            n in self._eor_backoff and self._eor_backoff[n].retry_at > now)]
        if not ready:
            return []
        missing = object()
        out = []
        for neighbor in sorted(ready):
            if all(self._acked.get(key, missing) == want
                   for key, want in self._desired.items() if key[0] == neighbor):
                command = protocol.end_of_rib(neighbor)
                self._eor_owed.discard(neighbor)
                self._sent(command, now)
                out.append(command)
        return out

    def _eor_again(self, neighbor: str, now: float) -> float:
        """Owe `neighbor`'s End-of-RIB again after RETRY_MIN_S, doubling up to RETRY_MAX_S
        while ExaBGP keeps refusing it. Returns the wait."""
        b = self._eor_backoff.get(neighbor)
        wait = b.next_s if b is not None else RETRY_MIN_S
        self._eor_backoff[neighbor] = Backoff(None, now + wait, min(RETRY_MAX_S, 2 * wait))
        self._eor_owed.add(neighbor)
        return wait

    # --- inside ---------------------------------------------------------------------------

    def _known(self) -> dict[Key, Announcement | None]:
        known = dict(self._acked)
        for command in self._pending:
            known.update(command.effect)
        return known

    def _sent(self, command: Command, now: float) -> None:
        if not self._pending:
            self._head_since = now
        self._pending.append(command)

    def _may_send(self, now: float, reports: list[Report]) -> bool:
        if self._sessions_known:
            return True
        if self._sessions_deadline is None or now < self._sessions_deadline:
            return False
        self._sessions_known = True
        reports.append(SessionsTimeout(SESSIONS_TIMEOUT_S))
        return True

    def _held_back(self, key: Key, want: Announcement | None, now: float) -> bool:
        b = self._backoff.get(key)
        return b is not None and b.retry_at > now and b.effect == want

    def _back_off(self, command: Command, now: float) -> float:
        """Hold back each key of a rejected (or timed-out) command: RETRY_MIN_S, doubling up
        to RETRY_MAX_S while the same value keeps being rejected. Returns the wait."""
        wait = RETRY_MIN_S
        for key, effect in command.effect.items():
            b = self._backoff.get(key)
            wait = b.next_s if b is not None and b.effect == effect else RETRY_MIN_S
            self._backoff[key] = Backoff(effect, now + wait, min(RETRY_MAX_S, 2 * wait))
        self._dirty = True
        return wait

    def _expire(self, now: float) -> AckTimeout | None:
        """Give up on the acknowledgements that have not come (module docstring)."""
        if not self._pending or now - self._head_since < ACK_TIMEOUT_S:
            return None
        timed_out = tuple(self._pending)
        self._orphan_acks += len(timed_out)
        waits = []
        for command in timed_out:
            if isinstance(command, EndOfRib):  # not known to be sent: owed again
                waits.append(self._eor_again(command.neighbor, now))
                continue
            for key in command.effect:
                self._acked.pop(key, None)
            waits.append(self._back_off(command, now))
        self._pending.clear()
        self._dirty = True
        return AckTimeout(timed_out, ACK_TIMEOUT_S, max(waits), self._orphan_acks)
