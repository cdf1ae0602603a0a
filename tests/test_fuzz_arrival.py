"""Property-based fuzzing of the arrival path, no broker: whatever bytes arrive on whatever topic, the
check returns a typed message or raises ``Rejected`` (never anything else), and the notice telling
the sender fits its own schema. Over 10 000 generated hostile payloads per run (seconds)."""

import json
import re
import uuid
from datetime import UTC, datetime, timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tsodso.gateway.arrival import ArrivalCheck, Received, Rejected, Trust, encode
from tsodso.gateway.client import rejection_notice
from tsodso.schemas import signing
from tsodso.schemas.envelope import Envelope, Party
from tsodso.schemas.examples import SAMPLES
from tsodso.schemas.messages import MESSAGE_TYPES, Rejection
from tsodso.schemas.rights import default_rights
from tsodso.schemas.topics import topic_for
from tsodso.schemas.validate import validate_message

ME = Party(role="bsp", id="bsp1")
TSO = Party(role="tso", id="tso")
KEYS = signing.generate(["tso/tso"])
NOW = datetime.now(UTC)


def valid_message(body, sender: Party = TSO, **env) -> dict:
    envelope = Envelope(
        message_id=uuid.uuid4(),
        type=body.type_name,
        schema_version="1.0",
        sender=sender,
        recipients=[ME],
        sequence=1,
        created_at=NOW,
        **env,
    )
    return json.loads(encode(envelope, body))


TEMPLATES = [valid_message(b) for b, s, r in SAMPLES if s == "tso" and r == "bsp"]

