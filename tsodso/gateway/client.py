"""The gateway: how an actor reaches the bus.

    async with Gateway(Party(role="dso", id="dso1"), "mqtt://127.0.0.1:1883", log=log) as gw:
        @gw.on(MeritOrderList)
        def validate(msg: Received[MeritOrderList]) -> None:   # answers at once: a plain call
            gw.reply_now(msg, MolValidation(...))

        @gw.on(PrequalificationRequest)
        async def forward(msg: Received[PrequalificationRequest]) -> None:   # waits: its own task
            verdicts = await gw.request(PrequalificationForward(...), to=dso, timeout=5)
            await gw.reply(msg, PrequalificationResult(...))

        answer = await gw.request(PrequalificationForward(...), to=tso, timeout=5)
        async for msg in gw.messages():   # everything no handler took
            ...

What it does for every message is in docs/architecture.md "How one message travels": envelope, topic,
delivery policy (``gateway.policy``), exchange-log row, checks on arrival (``gateway.arrival``),
rejections to the sender's error topic. Connection (``gateway.mqtt``, gmqtt): TCP_NODELAY, a
persistent session (QoS 1 messages queued while the actor is away arrive when it returns), the first
connection retried with exponential back-off, later losses reconnected by the client, flow control to
the broker's window of QoS 1 messages in flight, QoS 1 messages the broker had not acknowledged sent
again on the next connection (receivers drop the duplicate by message id), a retained 'online' state
on connect and an 'offline' state as the MQTT will.
"""

import asyncio
import contextlib
import inspect
import os
import random
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, Literal, NamedTuple, TypeVar

import structlog
from nacl.signing import SigningKey

from tsodso.gateway.arrival import (
    DEFAULT_MAX_CLOCK_SKEW_S,
    DEFAULT_MAX_PAYLOAD_BYTES,
    ArrivalCheck,
    Received,
    Rejected,
    Trust,
    encode,
)
from tsodso.gateway.connection import BrokerSpec
from tsodso.gateway.exchange_log import KEPT_TYPES, ExchangeLog, LogRow, now_us
from tsodso.gateway.links import LinkConditions
from tsodso.gateway.memory import MemoryClient
from tsodso.gateway.mqtt import BROKER_BUSY, UNSUPPORTED_PROTOCOL, ConnectRefused, Incoming, MqttConnection, Will
from tsodso.gateway.policy import DELIVERY_POLICY, DeliveryPolicy
from tsodso.gateway.traffic import Traffic
from tsodso.schemas import signing
from tsodso.schemas.codes import RejectReason
from tsodso.schemas.envelope import SCHEMA_VERSION, Envelope, Party
from tsodso.schemas.messages import (
    MESSAGE_TYPES,
    RESPONSE_TYPES,
    ActorState,
    Body,
    Heartbeat,
    Rejection,
)
from tsodso.schemas.rights import Rights, default_rights
from tsodso.schemas.topics import ALL, inbox_filters, topic_for

B = TypeVar("B", bound=Body)
Handler = Callable[[Received[Any]], Any]  # async: awaited in its own task; plain: what it returns is not used

SOFTWARE = "tsodso-testbed/0.1"
BURST = 32  # messages written in a row before the sender lets the event loop run


class RequestTimeout(TimeoutError):
    """No answer to a request within its time."""


class PayloadTooLarge(ValueError):
    """The gateway refuses to send what every receiver would reject."""


class BrokerUnreachable(ConnectionError):
    """No connection to the broker: nothing answered in time, or the broker refused (its reason given)."""


def connect_refusal(exc: BaseException) -> int | None:
    """The reason code of a broker's refusal of CONNECT, or None when it did not answer with one."""
    return exc.code if isinstance(exc, ConnectRefused) else None


class GatewayFailed(RuntimeError):
    """The gateway's connection loop died of something it could not handle; the actor must stop
    (its 'offline' state has been published where possible) and be restarted."""


class NoticeBudget:
    """Rejection notices per sender: a token bucket (``rate_per_s``, ``burst``), so that a peer that
    floods cannot make this actor flood it, or anyone it claims to be, in return."""

    def __init__(self, rate_per_s: float = 5.0, burst: float = 20.0, max_senders: int = 10_000):
        self.rate_per_s, self.burst, self.max_senders = rate_per_s, burst, max_senders
        self._buckets: dict[str, tuple[float, float]] = {}  # sender -> (tokens, at monotonic s)
        self.suppressed = 0

    def take(self, sender: str, now_s: float) -> bool:
        tokens, at = self._buckets.get(sender, (self.burst, now_s))
        tokens = min(self.burst, tokens + (now_s - at) * self.rate_per_s)
        if len(self._buckets) >= self.max_senders and sender not in self._buckets:
            self._buckets.clear()
        if tokens < 1.0:
            self._buckets[sender] = (tokens, now_s)
            self.suppressed += 1
            return False
        self._buckets[sender] = (tokens - 1.0, now_s)
        return True


class _Made(NamedTuple):
    """A message made for sending: what ``publish`` needs of it, each computed once."""

    envelope: Envelope
    payload: bytes
    topic: str
    created_us: int  # the envelope's created_at, µs since the epoch
    valid_until_us: int | None  # its valid_until


class Properties(NamedTuple):
    """The MQTT 5 properties the gateway sets on a message."""

    expiry_s: int | None  # Message Expiry Interval
    response_topic: str | None
    correlation: bytes | None  # Correlation Data: the request's message id


