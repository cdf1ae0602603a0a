"""What a gateway does with bytes that arrive: wire format and the checks on arrival.

Wire format: one JSON object ``{"envelope": {...}, "body": {...}}`` (UTF-8), optionally signed
(``schemas.signing``: a last member ``"signature"``, Ed25519 over the exact bytes before it).

Everything that arrives is hostile until checked. The checks, in order, cheapest first, each with
its own :class:`~schemas.codes.RejectReason`:

1. bounds before parsing: topic length and form, a known type, payload size;
2. identity: the signature of the sender the topic names (``Trust``), where the receiver has keys;
3. one parse and one validation of envelope and body together, in pydantic-core (its JSON parser
   refuses nesting deeper than 200 and numbers out of range, in linear time; every model refuses NaN
   and Infinity); what fails is parsed again step by step (``schemas.validate.parse_json``: integer
   literals of at most 64 digits, no NaN or Infinity) only to say precisely what is wrong;
4. the envelope against the topic, the receiver, the rights table, the time bounds (``created_at``
   not ahead of this clock by more than the allowed skew, validity and age within the type's delivery
   policy, not expired) and the replay window (a message id seen before, within its validity).

A message that passes may still carry a note (a sequence gap), which goes into the exchange log.
Nothing here raises anything but :class:`Rejected`, whatever the bytes.
"""

import heapq
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import Any, Generic, TypeVar

from nacl.signing import VerifyKey
from pydantic import ConfigDict, ValidationError, create_model

from tsodso.gateway.policy import DELIVERY_POLICY, DeliveryPolicy
from tsodso.schemas import signing
from tsodso.schemas.codes import RejectReason
from tsodso.schemas.envelope import Envelope, Party
from tsodso.schemas.messages import MESSAGE_TYPES, Body
from tsodso.schemas.rights import Rights
from tsodso.schemas.topics import TopicParts, parse_topic
from tsodso.schemas.validate import InvalidMessage, validate_message

B = TypeVar("B", bound=Body)

DEFAULT_MAX_PAYLOAD_BYTES = 1_048_576  # 1 MiB: a 1 000-bid MOL is ~400 kB
MAX_TOPIC_CHARS = 256
DEFAULT_MAX_CLOCK_SKEW_S = 5.0


def encode(envelope: Envelope, body: Body) -> bytes:
    """Serialise a message to its wire form (unsigned)."""
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
    """A message that passed every check, as the actor sees it. ``authenticated``: its signature
    was verified against the sender's public key (False where the receiver checks no signatures,
    or the scenario lets that sender send unsigned)."""

    envelope: Envelope
    body: B
    topic: str
    received_us: int
    size: int
    retained: bool = False
    note: str | None = None
    authenticated: bool = False
    created_us: int = 0  # the envelope's created_at, µs since the epoch (the sender's clock)

    @property
    def sender(self) -> Party:
        return self.envelope.sender

    @property
    def latency_ms(self) -> float:
        """One-way latency from the sender's created_at to arrival here (wall clocks of two actors)."""
        return (self.received_us - _us(self.envelope.created_at)) / 1000.0


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass
class Rejected(Exception):
    """A message refused on arrival. ``topic`` and ``reason`` are clipped so that a rejection notice
    always fits its schema, whatever arrived."""

    code: RejectReason
    reason: str
    topic: str
    sender: Party | None = None
    envelope: Envelope | None = None
    quiet: bool = field(default=False)  # True: log it, but do not tell the sender (a copy, a retained message)
    authenticated: bool = False  # the sender's identity is established (its signature verified)

    def __post_init__(self) -> None:
        self.topic = _clip(self.topic, MAX_TOPIC_CHARS)
        self.reason = _clip(self.reason, 1024)

    def __str__(self) -> str:
        return f"{self.code.value}: {self.reason}"


def _us(dt) -> int:  # datetime -> µs since epoch (round: a float's x.999… must not lose a microsecond)
    return round(dt.timestamp() * 1_000_000)


