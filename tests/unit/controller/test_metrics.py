"""The controller's gauges as dashboards read them: one-hot per upstream (and prefix)."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from netwatch.controller.metrics import ControllerMetrics
from netwatch.controller.params import TransitState
from netwatch.controller.plan import AnnouncementMode


@pytest.mark.parametrize("mode", list(AnnouncementMode))
def test_announcement_mode_is_one_hot(mode):
    registry = CollectorRegistry()
    metrics = ControllerMetrics(registry)
    metrics.set_mode("t1", "198.51.100.0/24", AnnouncementMode.NORMAL)
    metrics.set_mode("t1", "198.51.100.0/24", mode)
    shown = {m.value: registry.get_sample_value(
        "netwatch_announcement_mode", {"upstream": "t1", "prefix": "198.51.100.0/24",
                                       "mode": m.value}) for m in AnnouncementMode}
    assert shown == {m.value: (1 if m is mode else 0) for m in AnnouncementMode}


def test_announcement_mode_stays_one_hot_through_changes():
    """Only what changed is written (set_mode remembers what it showed): back and forth."""
    registry = CollectorRegistry()
    metrics = ControllerMetrics(registry)
    for mode in (AnnouncementMode.NORMAL, AnnouncementMode.WITHDRAWN, AnnouncementMode.WITHDRAWN,
                 AnnouncementMode.PREPEND, AnnouncementMode.NORMAL):
        metrics.set_mode("t1", "198.51.100.0/24", mode)
        shown = {m: registry.get_sample_value(
            "netwatch_announcement_mode", {"upstream": "t1", "prefix": "198.51.100.0/24",
                                           "mode": m.value}) for m in AnnouncementMode}
        assert shown == {m: (1 if m is mode else 0) for m in AnnouncementMode}


def test_transit_state_is_one_hot():
    registry = CollectorRegistry()
    metrics = ControllerMetrics(registry)
    metrics.set_state("t2", TransitState.FAILED)
    metrics.set_state("t2", TransitState.DEGRADED)
    shown = {s.value: registry.get_sample_value(
        "netwatch_transit_state", {"upstream": "t2", "state": s.value}) for s in TransitState}
    assert shown == {"healthy": 0, "degraded": 1, "failed": 0}
