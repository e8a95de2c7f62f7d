"""ExaBGP lines (golden), sanitising, event parsing and plans as diffs."""

from __future__ import annotations

import pytest

from netwatch.controller.plan import Announcement
from netwatch.core.vocabulary import Family
from netwatch.exabgp import protocol as exabgp


@pytest.mark.parametrize(
    ("neighbor", "announcement", "prefixes", "line"),
    [
        ("192.0.2.1", Announcement(), ["198.51.100.0/24"],
         "neighbor 192.0.2.1 announce attributes next-hop self nlri 198.51.100.0/24"),
        ("2001:db8:ffff:1::1", Announcement(), ["2001:db8:100::/48", "2001:db8:200::/48"],
         "neighbor 2001:db8:ffff:1::1 announce attributes next-hop self "
         "nlri 2001:db8:100::/48 2001:db8:200::/48"),
        ("192.0.2.1", Announcement((64500,) * 4, ("64500:100",)), ["198.51.100.0/24"],
         "neighbor 192.0.2.1 announce attributes next-hop self as-path [ 64500 64500 64500 64500 ]"
         " community [ 64500:100 ] nlri 198.51.100.0/24"),
        ("192.0.2.1", Announcement((), ("65535:0", "64500:1:2")), ["198.51.100.0/24"],
         "neighbor 192.0.2.1 announce attributes next-hop self community [ 65535:0 ]"
         " large-community [ 64500:1:2 ] nlri 198.51.100.0/24"),
        ("FE80::1%eth0", Announcement(), ["2001:db8:100::/48"],  # a scope that is an interface
         "neighbor fe80::1%eth0 announce attributes next-hop self nlri 2001:db8:100::/48"),
    ],
)
def test_announce_lines(neighbor, announcement, prefixes, line):
    assert exabgp.announce_line(neighbor, announcement, prefixes) == line


def test_one_announce_line_names_several_neighbors():
    """ExaBGP's `extract_neighbors` reads `neighbor A , neighbor B` (the comma a token of its
    own): the line is parsed once and the routes go to both sessions."""
    assert exabgp.announce_line(["192.0.2.1", "192.0.2.5"], Announcement((64500,) * 2),
                                ["198.51.100.0/24"]) == (
        "neighbor 192.0.2.1 , neighbor 192.0.2.5 announce attributes next-hop self"
        " as-path [ 64500 64500 ] nlri 198.51.100.0/24")
    assert exabgp.announce_line(("192.0.2.1",), Announcement(), ["198.51.100.0/24"]) == (
        exabgp.announce_line("192.0.2.1", Announcement(), ["198.51.100.0/24"]))
    for bad in ([], ["192.0.2.1", "192.0.2.5 , neighbor 192.0.2.9"], ["192.0.2.1", None]):
        with pytest.raises(exabgp.UnsafeValue):
            exabgp.announce_line(bad, Announcement(), ["198.51.100.0/24"])


def test_withdraw_lines_both_families():
    assert exabgp.withdraw_line("192.0.2.5", ["198.51.100.0/24"]) == (
        "neighbor 192.0.2.5 withdraw attributes next-hop self nlri 198.51.100.0/24"
    )
    assert exabgp.withdraw_line("2001:db8:ffff:2::1", ["2001:db8:100::/48"]) == (
        "neighbor 2001:db8:ffff:2::1 withdraw attributes next-hop self nlri 2001:db8:100::/48"
    )


@pytest.mark.parametrize(
    "bad",
    [
        lambda: exabgp.announce_line("192.0.2.1\nneighbor 192.0.2.5 withdraw", Announcement(),
                                     ["198.51.100.0/24"]),
        lambda: exabgp.announce_line("192.0.2.1", Announcement((), ("1:2\nshutdown",)),
                                     ["198.51.100.0/24"]),
        lambda: exabgp.announce_line("192.0.2.1", Announcement((0,)), ["198.51.100.0/24"]),
        lambda: exabgp.withdraw_line("192.0.2.1", ["198.51.100.0/24 extra"]),
        lambda: exabgp.withdraw_line("192.0.2.1", ["198.51.100.1/24"]),
        lambda: exabgp.withdraw_line("192.0.2.1", []),
    ],
)
def test_unsafe_values_never_reach_a_line(bad):
    with pytest.raises(exabgp.UnsafeValue):
        bad()


