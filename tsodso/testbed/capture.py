"""Record what crosses the bus, check each message against the contract, and play a recording back.

    tsodso capture --broker URL --out session.jsonl          # until Ctrl-C, or --duration / --count
    tsodso replay session.jsonl --broker URL [--speed 2]

A capture is JSON lines, one per MQTT PUBLISH seen, in arrival order::

    {"t_us": 1795426740123456, "topic": "tsodso/v1/...", "qos": 1, "retain": false,
     "payload": "{\"envelope\": ...}", "type": "delta_setpoint", "valid": true, "error": null}

``t_us`` is the arrival instant (UTC µs, this host's clock); a payload that is not UTF-8 is stored as
``{"base64": ...}``. ``valid``/``error`` say whether the message follows the contract (the wire
format, envelope and body schemas, and a topic that names the envelope's sender, type and
recipient); a capture keeps the bad ones too, marked, because they are what a vendor needs to see.

The recorder is a plain MQTT client (no gateway): it sees every byte a device sends, including what
a gateway would refuse. The conformance suite watches devices through it.
"""

import asyncio
import base64
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tsodso.gateway.connection import BrokerSpec
from tsodso.gateway.mqtt import Subscriber
from tsodso.schemas.topics import PREFIX, parse_topic
from tsodso.schemas.validate import InvalidMessage, validate_message


@dataclass
class Captured:
    """One PUBLISH as it arrived, with the verdict of the contract on it."""

    t_us: int
    topic: str
    qos: int
    retain: bool
    payload: bytes
    error: str | None = None
    envelope: Any = None
    """The :class:`Envelope` when it could be read, else None."""
    body: Any = None
    """The body as the model of its type (``schemas.messages.MESSAGE_TYPES``) when valid, else None:
    typed ``Any`` because which model it is follows the message's type, known only at run time."""
    properties: dict[str, Any] = field(default_factory=dict)  # MQTT 5 only

    @property
    def valid(self) -> bool:
        return self.error is None

    @property
    def type(self) -> str | None:
        if self.envelope is not None:
            return self.envelope.type
        try:
            return parse_topic(self.topic).type
        except ValueError:
            return None

    def to_json(self) -> dict[str, Any]:
        try:
            payload: Any = self.payload.decode()
        except UnicodeDecodeError:
            payload = {"base64": base64.b64encode(self.payload).decode()}
        return {
            "t_us": self.t_us,
            "topic": self.topic,
            "qos": self.qos,
            "retain": self.retain,
            "payload": payload,
            "type": self.type,
            "valid": self.valid,
            "error": self.error,
        }

    @classmethod
    def from_json(cls, row: dict[str, Any]) -> "Captured":
        """A captured row with the verdict it was given when recorded (not checked again)."""
        payload = row["payload"]
        raw = base64.b64decode(payload["base64"]) if isinstance(payload, dict) else payload.encode()
        return cls(row["t_us"], row["topic"], row["qos"], row["retain"], raw, error=row.get("error"))


def check(msg: Captured) -> Captured:
    """Fill in the contract's verdict: parsed envelope and body, or what is wrong."""
    try:
        env, body = validate_message(msg.payload)
    except InvalidMessage as exc:
        msg.error, msg.envelope = f"{exc.code}: {exc}", exc.envelope
        return msg
    msg.envelope, msg.body = env, body
    try:
        parts = parse_topic(msg.topic)
    except ValueError as exc:
        msg.error = f"topic_mismatch: {exc}"
        return msg
    if parts.type != env.type or parts.sender != env.sender or parts.recipient not in env.recipients:
        msg.error = (
            f"topic_mismatch: topic says {parts.sender} sends {parts.type} to {parts.recipient}, the envelope "
            f"says {env.sender} sends {env.type} to {', '.join(map(str, env.recipients))}"
        )
    return msg


def raw_client(broker: BrokerSpec, client_id: str, **kwargs: Any) -> Subscriber:
    """A plain MQTT client (no gateway, no checks) with the URL's protocol, TLS and credentials."""
    return Subscriber(broker, client_id, **kwargs)


