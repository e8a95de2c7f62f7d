"""The control protocol: what a request may hold, what an answer says, durations."""

from __future__ import annotations

import json

import pytest

from netwatch.control import protocol
from netwatch.control.protocol import (
    MAX_LINE_BYTES,
    BadRequest,
    Command,
    ErrorCode,
    Refused,
    TooLarge,
    UnknownCommand,
    parse_answer,
    parse_duration,
    parse_request,
)


def line(**fields) -> bytes:
    return json.dumps({"v": 1, "id": 1, **fields}).encode() + b"\n"


def test_a_drain_request_gets_every_default():
    request = parse_request(line(cmd="drain", args={"upstream": "t1", "reason": " CHG-42 "}))
    assert request.cmd is Command.DRAIN
    assert request.args == {
        "upstream": "t1", "reason": "CHG-42", "for_s": 3600.0, "graceful_s": None,
        "force": False,
    }


def test_args_may_be_left_out_when_a_command_takes_none():
    assert parse_request(line(cmd="status")).args == {}


@pytest.mark.parametrize(("fields", "error", "message"), [
    ({"cmd": "reboot"}, UnknownCommand, "unknown command 'reboot'"),
    ({"cmd": "failover", "args": {"to": "secondary"}}, BadRequest, "args.reason: missing"),
    ({"cmd": "failover", "args": {"to": "secondary", "reason": "  "}}, BadRequest,
     "args.reason: must not be empty"),
    ({"cmd": "failover", "args": {"to": "secondary", "reason": "a\nb"}}, BadRequest,
     "args.reason: must be one line"),
    ({"cmd": "failover", "args": {"to": "secondary", "reason": "x" * 301}}, BadRequest,
     "at most 300"),
    ({"cmd": "failover", "args": {"to": "sideways", "reason": "x"}}, BadRequest,
     "args.to: 'sideways' is not primary, secondary or auto"),
    ({"cmd": "failover", "args": {"to": "auto", "reason": "x", "for_s": 60}}, BadRequest,
     "args.for_s: not with to=auto"),
    ({"cmd": "failover", "args": {"to": "primary", "reason": "x", "for_s": 8 * 86400}},
     BadRequest, "at most 7 days"),
    ({"cmd": "failover", "args": {"to": "primary", "reason": "x", "for_s": 0}}, BadRequest,
     "args.for_s"),
    ({"cmd": "failover", "args": {"to": "primary", "reason": "x", "for_s": "1h"}}, BadRequest,
     "args.for_s: '1h' is not a number"),
    ({"cmd": "drain", "args": {"upstream": "t1", "reason": "x", "force": 1}}, BadRequest,
     "args.force: 1 is not true or false"),
    ({"cmd": "drain", "args": {"upstream": "T 1", "reason": "x"}}, BadRequest,
     "args.upstream: 'T 1' is not a valid name"),
    ({"cmd": "drain", "args": {"upstream": "t1", "reason": "x", "colour": "red"}}, BadRequest,
     "unknown argument(s) 'colour'"),
    ({"cmd": "prepend", "args": {"upstream": "t1", "reason": "x", "count": 11}}, BadRequest,
     "args.count: 11 is not an integer from 1 to 10"),
    ({"cmd": "prepend", "args": {"upstream": "t1", "reason": "x", "count": True}}, BadRequest,
     "args.count"),
    ({"cmd": "override_delete", "args": {"id": "3", "reason": "x"}}, BadRequest,
     "args.id: '3' is not an override id"),
    ({"cmd": "events", "args": {"limit": 0}}, BadRequest, "args.limit"),
    ({"cmd": "status", "args": []}, BadRequest, "args must be an object"),
    ({"cmd": "status", "extra": 1}, BadRequest, "unknown request field(s) 'extra'"),
    ({"v": 2, "cmd": "status"}, BadRequest, "protocol version must be 1"),
])
def test_every_bad_request_says_what_is_wrong(fields, error, message):
    with pytest.raises(error) as info:
        parse_request(line(**fields))
    assert message in str(info.value)
    assert info.value.request_id == 1  # the answer can still carry the request's id