# hostile values to put anywhere in a message
nasty_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    st.just("x" * 5000),
    st.just(10**80),
    st.just(-1e308 * 10),
)
nasty_json = st.recursive(
    nasty_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


def mutate(doc, path: list, value):
    """``doc`` with the value at ``path`` (keys taken modulo what exists) replaced."""
    if not path or not isinstance(doc, dict | list) or not doc:
        return value
    if isinstance(doc, dict):
        keys = sorted(doc)
        key = keys[path[0] % len(keys)]
        return {**doc, key: mutate(doc[key], path[1:], value)}
    i = path[0] % len(doc)
    return [*doc[:i], mutate(doc[i], path[1:], value), *doc[i + 1 :]]


@st.composite
def hostile_payloads(draw) -> bytes:
    kind = draw(st.integers(0, 7))
    if kind == 0:
        return draw(st.binary(max_size=300))
    template = draw(st.sampled_from(TEMPLATES))
    if kind == 1:  # a field replaced by anything
        path = draw(st.lists(st.integers(0, 20), min_size=1, max_size=5))
        return json.dumps(mutate(template, path, draw(nasty_json)), allow_nan=True).encode()
    if kind == 2:  # nesting deep enough to break a recursive parser
        depth = draw(st.integers(1, 200_000))
        return b'{"envelope":' + b"[" * depth + b"]" * depth + b',"body":{}}'
    if kind == 3:  # an integer literal thousands of digits long, or NaN/Infinity literals
        literal = draw(
            st.sampled_from(
                [
                    b"9" * 5000,
                    b"NaN",
                    b"Infinity",
                    b"-Infinity",
                    b"1e999",
                    b"1" * 33,
                    b"1" * 70,
                    b"0." + b"1" * 200,
                    b"9" * 17,
                ]
            )
        )
        text = json.dumps(template).encode()
        field = draw(st.sampled_from([rb'"delta_mw": [-0-9.e]+', rb'"sequence": [0-9]+', rb'"cycle": [0-9]+']))
        return re.sub(field, field.split(b":")[0] + b": " + literal, text, count=1)
    if kind == 4:  # hundreds of recipients
        n = draw(st.integers(1, 600))
        doc = json.loads(json.dumps(template))
        doc["envelope"]["recipients"] = [{"role": "bsp", "id": f"b{i}"} for i in range(n)]
        return json.dumps(doc).encode()
    if kind == 5:  # time bounds: the far future, year 9999
        doc = json.loads(json.dumps(template))
        doc["envelope"]["created_at"] = draw(st.sampled_from(["9999-12-31T23:59:59Z", "1970-01-01T00:00:00Z"]))
        doc["envelope"]["valid_until"] = "9999-12-31T23:59:59Z"
        return json.dumps(doc).encode()
    if kind == 6:  # a signature in the wrong place, or one that does not verify
        text = json.dumps(template, separators=(",", ":")).encode()
        return draw(
            st.sampled_from(
                [
                    text[:-1] + b',"signature":"' + b"A" * 86 + b'"}',
                    text[:-1] + b',"signature":"short"}',
                    b'{"signature":"x",' + text[1:],
                    signing.sign(text, signing.generate(["x"])["x"]),
                ]
            )
        )
    return json.dumps(template).encode()[: draw(st.integers(0, 400))]  # truncated


topics = st.one_of(
    st.text(max_size=80),
    st.builds(
        lambda t: topic_for(TSO, "delta_setpoint", ME).replace("delta_setpoint", t),
        st.sampled_from(["x" * 300, "delta_setpoint", "DELTA", "rejection", "a/b", "", "pizza"]),
    ),
    st.sampled_from([topic_for(TSO, t, ME) for t in MESSAGE_TYPES]),
)


def outcome(check: ArrivalCheck, topic: str, payload: bytes) -> Received | Rejected:
    try:
        return check.check(topic, payload, int(NOW.timestamp() * 1e6) + 1000)
    except Rejected as rej:
        return rej


@settings(
    max_examples=10_000,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)
@given(topic=topics, payload=hostile_payloads(), signed=st.booleans())
def test_no_payload_escapes_the_checks_and_every_notice_fits_its_schema(topic, payload, signed):
    trust = Trust({"tso/tso": KEYS["tso/tso"].verify_key}) if signed else None
    check = ArrivalCheck(ME, default_rights(), trust=trust, max_payload_bytes=65536)
    result = outcome(check, topic, payload)  # anything but Received or Rejected fails the test
    if isinstance(result, Rejected):
        notice = rejection_notice(result)
        assert len(notice.reason) <= 2048 and len(notice.rejected_topic) <= 512
        Rejection.model_validate(notice.model_dump())  # fits the schema it is sent in
        if signed:
            assert not result.authenticated  # nothing here carries a valid signature
    else:  # accepted: only an unsigned receiver takes the generated payloads, and then only valid ones
        assert not signed
        validate_message(payload)


def test_the_reported_killers_are_refused_with_their_reason():
    check = ArrivalCheck(ME, default_rights())
    topic = topic_for(TSO, "delta_setpoint", ME)
    setpoint = next(t for t in TEMPLATES if t["envelope"]["type"] == "delta_setpoint")
    deep = b'{"envelope":' + b"[" * 100_000 + b"]" * 100_000 + b',"body":{}}'
    long_int = json.dumps(setpoint).replace('"cycle": 15', '"cycle": ' + "9" * 5000).encode()
    nan = json.dumps(setpoint).replace('"delta_mw": 1.0', '"delta_mw": NaN').encode()
    crowd = json.loads(json.dumps(setpoint))
    crowd["envelope"]["recipients"] = [{"role": "bsp", "id": f"b{i}"} for i in range(500)]
    future = json.loads(json.dumps(setpoint))
    future["envelope"]["valid_until"] = "9999-12-31T23:59:59Z"
    cases = [
        (topic, deep, "malformed", "nested too deeply"),
        (topic, long_int, "malformed", "a number of 5000 digits (at most 64)"),
        (topic, nan, "malformed", "NaN is not a number JSON allows"),
        (
            topic.replace("delta_setpoint", "t" * 200),
            json.dumps(setpoint).encode(),
            "unknown_type",
            "unknown message type",
        ),
        (topic, json.dumps(crowd).encode(), "envelope", "envelope.recipients: List should have at most 16 items"),
        (topic, json.dumps(future).encode(), "time_bounds", "a delta_setpoint may be valid for at most 4 s"),
    ]
    for t, payload, code, text in cases:
        result = outcome(check, t, payload)
        assert isinstance(result, Rejected), (code, result)
        assert result.code.value == code and text in result.reason, (code, result.reason)
        Rejection.model_validate(rejection_notice(result).model_dump())


def test_signatures_decide_who_is_heard():
    trust = Trust({"tso/tso": KEYS["tso/tso"].verify_key})
    check = ArrivalCheck(ME, default_rights(), trust=trust)
    topic = topic_for(TSO, "delta_setpoint", ME)
    setpoint = next(b for b, s, r in SAMPLES if b.type_name == "delta_setpoint")
    env = Envelope(
        message_id=uuid.uuid4(),
        type="delta_setpoint",
        schema_version="1.0",
        sender=TSO,
        recipients=[ME],
        sequence=1,
        created_at=NOW,
        valid_until=NOW + timedelta(seconds=4),
    )
    message = encode(env, setpoint)
    forged = outcome(check, topic, message)
    assert isinstance(forged, Rejected) and forged.code.value == "unauthenticated"
    assert forged.reason == "unsigned: every message from tso/tso must be signed" and forged.quiet
    wrong_key = outcome(check, topic, signing.sign(message, signing.generate(["x"])["x"]))
    assert isinstance(wrong_key, Rejected) and "does not verify with the public key of tso/tso" in wrong_key.reason
    good = outcome(check, topic, signing.sign(message, KEYS["tso/tso"]))
    assert isinstance(good, Received) and good.authenticated and good.body.delta_mw == setpoint.delta_mw
    replay = outcome(check, topic, signing.sign(message, KEYS["tso/tso"]))
    assert isinstance(replay, Rejected) and replay.code.value == "duplicate"
    tampered = signing.sign(message, KEYS["tso/tso"]).replace(b'"delta_mw":1.0', b'"delta_mw":9.0')
    assert isinstance(outcome(ArrivalCheck(ME, default_rights(), trust=trust), topic, tampered), Rejected)
    # a device the scenario lets send unsigned is heard, but not as authenticated
    lenient = ArrivalCheck(ME, default_rights(), trust=Trust({}, unsigned=frozenset({"tso/*"})))
    taken = outcome(lenient, topic, message)
    assert isinstance(taken, Received) and not taken.authenticated