GOOD = Announcement()
P4, P6 = ["198.51.100.0/24"], ["2001:db8:100::/48"]


@pytest.mark.parametrize(
    ("build", "refused"),
    [
        # an IPv6 scope ID is whatever follows "%" for ipaddress: only an interface name passes
        (lambda: exabgp.announce_line("fe80::1%eth0 announce route 198.51.100.0/24", GOOD, P6),
         "IP address"),
        (lambda: exabgp.announce_line("fe80::1%eth0\n", GOOD, P6), "IP address"),
        (lambda: exabgp.withdraw_line("fe80::1%eth0\tx", P6), "IP address"),
        (lambda: exabgp.withdraw_line("fe80::1%a/b", P6), "IP address"),
        (lambda: exabgp.withdraw_line("fe80::1%an-interface-name", P6), "IP address"),  # > 15
        (lambda: exabgp.withdraw_line("fe80::1%..", P6), "IP address"),
        (lambda: exabgp.withdraw_line("192.0.2.1", ["fe80::%eth0/64"]), "prefix"),
        (lambda: exabgp.withdraw_line("192.0.2.1", ["198.51.100.0/24\n"]), "prefix"),
        # `$` matched before a final newline: the community itself is refused now
        (lambda: exabgp.announce_line("192.0.2.1", Announcement((), ("64500:1\n",)), P4),
         "community"),
        (lambda: exabgp.announce_line("192.0.2.1", Announcement((), ("64500:1 ",)), P4),
         "community"),
        (lambda: exabgp.announce_line("192.0.2.1", Announcement((), ("65536:1",)), P4),
         "community"),
        (lambda: exabgp.announce_line("192.0.2.1", Announcement((), ("1:2:4294967296",)), P4),
         "community"),
        (lambda: exabgp.announce_line("192.0.2.1", Announcement((), (64500,)), P4), "community"),
        (lambda: exabgp.announce_line("192.0.2.1", Announcement((), ("no-export",)), P4),
         "community"),  # was dropped without a word: neither one nor two colons
        (lambda: exabgp.announce_line("192.0.2.1", Announcement(("64500",)), P4), "ASN"),
        (lambda: exabgp.announce_line("192.0.2.1", Announcement((True,)), P4), "ASN"),
    ],
)
def test_every_token_is_checked_on_its_own(build, refused):
    with pytest.raises(exabgp.UnsafeValue, match=refused):
        build()


def test_a_scoped_peer_from_exabgp_is_a_bad_event():
    line = ('{"type": "state", "neighbor": {"address": {"peer": "fe80::1%eth0 x"}, '
            '"state": "up"}}')
    with pytest.raises(ValueError):
        exabgp.parse_event(line)


def test_expand_gives_each_session_its_family_as_canonical_texts_checked_once_per_value():
    """The site's prefixes are checked once (kept: 10,000 of them parsed at every plan change
    cost ~0.35 s before a withdrawal); the same value refused stays refused, every time."""
    import ipaddress

    sessions = {("t1", 4): "192.0.2.1", ("t1", 6): "2001:db8:ffff:1::1"}
    plan = {("t1", Family.V4): Announcement(), ("t1", Family.V6): None}
    prefixes = [ipaddress.ip_network("198.51.100.0/24"), "2001:DB8:100::/48", "100.100.0.0/28"]
    for _ in range(2):  # the second time from what was kept
        assert exabgp.expand(plan, sessions, prefixes) == {
            ("192.0.2.1", "198.51.100.0/24"): Announcement(),
            ("192.0.2.1", "100.100.0.0/28"): Announcement(),
            ("2001:db8:ffff:1::1", "2001:db8:100::/48"): None,
        }
    for bad in ("198.51.100.1/24", "198.51.100.0/24\n", ["198.51.100.0/24"]):
        for _ in range(2):
            with pytest.raises(exabgp.UnsafeValue):
                exabgp.expand(plan, sessions, [*prefixes, bad])
            with pytest.raises(exabgp.UnsafeValue):
                exabgp.withdraw_line("192.0.2.1", [bad])


