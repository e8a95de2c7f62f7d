"""kv() and setup_logging(): one key=value line per event, whatever the values hold."""

from __future__ import annotations

import enum
import io
import logging

import pytest

from netwatch.core.vocabulary import Family, UplinkRole
from netwatch.runtime.logs import kv, setup_logging


def test_fields_follow_the_event_in_order_and_none_is_left_out():
    assert kv("route", uplink=UplinkRole.PRIMARY, family=None, via="100.64.1.1", took_ms=1.5) == (
        "event=route uplink=primary via=100.64.1.1 took_ms=1.5")


def test_enums_print_their_value():
    class Cause(enum.Enum):
        CARRIER = "carrier"

    assert kv("failover", cause=Cause.CARRIER, family=Family.V6) == (
        "event=failover cause=carrier family=6")


@pytest.mark.parametrize("value, shown", [
    ("gateway 100.64.1.1 silent", '"gateway 100.64.1.1 silent"'),
    ('say "hi"', '"say \\"hi\\""'),
    ("a=b", '"a=b"'),
    ("", '""'),
    ("C:\\x y", '"C:\\\\x y"'),
])
def test_a_value_that_could_pass_for_two_fields_is_quoted(value, shown):
    assert kv("e", reason=value) == f"event=e reason={shown}"


def test_a_control_character_never_breaks_the_line():
    line = kv("operator_request", reason='drain\nevent=failover uplink="x"', note="\x1b[2J")
    assert "\n" not in line and "\x1b" not in line
    assert line == ('event=operator_request reason="drain\\\\nevent=failover uplink=\\"x\\"" '
                    "note=\\x1b[2J")


@pytest.fixture
def netwatch_logger():
    """The `netwatch` logger as setup_logging() leaves it, restored afterwards."""
    root = logging.getLogger("netwatch")
    saved = root.handlers[:], root.level, root.propagate
    yield root
    root.handlers[:], root.level, root.propagate = saved


def test_setup_logging_writes_one_key_value_line_per_event(netwatch_logger):
    stream = io.StringIO()
    setup_logging(stream=stream)
    setup_logging(stream=stream)  # again: replaces its handler, no line written twice
    log = logging.getLogger("netwatch.agent")
    log.debug(kv("hidden"))
    log.warning(kv("failover", uplink=UplinkRole.SECONDARY))
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("ts=") and lines[0].endswith(
        " level=WARNING logger=netwatch.agent event=failover uplink=secondary")


def test_verbose_logs_debug(netwatch_logger):
    stream = io.StringIO()
    setup_logging(verbose=True, stream=stream)
    logging.getLogger("netwatch.controller").debug(kv("probe", upstream="t1"))
    assert "level=DEBUG logger=netwatch.controller event=probe upstream=t1" in stream.getvalue()