class Recorder:
    """Subscribes to ``filters`` with a plain MQTT client and keeps every PUBLISH, checked.

    ``async with Recorder(broker, ["tsodso/#"]) as rec: ...; await rec.wait_for(pred, timeout)``.
    On MQTT 5 it subscribes with Retain As Published, so ``retain`` tells what the sender set.
    """

    def __init__(
        self,
        broker: BrokerSpec | str,
        filters: Iterable[str] = (f"{PREFIX}/#",),
        *,
        client_id: str | None = None,
        sink: Callable[[Captured], None] | None = None,
    ):
        self.broker = BrokerSpec.parse(broker) if isinstance(broker, str) else broker
        self.filters = list(filters)
        self.client_id = client_id or f"recorder-{time.time_ns() % 10**12:x}"
        self.sink = sink
        self.messages: list[Captured] = []
        self._changed = asyncio.Event()
        self._client: Subscriber | None = None
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> "Recorder":
        self._client = raw_client(self.broker, self.client_id)
        await self._client.__aenter__()
        await self._client.subscribe(self.filters, qos=1, retain_as_published=self.broker.protocol == 5)
        self._task = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task:
            self._task.cancel()
        if self._client:
            await self._client.__aexit__(None, None, None)

    async def _read(self) -> None:
        assert self._client is not None
        async for m in self._client.messages():
            t_us = m.received_ns // 1000  # read from the connection, not when this task got to it
            props = {
                name: m.property(name)
                for name in ("message_expiry_interval", "response_topic", "correlation_data")
                if m.property(name) is not None
            }
            msg = check(Captured(t_us, m.topic, m.qos, m.retain, m.payload, properties=props))
            self.messages.append(msg)
            if self.sink:
                self.sink(msg)
            self._changed.set()

    async def wait_for(self, predicate: Callable[[Captured], bool], timeout: float, start: int = 0) -> Captured | None:
        """The first message from index ``start`` on that satisfies ``predicate``, waiting up to
        ``timeout`` seconds for it; None when none came."""
        deadline = time.monotonic() + timeout
        i = start
        while True:
            while i < len(self.messages):
                if predicate(self.messages[i]):
                    return self.messages[i]
                i += 1
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), left)
            except TimeoutError:
                pass


async def capture(
    broker: BrokerSpec | str,
    out: Path,
    *,
    duration_s: float | None = None,
    count: int | None = None,
    filters: Iterable[str] = (f"{PREFIX}/#",),
    on_message: Callable[[Captured], None] | None = None,
    ready: asyncio.Event | None = None,
) -> int:
    """Record into ``out`` (JSON lines) until ``duration_s`` passed or ``count`` messages came (or
    the task is cancelled). Returns the number of messages recorded."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w") as f:

        def sink(msg: Captured) -> None:
            f.write(json.dumps(msg.to_json()) + "\n")
            f.flush()
            if on_message:
                on_message(msg)

        async with Recorder(broker, filters, sink=sink) as rec:
            if ready:
                ready.set()
            deadline = time.monotonic() + duration_s if duration_s is not None else None
            while count is None or len(rec.messages) < count:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    break
                rec._changed.clear()
                try:
                    await asyncio.wait_for(rec._changed.wait(), left)
                except TimeoutError:
                    break
            return len(rec.messages)


def load_capture(path: Path) -> list[Captured]:
    return [Captured.from_json(json.loads(line)) for line in path.read_text().splitlines() if line.strip()]


async def replay(path: Path, broker: BrokerSpec | str, *, speed: float = 1.0, skip_retained: bool = True) -> int:
    """Publish a capture's messages with their original spacing divided by ``speed`` (same topic,
    payload, QoS, retain flag). Messages that arrived retained at the start of the capture (the
    broker's stored presence and state, not traffic of the session) are left out unless
    ``skip_retained`` is False. Returns the number published."""
    broker = BrokerSpec.parse(broker) if isinstance(broker, str) else broker
    plan = replay_schedule(load_capture(path), speed=speed, skip_retained=skip_retained)
    if not plan:
        return 0
    async with raw_client(broker, f"replay-{time.time_ns() % 10**12:x}") as client:
        t0_wall = time.monotonic()
        for offset_s, r in plan:
            delay = t0_wall + offset_s - time.monotonic()  # absolute deadlines: lateness does not add up
            if delay > 0:
                await asyncio.sleep(delay)
            await client.publish(r.topic, r.payload, qos=r.qos, retain=r.retain)
    return len(plan)


def replay_schedule(
    rows: list[Captured], *, speed: float = 1.0, skip_retained: bool = True
) -> list[tuple[float, Captured]]:
    """When each captured message is due in a replay [s after the first], in order: the original
    spacing divided by ``speed``. The broker's stored copies that arrived retained at the start of the
    capture are left out unless ``skip_retained`` is False."""
    if skip_retained:
        lead = 0  # the broker's stored copies, delivered in a burst when the capture subscribed
        while lead < len(rows) and rows[lead].retain and rows[lead].t_us - rows[0].t_us < 500_000:
            lead += 1
        rows = rows[lead:]
    if not rows:
        return []
    return [((r.t_us - rows[0].t_us) / 1e6 / speed, r) for r in rows]