def _known_type(topic: str) -> str | None:
    """The message type a topic names, when it is one of the contract's (for the log row of a message
    refused before its envelope was read)."""
    parts = topic.split("/")
    return parts[4] if len(parts) == 7 and parts[4] in MESSAGE_TYPES else None


def rejection_notice(rej: Rejected) -> Rejection:
    """The notice telling a sender why its message was refused; it fits its own schema whatever arrived
    (``Rejected`` clips topic and reason; a type is named only when it is one of the contract's)."""
    env = rej.envelope
    return Rejection(
        rejected_message_id=str(env.message_id) if env else None,
        rejected_type=env.type if env and env.type in MESSAGE_TYPES else None,
        rejected_topic=rej.topic,
        code=rej.code,
        reason=rej.reason,
    )


_ids = random.Random(int.from_bytes(os.urandom(16), "big"))  # seeded from the OS, again in a forked child
os.register_at_fork(after_in_child=lambda: _ids.seed(int.from_bytes(os.urandom(16), "big")))


def new_message_id() -> uuid.UUID:
    """A random (version 4) UUID for a message id. Ids must be unique, not secret (a signature, not the id,
    proves who sent a message): drawn from a generator seeded once from the OS, without a system call per
    message as ``uuid.uuid4`` makes."""
    return uuid.UUID(int=_ids.getrandbits(128), version=4)


_validate_envelope = Envelope.__pydantic_validator__.validate_python


def _time_out(answer: asyncio.Future[Any]) -> None:
    """A request's time is up: its caller stops waiting (an answer that comes first wins)."""
    if not answer.done():
        answer.set_exception(TimeoutError())


def _dt(us: int) -> datetime:
    return datetime.fromtimestamp(us / 1_000_000, UTC)


