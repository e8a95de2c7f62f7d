"""The shared vocabulary: roles, health states. Pure: no I/O.

Module-specific state (the uplink state machine, the transit verdicts) lives in the module
that decides it; only the words that several modules share are here.
"""

from __future__ import annotations

import enum


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