def test_diff_groups_prefixes_and_second_application_sends_nothing():
    desired = {("192.0.2.1", f"198.51.100.{64 * i}/26"): Announcement() for i in range(3)}
    desired[("192.0.2.5", "198.51.100.0/26")] = None
    commands = exabgp.diff(desired, {})
    assert [c.line for c in commands] == [
        "neighbor 192.0.2.1 announce attributes next-hop self "
        "nlri 198.51.100.0/26 198.51.100.64/26 198.51.100.128/26",
        "neighbor 192.0.2.5 withdraw attributes next-hop self nlri 198.51.100.0/26",
    ]
    known = {}
    for c in commands:
        known.update(c.effect)
    assert exabgp.diff(desired, known) == []


def test_diff_announces_everywhere_before_it_withdraws_anywhere():
    """Make-before-break across neighbors: a hold on t2 (192.0.2.5) released because t3
    (192.0.2.9) recovered must not withdraw t2 before t3 announces, or for as long as ExaBGP
    takes over the withdrawal (seconds at 10,000 prefixes) one upstream announces alone."""
    prefixes = [f"100.{64 + i // 256}.{i % 256}.0/24" for i in range(1500)] + ["2001:db8:100::/48"]
    t2_6, t3_6 = "2001:db8:ffff:2::1", "2001:db8:ffff:3::1"
    known, desired = {}, {}
    for p in prefixes:
        t2, t3 = (t2_6, t3_6) if ":" in p else ("192.0.2.5", "192.0.2.9")
        known[(t2, p)], known[(t3, p)] = Announcement((64500,) * 4), None
        desired[(t2, p)], desired[(t3, p)] = None, Announcement()
    lines = [c.line.split(" nlri ")[0] for c in exabgp.diff(desired, known)]
    assert lines == [
        "neighbor 192.0.2.9 announce attributes next-hop self",
        "neighbor 192.0.2.9 announce attributes next-hop self",  # still bulk: 1,000 + 500
        "neighbor 2001:db8:ffff:3::1 announce attributes next-hop self",
        "neighbor 192.0.2.5 withdraw attributes next-hop self",
        "neighbor 192.0.2.5 withdraw attributes next-hop self",
        "neighbor 2001:db8:ffff:2::1 withdraw attributes next-hop self",
    ]


def test_diff_announces_the_same_chunk_to_several_neighbors_in_one_command():
    """At start every session gets the same 2,500 prefixes: 3 commands for the 4 IPv4
    sessions instead of 12, each acknowledging every (neighbor, prefix) it names. A neighbor
    whose chunk or attributes differ gets its own; withdrawals stay one neighbor each."""
    v4 = [f"100.{64 + i // 256}.{i % 256}.0/24" for i in range(2500)]
    four = ("192.0.2.1", "192.0.2.5", "192.0.2.9", "192.0.2.13")
    desired = {(n, p): Announcement() for n in four for p in v4}
    commands = exabgp.diff(desired, {})
    assert [c.line.split(" announce ")[0] for c in commands] == [
        "neighbor 192.0.2.1 , neighbor 192.0.2.13 , neighbor 192.0.2.5 , neighbor 192.0.2.9"] * 3
    assert [len(c.effect) for c in commands] == [4000, 4000, 2000]
    known = {}
    for c in commands:
        known.update(c.effect)
    assert known == desired and exabgp.diff(desired, known) == []

    # t2 prepended, t3 missing its last 500 (acknowledged before), t4 withdrawn
    desired.update({("192.0.2.5", p): Announcement((64500,) * 4) for p in v4})
    desired.update({("192.0.2.13", p): None for p in v4})
    known = {k: v for k, v in known.items() if not (k[0] == "192.0.2.9" and k[1] in v4[:2000])}
    lines = [c.line.split(" nlri ")[0] for c in exabgp.diff(desired, known)]
    assert lines == [
        "neighbor 192.0.2.5 announce attributes next-hop self as-path [ 64500 64500 64500 64500 ]",
        "neighbor 192.0.2.5 announce attributes next-hop self as-path [ 64500 64500 64500 64500 ]",
        "neighbor 192.0.2.5 announce attributes next-hop self as-path [ 64500 64500 64500 64500 ]",
        "neighbor 192.0.2.9 announce attributes next-hop self",
        "neighbor 192.0.2.9 announce attributes next-hop self",
        "neighbor 192.0.2.13 withdraw attributes next-hop self",
        "neighbor 192.0.2.13 withdraw attributes next-hop self",
        "neighbor 192.0.2.13 withdraw attributes next-hop self",
    ]


