"""The agent's kernel port: what rtnetlink's multicast messages become (`Netlink.events()`),
and what it knows of IPv6 duplicate address detection, with pyroute2's socket replaced by a
scripted one."""

from __future__ import annotations

import asyncio
import errno
import os
import socket
from ipaddress import IPv6Address

import pytest

from netwatch.adapters import netlink
from netwatch.adapters.netlink import Event, EventKind, LinkState, Netlink

RTM_NEWLINK, RTM_DELLINK = 16, 17
UP = netlink.IFF_UP | netlink.IFF_LOWER_UP
PERMANENT = 0x80
TENTATIVE, DADFAILED, OPTIMISTIC = (netlink.IFA_F_TENTATIVE, netlink.IFA_F_DADFAILED,
                                    netlink.IFA_F_OPTIMISTIC)
LL, GLOBAL = "fe80::a8c1:abff:fe00:1", "2001:db8:100:1::10"


class Message(dict):
    """An rtnetlink message as pyroute2 hands it over: a dict with attributes."""

    def __init__(self, attrs=None, **fields):
        super().__init__(**fields)
        self.attrs = attrs or {}

    def get_attr(self, name):
        return self.attrs.get(name)


def link_message(event: str, index: int, ifname: str, flags: int) -> Message:
    kind = RTM_DELLINK if event == "RTM_DELLINK" else RTM_NEWLINK
    return Message(event=event, index=index, ifname=ifname, flags=flags,
                   header={"type": kind})


def address_message(event: str, index: int, address: str, flags: int,
                    family: int = socket.AF_INET6) -> Message:
    """An address as the kernel describes it: the low 8 flag bits in the header, all 32 in
    IFA_FLAGS."""
    return Message(attrs={"IFA_FLAGS": flags}, event=event, index=index, family=family,
                   address=address, flags=flags & 0xFF)


class ScriptedSocket:
    """Stands for pyroute2's AsyncIPRoute: the event socket reads `SCRIPT` once; dumps
    answer `LINKS` and `ADDRESSES` (read when the dump is asked for)."""

    SCRIPT: list[Message] = []
    LINKS: list[Message] = []
    ADDRESSES: list[Message] = []

    def __init__(self, strict_check=False):
        self.closed = False

    async def bind(self, groups):
        pass

    async def get(self):
        for message in self.SCRIPT:
            yield message
        await asyncio.Event().wait()  # then nothing more, as a quiet kernel

    @staticmethod
    async def _each(messages):
        for message in list(messages):
            yield message

    async def link(self, command, **kwargs):
        return self._each(self.LINKS)

    async def addr(self, command, family=None, **kwargs):
        return self._each(m for m in self.ADDRESSES if m["family"] == family)

    # A probe table: `TABLE` holds its routes; writes are recorded in `WRITES`.
    TABLE: list[Message] = []
    WRITES: list[tuple] = []

    async def route(self, command, **kwargs):
        if command == "dump":
            return self._each(self.TABLE)
        self.WRITES.append((command, kwargs.get("oif")))
        return None

    async def rule(self, command, **kwargs):
        return self._each([Message(fwmark=77, table=1000)])  # the path's rule is there

    async def link_lookup(self, ifname):
        return [m["index"] for m in self.LINKS if m["ifname"] == ifname]

    def close(self):
        self.closed = True


def scripted(monkeypatch, messages, links=(), addresses=()):
    monkeypatch.setattr(netlink, "AsyncIPRoute", ScriptedSocket)
    monkeypatch.setattr(ScriptedSocket, "SCRIPT", list(messages))
    monkeypatch.setattr(ScriptedSocket, "LINKS", list(links))
    monkeypatch.setattr(ScriptedSocket, "ADDRESSES", list(addresses))


def events_of(monkeypatch, messages: list[Message], count: int) -> list[Event]:
    scripted(monkeypatch, messages)

    async def main():
        kernel = Netlink()
        await kernel.open()
        try:
            stream = kernel.events()
            return [await asyncio.wait_for(anext(stream), 5) for _ in range(count)]
        finally:
            kernel.close()

    return asyncio.run(main())


def test_link_and_route_messages_become_typed_events(monkeypatch):
    messages = [
        link_message("RTM_NEWLINK", 2, "eth0", netlink.IFF_UP),  # carrier lost
        Message(event="RTM_NEWADDR", family=socket.AF_INET, index=2, address="100.64.1.10",
                flags=PERMANENT),  # IPv4 addresses have no DAD: nothing to re-read
        Message(event="RTM_NEWROUTE"),
        link_message("RTM_DELLINK", 3, "eth1", 0),
        link_message("RTM_NEWLINK", 2, "eth0", UP),
        Message(event="RTM_DELROUTE"),
    ]
    assert events_of(monkeypatch, messages, 5) == [
        Event(EventKind.LINK, LinkState("eth0", True, admin_up=True, carrier=False, index=2)),
        Event(EventKind.ROUTE),
        Event(EventKind.LINK, LinkState("eth1", exists=False, index=3)),
        Event(EventKind.LINK, LinkState("eth0", True, admin_up=True, carrier=True, index=2)),
        Event(EventKind.ROUTE),
    ]