class Gateway:
    """One actor's connection to the bus. Use with ``async with``."""

    def __init__(
        self,
        me: Party,
        broker: BrokerSpec | str,
        *,
        log: ExchangeLog | None = None,
        rights: Rights | None = None,
        policy: Mapping[str, DeliveryPolicy] = DELIVERY_POLICY,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
        resume_session: bool = False,
        session_expiry_s: int = 7 * 86400,
        keepalive_s: int = 10,
        connect_timeout_s: float = 10.0,
        reconnect_delay_s: tuple[float, float] = (0.05, 5.0),
        links: LinkConditions | None = None,
        clock_offset_s: float = 0.0,
        client_id: str | None = None,
        signing_key: SigningKey | None = None,
        trust: Trust | None = None,
        max_clock_skew_s: float = DEFAULT_MAX_CLOCK_SKEW_S,
        traffic: Traffic | None = None,
        will: bool = True,
        sends_only: bool = False,
    ):
        self.me = me
        self.broker = BrokerSpec.parse(broker) if isinstance(broker, str) else broker
        self.exchange_log = log
        self.run_id = log.run_id if log else "-"
        self.policy = policy
        # identity: this actor signs what it sends with its own key (schemas.signing); ``trust`` says
        # whose signatures it checks. Without ``trust`` every sender is who its topic claims.
        self.signing_key = signing_key
        self.check = ArrivalCheck(
            me,
            rights or default_rights(),
            max_payload_bytes=max_payload_bytes,
            trust=trust,
            policy=policy,
            max_clock_skew_s=max_clock_skew_s,
        )
        self.notices = NoticeBudget()
        self.max_payload_bytes = max_payload_bytes
        self.resume_session = resume_session
        self.session_expiry_s = session_expiry_s
        self.keepalive_s = keepalive_s
        self.connect_timeout_s = connect_timeout_s
        self.reconnect_delay_s = reconnect_delay_s
        self.links = links or LinkConditions()  # impairments of this actor's outgoing links
        # This host's clock error (tests and studies of unsynchronised hosts): every timestamp the
        # gateway takes (created_at, sent, received, expiry checks) is read from the skewed clock.
        self.clock_offset_us = round(clock_offset_s * 1_000_000)
        self.client_id = client_id or f"{me.role}-{me.id}"  # also names the persistent session
        self.stats: Counter[str] = Counter()  # outcome -> count
        self.connections = 0
        # every presence state of this process carries it, its will too (gateway.presence)
        self.started_at = datetime.fromtimestamp(self.now_us() / 1e6, UTC)
        self.presence: Literal["online", "offline"] = "online"  # what a (re)connect says (see announce)
        self.log = structlog.get_logger("gateway").bind(actor=str(me), run=self.run_id)

        self._me_str = str(me)
        self._v5 = self.broker.protocol == 5
        self._client: MqttConnection | MemoryClient | None = None
        self._closing = False
        self._sequence: dict[str, int] = defaultdict(int)
        self._handlers: dict[str, list[Handler]] = defaultdict(list)
        self._pending: dict[uuid.UUID, asyncio.Future[Received[Any]]] = {}
        self._inbox: asyncio.Queue[Received[Any]] | None = None  # kept only once someone reads messages()
        self.failed: BaseException | None = None
        self._failure: asyncio.Future[None] | None = None
        self._quiet_until = 0.0  # rejections are logged at most ~10/s; the exchange log keeps every one
        self._tasks: set[asyncio.Task[Any]] = set()
        self._state_topic = topic_for(me, ActorState.type_name, ALL)
        # who watches the messages in flight in this process (a virtual clock), and the handler tasks
        # the arrival being handled has started
        self.traffic = traffic
        # a second connection that only sends for an actor whose own gateway speaks for it (a fan-out
        # sender process): it subscribes to nothing and says no presence ('online', its will, 'offline')
        self.sends_only = sends_only
        self.will = will and not sends_only  # the retained 'offline' as the MQTT will (off: an emulator's fault)
        self._started: list[asyncio.Task[Any]] | None = None
        self.connect_error: str | None = None  # why the last connection attempt failed
        self._early: list[Incoming] | None = []  # arrivals before 'async with' gave the gateway to its caller
        self._keep_unhandled = False
        self._burst = 0  # messages written since the loop last ran

    # --- life cycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> "Gateway":
        loop = asyncio.get_running_loop()
        self._failure = loop.create_future()
        self._restore_replay_window()
        conn = await self._connect_first()
        self._client = conn
        if not self.sends_only:
            await conn.subscribe(inbox_filters(self.me), qos=1)
        node = conn.node if isinstance(conn, MqttConnection) else self.broker.url
        self.log.info("connected", node=node, protocol=5 if self._v5 else 4, connections=self.connections)
        if not self.sends_only:
            await self.publish(self._state("online"), ALL)
        # what arrived so far (retained presence, queued messages) is handled once the caller has had the
        # chance to register its handlers: right after 'async with' gives it the gateway
        loop.call_soon(self._release_early)
        return self

    def _release_early(self) -> None:
        early, self._early = self._early, None
        self._keep_unhandled = True  # what came with the connection waits for messages() (queued, retained)
        try:
            for message in early or ():
                self._receive(message)
        finally:
            self._keep_unhandled = False

    async def _connect_first(self) -> MqttConnection | MemoryClient:
        """The first connection, tried until ``connect_timeout_s``: afresh (a clean session first, dropping
        what a previous run left queued, unless ``resume_session``), then the persistent one. MQTT 3.1.1 has
        no 'clean start but keep the session'; and Mosquitto 2.0.11 does not restore an MQTT 5 session
        begun with Clean Start after a broker restart (measured here), while one begun without it survives.
        A broker that refuses MQTT 5 gets MQTT 3.1.1; one that refuses the client says why, at once."""
        deadline = time.monotonic() + self.connect_timeout_s
        delay = self.reconnect_delay_s[0]
        while True:
            left = deadline - time.monotonic()
            try:
                if not self.resume_session and not self.broker.memory:  # the in-memory bus keeps no sessions
                    fresh = self._connection(clean=True)
                    await fresh.connect(max(left, 0.1))
                    await fresh.close()
                conn = self._connection(clean=False)
                await conn.connect(max(deadline - time.monotonic(), 0.1))
                return conn
            except ConnectRefused as exc:
                self.connect_error = str(exc)
                if self._v5 and exc.code in UNSUPPORTED_PROTOCOL:
                    self._v5 = False
                    self.log.warning("the broker refuses MQTT 5: speaking MQTT 3.1.1", broker=self.broker.url)
                    continue
                if exc.code not in BROKER_BUSY:
                    raise BrokerUnreachable(
                        f"{self.client_id}: {self.broker.url} refused the connection: {exc}"
                    ) from None
            except (OSError, TimeoutError) as exc:
                self.connect_error = str(exc) or repr(exc)
                if isinstance(exc, ConnectionRefusedError) and exc.errno:
                    self.connect_error = f"[Errno {exc.errno}] {os.strerror(exc.errno)}"
            if time.monotonic() + delay >= deadline:
                why = self.connect_error or "no answer"
                hint = ""
                if "connection refused" in why.lower():
                    hint = " (nothing listens there: start a broker, e.g. 'tsodso broker embedded', or check host and port)"
                raise BrokerUnreachable(
                    f"{self.client_id}: could not connect to {self.broker.url} within {self.connect_timeout_s:g} s: "
                    f"{why}{hint}"
                )
            await asyncio.sleep(delay * random.uniform(0.8, 1.2))
            delay = min(delay * 2, self.reconnect_delay_s[1])

    def _connection(self, clean: bool) -> MqttConnection | MemoryClient:
        _, will_payload = self.build(self._state("offline"), ALL, sequence=0)
        if self.broker.memory:
            return MemoryClient(
                self.broker.host,
                self.client_id,
                (self._state_topic, will_payload) if self.will else None,
                on_message=self._receive,
                on_connect=self._on_connect,
            )
        spec = self.broker if self._v5 == (self.broker.protocol == 5) else replace(self.broker, protocol=4)
        return MqttConnection(
            spec,
            self.client_id,
            on_message=self._receive,
            on_connect=self._on_connect if not clean else None,
            on_lost=self._on_lost if not clean else None,
            on_retry=self._on_retry if not clean else None,
            clean=clean,
            session_expiry_s=0 if clean else self.session_expiry_s,
            will=Will(self._state_topic, will_payload) if self.will else None,
            keepalive_s=self.keepalive_s,
            reconnect_delay_s=(self.reconnect_delay_s[1] / 25, self.reconnect_delay_s[1]),  # after a loss
        )

    def _on_connect(self, session_present: bool) -> None:
        self.connections += 1
        if self.connections > 1:  # back after a loss: say so (the first 'online' follows the subscription)
            node = self._client.node if isinstance(self._client, MqttConnection) else self.broker.url
            self.log.info("reconnected", node=node, connections=self.connections, session=session_present)
            if not self.sends_only:
                self.spawn(self.publish(self._state(self.presence), ALL))

    async def announce(self, status: Literal["online", "offline"]) -> None:
        """Say this actor's presence again (retained, to all): 'offline' while it cannot serve though it is
        connected (a bridge whose site is gone), 'online' when it can again. A reconnect repeats what was
        said last; the MQTT will and a clean stop still say 'offline'."""
        if status != self.presence:
            self.presence = status
            if not self.sends_only:
                await self.publish(self._state(status), ALL)

    def _on_retry(self, node: str, why: str) -> None:
        if not self._closing:
            self.log.info("reconnect failed", node=node, reason=why[:200])

    def _on_lost(self, reason: str) -> None:
        if not self._closing:
            self.log.warning("disconnected", reason=reason[:200])

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _restore_replay_window(self) -> None:
        """A restarted actor still refuses the messages it already took (the exchange log keeps their ids)."""
        if self.exchange_log is None:
            return
        since_us = self.now_us() - round(2 * 86400e6)
        n = self.check.preload(self.exchange_log.deliveries(self._me_str, since_us))
        if n:
            self.log.info("replay window restored", message_ids=n)

    async def guard(self, work: Awaitable[Any]) -> Any:
        """Run ``work`` (an actor's run) while watching the gateway: if the gateway dies, ``work`` is
        cancelled and :class:`GatewayFailed` raised, so that the actor stops loudly, never as a zombie
        that looks online."""
        task = asyncio.ensure_future(work)
        assert self._failure is not None, "use the gateway with 'async with'"
        await asyncio.wait({task, self._failure}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            return task.result()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        raise GatewayFailed(f"{self.client_id}: the gateway stopped: {self.failed!r}")

    async def close(self) -> None:
        """Say 'offline' (retained), disconnect cleanly, stop background work."""
        if self._closing:
            return
        client = self._client
        if client is not None and self.failed is None and client.connected.is_set() and not self.sends_only:
            with contextlib.suppress(Exception):  # (waits for room in a full window, 2 s at most)
                await asyncio.wait_for(self.publish(self._state("offline"), ALL), 2.0)
        self._closing = True
        for task in list(self._tasks):
            task.cancel()
        if client is not None:
            with contextlib.suppress(Exception):
                await client.close()
        self._client = None
        for fut in self._pending.values():
            if not fut.done():
                fut.cancel()

    def now_us(self) -> int:
        """This actor's wall clock, µs since the epoch (UTC)."""
        return now_us() + self.clock_offset_us

    @property
    def connected(self) -> bool:
        return self._client is not None and self._client.connected.is_set()

    async def reread_retained(self) -> None:
        """Subscribe again, so the broker sends its retained messages (the actors' presence) once more.
        A clustered broker can miss one: NATS 2.9 kept from a subscriber on node A a retained message
        published on node C a moment before (3 of 30 tries here, more on a busy host); subscribing
        again fetched it every time. Copies already handled are ignored as duplicates."""
        client = self._client
        if client is not None and client.ready(1) and not self.sends_only:
            await client.subscribe(inbox_filters(self.me), qos=1)

    def _state(self, status: Literal["online", "offline"]) -> ActorState:
        return ActorState(status=status, since=datetime.now(UTC), software=SOFTWARE, started_at=self.started_at)

    async def _die(self, exc: BaseException) -> None:
        """The gateway cannot go on: say 'offline' (retained) on the connection if it still works, then
        fail every waiter and :meth:`guard`."""
        if self.failed is not None:
            return
        self.failed = exc
        self.log.error("gateway died", error=repr(exc), exc_info=exc)
        client = self._client
        if client is not None and client.ready(1) and not self.sends_only:
            _, payload = self.build(self._state("offline"), ALL)
            with contextlib.suppress(Exception):
                client.publish(self._state_topic, payload, qos=1, retain=True)
        self._closing = True
        if self._failure is not None and not self._failure.done():
            self._failure.set_result(None)
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(GatewayFailed(f"the gateway stopped: {exc!r}"))
        if client is not None:
            with contextlib.suppress(Exception):
                await client.close()

    # --- sending ------------------------------------------------------------------------------

    def build(
        self,
        body: Body,
        to: Party,
        *,
        sequence: int | None = None,
        correlation_id: uuid.UUID | None = None,
        causation_id: uuid.UUID | None = None,
        valid_for_s: float | None = None,
        reply_to: str | None = None,
        message_id: uuid.UUID | None = None,
    ) -> tuple[Envelope, bytes]:
        """The envelope and the (signed) bytes ``publish`` would send for ``body`` to ``to``, without
        sending them: for tools that must send them late, altered or not at all (emulators' faults,
        the conformance suite's expired setpoint, benchmarks)."""
        made = self._make(
            body,
            to,
            sequence=sequence,
            correlation_id=correlation_id,
            causation_id=causation_id,
            valid_for_s=valid_for_s,
            reply_to=reply_to,
            message_id=message_id,
        )
        return made.envelope, made.payload

    def _make(
        self,
        body: Body,
        to: Party,
        *,
        sequence: int | None = None,
        correlation_id: uuid.UUID | None = None,
        causation_id: uuid.UUID | None = None,
        valid_for_s: float | None = None,
        reply_to: str | None = None,
        message_id: uuid.UUID | None = None,
    ) -> _Made:
        """:meth:`build`, keeping what ``publish`` needs of the message (topic, times) as computed."""
        type_name = body.type_name
        topic = topic_for(self.me, type_name, to)
        if sequence is None:
            sequence = self._sequence[topic] = self._sequence[topic] + 1
        created_us = self.now_us()
        expiry = valid_for_s if valid_for_s is not None else self.policy[type_name].expiry_s
        until_us = created_us + round(expiry * 1_000_000) if expiry is not None else None
        # validated in pydantic-core, which costs fewer instructions than model_construct's Python loop
        # (benchmarks/gateway_instructions.py): what this gateway sends follows the contract too
        env = _validate_envelope(
            {
                "message_id": message_id or new_message_id(),
                "type": type_name,
                "schema_version": SCHEMA_VERSION,
                "sender": self.me,
                "recipients": [to],
                "sequence": sequence,
                "created_at": _dt(created_us),
                "correlation_id": correlation_id,
                "causation_id": causation_id,
                "valid_until": _dt(until_us) if until_us is not None else None,
                "reply_to": reply_to,
            }
        )
        payload = encode(env, body)
        if self.signing_key is not None:
            payload = signing.sign(payload, self.signing_key)
        return _Made(env, payload, topic, created_us, until_us)

    async def publish(
        self,
        body: Body,
        to: Party,
        *,
        correlation_id: uuid.UUID | None = None,
        causation_id: uuid.UUID | None = None,
        valid_for_s: float | None = None,
        reply_to: str | None = None,
        message_id: uuid.UUID | None = None,
    ) -> Envelope:
        """Send ``body`` to ``to`` (an actor, ``Party(role, 'all')`` or ``ALL``) with its type's
        delivery policy. Returns the envelope it went out in. QoS 1 messages wait for a connection;
        QoS 0 messages and messages that expire while waiting are dropped (and logged)."""
        policy = self.policy[body.type_name]
        client = self._client
        if policy.qos and client is not None and client.connected.is_set() and not client.ready(1):
            # flow control (the broker's window of QoS 1 messages in flight is full): the message is made
            # when there is room, so that its created_at and expiry count from when it can leave; a message
            # that waits for a lost connection keeps the time it was made, and expires meanwhile
            await client.wait_ready(1)
        made = self._make(
            body,
            to,
            correlation_id=correlation_id,
            causation_id=causation_id,
            valid_for_s=valid_for_s,
            reply_to=reply_to,
            message_id=message_id,
        )
        props, taken = self._outgoing(made, policy)
        if not taken:
            await self._send_out(made, policy, props)
        return made.envelope

    def publish_now(
        self,
        body: Body,
        to: Party,
        *,
        correlation_id: uuid.UUID | None = None,
        causation_id: uuid.UUID | None = None,
        valid_for_s: float | None = None,
        reply_to: str | None = None,
        message_id: uuid.UUID | None = None,
    ) -> Envelope:
        """:meth:`publish` as a plain call, for a handler that answers without waiting (a plain
        function given to :meth:`on`: no task per message). The message is made now and written at
        once when the connection can take it; otherwise (no connection, the broker's QoS 1 window
        full, a slow link) it goes on in one of the gateway's tasks as :meth:`publish` would send it,
        counting its expiry from now. Raises what :meth:`publish` raises before sending."""
        policy = self.policy[body.type_name]
        made = self._make(
            body,
            to,
            correlation_id=correlation_id,
            causation_id=causation_id,
            valid_for_s=valid_for_s,
            reply_to=reply_to,
            message_id=message_id,
        )
        props, taken = self._outgoing(made, policy)
        if taken:
            return made.envelope
        client = self._client
        if self.failed is None and client is not None and client.ready(policy.qos):
            self._expect(made)
            sent_us, dropped = self._write(client, made.topic, made.payload, policy, props, made.valid_until_us)
            self._sent(made, policy, sent_us, dropped)
        else:
            self.spawn(self._send_out(made, policy, props))
        return made.envelope

    def _outgoing(self, made: _Made, policy: DeliveryPolicy) -> tuple[Properties | None, bool]:
        """What every message passes before it is sent: the size limit, its MQTT 5 properties, the link
        to its recipient (lost, or in transit for a while). Returns the properties and whether the link took
        the message (then it is not to be sent now)."""
        if len(made.payload) > self.max_payload_bytes:
            raise PayloadTooLarge(
                f"{made.envelope.type} of {len(made.payload)} bytes exceeds the limit of {self.max_payload_bytes} bytes"
            )
        props = self._properties(made) if self._v5 else None
        if self.links:
            # the link's state at the instant the message was made (the log's created_us), not a moment later
            made_s = (made.created_us - self.clock_offset_us) / 1e6
            lost, delay = self.links.decide(self._me_str, str(made.envelope.recipients[0]), made_s)
            if lost:
                self._record_out(made, policy.qos, None, lost)
                return props, True
            if delay > 0:  # in transit on a slow link: sent later, the sender goes on
                self.spawn(self._send_later(delay, made, policy, props))
                return props, True
        return props, False

    def _expect(self, made: _Made) -> None:
        if self.traffic is not None:
            self.traffic.expect(str(made.envelope.message_id), made.envelope.recipients[0], self.me)

    def _sent(self, made: _Made, policy: DeliveryPolicy, sent_us: int | None, dropped: str | None) -> None:
        if dropped and self.traffic is not None:
            self.traffic.cancel(str(made.envelope.message_id))
        self._record_out(made, policy.qos, sent_us, dropped)

    async def _send_out(self, made: _Made, policy: DeliveryPolicy, props: Properties | None) -> None:
        self._expect(made)
        try:
            sent_us, dropped = await self._send(made.topic, made.payload, policy, props, made.valid_until_us)
        except BaseException:
            if self.traffic is not None:
                self.traffic.cancel(str(made.envelope.message_id))
            raise
        self._sent(made, policy, sent_us, dropped)

    async def publish_bytes(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> int | None:
        """Send ``payload`` on ``topic`` as it is: no envelope, no checks, no exchange-log row. For
        the tools that must send what the contract forbids (the conformance suite's expired setpoint,
        a fault emulator's malformed message). Returns when it was sent (µs), None if dropped."""
        sent_us, _ = await self._send(topic, payload, DeliveryPolicy(qos=qos, retain=retain), None, None)
        return sent_us

    async def _send_later(self, delay: float, made: _Made, policy: DeliveryPolicy, props: Properties | None) -> None:
        await asyncio.sleep(delay)
        # the message was on the wire all along: it is delivered even if it expired meanwhile (the
        # receiver refuses it then), as a slow network would
        sent_us, dropped = await self._send(made.topic, made.payload, policy, props, None)
        self._record_out(made, policy.qos, sent_us, dropped)

    def _properties(self, made: _Made) -> Properties | None:
        """MQTT 5 properties of one message: expiry, and response topic / correlation data of a request or
        an answer. The broker drops the message once the envelope says it has expired (a paced run's
        setpoint lives its scenario period over the speed), not seconds later by the policy's default.
        MQTT counts whole seconds and Mosquitto's clock ticks in whole seconds, so one second is added:
        the broker never drops a message the receiver would still have taken (the receiver checks the
        envelope's validity to the microsecond)."""
        env = made.envelope
        until_us = made.valid_until_us
        expiry = -(-(until_us - made.created_us) // 1_000_000) + 1 if until_us is not None else None
        if env.reply_to is not None:
            return Properties(expiry, env.reply_to, env.message_id.bytes)
        if env.causation_id is not None:
            return Properties(expiry, None, env.causation_id.bytes)
        return Properties(expiry, None, None) if expiry is not None else None

    async def _send(
        self, topic: str, payload: bytes, policy: DeliveryPolicy, props: Properties | None, valid_until_us: int | None
    ) -> tuple[int | None, str | None]:
        """Hand the message to the connection: written at once when connected (and, for QoS 1, within the
        broker's window of messages in flight), else QoS 1 waits for the connection. The connection keeps
        a QoS 1 message until the broker has it, sending it again after a reconnect. Returns (sent_us,
        None) or (None, why it was dropped)."""
        while True:
            if self.failed is not None:
                raise GatewayFailed(f"{self.client_id}: the gateway stopped: {self.failed!r}")
            client = self._client
            if client is None or not client.ready(policy.qos):
                if policy.qos == 0 and (client is None or not client.connected.is_set()):
                    return None, "not connected (QoS 0 is not queued)"
                if self._closing or client is None:
                    return None, "gateway closed before the message could be sent"
                await client.wait_ready(policy.qos)
                continue
            sent_us, dropped = self._write(client, topic, payload, policy, props, valid_until_us)
            if dropped:
                return None, dropped
            self._burst += 1
            if self.broker.memory or self._burst >= BURST:
                # let the loop run: the socket drains what was written, acknowledgements and arrivals are
                # read (a burst of thousands would otherwise sit in the transport's buffer until it ends;
                # on the in-memory bus, the receivers run as after a network write)
                self._burst = 0
                await asyncio.sleep(0)
            return sent_us, None

    def _write(
        self,
        client: MqttConnection | MemoryClient,
        topic: str,
        payload: bytes,
        policy: DeliveryPolicy,
        props: Properties | None,
        valid_until_us: int | None,
    ) -> tuple[int | None, str | None]:
        """Write one message on a connection that can take it now: (sent_us, None), or (None, why)."""
        sent_us = self.now_us()
        if valid_until_us is not None and sent_us > valid_until_us:
            return None, "expired before it could be sent"
        if props is None:
            client.publish(topic, payload, policy.qos, policy.retain)
        else:
            client.publish(
                topic,
                payload,
                policy.qos,
                policy.retain,
                expiry_s=props.expiry_s,
                response_topic=props.response_topic,
                correlation=props.correlation,
            )
        return sent_us, None

    def _record_out(self, made: _Made, qos: int, sent_us: int | None, dropped: str | None) -> None:
        env, topic, payload = made.envelope, made.topic, made.payload
        self.stats["dropped" if dropped else "sent"] += 1
        if dropped:
            self.log.warning("dropped", type=env.type, topic=topic, reason=dropped)
        if self.exchange_log is not None:
            self.exchange_log.record(
                LogRow(
                    self.run_id,
                    self._me_str,
                    "out",
                    "dropped" if dropped else "sent",
                    dropped,
                    env.message_id,
                    env.type,
                    topic,
                    self._me_str,
                    env.recipients[0],
                    env.correlation_id,
                    env.causation_id,
                    env.sequence,
                    len(payload),
                    qos,
                    made.created_us,
                    sent_us,
                    None,
                )
            )
            if not dropped and sent_us is not None and env.type in KEPT_TYPES:
                self.exchange_log.keep(env.message_id, env.type, sent_us, payload)

    # --- request / response ------------------------------------------------------------------

    async def request(
        self,
        body: Body,
        to: Party,
        *,
        timeout: float,
        retries: int = 0,
        correlation_id: uuid.UUID | None = None,
    ) -> Received[Any]:
        """Send a request and wait for its answer (matched by the answer's causation id, which is the
        request's message id; MQTT 5 also carries it as Correlation Data). On a timeout the request
        is sent again as a new message, ``retries`` times; a late answer to an earlier attempt counts.
        Raises :class:`RequestTimeout`."""
        response_type = RESPONSE_TYPES[body.type_name]
        reply_to = topic_for(to, response_type, self.me)
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[Received[Any]] = loop.create_future()
        ids: list[uuid.UUID] = []
        try:
            for attempt in range(retries + 1):
                if answer.done():  # the last attempt timed out: a late answer to any attempt counts
                    answer = loop.create_future()
                    for earlier in ids:
                        self._pending[earlier] = answer
                # reserve the message id before publishing: the answer may arrive before publish returns
                env_id = new_message_id()
                self._pending[env_id] = answer
                ids.append(env_id)
                await self.publish(
                    body, to, correlation_id=correlation_id or ids[0], reply_to=reply_to, message_id=env_id
                )
                # one timer on the answer, not a timeout on the task (asyncio.timeout costs twice the
                # instructions, benchmarks/gateway_instructions.py)
                timer = loop.call_later(timeout, _time_out, answer)
                try:
                    return await answer
                except TimeoutError:
                    self.log.warning("request timed out", type=body.type_name, to=str(to), attempt=attempt + 1)
                finally:
                    timer.cancel()
            raise RequestTimeout(
                f"no {response_type} from {to} within {timeout} s for {body.type_name} "
                f"({retries + 1} attempt{'s' if retries else ''})"
            )
        finally:
            for env_id in ids:
                self._pending.pop(env_id, None)

    async def reply(self, request: Received[Any], body: Body) -> Envelope:
        """Answer ``request``: same correlation id, causation id = the request's message id."""
        req = request.envelope
        return await self.publish(
            body, req.sender, correlation_id=req.correlation_id or req.message_id, causation_id=req.message_id
        )

    def reply_now(self, request: Received[Any], body: Body) -> Envelope:
        """:meth:`reply` as a plain call (see :meth:`publish_now`)."""
        req = request.envelope
        return self.publish_now(
            body, req.sender, correlation_id=req.correlation_id or req.message_id, causation_id=req.message_id
        )

    # --- receiving ----------------------------------------------------------------------------

    def on(self, body_type: type[B], handler: Handler | None = None) -> Any:
        """Register a handler for a message type (usable as a decorator). An ``async`` handler handles
        each message in its own task, so it may itself send requests and wait for answers; a plain
        function is called at once, on the receiving path, with no task per message: for handling that
        never waits (bookkeeping, or an answer sent with :meth:`reply_now`); what it returns is not used."""

        def register(fn: Handler) -> Handler:
            self._handlers[body_type.type_name].append(fn)
            return fn

        return register(handler) if handler is not None else register

    async def messages(self) -> AsyncIterator[Received[Any]]:
        """Every accepted message that no handler and no pending request took, in arrival order: those
        that came with the connection (queued for this actor, retained) and those after the first call
        (in between, such messages are counted as 'unhandled' and not kept). The queue holds at most
        10 000; beyond that the newest are dropped and logged."""
        if self._inbox is None:
            self._inbox = asyncio.Queue(maxsize=10_000)
        while True:
            yield await self._inbox.get()

    def refuse(self, msg: Received[Any], reason: str) -> None:
        """The actor refuses a valid message as implausible (a setpoint from a party it has no
        contract with, beyond an accepted bid...): an exchange-log row and, where the sender's
        identity is established, a rejection notice with ``reason``."""
        env = msg.envelope
        self._on_rejected(
            Rejected(RejectReason.REFUSED, reason, msg.topic, env.sender, env, authenticated=msg.authenticated),
            msg.size,
            1,
            msg.received_us,
            "refused",
        )

    def spawn(self, coro: Awaitable[Any]) -> None:
        """Run ``coro`` as one of the gateway's tasks: cancelled when it closes, a failure logged."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        if self._started is not None:
            self._started.append(task)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            self.log.error("handler failed", error=repr(exc), exc_info=exc)

    def _receive(self, message: Incoming) -> None:
        """Every PUBLISH that arrives: handled in isolation (:meth:`_on_message`); a failure outside that
        isolation ends the gateway loudly (:meth:`_die`). Until the gateway is given to its caller,
        arrivals wait, in order."""
        if self._early is not None:
            self._early.append(message)
            return
        try:
            self._on_message(message)
        except Exception as exc:
            self.spawn(self._die(exc))

    def _on_message(self, message: Incoming) -> None:
        """One message, in isolation: nothing it contains may stop the loop that receives the next."""
        received_us = message.received_ns // 1000 + self.clock_offset_us if message.received_ns else self.now_us()
        message_id: str | None = None
        # the handler tasks this arrival starts, counted only where a virtual clock waits for them
        started: list[asyncio.Task[Any]] | None = [] if self.traffic is not None else None
        self._started = started
        try:
            topic, payload = message.topic, message.payload
            try:
                msg = self.check.check(topic, payload, received_us, retained=message.retain)
            except Rejected as rej:
                message_id = str(rej.envelope.message_id) if rej.envelope is not None else None
                self._on_rejected(rej, len(payload), message.qos, received_us)
                return
            if started is not None:
                message_id = str(msg.envelope.message_id)
            self._deliver(msg, message.qos)
        except Exception as exc:
            self.stats["failed"] += 1
            self.log.error("message handling failed", error=repr(exc)[:300], exc_info=exc)
        finally:
            self._started = None
            if started is not None and message_id is not None and not message.retain:
                self._handled_when_done(message_id, started)

    def _handled_when_done(self, message_id: str, tasks: list[asyncio.Task[Any]]) -> None:
        """Tell ``traffic`` the arrival is handled once every handler task it started has returned."""
        traffic = self.traffic
        assert traffic is not None
        if not tasks:
            traffic.handled(message_id)
            return
        left = [len(tasks)]

        def one_done(_: asyncio.Task[Any]) -> None:
            left[0] -= 1
            if left[0] == 0:
                traffic.handled(message_id)

        for task in tasks:
            task.add_done_callback(one_done)

    def _deliver(self, msg: Received[Any], qos: int) -> None:
        topic = msg.topic
        self.stats["delivered"] += 1
        env = msg.envelope
        if self.exchange_log is not None:
            self.exchange_log.record(
                LogRow(
                    self.run_id,
                    self._me_str,
                    "in",
                    "delivered",
                    msg.note,
                    env.message_id,
                    env.type,
                    topic,
                    env.sender,
                    self._me_str,
                    env.correlation_id,
                    env.causation_id,
                    env.sequence,
                    msg.size,
                    qos,
                    msg.created_us,
                    None,
                    msg.received_us,
                )
            )
        if msg.note:
            self.log.info("sequence", topic=topic, note=msg.note)
        if env.type == Rejection.type_name:
            self.log.warning("my message was rejected", by=str(env.sender), code=msg.body.code, reason=msg.body.reason)
        if env.type == Heartbeat.type_name and env.reply_to is not None and env.causation_id is None:
            # a clock probe: answer at once with this host's time (see gateway.clocksync)
            self.reply_now(msg, Heartbeat(sent_at=_dt(msg.received_us), interval_s=msg.body.interval_s))
            return
        if env.causation_id is not None:
            waiter = self._pending.get(env.causation_id)
            if waiter is not None:
                if not waiter.done():
                    waiter.set_result(msg)
                return
        handlers = self._handlers.get(env.type)
        if handlers:
            for handler in handlers:
                result = handler(msg)
                if result is not None and inspect.isawaitable(result):  # an async handler's own task
                    self.spawn(result)
        elif self._inbox is None and not self._keep_unhandled:
            self.stats["unhandled"] += 1
        else:
            if self._inbox is None:
                self._inbox = asyncio.Queue(maxsize=10_000)
            try:
                self._inbox.put_nowait(msg)
            except asyncio.QueueFull:
                self.stats["inbox_full"] += 1
                self.log.error("inbox full, message dropped", type=env.type)

    def _on_rejected(self, rej: Rejected, size: int, qos: int, received_us: int, outcome: str | None = None) -> None:
        outcome = outcome or ("ignored" if rej.quiet and rej.code == RejectReason.DUPLICATE else "rejected")
        self.stats[outcome] += 1
        env = rej.envelope
        now_s = time.monotonic()
        if outcome != "ignored" and now_s >= self._quiet_until:
            self._quiet_until = now_s + 0.1
            self.log.warning("rejected", topic=rej.topic, code=rej.code.value, reason=rej.reason[:300])
        if self.exchange_log is not None:
            self.exchange_log.record(
                LogRow(
                    self.run_id,
                    self._me_str,
                    "in",
                    outcome,
                    str(rej),
                    str(env.message_id) if env else None,
                    env.type if env else _known_type(rej.topic),
                    rej.topic,
                    str(rej.sender) if rej.sender else None,
                    self._me_str,
                    str(env.correlation_id) if env and env.correlation_id else None,
                    str(env.causation_id) if env and env.causation_id else None,
                    env.sequence if env else None,
                    size,
                    qos,
                    int(env.created_at.timestamp() * 1e6) if env else None,
                    None,
                    received_us,
                )
            )
        # Tell the sender: only where its identity is established (its signature verified, or this
        # receiver checks no signatures and takes senders at their word), never for a copy we already
        # had or a rejection itself (no ping-pong), and at most NoticeBudget's rate per sender.
        if rej.quiet or rej.sender is None or rej.sender.role not in ("tso", "dso", "bsp", "mo"):
            return
        if not rej.authenticated and self.check.trust is not None:
            return
        if (env and env.type == Rejection.type_name) or "/rejection/" in rej.topic:
            return
        if not self.notices.take(str(rej.sender), now_s):
            return
        self.publish_now(rejection_notice(rej), rej.sender, causation_id=env.message_id if env else None)
