"""An in-memory bus: the gateway's transport inside one process, for studies and tests of decisions.

``memory://NAME`` as a broker URL connects a gateway to the bus ``NAME`` of this process instead of
a broker: every arrival check, the exchange log and the latency stamps work as over MQTT (the gateway
is the same; only what carries the bytes differs). It keeps MQTT 3.1.1's semantics that the actors
rely on: topic filters with ``+`` and ``#``, retained messages (a new subscriber gets them), per
publisher order, and the will ('offline') when a client goes away without closing. It is not a
broker: no QoS handshakes, no sessions across connections, no network. Transport tests use real
brokers.
"""

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from paho.mqtt.client import topic_matches_sub


@dataclass(frozen=True)
class _Topic:
    value: str


@dataclass(frozen=True)
class MemoryMessage:
    """What a subscriber receives: the fields the gateway reads of an MQTT message."""

    topic: _Topic
    payload: bytes
    qos: int
    retain: bool
    properties: Any = None


class MemoryBus:
    """The subscriptions and retained messages of one in-process bus."""

    def __init__(self, name: str):
        self.name = name
        self.retained: dict[str, MemoryMessage] = {}
        self.clients: dict[str, MemoryClient] = {}
        self.delivered = 0
        self._routes: dict[str, list[MemoryClient]] = {}  # topic -> its subscribers, until one changes

    def changed(self) -> None:
        """A client came, went or subscribed: the routes are worked out again."""
        self._routes.clear()

    def subscribers(self, topic: str) -> list["MemoryClient"]:
        found = self._routes.get(topic)
        if found is None:
            found = self._routes[topic] = [
                client for client in self.clients.values() if any(topic_matches_sub(f, topic) for f in client.filters)
            ]
        return found

    def publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        if retain:
            if payload:
                self.retained[topic] = MemoryMessage(_Topic(topic), payload, qos, True)
            else:
                self.retained.pop(topic, None)
        message = MemoryMessage(_Topic(topic), payload, qos, False)
        for client in self.subscribers(topic):
            client.queue.put_nowait(message)
            self.delivered += 1


_BUSES: dict[str, MemoryBus] = {}


def bus(name: str) -> MemoryBus:
    """The bus ``name`` of this process (created on first use)."""
    found = _BUSES.get(name)
    if found is None:
        found = _BUSES[name] = MemoryBus(name)
    return found


class MemoryClient:
    """A gateway's connection to a :class:`MemoryBus`: the part of an MQTT client the gateway uses."""

    def __init__(self, bus_name: str, client_id: str, will: tuple[str, bytes] | None = None):
        self.bus = bus(bus_name)
        self.client_id = client_id
        self.will = will
        self.filters: list[str] = []
        self.queue: asyncio.Queue[MemoryMessage] = asyncio.Queue()
        self.lost = False

    async def __aenter__(self) -> "MemoryClient":
        old = self.bus.clients.get(self.client_id)
        if old is not None:
            old.lost = True  # a client id connects once: the newcomer takes over, as a broker does
        self.bus.clients[self.client_id] = self
        self.bus.changed()
        return self

    async def __aexit__(self, exc_type: object, *exc: object) -> None:
        if self.bus.clients.get(self.client_id) is self:
            del self.bus.clients[self.client_id]
            self.bus.changed()
        if exc_type is not None and exc_type is not asyncio.CancelledError and self.will is not None:
            self.bus.publish(self.will[0], self.will[1], 1, True)  # went away without closing: its will
        self.lost = True

    async def subscribe(self, flt: str, qos: int = 1) -> None:
        self.filters.append(flt)
        self.bus.changed()
        for topic, message in sorted(self.bus.retained.items()):
            if topic_matches_sub(flt, topic):
                self.queue.put_nowait(message)

    async def publish(
        self,
        topic: str,
        payload: bytes,
        qos: int = 0,
        retain: bool = False,
        properties: Any = None,
        timeout: Any = None,
    ) -> None:
        self.bus.publish(topic, payload, qos, retain)
        await asyncio.sleep(0)  # as a network write would: let the receivers run

    @property
    def messages(self) -> AsyncIterator[MemoryMessage]:
        return self._messages()

    async def _messages(self) -> AsyncIterator[MemoryMessage]:
        while True:
            yield await self.queue.get()
