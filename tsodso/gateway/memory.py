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
from collections.abc import Callable
from typing import Any

from tsodso.gateway.mqtt import Incoming, topic_matches


class MemoryBus:
    """The subscriptions and retained messages of one in-process bus."""

    def __init__(self, name: str):
        self.name = name
        self.retained: dict[str, Incoming] = {}
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
                client for client in self.clients.values() if any(topic_matches(f, topic) for f in client.filters)
            ]
        return found

    def publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        if retain:
            if payload:
                self.retained[topic] = Incoming(topic, payload, qos, True, {})
            else:
                self.retained.pop(topic, None)
        message = Incoming(topic, payload, qos, False, {})
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
    """A gateway's connection to a :class:`MemoryBus`, with the interface of ``gateway.mqtt.MqttConnection``
    (``connect``, ``subscribe``, ``publish``, ``ready``, ``close``; messages to ``on_message`` in order)."""

    protocol = 4

    def __init__(
        self,
        bus_name: str,
        client_id: str,
        will: tuple[str, bytes] | None = None,
        *,
        on_message: Callable[[Incoming], None] | None = None,
        on_connect: Callable[[bool], None] | None = None,
    ):
        self.bus = bus(bus_name)
        self.client_id = client_id
        self.will = will
        self.on_message = on_message
        self.on_connect = on_connect
        self.filters: list[str] = []
        self.queue: asyncio.Queue[Incoming] = asyncio.Queue()
        self.connected = asyncio.Event()
        self.connections = 0
        self.lost = False
        self._reader: asyncio.Task[None] | None = None

    async def connect(self, timeout_s: float = 0.0) -> None:
        old = self.bus.clients.get(self.client_id)
        if old is not None:  # a client id connects once: the newcomer takes over, as a broker does
            old.lost = True
            old.connected.clear()
        self.bus.clients[self.client_id] = self
        self.bus.changed()
        self.connections += 1
        self.connected.set()
        if self.on_message is not None:
            self._reader = asyncio.create_task(self._read(self.on_message))
        if self.on_connect is not None:
            self.on_connect(False)

    async def _read(self, on_message: Callable[[Incoming], None]) -> None:
        while True:
            on_message(await self.queue.get())

    async def close(self, *, gone: bool = False) -> None:
        """Leave the bus; ``gone``: without closing (the bus publishes the will)."""
        if self.bus.clients.get(self.client_id) is self:
            del self.bus.clients[self.client_id]
            self.bus.changed()
        if gone and self.will is not None:
            self.bus.publish(self.will[0], self.will[1], 1, True)
        self.lost = True
        self.connected.clear()
        if self._reader is not None:
            self._reader.cancel()

    async def __aenter__(self) -> "MemoryClient":
        await self.connect()
        return self

    async def __aexit__(self, exc_type: object, *exc: object) -> None:
        await self.close(gone=exc_type is not None and exc_type is not asyncio.CancelledError)

    async def subscribe(self, filters: list[str] | str, qos: int = 1, retain_as_published: bool = False) -> None:
        for flt in [filters] if isinstance(filters, str) else filters:
            if flt not in self.filters:  # subscribing again replaces the subscription; its retained come again
                self.filters.append(flt)
                self.bus.changed()
            for topic, message in sorted(self.bus.retained.items()):
                if topic_matches(flt, topic):
                    self.queue.put_nowait(message)

    def ready(self, qos: int) -> bool:
        return not self.lost

    async def wait_ready(self, qos: int) -> None:
        """A client taken over waits for good (the in-memory bus reconnects no one)."""
        await self.connected.wait()

    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False, **properties: Any) -> None:
        self.bus.publish(topic, payload, qos, retain)