@pytest.mark.parametrize(("raw", "message"), [
    (b"not json\n", "not JSON"),
    (b"\xff\xfe\n", "not UTF-8"),
    (b"[1, 2]\n", "must be a JSON object"),
    (b'{"v": 1, "cmd": "status"}\n', "id missing"),
    (b'{"v": 1, "id": true, "cmd": "status"}\n', "id must be an integer or a string"),
    (b'{"v": 1, "id": 1.5, "cmd": "status"}\n', "id must be an integer or a string"),
    (b'{"v": 1, "id": 1, "cmd": "status", "args": {"x": NaN}}\n', "not JSON"),
    (b"[" * 60_000 + b"\n", "not JSON"),  # deep nesting: no RecursionError
])
def test_malformed_lines_are_bad_requests(raw, message):
    with pytest.raises(BadRequest, match=message):
        parse_request(raw)


def test_an_oversized_line_is_too_large():
    with pytest.raises(TooLarge):
        parse_request(b" " * (MAX_LINE_BYTES + 2))


def test_error_messages_never_echo_a_huge_value():
    with pytest.raises(BadRequest) as info:
        parse_request(line(cmd="failover", args={"to": "x" * 50_000, "reason": "r"}))
    assert len(str(info.value)) < 200


def test_writes_are_the_commands_that_change_something():
    assert {c for c in Command if c.writes} == {
        Command.FAILOVER, Command.DRAIN, Command.RESTORE, Command.PREPEND,
        Command.OVERRIDE_EXTEND, Command.OVERRIDE_DELETE,
    }
    assert Command.FAILOVER not in protocol.SERVED_BY["controller"]
    assert Command.DRAIN not in protocol.SERVED_BY["agent"]


def test_answers_round_trip_and_errors_keep_their_type():
    ok = parse_answer(protocol.encode_result(7, {"a": [1, "é\n"]}))
    assert (ok.id, ok.ok, ok.result) == (7, True, {"a": [1, "é\n"]})
    err = parse_answer(protocol.encode_error("x", Refused("interlock")))
    assert not err.ok and isinstance(err.error, Refused) and err.error.code is ErrorCode.REFUSED
    assert str(err.error) == "interlock"
    event = parse_answer(protocol.encode_event(3, {"kind": "transition"}))
    assert event.event == {"kind": "transition"}


def test_an_answer_line_is_one_line_whatever_the_strings_hold():
    encoded = protocol.encode_result(1, {"reason": "two\nlines\u2028"})
    assert encoded.count(b"\n") == 1 and encoded.endswith(b"\n") and encoded.isascii()


def test_an_unknown_error_code_from_a_newer_daemon_is_still_an_error():
    raw = b'{"v": 1, "id": 1, "ok": false, "error": {"code": "quota", "message": "m"}}'
    answer = parse_answer(raw)
    assert not answer.ok and answer.error.code is ErrorCode.INTERNAL


@pytest.mark.parametrize("raw", [b"{}", b"[]", b"nope", b'{"v": 1, "ok": false}'])
def test_a_malformed_answer_is_a_value_error(raw):
    with pytest.raises(ValueError):
        parse_answer(raw)


@pytest.mark.parametrize(("text", "seconds"), [
    ("90", 90), ("30s", 30), ("5m", 300), ("1h", 3600), ("2d", 172800), ("1h30m", 5400),
    ("1.5h", 5400), (" 10M ", 600),
])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "0", "0s", "-5m", "5x", "h", "1h 30m", "5mm", "1e3"])
def test_bad_durations_say_what_one_looks_like(text):
    with pytest.raises(ValueError, match=r"duration"):
        parse_duration(text)


@pytest.mark.parametrize(("seconds", "text"), [
    (0, "0s"), (45, "45s"), (192, "3m12s"), (3720, "1h02m"), (183600, "2d03h"), (-5, "0s"),
])
def test_durations_for_people(seconds, text):
    assert protocol.format_duration(seconds) == text
