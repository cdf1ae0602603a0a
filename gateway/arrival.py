"""What a gateway does with bytes that arrive: wire format and the checks on arrival.

Wire format: one JSON object ``{"envelope": {...}, "body": {...}}`` (UTF-8).

The checks, in order, each with its own :class:`~schemas.codes.RejectReason`: size, JSON,
envelope schema, known type, body schema (``schemas.validate``), topic consistent with the
envelope, sender's right (the bilateral table), expiry, duplicate message id. A message that passes may still carry a note
(a sequence gap), which goes into the exchange log.
"""

from functools import lru_cache
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError, create_model

from schemas.codes import RejectReason
from schemas.envelope import Envelope, Party
from schemas.messages import MESSAGE_TYPES, Body
from schemas.rights import Rights
from schemas.topics import parse_topic
from schemas.validate import InvalidMessage, validate_message

B = TypeVar("B", bound=Body)

DEFAULT_MAX_PAYLOAD_BYTES = 1_048_576  # 1 MiB: a 1 000-bid MOL is ~400 kB


def encode(envelope: Envelope, body: Body) -> bytes:
    """Serialise a message to its wire form."""
    return b"".join(
        (
            b'{"envelope":',
            envelope.__pydantic_serializer__.to_json(envelope, exclude_none=True),
            b',"body":',
            body.__pydantic_serializer__.to_json(body),
            b"}",
        )
    )


@dataclass(slots=True)
class Received(Generic[B]):
    """A message that passed every check, as the actor sees it."""

    envelope: Envelope
    body: B
    topic: str
    received_us: int
    size: int
    retained: bool = False
    note: str | None = None

    @property
    def sender(self) -> Party:
        return self.envelope.sender

    @property
    def latency_ms(self) -> float:
        """One-way latency from the sender's created_at to arrival here (wall clocks of two actors)."""
        return (self.received_us - _us(self.envelope.created_at)) / 1000.0


@dataclass
class Rejected(Exception):
    """A message refused on arrival."""

    code: RejectReason
    reason: str
    topic: str
    sender: Party | None = None
    envelope: Envelope | None = None
    quiet: bool = field(default=False)  # True: log it, but do not tell the sender (a retained copy)

    def __str__(self) -> str:
        return f"{self.code.value}: {self.reason}"


def _us(dt) -> int:  # datetime -> µs since epoch
    return int(dt.timestamp() * 1_000_000)


@lru_cache(maxsize=None)
def _frame_model(type_name: str) -> type[BaseModel] | None:
    """``{"envelope": Envelope, "body": <the type's body>}`` as one model, or None for an unknown type."""
    body_cls = MESSAGE_TYPES.get(type_name)
    if body_cls is None:
        return None
    return create_model(
        f"{body_cls.__name__}Message", __config__=ConfigDict(extra="forbid"), envelope=(Envelope, ...),
        body=(body_cls, ...),
    )  # fmt: skip


