"""The one module that speaks MQTT: gmqtt behind the small API the testbed needs.

Chosen by measurement (BENCHMARKS.md "The MQTT client", ``benchmarks/mqtt_clients.py``): gmqtt is
asyncio-native (no thread, no second event loop, no socket callbacks to bridge), speaks MQTT 5 and
3.1.1, TLS, and keeps QoS 1 messages until their PUBACK, sending them again on a resumed session.
Nothing else in the project imports it, and this module uses its public API only: ``Client``,
``Message``, ``Subscription``, the callbacks, ``MQTTConnectError`` and the pluggable store of messages
in flight (``persistent_storage``).

What this module adds to the client:

- **flow control**: at most the broker's Receive Maximum of QoS 1 messages in flight (MQTT 5
  §3.3.4); a sender beyond it waits for a PUBACK instead of failing;
- **nothing lost to a lost session**: QoS 1 messages still unacknowledged when the connection dropped
  are sent again after the reconnect, also when the broker lost the session (a restart without
  persistence), where the client itself would drop them; receivers drop the copy by message id;
- **subscriptions renewed** after a reconnect that found no session;
- **failover**: after a loss it reconnects itself, with growing, jittered delays, to the next node of
  a cluster URL (``mqtt://a:1883,b:1883,c:1883``) in turn, on the same client (its packet ids stay
  unique among the messages in flight); the client's own reconnect (back to the node it lost) is
  turned off once connected, so that two never race;
- the broker's refusal of CONNECT as :class:`ConnectRefused` with its reason code;
- messages in, as :class:`Incoming`, to one callback, called directly (no task per message).

    conn = MqttConnection(spec, "bsp-bsp1", on_message=handle, will=Will(topic, payload))
    await conn.connect(timeout_s=10)
    await conn.subscribe(["tsodso/v1/+/+/+/bsp/bsp1"])
    conn.publish(topic, payload, qos=1, expiry_s=5)   # written now (or waits: see ``send``)
    await conn.close()
"""

import asyncio
import collections
import contextlib
import logging
import random
import re
import time
import zlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import gmqtt
from gmqtt.mqtt.constants import UNLIMITED_RECONNECTS, MQTTv50, MQTTv311
from gmqtt.storage import PersistentStorage

from tsodso.gateway.connection import BrokerSpec

UNSUPPORTED_PROTOCOL = frozenset({132, 1})  # CONNACK: Unsupported Protocol Version (MQTT 5; 3.1.1 in 1)
BROKER_BUSY = frozenset({136, 137, 159, 3})  # Server unavailable / busy, connection rate exceeded: try again
DEFAULT_RECEIVE_MAXIMUM = 65535  # MQTT 5 §3.2.2.3.3: when the broker states none (and MQTT 3.1.1)
# Once connected, the client's own reconnect (back to the node it lost) is off: this module reconnects.
# gmqtt allows a reconnect while ``failed_connections <= reconnect_retries``, so 0 still allows one;
# below 0, other than its UNLIMITED_RECONNECTS (-1), allows none.
_NO_RECONNECT = -2

# The client's own log: errors only. A lost connection is reported by ``on_lost`` (the gateway logs
# it once, in its own words); the client would add a warning with a traceback per loss and per write
# to the closed socket. Its note that it does not reconnect by itself is dropped: this module does.
log = logging.getLogger("tsodso.mqtt")
log.setLevel(logging.ERROR)
logging.getLogger("gmqtt").setLevel(logging.ERROR)  # (its protocol module logs under its own name)
log.addFilter(lambda record: "max number of failed connection attempts" not in record.getMessage())


def _quietly(task: "asyncio.Future[Any]") -> None:
    """Retrieve a finished background attempt's outcome (its failure is reported by the disconnect)."""
    if not task.cancelled():
        task.exception()


class ConnectRefused(ConnectionError):
    """The broker answered CONNECT with a refusal (``code``: the CONNACK reason code)."""

    def __init__(self, code: int, text: str):
        super().__init__(text)
        self.code = code


