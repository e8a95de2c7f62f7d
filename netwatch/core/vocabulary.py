"""The shared vocabulary: address families, health, uplink roles, transition errors. Pure.

Module-specific state (the uplink state machine, the transit verdicts) lives in the module
that decides it; only the words that several packages share are here.
"""

from __future__ import annotations

import enum


class Family(enum.IntEnum):
    """An address family. The value is the IP version; `label` is what metrics, logs, the
    state file and the CLI print ("ipv4", "ipv6")."""

    V4 = 4
    V6 = 6

    @property
    def label(self) -> str:
        return f"ipv{self.value}"

    @classmethod
    def from_label(cls, text: str) -> Family:
        """'ipv4' -> V4. Raises ValueError for anything else."""
        for family in cls:
            if family.label == text:
                return family
        raise ValueError(f"{text!r} is not ipv4 or ipv6")


class Health(enum.Enum):
    """What rise/fall hysteresis concluded about one monitored thing (link, gateway, provider).

    UNKNOWN is the state before the first verdict: neither trusted nor condemned.
    """

    UNKNOWN = "unknown"
    UP = "up"
    DOWN = "down"


class UplinkRole(enum.Enum):
    PRIMARY = "primary"
    SECONDARY = "secondary"

    @property
    def other(self) -> UplinkRole:
        return UplinkRole.SECONDARY if self is UplinkRole.PRIMARY else UplinkRole.PRIMARY


class TransitionError(RuntimeError):
    """A state change that a state machine's rules forbid: a bug, raised, never logged and
    carried on (the uplink modes, the transit states)."""