def _names(recipients: list[Party], party: Party) -> bool:
    """``party`` is one of ``recipients`` (field by field; one recipient without a loop)."""
    if len(recipients) == 1:
        r = recipients[0]
        return r.id == party.id and r.role == party.role
    return any(r.id == party.id and r.role == party.role for r in recipients)


@cache
def _frame_model(type_name: str) -> Any:
    """``{"envelope": Envelope, "body": <the type's body>}`` as one model, or None for an unknown type."""
    body_cls = MESSAGE_TYPES.get(type_name)
    if body_cls is None:
        return None
    return create_model(
        f"{body_cls.__name__}Message",
        __config__=ConfigDict(extra="forbid", allow_inf_nan=False),
        envelope=(Envelope, ...),
        body=(body_cls, ...),
    )


# --- identity ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Trust:
    """Whose signatures a receiver checks. ``keys``: party ('role/id') -> public key; ``unsigned``:
    parties the scenario lets send unsigned messages (devices that cannot sign). Any other sender
    must sign; a party without a key cannot be heard at all."""

    keys: Mapping[str, VerifyKey]
    unsigned: frozenset[str] = frozenset()

    def allows_unsigned(self, party: str) -> bool:
        return party in self.unsigned or f"{party.split('/')[0]}/*" in self.unsigned