def test_a_rename_is_the_old_name_gone_then_the_new_one(monkeypatch):
    """`ip link set eth0 name wan0`: one RTM_NEWLINK with the new name. The old name is gone
    (what an agent configured with it must hear), then the new one has the link; renamed
    back, the old name has it again."""
    messages = [
        link_message("RTM_NEWLINK", 2, "eth0", UP),
        link_message("RTM_NEWLINK", 2, "wan0", UP),
        link_message("RTM_NEWLINK", 2, "eth0", UP),
    ]
    assert events_of(monkeypatch, messages, 5) == [
        Event(EventKind.LINK, LinkState("eth0", True, True, True, index=2)),
        Event(EventKind.LINK, LinkState("eth0", exists=False, index=2, renamed_to="wan0")),
        Event(EventKind.LINK, LinkState("wan0", True, True, True, index=2)),
        Event(EventKind.LINK, LinkState("wan0", exists=False, index=2, renamed_to="eth0")),
        Event(EventKind.LINK, LinkState("eth0", True, True, True, index=2)),
    ]


def tentative_after(monkeypatch, messages, checks, links=(), addresses=()):
    """[ipv6_tentative(*check) for check in checks] after `links()` and the events of
    `messages`, one list per point: at start, then after each event."""
    scripted(monkeypatch, messages, links, addresses)

    async def main():
        kernel = Netlink()
        await kernel.open()
        try:
            await kernel.links(["eth0"])
            seen = [[kernel.ipv6_tentative(*check) for check in checks]]
            stream = kernel.events()
            for _ in messages:
                await asyncio.wait_for(anext(stream), 5)
                seen.append([kernel.ipv6_tentative(*check) for check in checks])
            return seen
        finally:
            kernel.close()

    return asyncio.run(main())


ETH0 = link_message("RTM_NEWLINK", 2, "eth0", UP)


def test_dad_is_followed_from_the_address_events(monkeypatch):
    """A tentative link-local address makes the interface's IPv6 source tentative; the
    kernel's event at the end of DAD (the same address, without the flag) ends it. A
    configured source is followed on its own."""
    messages = [
        address_message("RTM_NEWADDR", 2, GLOBAL, PERMANENT | TENTATIVE),
        address_message("RTM_NEWADDR", 2, GLOBAL, PERMANENT),
        address_message("RTM_NEWADDR", 2, LL, PERMANENT),
    ]
    seen = tentative_after(monkeypatch, messages,
                           [("eth0",), ("eth0", IPv6Address(GLOBAL))], links=[ETH0],
                           addresses=[address_message("RTM_NEWADDR", 2, LL, TENTATIVE)])
    assert seen == [[True, False], [True, True], [True, False], [False, False]]


def test_a_link_event_reads_the_addresses_again(monkeypatch):
    """The link-local address a link gets when it comes up is announced only when DAD is
    over: the adapter dumps the addresses on the link event, and sees it tentative."""
    scripted(monkeypatch, [ETH0], links=[ETH0])

    async def main():
        kernel = Netlink()
        await kernel.open()
        try:
            await kernel.links(["eth0"])
            before = kernel.ipv6_tentative("eth0")
            ScriptedSocket.ADDRESSES = [address_message("RTM_NEWADDR", 2, LL, TENTATIVE)]
            await asyncio.wait_for(anext(kernel.events()), 5)
            return before, kernel.ipv6_tentative("eth0")
        finally:
            kernel.close()

    assert asyncio.run(main()) == (False, True)


def test_only_an_address_still_in_dad_is_tentative(monkeypatch):
    """A failed DAD (a duplicate: the address never becomes usable) is a verdict, not a
    wait; an optimistic address is usable; one usable link-local address is enough."""
    cases = {
        "failed": [address_message("RTM_NEWADDR", 2, LL, TENTATIVE | DADFAILED)],
        "optimistic": [address_message("RTM_NEWADDR", 2, LL, TENTATIVE | OPTIMISTIC)],
        "one usable": [address_message("RTM_NEWADDR", 2, LL, TENTATIVE),
                       address_message("RTM_NEWADDR", 2, "fe80::1", PERMANENT)],
        "none": [],
        "elsewhere": [address_message("RTM_NEWADDR", 3, LL, TENTATIVE)],
    }
    seen = {name: tentative_after(monkeypatch, [], [("eth0",)], links=[ETH0],
                                  addresses=addresses)[0][0]
            for name, addresses in cases.items()}
    assert seen == dict.fromkeys(cases, False)


