"""The embedded broker keeps the promises the testbed relies on, checked with raw MQTT 3.1.1 packets
(``broker.mqtt311``) over real sockets: a client that goes silent is dropped and its will published;
a QoS 1 message sent but never acknowledged is sent again (DUP) when the session resumes, and not
after it was acknowledged. The second runs on Mosquitto too. (Eclipse paho.mqtt.testing's
``test_keepalive`` and ``test_redelivery_on_reconnect`` check the same: ``benchmarks/paho_interop.py``.)"""

import asyncio
import time

import pytest

from tsodso.broker import mqtt311 as m
from tsodso.gateway.connection import BrokerSpec


class RawClient:
    """An MQTT 3.1.1 client that does only what it is told (it never acknowledges by itself)."""

    def __init__(self, url: str):
        self.spec = BrokerSpec.parse(url)

    async def connect(self, client_id: str, **kw) -> bool:
        self.reader, self.writer = await asyncio.open_connection(self.spec.host, self.spec.port)
        self.writer.write(m.connect(client_id, username=client_id, **kw))
        kind, _, body = await self.read()
        assert kind == m.CONNACK and body[1] == m.ACCEPTED, body
        return bool(body[0] & 1)  # session present

    async def read(self, timeout: float = 10.0) -> tuple[int, int, bytes]:
        async with asyncio.timeout(timeout):
            first = (await self.reader.readexactly(1))[0]
            length, shift = 0, 0
            while True:
                byte = (await self.reader.readexactly(1))[0]
                length |= (byte & 0x7F) << shift
                shift += 7
                if not byte & 0x80:
                    break
            return first >> 4, first & 0x0F, await self.reader.readexactly(length)

    async def subscribe(self, flt: str, qos: int) -> None:
        self.writer.write(m.subscribe(1, [(flt, qos)]))
        kind, _, body = await self.read()
        assert kind == m.SUBACK and body[2] == qos

    async def next_publish(self, timeout: float = 10.0) -> tuple[str, bytes, int, bool, int | None]:
        """(topic, payload, qos, dup, packet id) of the next PUBLISH."""
        while True:
            kind, flags, body = await self.read(timeout)
            if kind == m.PUBLISH:
                topic, payload, qos, _, pid = m.parse_publish(flags, body)
                return topic, payload, qos, bool(flags & 0x08), pid

    def abort(self) -> None:
        """Gone without DISCONNECT, as a crashed process goes."""
        self.writer.transport.abort()


@pytest.mark.parametrize("own_broker", ["embedded"], indirect=True)
async def test_a_client_that_goes_silent_is_dropped_and_its_will_published(own_broker, uid):
    """A client with a 1-s keepalive that stops sending anything (its socket stays open) is dropped
    by the broker and its will reaches the watcher; not before its keepalive has passed."""
    watcher, silent = RawClient(own_broker.url), RawClient(own_broker.url)
    will_topic = f"test/{uid}/will"
    await watcher.connect(f"watch-{uid}")
    await watcher.subscribe(will_topic, 1)
    await silent.connect(f"silent-{uid}", keepalive_s=1, will=m.Will(will_topic, b"gone", 1, False))
    t0 = time.monotonic()
    topic, payload, _, _, _ = await watcher.next_publish(timeout=30)
    assert (topic, payload) == (will_topic, b"gone")
    assert time.monotonic() - t0 >= 1.0  # not before its keepalive has passed (how long after: BENCHMARKS.md)
    silent.abort()
    watcher.abort()


@pytest.mark.parametrize("own_broker", ["embedded", "mosquitto"], indirect=True)
async def test_an_unacknowledged_qos1_message_is_sent_again_when_the_session_resumes(own_broker, uid):
    topic = f"test/{uid}/setpoint"
    sub, pub = RawClient(own_broker.url), RawClient(own_broker.url)
    assert not await sub.connect(f"sub-{uid}", clean=False)
    await sub.subscribe(topic, 1)
    await pub.connect(f"pub-{uid}")
    pub.writer.write(m.publish(topic, b"cycle 7", 1, False, 1))
    first = await sub.next_publish()
    assert first[:4] == (topic, b"cycle 7", 1, False)
    sub.abort()  # received, never acknowledged: the broker must keep it
    assert await sub.connect(f"sub-{uid}", clean=False)  # the session is there
    again = await sub.next_publish()
    assert again[:4] == (topic, b"cycle 7", 1, True)  # sent again, marked as a copy (DUP)
    sub.writer.write(m.ack(m.PUBACK, again[4]))  # now acknowledged
    await asyncio.sleep(0.2)
    sub.abort()
    assert await sub.connect(f"sub-{uid}", clean=False)
    with pytest.raises(TimeoutError):
        await sub.next_publish(timeout=1.0)  # acknowledged once: never again
    sub.abort()
    pub.abort()
