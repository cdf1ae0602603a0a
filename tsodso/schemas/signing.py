"""Signed messages: one Ed25519 key pair per party; the signature covers the exact bytes sent.

A signed message is the unsigned message ``M`` (the JSON text ``{"envelope": ..., "body": ...}`` in
any formatting, ending with its closing ``}``) with one member appended::

    M[:-1] + ',"signature":"' + base64url(Ed25519_sign(M), no padding) + '"}'

An Ed25519 signature is 64 bytes, so its text is always 86 characters and the appended part
``SUFFIX_BYTES`` (102) bytes long. A receiver takes the last 102 bytes off, puts the ``}`` back and
verifies the signature over those bytes with the public key of the sender the topic and the
envelope name. No canonical JSON is involved: the bytes signed are the bytes sent, so a device in
any language signs with any JSON serialiser and any Ed25519 library (RFC 8032).

Public keys are distributed as a JSON object ``{"role/id": base64url(32-byte public key)}``
(``public-keys.json``); each party keeps its own 32-byte seed (``tsodso secure init`` writes both).
"""

import base64
import binascii
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

PREFIX = b',"signature":"'
SIGNATURE_CHARS = 86  # base64url of 64 bytes, without padding
SUFFIX_BYTES = len(PREFIX) + SIGNATURE_CHARS + 2  # ... + '"}'


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(text: str | bytes) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return base64.urlsafe_b64decode(raw + b"=" * (-len(raw) % 4))


def sign(message: bytes, key: SigningKey) -> bytes:
    """The signed wire form of ``message`` (an unsigned message ending with ``}``)."""
    signature = base64.urlsafe_b64encode(key.sign(message).signature)[:SIGNATURE_CHARS]
    return b"".join((message[:-1], PREFIX, signature, b'"}'))


def split(payload: bytes) -> tuple[bytes, bytes | None]:
    """(the message that was signed, the 64-byte signature), or (payload, None) when it carries none.
    Raises ValueError for a ``signature`` member that is not where and what this scheme says."""
    n = len(payload)
    if (
        n > SUFFIX_BYTES
        and payload[n - SUFFIX_BYTES : n - SUFFIX_BYTES + len(PREFIX)] == PREFIX
        and payload.endswith(b'"}')
    ):
        try:
            signature = base64.urlsafe_b64decode(payload[n - SIGNATURE_CHARS - 2 : n - 2] + b"==")
        except (binascii.Error, ValueError):
            raise ValueError("signature: not 86 characters of base64url") from None
        return payload[: n - SUFFIX_BYTES] + b"}", signature
    if b'"signature"' in payload[-SUFFIX_BYTES - 16 :]:
        raise ValueError(
            f'signature: must be the last member, written exactly as ,"signature":"<86 base64url characters>"}} '
            f"at the end of the payload ({SUFFIX_BYTES} bytes)"
        )
    return payload, None


def verify(message: bytes, signature: bytes, key: VerifyKey) -> bool:
    try:
        key.verify(message, signature)
    except (BadSignatureError, ValueError):
        return False
    return True


# --- keys ---------------------------------------------------------------------------------------


def generate(parties: Iterable[str]) -> dict[str, SigningKey]:
    """A fresh key pair per party ('role/id')."""
    return {party: SigningKey.generate() for party in parties}


def public_keys(keys: Mapping[str, SigningKey]) -> dict[str, VerifyKey]:
    return {party: key.verify_key for party, key in keys.items()}


def public_keys_json(keys: Mapping[str, VerifyKey]) -> str:
    return json.dumps({party: b64(bytes(key)) for party, key in sorted(keys.items())}, indent=2) + "\n"


def load_public_keys(path: str | Path) -> dict[str, VerifyKey]:
    """Read ``public-keys.json``; ValueError names the entry that is wrong."""
    try:
        table = json.loads(Path(path).read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not JSON ({exc})") from None
    if not isinstance(table, dict):
        raise ValueError(f'{path}: expected an object {{"role/id": "<base64url public key>"}}')
    out = {}
    for party, text in table.items():
        try:
            raw = unb64(text)
            if len(raw) != 32:
                raise ValueError
            out[party] = VerifyKey(raw)
        except (ValueError, TypeError, binascii.Error):
            raise ValueError(f"{path}: the key of {party!r} is not 32 bytes of base64url") from None
    return out


def seed_text(key: SigningKey) -> str:
    return b64(bytes(key))


def key_from_seed(text: str) -> SigningKey:
    raw = unb64(text)
    if len(raw) != 32:
        raise ValueError("a signing key is a 32-byte seed in base64url")
    return SigningKey(raw)


def write_private(path: Path, content: str) -> None:
    """Write a secret file readable by its owner only."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(content)
