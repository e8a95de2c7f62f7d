"""The controller's batched ICMP prober (adapters/probes/batch.py): the request it builds, and
on the loopback (needs CAP_NET_RAW) that its replies are matched and its BPF filter keeps
another socket's replies out."""

from __future__ import annotations

import asyncio
import math
import random
import select
import socket
import time

import pytest

from netwatch.adapters.probes.batch import EchoBatch
from netwatch.adapters.probes.icmp import echo_request


def _batch(family: int) -> EchoBatch:
    try:
        return EchoBatch(family)
    except PermissionError:
        pytest.skip("raw sockets need CAP_NET_RAW")


@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6])
def test_the_request_is_the_shared_echo_request(family):
    """The checksum summed once per socket, plus the sequence, is the full sum's."""
    b = _batch(family)
    try:
        for seq in [0, 1, 0xFFFF, *random.Random(3).sample(range(0x10000), 500)]:
            assert b._request(seq) == echo_request(family, b._ident, seq, b._token)
    finally:
        b.close()


@pytest.mark.parametrize("family, address", [(socket.AF_INET, "127.0.0.1"),
                                             (socket.AF_INET6, "::1")])
def test_loopback_replies_are_matched_and_filtered_per_socket(family, address):
    async def run():
        mine, other = _batch(family), _batch(family)
        try:
            assert mine.send(address, 0.5)
            await asyncio.sleep(0.1)
            rtt = mine.result(address, 0.5)
            # the other socket's filter let none of the replies to `mine` in
            readable, _, _ = select.select([other._sock], [], [], 0)
            return rtt, readable
        finally:
            mine.close()
            other.close()

    rtt, readable = asyncio.run(run())
    assert rtt is not None and 0 <= rtt < 0.1
    assert readable == []


@pytest.mark.parametrize("family, address", [(socket.AF_INET, "127.0.0.1"),
                                             (socket.AF_INET6, "::1")])
def test_a_reply_waits_for_result_and_keeps_the_kernels_stamp(family, address):
    """No reader callback: the reply stays queued until `result()` (here without any event
    loop), so it costs no wake-up of its own; its round trip is the kernel's receive stamp
    minus the send, not the 0.2 s the reply waited to be read."""
    b = _batch(family)
    try:
        assert b.send(address, 0.5)
        time.sleep(0.2)
        rtt = b.result(address, math.inf)
    finally:
        b.close()
    assert rtt is not None and 0 <= rtt < 0.05


def test_one_read_stamps_every_target_and_a_stale_reply_answers_nothing(monkeypatch):
    """The first `result()` reads every reply queued: the other targets' answers are stamped
    with their own arrivals. A reply to a probe sent again (forgotten) answers nothing, even
    while the new probe is still unanswered."""
    b = _batch(socket.AF_INET)
    targets = ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
    try:
        for t in targets:
            assert b.send(t, 0.5)
        time.sleep(0.1)
        rtts = [b.result(t, math.inf) for t in reversed(targets)]  # .3 reads all three
        assert b.send("127.0.0.1", 0.5)
        time.sleep(0.05)  # its reply is queued, unread
        # Sent again, with a token of another socket: its own reply never comes in (the
        # filter), so only the queued reply to the forgotten probe could answer it.
        monkeypatch.setattr(b, "_token", bytes(8))
        assert b.send("127.0.0.1", 0.5)
        time.sleep(0.05)
        again = b.result("127.0.0.1", math.inf)
    finally:
        b.close()
    assert all(rtt is not None and 0 <= rtt < 0.05 for rtt in rtts), rtts
    assert again is None