@dataclass(frozen=True, slots=True)
class Will:
    """What the broker publishes for a client that goes away without a DISCONNECT."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


@dataclass(slots=True)
class Incoming:
    """One PUBLISH as it arrived. ``properties``: its MQTT 5 properties by name (``message_expiry_interval``,
    ``response_topic``, ``correlation_data``...), each a list of values, as the client parses them;
    ``received_ns``: when it was read from the connection (wall clock, ns since the epoch), before any
    queue it may wait in."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    properties: dict[str, Any]
    received_ns: int = 0

    def property(self, name: str) -> Any:
        values = self.properties.get(name)
        return values[0] if values else None


def home_node(client_id: str, nodes: int) -> int:
    """The node (index in a cluster URL's list) a client first tries: its id's CRC-32 modulo ``nodes``."""
    return zlib.crc32(client_id.encode()) % nodes


def topic_matches(topic_filter: str, topic: str) -> bool:
    """Whether ``topic`` matches the MQTT topic filter (``+`` one level, ``#`` the rest; MQTT 5 §4.7)."""
    f, t = topic_filter.split("/"), topic.split("/")
    for i, level in enumerate(f):
        if level == "#":
            return not (i == 0 and t[0].startswith("$"))
        if i >= len(t) or (level != "+" and level != t[i]) or (level == "+" and i == 0 and t[0].startswith("$")):
            return False
    return len(f) == len(t)


class _InFlight(PersistentStorage):
    """gmqtt's store of QoS 1 messages awaiting their PUBACK, extended to count them (flow control), to
    wake waiting senders one per free place, in order (thousands may wait in a fan-out: waking them all
    on every PUBACK would cost each wake-up thousands of times), and to keep what a lost session
    discards, to be sent again."""

    def __init__(self) -> None:
        super().__init__()
        self.messages: dict[int, gmqtt.Message] = {}  # packet id -> the message, while unacknowledged
        self.sending: gmqtt.Message | None = None  # the message being published now (its id comes next)
        self.orphans: list[gmqtt.Message] = []  # unacknowledged when the broker lost the session
        self.waiting: collections.deque[asyncio.Future[None]] = collections.deque()
        self.limit = DEFAULT_RECEIVE_MAXIMUM - 1

    @property
    def room(self) -> bool:
        return len(self.messages) < self.limit

    async def wait_room(self) -> None:
        """Wait until a place in the window frees (one waiter woken per place, oldest first)."""
        fut = asyncio.get_running_loop().create_future()
        self.waiting.append(fut)
        try:
            await fut
        finally:
            with contextlib.suppress(ValueError):
                self.waiting.remove(fut)

    def wake(self) -> None:
        """Wake as many waiting senders as there are free places."""
        free = self.limit - len(self.messages)
        for fut in self.waiting:
            if free <= 0:
                break
            if not fut.done():
                fut.set_result(None)
                free -= 1

    def push_message(self, mid: int, raw_package: Any) -> None:
        super().push_message(mid, raw_package)
        if self.sending is not None:
            self.messages[mid] = self.sending
            self.sending = None

    def remove_message_by_mid(self, mid: int) -> None:
        super().remove_message_by_mid(mid)
        if self.messages.pop(mid, None) is not None and self.waiting:
            self.wake()

    def clear(self) -> None:
        self.orphans.extend(self.messages.values())
        self.messages.clear()
        super().clear()
        self.wake()