class ArrivalCheck:
    """The checks one receiving actor applies to everything that arrives."""

    def __init__(
        self,
        me: Party,
        rights: Rights,
        *,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
        dedup_window: int = 200_000,
    ):
        self.me = me
        self.rights = rights
        self.max_payload_bytes = max_payload_bytes
        self.dedup_window = dedup_window
        self._seen: dict[object, int] = {}  # message id -> received_us, insertion-ordered
        self._last_sequence: dict[str, int] = {}  # topic -> last sequence number

    def _addressed_to_me(self, recipient: Party) -> bool:
        me = self.me
        return recipient == me or (recipient.id == "all" and recipient.role in (me.role, "all"))

    def check(self, topic: str, payload: bytes, received_us: int, *, retained: bool = False) -> Received:
        """Return the typed message, or raise :class:`Rejected` saying what was wrong."""
        try:
            parts = parse_topic(topic)
        except ValueError as exc:
            raise Rejected(RejectReason.TOPIC_MISMATCH, str(exc), topic) from None
        sender = parts.sender
        size = len(payload)
        if size > self.max_payload_bytes:
            raise Rejected(
                RejectReason.OVERSIZE,
                f"payload of {size} bytes exceeds the limit of {self.max_payload_bytes} bytes",
                topic,
                sender,
            )
        # Fast path: the topic names the type, so envelope and body are parsed and validated in one
        # pass from the JSON bytes. Anything it refuses goes through the step-by-step path below,
        # which says precisely what is wrong.
        frame_cls = _frame_model(parts.type)
        if frame_cls is not None:
            try:
                frame = frame_cls.model_validate_json(payload)
            except ValidationError:
                pass
            else:
                env = frame.envelope
                self._check_envelope(env, parts, topic, received_us, retained)
                self._remember(env.message_id, received_us)
                note = self._sequence_note(topic, env.sequence)
                return Received(env, frame.body, topic, received_us, size, retained, note)
        return self._check_slowly(topic, parts, payload, size, received_us, retained)

    def _check_envelope(self, env: Envelope, parts, topic: str, received_us: int, retained: bool) -> None:  # noqa: ANN001
        """Topic consistency, rights, expiry, duplicates."""
        sender = parts.sender
        if env.sender != sender or env.type != parts.type or parts.recipient not in env.recipients:
            raise Rejected(
                RejectReason.TOPIC_MISMATCH,
                f"topic says {sender} sends {parts.type} to {parts.recipient}; envelope says {env.sender} "
                f"sends {env.type} to {', '.join(map(str, env.recipients))}",
                topic,
                sender,
                env,
            )
        if not self._addressed_to_me(parts.recipient):
            raise Rejected(
                RejectReason.UNAUTHORISED, f"addressed to {parts.recipient}, not to {self.me}", topic, sender, env
            )
        if not self.rights.may_send(sender, env.type, parts.recipient):
            raise Rejected(
                RejectReason.UNAUTHORISED,
                f"a {sender.role} may not send {env.type} to {parts.recipient} (bilateral table)",
                topic,
                sender,
                env,
            )
        if env.valid_until is not None:
            late_us = received_us - _us(env.valid_until)
            if late_us > 0:
                raise Rejected(
                    RejectReason.EXPIRED,
                    f"expired at {env.valid_until.isoformat()}, arrived {late_us / 1000:.1f} ms later",
                    topic,
                    sender,
                    env,
                )
        first_seen = self._seen.get(env.message_id)
        if first_seen is not None:
            raise Rejected(
                RejectReason.DUPLICATE,
                f"message {env.message_id} already received {(received_us - first_seen) / 1000:.1f} ms earlier",
                topic,
                sender,
                env,
                quiet=retained,
            )

    def _check_slowly(  # noqa: ANN001
        self, topic: str, parts, payload: bytes, size: int, received_us: int, retained: bool
    ) -> Received:
        try:
            env, body = validate_message(payload)
        except InvalidMessage as exc:
            raise Rejected(exc.code, str(exc), topic, parts.sender, exc.envelope) from None
        self._check_envelope(env, parts, topic, received_us, retained)
        self._remember(env.message_id, received_us)
        return Received(env, body, topic, received_us, size, retained, self._sequence_note(topic, env.sequence))

    def _remember(self, message_id: object, received_us: int) -> None:
        seen = self._seen
        seen[message_id] = received_us
        if len(seen) > self.dedup_window:
            del seen[next(iter(seen))]

    def _sequence_note(self, topic: str, sequence: int) -> str | None:
        if sequence == 0:  # the last-will message has no place in the stream
            return None
        last = self._last_sequence.get(topic)
        self._last_sequence[topic] = sequence
        if last is None or sequence == last + 1:
            return None
        if sequence == 1:
            return f"sequence restarted at 1 after {last} (sender restarted)"
        if sequence > last + 1:
            return f"sequence gap: expected {last + 1}, got {sequence} ({sequence - last - 1} missing)"
        return f"sequence out of order: {sequence} after {last}"