def test_diff_chunks_big_bulk_lines():
    # 100.64.0.0/10 (shared address space): 2,500 /24s from 100.64.0.0 to 100.73.195.0
    desired = {("192.0.2.1", f"100.{64 + i // 256}.{i % 256}.0/24"): None for i in range(2500)}
    commands = exabgp.diff(desired, {})
    assert [len(c.effect) for c in commands] == [1000, 1000, 500]


def test_parse_events():
    up = (
        '{ "exabgp": "5.0.0", "time": 1.0, "host" : "edge", "pid" : 1, "ppid" : 1, '
        '"counter": 1, "type": "state", "neighbor": { "address": { "local": "192.0.2.2", '
        '"peer": "192.0.2.1" }, "asn": { "local": 64500, "peer": 64501 } , "state": "up" } }'
    )
    expected = exabgp.NeighborState("192.0.2.1", "192.0.2.2", exabgp.PeerState.UP)
    assert exabgp.parse_event(up) == expected
    assert exabgp.parse_event("done") == exabgp.Ack(exabgp.AckKind.DONE)
    assert exabgp.parse_event("error\n") == exabgp.Ack(exabgp.AckKind.ERROR)
    assert exabgp.parse_event('{"type": "update"}') == exabgp.Other("update")
    for bad in ("garbage", "{not json", '{"type": "state", "neighbor": {}}'):
        with pytest.raises(ValueError):
            exabgp.parse_event(bad)


def test_safe_withdrawals_count_only_acknowledged_announcements_through_sessions_up():
    """min 2, t1-t4 up but t4 (192.0.2.13) is down: a withdrawal goes only if the prefix keeps
    two acknowledged announcements through sessions up besides it, counting the withdrawals
    in flight and those let through before it."""
    t1, t2, t3, t4 = "192.0.2.1", "192.0.2.5", "192.0.2.9", "192.0.2.13"
    p, q = "198.51.100.0/25", "198.51.100.128/25"
    acked = {(t1, p): GOOD, (t2, p): GOOD, (t3, p): GOOD, (t4, p): GOOD,
             (t1, q): GOOD, (t2, q): GOOD, (t3, q): None}  # (t4, q): unknown

    def withdraw(neighbor, *prefixes):
        return exabgp.Command(exabgp.withdraw_line(neighbor, prefixes),
                              {(neighbor, x): None for x in prefixes})

    def safe(withdrawals, in_flight=()):
        return exabgp.safe_withdrawals(withdrawals, acked, in_flight, {t1, t2, t3}, 2)

    assert safe([withdraw(t1, p), withdraw(t2, p)]) == [withdraw(t1, p)]  # t2 would leave t3
    assert safe([withdraw(t2, p)], in_flight=[withdraw(t1, p)]) == []
    assert safe([withdraw(t1, q)]) == []  # t2 alone: t3 withdrawn, t4's session is down
    assert safe([withdraw(t4, p, q)]) == [withdraw(t4, p, q)]  # takes nothing from sessions up
    assert safe([withdraw(t3, q)]) == [withdraw(t3, q)]  # already withdrawn: keeps t1, t2
    acked.pop((t3, q))  # unknown (a restart): t3 may announce q, but t1 and t2 do for sure
    assert safe([withdraw(t3, q)]) == [withdraw(t3, q)]
    acked[(t2, q)] = None
    assert safe([withdraw(t3, q)]) == []  # t1 alone, if t3 was announcing q


# --- End-of-RIB and the UPDATE count ------------------------------------------------------