def test_a_probe_table_through_another_interface_is_rewritten(monkeypatch):
    """The probe table's route goes through interface 2, but the interface named eth0 is now
    7 (the old one renamed away, or deleted and created again): the route is written again,
    through 7; through 7 already, nothing is written."""
    from ipaddress import IPv4Address

    from netwatch.adapters.policy_routing import RTN_UNREACHABLE, ProbePath

    path = ProbePath(mark=77, table=1000, gateway=IPv4Address("100.64.1.1"), ifname="eth0")

    def writes(oif: int, unreachable: bool = True) -> list[tuple]:
        scripted(monkeypatch, [], links=[link_message("RTM_NEWLINK", 7, "eth0", UP)])
        table = [Message(dst_len=0, table=1000, oif=oif)]
        if unreachable:
            table.append(Message(dst_len=0, table=1000, type=RTN_UNREACHABLE))
        monkeypatch.setattr(ScriptedSocket, "TABLE", table)
        monkeypatch.setattr(ScriptedSocket, "WRITES", [])

        async def main():
            kernel = Netlink()
            await kernel.open()
            try:
                await kernel.links(["eth0"])
                await kernel.ensure_probe_path(path)
            finally:
                kernel.close()

        asyncio.run(main())
        return ScriptedSocket.WRITES

    # the unreachable default (no oif) is written first, so it is there when the link is not
    assert writes(oif=2) == [("replace", None), ("replace", 7)]
    assert writes(oif=7) == []
    # A probe table without its unreachable default gets it, and only it.
    assert writes(oif=7, unreachable=False) == [("replace", None)]


class SlowDumpSocket(ScriptedSocket):
    """A link dump that waits for `GATE` (when set) before answering: a kernel event can be
    handled meanwhile, as on a busy loop."""

    GATE: asyncio.Event | None = None

    async def link(self, command, **kwargs):
        gate, links = self.GATE, list(self.LINKS)  # the dump's snapshot: taken when asked

        async def answer():
            if gate is not None:
                await gate.wait()
            for message in links:
                yield message

        return answer()


def test_a_rename_during_a_link_dump_is_not_lost(monkeypatch):
    """`ip link set eth0 name wan0` handled while `links()` waits for its dump (which the
    kernel answered before the rename): the old name is still reported gone, and the dump
    does not give the link its old name back (routes through it are named after wan0)."""
    scripted(monkeypatch, [link_message("RTM_NEWLINK", 2, "wan0", UP)], links=[ETH0])
    monkeypatch.setattr(netlink, "AsyncIPRoute", SlowDumpSocket)
    monkeypatch.setattr(ScriptedSocket, "TABLE", [Message(
        dst_len=0, table=netlink.MAIN_TABLE, type=1, gateway="100.64.1.1", oif=2,
        priority=0, proto=4)])

    async def main():
        kernel = Netlink()
        await kernel.open()
        try:
            await kernel.links(["eth0"])  # eth0 is index 2
            gate = asyncio.Event()
            monkeypatch.setattr(SlowDumpSocket, "GATE", gate)
            dump = asyncio.create_task(kernel.links(["eth0", "wan0"]))
            await asyncio.sleep(0)  # the dump is asked for, and waits
            stream = kernel.events()
            first = await asyncio.wait_for(anext(stream), 5)
            gate.set()
            found = await dump
            routes = await kernel.default_routes(socket.AF_INET)
            return first, found, [r.ifname for r in routes]
        finally:
            kernel.close()

    first, found, via = asyncio.run(main())
    assert first == Event(EventKind.LINK, LinkState("eth0", exists=False, index=2,
                                                    renamed_to="wan0"))
    assert via == ["wan0"]
    assert not found["eth0"].exists


def test_dumps_are_filtered_by_the_kernel_where_it_can(monkeypatch):
    """NETLINK_GET_STRICT_CHK: this kernel takes it; one before 4.20 refuses it with
    ENOPROTOOPT, and the sockets are then opened without it (not an agent that cannot
    start); any other refusal is an error."""
    assert netlink.kernel_filters_dumps.__wrapped__() is True

    class Refusing(socket.socket):
        def setsockopt(self, *args):
            raise OSError(REFUSED, os.strerror(REFUSED))

    monkeypatch.setattr(netlink.socket, "socket", Refusing)
    REFUSED = errno.ENOPROTOOPT
    assert netlink.kernel_filters_dumps.__wrapped__() is False
    REFUSED = errno.EPERM
    with pytest.raises(PermissionError):
        netlink.kernel_filters_dumps.__wrapped__()
