"""MQTT 3.1.1 packets (OASIS Standard, 29 October 2014): what the embedded broker reads and writes.

Only the wire format: fixed header with its variable-length 'remaining length' (§2.2.3), and the
packets of §3. Pure functions over bytes; ``ProtocolError`` says what is malformed.
"""

import struct
from dataclasses import dataclass

CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 1, 2, 3, 4, 5, 6, 7
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, PINGREQ, PINGRESP, DISCONNECT = 8, 9, 10, 11, 12, 13, 14

# CONNACK return codes (§3.2.2.3)
ACCEPTED, BAD_PROTOCOL, BAD_IDENTIFIER, UNAVAILABLE, BAD_CREDENTIALS, NOT_AUTHORISED = 0, 1, 2, 3, 4, 5


class ProtocolError(ValueError):
    """A malformed packet: the connection is closed (§4.8)."""


def encode_length(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def packet(kind: int, flags: int, body: bytes) -> bytes:
    return bytes((kind << 4 | flags,)) + encode_length(len(body)) + body


def string(text: str | bytes) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return struct.pack("!H", len(raw)) + raw


class Reader:
    """Fields of a packet body, in order; ProtocolError past its end."""

    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise ProtocolError("packet shorter than its fields")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return struct.unpack("!H", self.take(2))[0]

    def binary(self) -> bytes:
        return self.take(self.u16())

    def text(self) -> str:
        try:
            value = self.binary().decode()
        except UnicodeDecodeError:
            raise ProtocolError("a string that is not UTF-8") from None
        if "\x00" in value:
            raise ProtocolError("a string with U+0000")
        return value

    def rest(self) -> bytes:
        chunk = self.data[self.pos :]
        self.pos = len(self.data)
        return chunk

    @property
    def left(self) -> int:
        return len(self.data) - self.pos


@dataclass
class Will:
    topic: str
    payload: bytes
    qos: int
    retain: bool


@dataclass
class Connect:
    protocol_level: int
    client_id: str
    clean: bool
    keepalive_s: int
    will: Will | None
    username: str | None
    password: bytes | None


def parse_connect(body: bytes) -> Connect:
    r = Reader(body)
    name, level = r.text(), r.u8()
    if name not in ("MQTT", "MQIsdp"):
        raise ProtocolError(f"protocol name {name!r}")
    if level not in (3, 4):  # another version's CONNECT (5 has properties here): refused by its level alone
        return Connect(level, "", True, 0, None, None, None)
    flags = r.u8()
    if flags & 0x01:
        raise ProtocolError("reserved CONNECT flag set")
    keepalive = r.u16()
    client_id = r.text()
    will = None
    if flags & 0x04:
        topic, payload = r.text(), r.binary()
        will = Will(topic, payload, (flags >> 3) & 0x03, bool(flags & 0x20))
        if will.qos > 2:
            raise ProtocolError("will QoS 3")
    username = r.text() if flags & 0x80 else None
    password = r.binary() if flags & 0x40 else None
    return Connect(level, client_id, bool(flags & 0x02), keepalive, will, username, password)


def connect(
    client_id: str, *, clean: bool = True, keepalive_s: int = 60, will: Will | None = None, username: str | None = None
) -> bytes:
    """A CONNECT packet (what a client sends; the broker's tests speak raw MQTT with it)."""
    flags = (0x02 if clean else 0) | (0x80 if username is not None else 0)
    if will is not None:
        flags |= 0x04 | will.qos << 3 | (0x20 if will.retain else 0)
    body = string("MQTT") + bytes((4, flags)) + struct.pack("!H", keepalive_s) + string(client_id)
    if will is not None:
        body += string(will.topic) + string(will.payload)
    if username is not None:
        body += string(username)
    return packet(CONNECT, 0, body)


def subscribe(packet_id: int, filters: list[tuple[str, int]]) -> bytes:
    return packet(SUBSCRIBE, 0x02, struct.pack("!H", packet_id) + b"".join(string(f) + bytes((q,)) for f, q in filters))


def connack(session_present: bool, code: int) -> bytes:
    return packet(CONNACK, 0, bytes((1 if session_present and code == ACCEPTED else 0, code)))


UNSUPPORTED_PROTOCOL_V5 = 0x84


def connack_v5_unsupported() -> bytes:
    """The refusal of an MQTT 5 CONNECT in MQTT 5's own CONNACK (reason 0x84 Unsupported Protocol
    Version, no properties; MQTT 5 §3.1.2.2), so that a version-5 client can tell why and fall back."""
    return packet(CONNACK, 0, bytes((0, UNSUPPORTED_PROTOCOL_V5, 0)))


def publish(topic: str, payload: bytes, qos: int, retain: bool, packet_id: int | None, dup: bool = False) -> bytes:
    flags = (0x08 if dup else 0) | qos << 1 | (0x01 if retain else 0)
    return packet(PUBLISH, flags, string(topic) + (struct.pack("!H", packet_id) if qos else b"") + payload)


def parse_publish(flags: int, body: bytes) -> tuple[str, bytes, int, bool, int | None]:
    """(topic, payload, qos, retain, packet id)."""
    qos = (flags >> 1) & 0x03
    if qos == 3:
        raise ProtocolError("PUBLISH with QoS 3")
    r = Reader(body)
    topic = r.text()
    if not topic or "+" in topic or "#" in topic:
        raise ProtocolError(f"PUBLISH to topic {topic[:80]!r}")
    packet_id = r.u16() if qos else None
    return topic, r.rest(), qos, bool(flags & 0x01), packet_id


def ack(kind: int, packet_id: int) -> bytes:
    """PUBACK, PUBREC, PUBREL (flags 0010), PUBCOMP or UNSUBACK."""
    return packet(kind, 0x02 if kind == PUBREL else 0, struct.pack("!H", packet_id))


def parse_subscribe(body: bytes) -> tuple[int, list[tuple[str, int]]]:
    r = Reader(body)
    packet_id, filters = r.u16(), []
    while r.left:
        flt, qos = r.text(), r.u8()
        if qos > 2:
            raise ProtocolError("SUBSCRIBE with QoS 3")
        filters.append((flt, qos))
    if not filters:
        raise ProtocolError("SUBSCRIBE without a topic filter")
    return packet_id, filters


def parse_unsubscribe(body: bytes) -> tuple[int, list[str]]:
    r = Reader(body)
    packet_id, filters = r.u16(), []
    while r.left:
        filters.append(r.text())
    return packet_id, filters


def suback(packet_id: int, granted: list[int]) -> bytes:
    return packet(SUBACK, 0, struct.pack("!H", packet_id) + bytes(granted))


def valid_filter(flt: str) -> bool:
    """A topic filter as §4.7 allows: '#' last and alone in its level, '+' alone in its level."""
    if not flt:
        return False
    levels = flt.split("/")
    for i, level in enumerate(levels):
        if ("#" in level and (level != "#" or i != len(levels) - 1)) or ("+" in level and level != "+"):
            return False
    return True
