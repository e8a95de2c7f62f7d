"""FAILED's look-back against the other upstreams over the same time (verdict._recent_excess),
on hand-made windows: what counts as a witness, and from when the others' probes count."""

from __future__ import annotations

import pytest

from netwatch.controller.params import TransitState
from netwatch.controller.verdict import ProbeWindow, assess
from tests.unit.controller.test_schedule import params

RTT = 0.001
TARGETS = [f"x{k}" for k in range(5)]


def window_with(probes: dict[str, list[tuple[float, bool]]]) -> ProbeWindow:
    """Every target gets the same probes per upstream: [(sent at, lost)], in sending order."""
    window = ProbeWindow(2.0, 5)
    for target in TARGETS:
        for up, seq in probes.items():
            for at, lost in seq:
                window.record(up, target, at, None if lost else RTT)
    return window


def history(upto: float, step: float = 0.2) -> list[tuple[float, bool]]:
    return [(round(k * step, 3), False) for k in range(round(upto / step) + 1)]


def test_no_early_failed_before_the_others_have_a_probe_since_our_first_loss():
    """t4's last four probes (sent from 1.06 on) are lost; t1-t3's latest known were sent at
    1.007, before: how the targets looked through them since is not known yet."""
    ours = [*[(at + 0.06, False) for at, _ in history(0.8)], (1.06, True), (1.16, True),
            (1.2, True), (1.24, True)]
    others = history(1.0)
    window = window_with({"t1": others, "t2": others, "t3": others, "t4": ours})
    a = assess(params(), window.stats(1.3))["t4"]
    assert a.recent_loss_excess == 0.0
    assert a.level is not TransitState.FAILED


def test_others_answering_since_our_first_loss_make_it_failed():
    ours = [*[(at + 0.06, False) for at, _ in history(0.8)], (1.06, True), (1.16, True),
            (1.2, True), (1.24, True)]
    others = history(1.2)  # ... and 1.2, answered
    window = window_with({"t1": others, "t2": others, "t3": others, "t4": ours})
    a = assess(params(), window.stats(1.45))["t4"]
    assert a.recent_loss_excess >= 0.8 - 1e-9
    assert a.level is TransitState.FAILED


def test_the_others_count_from_our_oldest_latest_probe_on():
    """The others lost the probe they sent at 1.2, after our first loss (a common cause):
    since our oldest latest probe (0.86) they lost 1 of 2, so we are 0.8 - 0.5 worse, not
    0.8 - 0.2 (their last five, of which four were before the fault)."""
    ours = [*[(at + 0.06, False) for at, _ in history(0.8)], (1.06, True), (1.16, True),
            (1.2, True), (1.24, True)]
    others = [*history(1.0), (1.2, True)]
    window = window_with({"t1": others, "t2": others, "t3": others, "t4": ours})
    a = assess(params(), window.stats(1.45))["t4"]
    assert a.recent_loss_excess == pytest.approx(0.8 - 0.5)
    assert a.level is not TransitState.FAILED


def test_too_few_targets_with_a_witness_give_no_early_verdict():
    """Three targets are needed (min_targets); only two have another upstream probed since
    our first loss."""
    window = ProbeWindow(2.0, 5)
    ours = [*[(at + 0.06, False) for at, _ in history(0.8)], (1.06, True), (1.16, True),
            (1.2, True), (1.24, True)]
    for k, target in enumerate(TARGETS):
        others = history(1.2 if k < 2 else 1.0)
        for up in ("t1", "t2", "t3"):
            for at, lost in others:
                window.record(up, target, at, None if lost else RTT)
        for at, lost in ours:
            window.record("t4", target, at, None if lost else RTT)
    a = assess(params(), window.stats(1.45))["t4"]
    assert a.recent_loss_excess == 0.0
    assert a.level is not TransitState.FAILED