@pytest.mark.parametrize(
    ("neighbor", "family", "line"),
    [
        ("192.0.2.1", 4, "neighbor 192.0.2.1 announce eor ipv4 unicast"),
        ("2001:DB8:FFFF:1::1", Family.V6, "neighbor 2001:db8:ffff:1::1 announce eor ipv6 unicast"),
        ("fe80::1%eth0", 6, "neighbor fe80::1%eth0 announce eor ipv6 unicast"),
    ],
)
def test_eor_lines(neighbor, family, line):
    assert exabgp.eor_line(neighbor, family) == line


@pytest.mark.parametrize(
    ("neighbor", "family"),
    [
        ("192.0.2.1\nneighbor 192.0.2.5 teardown 2", 4),  # one command made two
        ("192.0.2.1", 6),  # no IPv6 session on an IPv4 neighbor: ExaBGP would say error
        ("2001:db8::1", 4),
        ("192.0.2.1", "ipv4 unicast\nshutdown"),
        ("192.0.2.1", 5),
        ("192.0.2.1", None),
        ("fe80::1%eth0 x", 6),
    ],
)
def test_eor_lines_refuse_what_is_not_one_session(neighbor, family):
    with pytest.raises(exabgp.UnsafeValue):
        exabgp.eor_line(neighbor, family)


def _show_neighbor_json(peers: dict[str, tuple[str, int]]) -> str:
    """The answer to `show neighbor json` as ExaBGP's own serializer writes it, for
    {peer: (fsm state, UPDATEs received)}."""
    import json

    from exabgp.bgp.neighbor import NeighborTemplate

    answers = []
    for peer, (fsm, updates) in peers.items():
        messages = {m: (0, 0) for m in ("open", "notification", "keepalive", "refresh")}
        messages["update"] = (1, updates)
        messages["total"] = (1, updates)
        answers.append(NeighborTemplate.as_dict({
            "down": 0, "duration": 5 if fsm == "ESTABLISHED" else 0,
            "local-address": "192.0.2.2", "peer-address": peer, "local-as": 64500,
            "peer-as": 64501, "local-id": "192.0.2.2", "peer-id": None, "local-hold": 9,
            "peer-hold": None, "state": fsm, "capabilities": {}, "families": {},
            "messages": messages,
        }))
    return json.dumps(answers)


def test_show_neighbor_answer_carries_each_session_and_its_update_count():
    """The count is ExaBGP's per-session statistic, taken before decoding: what tells a
    transit that sends a default route (a few UPDATEs) from one that sends a full table."""
    line = _show_neighbor_json({"192.0.2.1": ("ESTABLISHED", 320), "192.0.2.5": ("ACTIVE", 0)})
    summary = exabgp.parse_event(line)
    assert summary == exabgp.NeighborSummary(
        {"192.0.2.1": True, "192.0.2.5": False}, {"192.0.2.1": 320, "192.0.2.5": 0}
    )


def test_a_show_neighbor_answer_without_counts_still_gives_the_sessions():
    line = '[{"peer": {"address": "192.0.2.1"}, "fsm": "ESTABLISHED"}]'
    assert exabgp.parse_event(line) == exabgp.NeighborSummary({"192.0.2.1": True}, {})
    line = ('[{"peer": {"address": "192.0.2.1"}, "fsm": "ESTABLISHED", '
            '"messages": {"received": {"update": -3}}}]')
    assert exabgp.parse_event(line).updates_received == {}
    line = '[{"peer": {"address": "192.0.2.1"}, "fsm": "IDLE", "messages": [1]}]'
    assert exabgp.parse_event(line) == exabgp.NeighborSummary({"192.0.2.1": False}, {})


def test_an_end_of_rib_command_changes_no_key_and_names_its_session():
    eor = exabgp.end_of_rib("2001:db8:ffff:2::1")
    assert eor.line == "neighbor 2001:db8:ffff:2::1 announce eor ipv6 unicast"
    assert eor.neighbor == "2001:db8:ffff:2::1" and eor.effect == {} and not eor.withdraws
    assert exabgp.end_of_rib("192.0.2.5").line == "neighbor 192.0.2.5 announce eor ipv4 unicast"
    with pytest.raises(exabgp.UnsafeValue):
        exabgp.end_of_rib("192.0.2.5 announce route 0.0.0.0/0")