class ArrivalCheck:
    """The checks one receiving actor applies to everything that arrives."""

    def __init__(
        self,
        me: Party,
        rights: Rights,
        *,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
        dedup_window: int = 200_000,
        trust: Trust | None = None,
        policy: Mapping[str, DeliveryPolicy] = DELIVERY_POLICY,
        max_clock_skew_s: float = DEFAULT_MAX_CLOCK_SKEW_S,
    ):
        self.me = me
        self.rights = rights
        self.max_payload_bytes = max_payload_bytes
        self.dedup_window = dedup_window
        self.trust = trust
        self.policy = policy
        self.skew_us = round(max_clock_skew_s * 1_000_000)
        self._limit_us = {t: round(p.validity_limit_s * 1_000_000) for t, p in policy.items()}
        # the replay window, keyed by the message id's 128-bit integer (hashed in C; a UUID's hash is Python)
        self._seen: dict[int, int] = {}  # message id -> first received_us
        self._forget: list[tuple[int, int]] = []  # heap of (until_us, message id)
        self._last_sequence: dict[str, int] = {}  # topic -> last sequence number

    def _addressed_to_me(self, recipient: Party) -> bool:
        me = self.me
        if recipient.id == "all":
            return recipient.role in (me.role, "all")
        return recipient.id == me.id and recipient.role == me.role

    def check(self, topic: str, payload: bytes, received_us: int, *, retained: bool = False) -> Received:
        """Return the typed message, or raise :class:`Rejected` saying what was wrong."""
        if len(topic) > MAX_TOPIC_CHARS:
            raise Rejected(
                RejectReason.TOPIC_MISMATCH,
                f"topic of {len(topic)} characters (at most {MAX_TOPIC_CHARS})",
                topic,
                quiet=True,
            )
        try:
            parts = parse_topic(topic)
        except ValueError as exc:
            raise Rejected(RejectReason.TOPIC_MISMATCH, str(exc).splitlines()[0], topic, quiet=True) from None
        sender = parts.sender
        frame_cls = _frame_model(parts.type)
        if frame_cls is None:
            raise Rejected(
                RejectReason.UNKNOWN_TYPE, f"unknown message type {_clip(parts.type, 64)!r} in the topic", topic, sender
            )
        size = len(payload)
        if size > self.max_payload_bytes:
            raise Rejected(
                RejectReason.OVERSIZE,
                f"payload of {size} bytes exceeds the limit of {self.max_payload_bytes} bytes",
                topic,
                sender,
            )
        message, authenticated = self._authenticate(topic, sender, payload, retained)
        try:
            # one parse and one validation, in pydantic-core: its JSON parser refuses nesting deeper
            # than 200 and numbers out of range in linear time, the models refuse NaN and Infinity
            frame = frame_cls.model_validate_json(message)
        except ValidationError:
            # say precisely what is wrong (the step-by-step path, bounded too); it always raises here
            self._explain(message, topic, sender, authenticated)
            raise  # pragma: no cover - _explain raises
        env = frame.envelope
        created_us, until_us = self._check_envelope(env, parts, topic, received_us, retained, authenticated)
        # the replay window keeps the id until the message can no longer be accepted anyway: its
        # expiry, or the type's age limit
        self._remember(
            env.message_id.int,
            until_us if until_us is not None else created_us + self._limit_us.get(env.type, 0),
            received_us,
        )
        note = self._sequence_note(topic, env.sequence)
        return Received(env, frame.body, topic, received_us, size, retained, note, authenticated, created_us)

    def _authenticate(self, topic: str, sender: Party, payload: bytes, retained: bool) -> tuple[bytes, bool]:
        """(the message without its signature, whether the signature verified) or Rejected."""
        try:
            message, signature = signing.split(payload)
        except ValueError as exc:
            raise Rejected(RejectReason.UNAUTHENTICATED, str(exc), topic, sender, quiet=True) from None
        trust = self.trust
        if trust is None:
            return message, False  # this receiver checks no signatures: the sender is who it claims to be
        party = str(sender)
        key = trust.keys.get(party)
        if signature is None:
            if trust.allows_unsigned(party):
                return message, False
            why = "unsigned" if key is not None else "unsigned, and there is no public key for it"
            raise Rejected(
                RejectReason.UNAUTHENTICATED,
                f"{why}: every message from {party} must be signed",
                topic,
                sender,
                quiet=True,
            )
        if key is None:
            raise Rejected(RejectReason.UNAUTHENTICATED, f"no public key for {party}", topic, sender, quiet=True)
        if not signing.verify(message, signature, key):
            raise Rejected(
                RejectReason.UNAUTHENTICATED,
                f"signature does not verify with the public key of {party}",
                topic,
                sender,
                quiet=True,
            )
        return message, True

    def _explain(self, message: bytes, topic: str, sender: Party, authenticated: bool) -> None:
        try:
            validate_message(message)
        except InvalidMessage as exc:
            raise Rejected(exc.code, str(exc), topic, sender, exc.envelope, authenticated=authenticated) from None
        except (ValueError, TypeError, RecursionError) as exc:
            raise Rejected(
                RejectReason.MALFORMED, f"unreadable: {exc!r}", topic, sender, authenticated=authenticated
            ) from None
        raise Rejected(RejectReason.SCHEMA, "does not follow the contract", topic, sender, authenticated=authenticated)

    def _check_envelope(
        self, env: Envelope, parts: TopicParts, topic: str, received_us: int, retained: bool, authenticated: bool
    ) -> tuple[int, int | None]:
        """Topic consistency, rights, time bounds, expiry, replay. Returns created_at and valid_until
        in µs (None: the envelope has no valid_until)."""
        sender = parts.sender

        def refuse(code: RejectReason, reason: str, quiet: bool = False) -> Rejected:
            return Rejected(code, reason, topic, sender, env, quiet=quiet, authenticated=authenticated)

        # parties compared field by field (a pydantic model's == costs more than the rest of this check)
        to = parts.recipient
        if (
            env.sender.id != sender.id
            or env.sender.role != sender.role
            or env.type != parts.type
            or not _names(env.recipients, to)
        ):
            raise refuse(
                RejectReason.TOPIC_MISMATCH,
                f"topic says {sender} sends {parts.type} to {parts.recipient}; envelope says {env.sender} "
                f"sends {env.type} to {', '.join(map(str, env.recipients[:4]))}"
                f"{f' and {len(env.recipients) - 4} more' if len(env.recipients) > 4 else ''}",
            )
        if not self._addressed_to_me(parts.recipient):
            raise refuse(RejectReason.UNAUTHORISED, f"addressed to {parts.recipient}, not to {self.me}")
        if not self.rights.may_send(sender, env.type, parts.recipient):
            raise refuse(
                RejectReason.UNAUTHORISED,
                f"a {sender.role} may not send {env.type} to {parts.recipient} (bilateral table)",
            )
        created = _us(env.created_at)
        if created > received_us + self.skew_us:
            raise refuse(
                RejectReason.TIME_BOUNDS,
                f"created_at {env.created_at.isoformat()} is {(created - received_us) / 1e6:.1f} s ahead of "
                f"this clock (allowed skew {self.skew_us / 1e6:g} s)",
                quiet=retained,
            )
        limit = self._limit_us.get(env.type, round(2 * 86400e6))
        until = None
        if env.valid_until is not None:
            until = _us(env.valid_until)
            if until - created > limit + self.skew_us:
                raise refuse(
                    RejectReason.TIME_BOUNDS,
                    f"valid_until is {(until - created) / 1e6:.0f} s after created_at; a {env.type} may be "
                    f"valid for at most {limit / 1e6:g} s",
                )
            late_us = received_us - until
            if late_us > 0:
                raise refuse(
                    RejectReason.EXPIRED,
                    f"expired at {env.valid_until.isoformat()}, arrived {late_us / 1000:.1f} ms later",
                    quiet=retained,
                )
        elif not retained and received_us - created > limit + self.skew_us:
            raise refuse(
                RejectReason.TIME_BOUNDS,
                f"created {(received_us - created) / 1e6:.0f} s ago; a {env.type} is accepted for at most "
                f"{limit / 1e6:g} s",
            )
        first_seen = self._seen.get(env.message_id.int)
        if first_seen is not None:
            # a QoS 1 copy sent again after a lost acknowledgement, or a replay: never acted on twice,
            # and not worth a notice (the sender of a copy has nothing to correct)
            raise refuse(
                RejectReason.DUPLICATE,
                f"message {env.message_id} already received {(received_us - first_seen) / 1000:.1f} ms earlier",
                quiet=True,
            )
        return created, until

    def _remember(self, mid: int, until_us: int, received_us: int) -> None:
        """Keep the message id in the replay window until ``until_us`` (and the allowed skew)."""
        self._seen[mid] = received_us
        forget = self._forget
        heapq.heappush(forget, (until_us + self.skew_us, mid))
        while forget and (forget[0][0] < received_us or len(self._seen) > self.dedup_window):
            self._seen.pop(heapq.heappop(forget)[1], None)

    def preload(self, seen: Iterable[tuple[uuid.UUID | str, str, int, int]]) -> int:
        """Restore the replay window after a restart: (message id, type, created_us, received_us) of
        messages delivered before (the exchange log keeps them). Returns how many are still in it."""
        forget = self._forget
        for mid, type_name, created_us, received_us in seen:
            key = (uuid.UUID(mid) if isinstance(mid, str) else mid).int
            self._seen[key] = received_us
            heapq.heappush(forget, (created_us + self._limit_us.get(type_name, 0) + self.skew_us, key))
        return len(self._seen)

    def _sequence_note(self, topic: str, sequence: int) -> str | None:
        if sequence == 0:  # the last-will message has no place in the stream
            return None
        last = self._last_sequence.get(topic)
        if last is None and len(self._last_sequence) >= 100_000:
            return None  # a flood of new topics: stop keeping books rather than grow
        self._last_sequence[topic] = sequence
        if last is None or sequence == last + 1:
            return None
        if sequence == 1:
            return f"sequence restarted at 1 after {last} (sender restarted)"
        if sequence > last + 1:
            return f"sequence gap: expected {last + 1}, got {sequence} ({sequence - last - 1} missing)"
        return f"sequence out of order: {sequence} after {last}"