class MqttConnection:
    """One client connection to a broker (or to one node of a cluster at a time), reconnecting by
    itself after a loss until :meth:`close`: first after ``reconnect_delay_s[0]``, doubling to
    ``reconnect_delay_s[1]``, jittered, to the next node in turn. ``on_message`` is called for every
    PUBLISH, in order; ``on_connect(session_present)`` after every CONNACK that accepted, the first one
    included; ``on_lost(reason)`` when a connection ends; ``on_retry(node, why)`` when an attempt to
    connect again fails."""

    def __init__(
        self,
        broker: BrokerSpec,
        client_id: str,
        *,
        on_message: Callable[[Incoming], None],
        on_connect: Callable[[bool], None] | None = None,
        on_lost: Callable[[str], None] | None = None,
        on_retry: Callable[[str, str], None] | None = None,
        clean: bool = True,
        session_expiry_s: int = 0,
        will: Will | None = None,
        keepalive_s: int = 60,
        reconnect_delay_s: tuple[float, float] = (0.2, 5.0),
    ):
        self.broker = broker
        self.client_id = client_id
        self.protocol = broker.protocol
        self.on_message = on_message
        self.on_connect = on_connect
        self.on_lost = on_lost
        self.on_retry = on_retry  # (node, why): an attempt to reconnect after a loss failed
        self.clean = clean
        self.session_expiry_s = session_expiry_s
        self.will = will
        self.keepalive_s = keepalive_s
        self.reconnect_delay_s = reconnect_delay_s
        self.connected = asyncio.Event()
        self.connections = 0
        self._filters: list[tuple[str, int, bool]] = []
        self._suback: dict[int, asyncio.Future[None]] = {}
        self._store = _InFlight()
        self._client: gmqtt.Client | None = None
        self._closed = False
        # index in broker.nodes of the node connected to (or tried last): a cluster's clients start on
        # the node their id hashes to, spread over the nodes, so that losing one moves a share of them
        self._node = home_node(client_id, len(broker.nodes))
        self._recovery: asyncio.Task[None] | None = None

    # --- connecting -----------------------------------------------------------------------------

    def _new_client(self) -> gmqtt.Client:
        kwargs: dict[str, Any] = {}
        if self.protocol == 5:
            kwargs["session_expiry_interval"] = self.session_expiry_s
        will = None
        if self.will is not None:
            will = gmqtt.Message(self.will.topic, self.will.payload, qos=self.will.qos, retain=self.will.retain)
        client = gmqtt.Client(
            self.client_id,
            clean_session=self.clean,
            will_message=will,
            persistent_storage=self._store,
            logger=log,
            **kwargs,
        )
        # until the first CONNACK the client may reconnect by itself (it does so to speak MQTT 3.1.1 to a
        # broker that answers MQTT 5 with 'unacceptable protocol version'); after it, this module does
        client.set_config({"reconnect_retries": UNLIMITED_RECONNECTS, "reconnect_delay": self.reconnect_delay_s[0]})
        client.set_auth_credentials(self.broker.username or self.client_id, self.broker.password)
        client.on_message = self._on_message
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        return client

    @property
    def node(self) -> str:
        """The node connected to (or tried last), 'host:port'."""
        host, port = self.broker.nodes[self._node]
        return f"{host}:{port}"

    async def connect(self, timeout_s: float = 10.0) -> None:
        """Connect to the first node that accepts, trying each in turn from the current one (at first,
        the node this client's id hashes to), within
        ``timeout_s`` in all (TCP_NODELAY: asyncio sets it on every TCP connection). Raises
        :class:`ConnectRefused` at once where a node says no (every node has the same users), else the
        last node's ``OSError`` (nothing listens, no route) or ``TimeoutError``."""
        deadline = time.monotonic() + timeout_s
        nodes = len(self.broker.nodes)
        first = self._node
        failure: BaseException = TimeoutError(f"no node of {self.broker.url} answered within {timeout_s:g} s")
        for k in range(nodes):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self._node = (first + k) % nodes
            last = k == nodes - 1
            try:
                if not last:  # a node out of reach (a partition) gets its share of the time, not all of it
                    await self._reachable(left / (nodes - k))
                # one that answers may be slow to accept (a cluster electing leaders after losing a node
                # answers CONNECT once it has them): half the time left, all of it for the last
                return await self._connect_node(left if last else max(left / 2, left / (nodes - k)))
            except (OSError, TimeoutError) as exc:
                failure = exc
                if self.connections and self.on_retry is not None:  # (after a loss: say which node failed how)
                    self.on_retry(self.node, str(exc) or type(exc).__name__)
        raise failure

    async def _reachable(self, timeout_s: float) -> None:
        """A TCP connection to the current node opens within ``timeout_s`` (it is closed at once)."""
        host, port = self.broker.nodes[self._node]
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout_s)
        except TimeoutError:
            raise TimeoutError(f"{host}:{port} did not answer within {timeout_s:.1f} s") from None
        writer.close()

    async def _connect_node(self, timeout_s: float) -> None:
        """Connect to the current node. One client serves every connection of this object (its packet
        ids must stay unique among the messages in flight, which a resumed session sends again); the
        attempt counts as done at the CONNACK, while the client may still be sending those again."""
        host, port = self.broker.nodes[self._node]
        client = self._client = self._client or self._new_client()
        connecting = asyncio.ensure_future(
            client.connect(
                host,
                port,
                ssl=self.broker.tls_context() or False,
                keepalive=self.keepalive_s,
                version=MQTTv50 if self.protocol == 5 else MQTTv311,
            )
        )
        accepted = asyncio.ensure_future(self.connected.wait())
        try:
            await asyncio.wait({connecting, accepted}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
            if self.connected.is_set():
                connecting.add_done_callback(_quietly)  # (the resend of a resumed session goes on)
                return
            if not connecting.done():
                raise TimeoutError(f"{host}:{port} did not accept within {timeout_s:.1f} s")
            connecting.result()
            raise ConnectionError(f"{host}:{port} closed the connection")
        except gmqtt.MQTTConnectError as exc:
            await self._stop(client)
            match = re.match(r"code (\d+)", str(exc))
            raise ConnectRefused(int(match.group(1)) if match else 128, str(exc)) from None
        except BaseException:
            connecting.cancel()
            await self._stop(client)
            raise
        finally:
            accepted.cancel()

    async def _recover(self) -> None:
        """After a loss: connect again, to the next node in turn, until connected or closed."""
        delay = self.reconnect_delay_s[0]
        try:
            while not self._closed and not self.connected.is_set():
                await asyncio.sleep(delay * random.uniform(0.8, 1.2))
                if self._closed:
                    return
                self._node = (self._node + 1) % len(self.broker.nodes)
                with contextlib.suppress(OSError, TimeoutError):  # ConnectRefused too (a busy broker): again
                    await self.connect(max(4.0, 2 * self.reconnect_delay_s[1]))
                delay = min(delay * 2, self.reconnect_delay_s[1])
        finally:
            self._recovery = None

    async def _stop(self, client: gmqtt.Client) -> None:
        if self.connections == 0:  # never connected: the next attempt may start afresh
            self._client = None
        self.connected.clear()
        with contextlib.suppress(Exception):  # nothing to disconnect when the connection never came up
            await asyncio.wait_for(client.disconnect(), 2.0)

    def _on_connect(self, client: Any, session_present: int, rc: int, properties: dict[str, Any]) -> None:
        if client is not self._client or client is None:
            return
        client.set_config({"reconnect_retries": _NO_RECONNECT})  # from now on, this module does (_recover)
        values = properties.get("receive_maximum") if properties else None
        self._store.limit = (values[0] if values else DEFAULT_RECEIVE_MAXIMUM) - 1
        self._store.wake()
        self.connections += 1
        self.connected.set()
        if self.connections > 1 and not session_present and self._filters:
            self._send_subscribe(self._filters)  # a session the broker no longer has: subscribe again
        orphans, self._store.orphans = self._store.orphans, []
        for message in orphans:
            self._publish_message(message)
        if self.on_connect is not None:
            self.on_connect(bool(session_present))

    def _on_disconnect(self, client: Any, packet: Any, exc: Any = None) -> None:
        if client is not self._client or not self.connected.is_set():
            return  # a client given up, or an attempt that never connected (connect() says why)
        self.connected.clear()
        if self._closed:
            return
        if self.on_lost is not None:
            self.on_lost(str(packet or exc or "connection lost"))
        if self._recovery is None:
            self._recovery = asyncio.get_running_loop().create_task(self._recover())

    # --- subscribing ----------------------------------------------------------------------------

    async def subscribe(self, filters: list[str], qos: int = 1, retain_as_published: bool = False) -> None:
        """Subscribe to ``filters`` (renewed after a reconnect that found no session); returns on the SUBACK.
        A filter subscribed again replaces its subscription, and the broker sends its retained messages again
        (MQTT 3.1.1 3.8.4; MQTT 5 with Retain Handling 0)."""
        entries = [(f, qos, retain_as_published) for f in filters]
        self._filters = [e for e in self._filters if e[0] not in filters] + entries
        mid = self._send_subscribe(entries)
        fut = self._suback[mid] = asyncio.get_running_loop().create_future()
        try:
            await asyncio.wait_for(fut, 10.0)
        finally:
            self._suback.pop(mid, None)

    def _send_subscribe(self, entries: list[tuple[str, int, bool]]) -> int:
        assert self._client is not None, "connect first"
        subs = [gmqtt.Subscription(f, qos=q, retain_as_published=rap) for f, q, rap in entries]
        return int(self._client.subscribe(subs))

    def _on_subscribe(self, client: Any, mid: int, qos: Any, properties: Any) -> None:
        fut = self._suback.get(mid)
        if fut is not None and not fut.done():
            fut.set_result(None)

    # --- publishing -----------------------------------------------------------------------------

    def ready(self, qos: int) -> bool:
        """Whether :meth:`publish` would write at once (connected, and room in the QoS 1 window)."""
        return self.connected.is_set() and (qos == 0 or self._store.room)

    async def wait_ready(self, qos: int) -> None:
        """Wait until :meth:`ready` (a connection; for QoS 1, room in the broker's Receive Maximum)."""
        while not self.ready(qos):
            await self.connected.wait()
            if qos and not self._store.room:
                await self._store.wait_room()

    def publish(
        self,
        topic: str,
        payload: bytes,
        qos: int = 0,
        retain: bool = False,
        *,
        expiry_s: int | None = None,
        response_topic: str | None = None,
        correlation: bytes | None = None,
    ) -> None:
        """Write one PUBLISH now (MQTT 5 properties only on MQTT 5). A QoS 1 message is kept until its
        PUBACK and sent again after a reconnect. Call when :meth:`ready`, else the message waits in the
        client for the next connection (QoS 1) or is lost (QoS 0)."""
        props: dict[str, Any] = {}
        if self.protocol == 5:
            if expiry_s is not None:
                props["message_expiry_interval"] = expiry_s
            if response_topic is not None:
                props["response_topic"] = response_topic
            if correlation is not None:
                props["correlation_data"] = correlation
        self._publish_message(gmqtt.Message(topic, payload, qos=qos, retain=retain, **props))

    def _publish_message(self, message: gmqtt.Message) -> None:
        client = self._client
        if client is None:
            raise ConnectionError(f"{self.client_id}: not connected")
        if message.qos:
            self._store.sending = message
        try:
            client.publish(message)
        finally:
            self._store.sending = None

    # --- receiving ------------------------------------------------------------------------------

    def _on_message(self, client: Any, topic: str, payload: bytes, qos: int, properties: dict[str, Any]) -> int:
        retain = bool(properties.get("retain"))
        self.on_message(Incoming(topic, payload, qos, retain, properties, time.time_ns()))
        return 0

    # --- closing --------------------------------------------------------------------------------

    async def drained(self) -> None:
        """Wait until the broker has acknowledged every QoS 1 message sent so far."""
        await self._store.wait_empty()

    async def close(self, drain_s: float = 2.0) -> None:
        """Wait up to ``drain_s`` for the broker to acknowledge the QoS 1 messages in flight, then
        DISCONNECT (the broker does not publish the will) and stop reconnecting."""
        if self._client is not None and self.connected.is_set() and drain_s > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.drained(), drain_s)
        self._closed = True
        if self._recovery is not None:
            self._recovery.cancel()
        if self._client is not None:
            await self._stop(self._client)

    async def __aenter__(self) -> "MqttConnection":
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class Subscriber:
    """A plain subscriber for tools and tests: ``async with Subscriber(spec, id) as s: await
    s.subscribe([...]); async for m in s.messages(): ...`` (messages as :class:`Incoming`)."""

    def __init__(self, broker: BrokerSpec, client_id: str, **kwargs: Any):
        self.queue: asyncio.Queue[Incoming] = asyncio.Queue()
        self.connection = MqttConnection(broker, client_id, on_message=self.queue.put_nowait, **kwargs)

    async def __aenter__(self) -> "Subscriber":
        await self.connection.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.connection.close()

    async def subscribe(self, filters: list[str] | str, qos: int = 1, retain_as_published: bool = False) -> None:
        await self.connection.subscribe([filters] if isinstance(filters, str) else filters, qos, retain_as_published)

    async def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        await self.connection.wait_ready(qos)
        self.connection.publish(topic, payload, qos, retain)

    async def messages(self) -> AsyncIterator[Incoming]:
        while True:
            yield await self.queue.get()
