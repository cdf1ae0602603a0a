"""Validate a captured message (envelope + body) against the contract, without a broker."""

import json
from typing import Any

from pydantic import ValidationError

from tsodso.schemas import signing
from tsodso.schemas.codes import RejectReason
from tsodso.schemas.envelope import Envelope
from tsodso.schemas.messages import MESSAGE_TYPES, Body


class InvalidMessage(ValueError):
    """What is wrong with a message, with the field path; ``code`` says which check failed and
    ``envelope`` is the envelope when it was readable."""

    def __init__(self, reason: str, code: RejectReason, envelope: Envelope | None = None):
        super().__init__(reason)
        self.code = code
        self.envelope = envelope


MAX_NUMBER_CHARS = (
    64  # digits of an integer literal (Python parses long ones in quadratic time; the schemas allow <= 2**53 - 1)
)


def _int(text: str) -> int:
    if len(text) > MAX_NUMBER_CHARS:
        raise ValueError(f"a number of {len(text)} digits (at most {MAX_NUMBER_CHARS})")
    return int(text)


def _float(text: str) -> float:
    value = float(text)  # linear in its length: no bound needed, but a finite result
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"{text} is not a finite number")
    return value


def _constant(text: str) -> float:
    raise ValueError(f"{text} is not a number JSON allows")


_DECODER = json.JSONDecoder(parse_int=_int, parse_float=_float, parse_constant=_constant)


def parse_json(payload: bytes | str) -> Any:
    """JSON with bounds: ValueError for invalid UTF-8 or JSON, an integer literal longer than
    ``MAX_NUMBER_CHARS`` digits, NaN or Infinity (or a number that overflows to it), or nesting deeper
    than the interpreter's recursion limit.
    (One decoder for every message: ``json.loads`` with hooks would build one per call.)"""
    try:
        text = payload.decode("utf-8") if isinstance(payload, bytes | bytearray) else payload
        return _DECODER.decode(text)
    except RecursionError:
        raise ValueError("nested too deeply") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8: {exc}") from None


def describe_errors(exc: ValidationError, prefix: str) -> str:
    """'body.bids[0].quantity_mw: Input should be greater than 0; ...' from a ValidationError."""
    parts = []
    for err in exc.errors()[:5]:
        path = prefix
        for loc in err["loc"]:
            path += f"[{loc}]" if isinstance(loc, int) else f".{loc}"
        parts.append(f"{path}: {err['msg']}")
    more = exc.error_count() - len(parts)
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


def validate_message(payload: bytes | str | dict[str, Any], expected_type: str | None = None) -> tuple[Envelope, Body]:
    """Parse and check one message; raise :class:`InvalidMessage` saying where and what."""
    if isinstance(payload, dict):
        doc = payload
    else:
        raw = payload.encode() if isinstance(payload, str) else payload
        try:
            message, _ = signing.split(raw)  # a signature is checked by a receiver with keys, not here
            doc = parse_json(message)
        except ValueError as exc:
            raise InvalidMessage(f"not UTF-8 JSON: {exc}", RejectReason.MALFORMED) from None
    if not isinstance(doc, dict) or doc.keys() != {"envelope", "body"}:
        got = sorted(doc) if isinstance(doc, dict) else type(doc).__name__
        raise InvalidMessage(f'a message is an object {{"envelope", "body"}}, got {got}', RejectReason.MALFORMED)
    try:
        env = Envelope.model_validate(doc["envelope"])
    except ValidationError as exc:
        raise InvalidMessage(describe_errors(exc, "envelope"), RejectReason.ENVELOPE) from None
    if expected_type is not None and env.type != expected_type:
        raise InvalidMessage(
            f"envelope.type: expected {expected_type!r}, got {env.type!r}", RejectReason.TOPIC_MISMATCH, env
        )
    body_cls = MESSAGE_TYPES.get(env.type)
    if body_cls is None:
        raise InvalidMessage(f"envelope.type: unknown message type {env.type!r}", RejectReason.UNKNOWN_TYPE, env)
    try:
        body = body_cls.model_validate(doc["body"])
    except ValidationError as exc:
        raise InvalidMessage(describe_errors(exc, "body"), RejectReason.SCHEMA, env) from None
    return env, body
