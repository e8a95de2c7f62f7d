"""The agent's kernel port: what rtnetlink's multicast messages become (`Netlink.events()`),
with pyroute2's socket replaced by a scripted one."""

from __future__ import annotations

import asyncio

from netwatch.adapters import netlink
from netwatch.adapters.netlink import Event, EventKind, LinkState, Netlink

RTM_NEWLINK, RTM_DELLINK = 16, 17


class Message(dict):
    """An rtnetlink message as pyroute2 hands it over: a dict with attributes."""

    def get_attr(self, name):
        return None


def link_message(event: str, index: int, ifname: str, flags: int) -> Message:
    kind = RTM_DELLINK if event == "RTM_DELLINK" else RTM_NEWLINK
    return Message(event=event, index=index, ifname=ifname, flags=flags,
                   header={"type": kind})


class ScriptedSocket:
    """Stands for pyroute2's AsyncIPRoute: the event socket reads `SCRIPT` once."""

    SCRIPT: list[Message] = []

    def __init__(self):
        self.closed = False

    async def bind(self, groups):
        pass

    async def get(self):
        for message in self.SCRIPT:
            yield message
        await asyncio.Event().wait()  # then nothing more, as a quiet kernel

    def close(self):
        self.closed = True


def events_of(monkeypatch, messages: list[Message], count: int) -> list[Event]:
    monkeypatch.setattr(netlink, "AsyncIPRoute", ScriptedSocket)
    monkeypatch.setattr(ScriptedSocket, "SCRIPT", messages)

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
    up = netlink.IFF_UP | netlink.IFF_LOWER_UP
    messages = [
        link_message("RTM_NEWLINK", 2, "eth0", netlink.IFF_UP),  # carrier lost
        Message(event="RTM_NEWADDR"),  # not a change the agent re-reads for
        Message(event="RTM_NEWROUTE"),
        link_message("RTM_DELLINK", 3, "eth1", 0),
        link_message("RTM_NEWLINK", 2, "eth0", up),
        Message(event="RTM_DELROUTE"),
    ]
    assert events_of(monkeypatch, messages, 5) == [
        Event(EventKind.LINK, LinkState("eth0", exists=True, admin_up=True, carrier=False)),
        Event(EventKind.ROUTE),
        Event(EventKind.LINK, LinkState("eth1", exists=False)),
        Event(EventKind.LINK, LinkState("eth0", exists=True, admin_up=True, carrier=True)),
        Event(EventKind.ROUTE),
    ]
