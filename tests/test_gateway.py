"""The gateway over real brokers: typed round trips, request/response, checks on arrival, presence,
the exchange log. Each test runs on the embedded broker and on Mosquitto (``broker`` fixture)."""

import asyncio
import json
import sqlite3
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from tsodso.gateway import ExchangeLog, Gateway, RequestTimeout
from tsodso.gateway.arrival import encode
from tsodso.gateway.connection import BrokerSpec
from tsodso.gateway.mqtt import Subscriber
from tsodso.gateway.presence import Presence
from tsodso.schemas import Envelope, Party
from tsodso.schemas.examples import SAMPLES
from tsodso.schemas.messages import ActorState, Heartbeat, MeritOrderList, MolValidation, Rejection
from tsodso.schemas.topics import ALL, topic_for


def parties(uid: str) -> dict[str, Party]:
    return {role: Party(role=role, id=f"{role}-{uid}") for role in ("tso", "dso", "bsp", "mo")}


def raw_client(broker, ident: str) -> Subscriber:
    """A plain MQTT connection: no envelope, no checks (what a hostile or broken peer sends)."""
    return Subscriber(BrokerSpec.parse(broker.url), ident)


def wire(body, sender: Party, recipient: Party, **env) -> bytes:
    envelope = Envelope(
        message_id=env.pop("message_id", uuid.uuid4()),
        type=body.type_name,
        schema_version="1.0",
        sender=sender,
        recipients=[recipient],
        sequence=env.pop("sequence", 1),
        created_at=env.pop("created_at", datetime.now(UTC)),
        **env,
    )
    return encode(envelope, body)


def sample(type_name: str):
    return next(b for b, _, _ in SAMPLES if b.type_name == type_name)


async def collect(gw: Gateway, into: list) -> None:
    async for msg in gw.messages():
        into.append(msg)


async def wait_until(predicate, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


async def test_every_message_family_round_trips_typed(broker, uid, tmp_path):
    p = parties(uid)
    received: dict[str, list] = {role: [] for role in p}
    with ExchangeLog(tmp_path / "x.sqlite", run_id=uid) as log:
        async with (
            Gateway(p["tso"], broker.url, log=log) as tso,
            Gateway(p["dso"], broker.url, log=log) as dso,
            Gateway(p["bsp"], broker.url, log=log) as bsp,
            Gateway(p["mo"], broker.url, log=log) as mo,
        ):
            gws = {"tso": tso, "dso": dso, "bsp": bsp, "mo": mo}
            tasks = [asyncio.create_task(collect(gw, received[r])) for r, gw in gws.items()]
            sent = []
            for body, sender, recipient in SAMPLES:
                to = ALL if recipient == "all" else p[recipient]
                env = await gws[sender].publish(body, to)
                sent.append((env.message_id, body, recipient))

            def arrived(mid, recipient):
                watchers = p if recipient == "all" else [recipient]
                return all(any(m.envelope.message_id == mid for m in received[r]) for r in watchers)

            await wait_until(lambda: all(arrived(mid, r) for mid, _, r in sent))
            for mid, body, recipient in sent:
                for role in p if recipient == "all" else [recipient]:
                    got = next(m for m in received[role] if m.envelope.message_id == mid)
                    assert got.body == body and type(got.body) is type(body)
                    assert got.latency_ms >= 0
            for t in tasks:
                t.cancel()
    assert tso.stats["rejected"] == dso.stats["rejected"] == bsp.stats["rejected"] == mo.stats["rejected"] == 0
    db = sqlite3.connect(log.path)
    types_in = {r[0] for r in db.execute("SELECT type FROM exchange WHERE direction='in' AND outcome='delivered'")}
    assert {b.type_name for b, _, _ in SAMPLES} <= types_in


async def test_request_response_correlates_and_times_out(broker, uid, tmp_path):
    p = parties(uid)
    mol = sample("merit_order_list")
    with ExchangeLog(tmp_path / "x.sqlite", run_id=uid) as log:
        async with Gateway(p["tso"], broker.url, log=log) as tso, Gateway(p["dso"], broker.url, log=log) as dso:

            @dso.on(MeritOrderList)
            async def validate(msg):
                await dso.reply(msg, sample("mol_validation"))

            answer = await tso.request(mol, p["dso"], timeout=5)
            assert isinstance(answer.body, MolValidation)
            assert answer.envelope.sender == p["dso"]
            request_id = answer.envelope.causation_id
            assert answer.envelope.correlation_id == request_id  # a new conversation is named by its request

            nobody = Party(role="dso", id=f"nobody-{uid}")
            with pytest.raises(RequestTimeout, match=rf"no mol_validation from dso/nobody-{uid} within 0.3 s"):
                await tso.request(mol, nobody, timeout=0.3, retries=1)
    db = sqlite3.connect(log.path)
    out_row = db.execute(
        "SELECT sender, receiver, sent_us, created_us, qos FROM exchange WHERE message_id=? AND direction='out'",
        (str(request_id),),
    ).fetchone()
    assert out_row[:2] == (str(p["tso"]), str(p["dso"])) and out_row[2] >= out_row[3] and out_row[4] == 1
    in_row = db.execute(
        "SELECT received_us - created_us, actor FROM exchange WHERE message_id=? AND direction='in'", (str(request_id),)
    ).fetchone()
    assert in_row[0] >= 0 and in_row[1] == str(p["dso"])
    retries = db.execute(
        "SELECT COUNT(*) FROM exchange WHERE direction='out' AND receiver=?", (f"dso/nobody-{uid}",)
    ).fetchone()[0]
    assert retries == 2  # the request and its one retry


async def test_a_plain_handler_answers_at_once_with_reply_now(broker, uid, tmp_path):
    """A handler that answers without waiting is a plain function: its answer is written on the
    receiving path (no task per request), correlated and logged like any other."""
    p = parties(uid)
    mol = sample("merit_order_list")
    with ExchangeLog(tmp_path / "x.sqlite", run_id=uid) as log:
        async with Gateway(p["tso"], broker.url, log=log) as tso, Gateway(p["dso"], broker.url, log=log) as dso:
            answered: list = []

            @dso.on(MeritOrderList)
            def validate(msg):
                answered.append(dso.reply_now(msg, sample("mol_validation")))

            answers = [await tso.request(mol, p["dso"], timeout=5) for _ in range(3)]
    assert [a.envelope.message_id for a in answers] == [e.message_id for e in answered]
    assert all(a.envelope.causation_id == a.envelope.correlation_id for a in answers)
    assert len({a.envelope.causation_id for a in answers}) == 3  # each answers its own request
    assert not dso.stats["failed"]
    db = sqlite3.connect(log.path)
    out = db.execute(
        "SELECT causation_id, outcome FROM exchange WHERE actor=? AND direction='out' AND type='mol_validation'",
        (str(p["dso"]),),
    ).fetchall()
    assert sorted(out) == sorted((str(a.envelope.causation_id), "sent") for a in answers)


async def test_a_late_answer_to_an_earlier_attempt_ends_the_request(broker, uid):
    """The DSO answers the first attempt only once the second has arrived: that late answer counts."""
    p = parties(uid)
    async with Gateway(p["tso"], broker.url) as tso, Gateway(p["dso"], broker.url) as dso:
        seen: list = []

        @dso.on(MeritOrderList)
        def answer_the_first_late(msg):
            seen.append(msg)
            if len(seen) == 2:
                dso.reply_now(seen[0], sample("mol_validation"))

        answer = await tso.request(sample("merit_order_list"), p["dso"], timeout=1.0, retries=1)
    assert len(seen) == 2
    assert answer.envelope.causation_id == seen[0].envelope.message_id != seen[1].envelope.message_id


async def test_a_cancelled_request_stops_waiting_and_the_gateway_serves_on(broker, uid):
    """Cancelling a waiting request raises CancelledError at once (not a timeout later); the next
    request is answered."""
    p = parties(uid)
    async with Gateway(p["tso"], broker.url) as tso, Gateway(p["dso"], broker.url) as dso:
        arrived: list = []

        @dso.on(MeritOrderList)
        def answer_from_the_second_on(msg):
            arrived.append(msg)
            if len(arrived) > 1:
                dso.reply_now(msg, sample("mol_validation"))

        waiting = asyncio.create_task(tso.request(sample("merit_order_list"), p["dso"], timeout=30))
        async with asyncio.timeout(10):
            while not arrived:  # the request has reached the DSO, which does not answer it
                await asyncio.sleep(0.01)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(waiting, 5)
        answer = await tso.request(sample("merit_order_list"), p["dso"], timeout=5)
        assert answer.envelope.type == "mol_validation" and not tso.stats["failed"]


async def test_a_plain_handler_that_returns_a_value_still_answers(broker, uid):
    """``lambda msg: gw.reply_now(msg, answer)`` returns the answer's envelope: a plain handler's return
    value is not used (not mistaken for a task to start), and the DSO keeps answering."""
    p = parties(uid)
    async with Gateway(p["tso"], broker.url) as tso, Gateway(p["dso"], broker.url) as dso:
        dso.on(MeritOrderList, lambda msg: dso.reply_now(msg, sample("mol_validation")))
        answers = [await tso.request(sample("merit_order_list"), p["dso"], timeout=5) for _ in range(2)]
        assert [a.envelope.type for a in answers] == ["mol_validation"] * 2
        assert not dso.stats["failed"] and dso.failed is None


async def test_bad_input_is_rejected_with_its_own_reason_and_the_actor_keeps_serving(broker, uid, tmp_path):
    p = parties(uid)
    tso_id, dso = p["tso"], p["dso"]
    mol = sample("merit_order_list")
    ok = wire(mol, tso_id, dso)
    expired = wire(
        mol,
        tso_id,
        dso,
        created_at=datetime.now(UTC) - timedelta(seconds=10),
        valid_until=datetime.now(UTC) - timedelta(seconds=5),
    )
    bad_body = json.loads(ok)
    bad_body["envelope"]["message_id"] = str(uuid.uuid4())
    bad_body["body"]["bids"][0]["quantity_mw"] = -5
    no_id = json.loads(ok)
    del no_id["envelope"]["message_id"]
    unknown = json.loads(ok)
    unknown["envelope"].update(type="pizza_order", message_id=str(uuid.uuid4()))
    dup_id = uuid.uuid4()
    heartbeat = Heartbeat(sent_at=datetime.now(UTC), interval_s=4)
    bsp = p["bsp"]
    cases = [  # (topic, payload, expected code, text the reason must contain)
        (topic_for(tso_id, "merit_order_list", dso), b"{not json", "malformed", "not UTF-8 JSON"),
        (
            topic_for(tso_id, "merit_order_list", dso),
            json.dumps(no_id).encode(),
            "envelope",
            "envelope.message_id: Field required",
        ),
        (
            topic_for(tso_id, "pizza_order", dso),
            json.dumps(unknown).encode(),
            "unknown_type",
            "unknown message type 'pizza_order'",
        ),
        (
            topic_for(bsp, "merit_order_list", dso),
            wire(mol, bsp, dso),
            "unauthorised",
            "a bsp may not send merit_order_list to dso/",
        ),
        (topic_for(tso_id, "merit_order_list", dso), expired, "expired", "ms later"),
        (topic_for(tso_id, "heartbeat", dso), wire(heartbeat, tso_id, dso, message_id=dup_id, sequence=1), None, None),
        # a copy of a message already taken: logged, never acted on twice, no notice (a QoS 1 resend
        # or a replay: the sender has nothing to correct, and a flood of copies gets no flood back)
        (topic_for(tso_id, "heartbeat", dso), wire(heartbeat, tso_id, dso, message_id=dup_id, sequence=2), None, None),
        (
            topic_for(tso_id, "merit_order_list", dso),
            json.dumps(bad_body).encode(),
            "schema",
            "body.bids[0].quantity_mw: Input should be greater than 0",
        ),
        (
            topic_for(tso_id, "merit_order_list", dso),
            wire(mol, tso_id, dso) + b" " * 70_000,
            "oversize",
            "exceeds the limit of 65536 bytes",
        ),
        (
            topic_for(Party(role="tso", id=f"other-{uid}"), "merit_order_list", dso),
            wire(mol, tso_id, dso),
            "topic_mismatch",
            "envelope says",
        ),
    ]
    rejections: list = []
    with ExchangeLog(tmp_path / "x.sqlite", run_id=uid) as log:
        async with (
            Gateway(dso, broker.url, log=log, max_payload_bytes=65536) as dso_gw,
            Gateway(tso_id, broker.url, log=log) as tso_gw,
            Gateway(bsp, broker.url, log=log) as bsp_gw,
        ):

            @dso_gw.on(MeritOrderList)
            async def validate(msg):
                await dso_gw.reply(msg, sample("mol_validation"))

            bsp_heard: list = []

            @bsp_gw.on(Rejection)
            async def heard(msg):
                bsp_heard.append(msg)

            async with raw_client(broker, f"raw-{uid}") as raw:
                # every rejection the DSO sends, whoever it is for
                await raw.subscribe(f"tsodso/v1/dso/{dso.id}/rejection/#", qos=1)

                async def watch():
                    async for m in raw.messages():
                        rejections.append(Rejection.model_validate(json.loads(m.payload)["body"]))

                watcher = asyncio.create_task(watch())
                for topic, payload, _, _ in cases:
                    await raw.publish(topic, payload, qos=1)
                expected = [c for c in cases if c[2]]
                await wait_until(lambda: len(rejections) >= len(expected))
                watcher.cancel()
            # the sender's own gateway hears about it on its error topic
            await wait_until(lambda: any(m.body.code.value == "unauthorised" for m in bsp_heard))
            assert bsp_heard[0].envelope.sender == dso and "bilateral table" in bsp_heard[0].body.reason
            # the DSO still serves a valid request after all that
            answer = await tso_gw.request(mol, dso, timeout=5)
            assert isinstance(answer.body, MolValidation)
    by_code = {m.code.value: m for m in rejections}
    for topic, _, code, text in expected:
        assert code in by_code, f"no rejection with code {code}"
        assert text in by_code[code].reason, (code, by_code[code].reason)
        assert by_code[code].rejected_topic == topic
    assert dso_gw.stats["rejected"] == len(expected)
    db = sqlite3.connect(log.path)
    reasons = [
        r[0] for r in db.execute("SELECT reason FROM exchange WHERE outcome='rejected' AND actor=?", (str(dso),))
    ]
    assert sorted(r.split(":")[0] for r in reasons) == sorted(c[2] for c in expected)
    ignored = [r[0] for r in db.execute("SELECT reason FROM exchange WHERE outcome='ignored' AND actor=?", (str(dso),))]
    assert ignored == [f"duplicate: message {dup_id} already received" + ignored[0].split("already received")[1]]


async def test_sequence_gaps_are_noted_in_the_log(broker, uid, tmp_path):
    p = parties(uid)
    hb = Heartbeat(sent_at=datetime.now(UTC), interval_s=4)
    topic = topic_for(p["tso"], "heartbeat", p["dso"])
    with ExchangeLog(tmp_path / "x.sqlite", run_id=uid) as log:
        async with Gateway(p["dso"], broker.url, log=log) as dso:
            heard = []

            @dso.on(Heartbeat)
            async def hear(msg) -> None:
                heard.append(msg)

            async with raw_client(broker, f"raw-{uid}") as raw:
                for seq in (1, 2, 5, 6):
                    await raw.publish(topic, wire(hb, p["tso"], p["dso"], sequence=seq), qos=1)
            # the heartbeats themselves: retained presence of earlier tests is delivered too
            await wait_until(lambda: len(heard) >= 4)
    notes = [
        r[0]
        for r in sqlite3.connect(log.path).execute(
            "SELECT reason FROM exchange WHERE topic=? ORDER BY sequence", (topic,)
        )
    ]
    assert notes == [None, None, "sequence gap: expected 3, got 5 (2 missing)", None]


class Relay:
    """A TCP relay between clients and the broker: :meth:`cut` breaks every connection through it at once,
    as a failing network would (no DISCONNECT reaches the broker, so it publishes the will)."""

    def __init__(self, spec: BrokerSpec):
        self.spec = spec
        self.writers: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> BrokerSpec:
        self.server = await asyncio.start_server(self._pipe, "127.0.0.1", 0)
        return replace(self.spec, host="127.0.0.1", port=self.server.sockets[0].getsockname()[1])

    async def __aexit__(self, *exc) -> None:
        self.server.close()
        self.cut()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(self.spec.host, self.spec.port)
        self.writers += [writer, up_writer]

        async def copy(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            while data := await src.read(65536):
                dst.write(data)
            dst.close()

        await asyncio.gather(copy(reader, up_writer), copy(up_reader, writer), return_exceptions=True)

    def cut(self) -> None:
        for w in self.writers:
            w.transport.abort()
        self.writers.clear()


async def test_presence_birth_is_retained_and_death_is_the_will(broker, uid):
    p = parties(uid)
    state_topic = topic_for(p["bsp"], "actor_state", ALL)
    relay = Relay(BrokerSpec.parse(broker.url))
    async with relay as via_relay, Gateway(p["bsp"], via_relay, keepalive_s=2) as bsp:
        # a late subscriber learns the state at once, from the broker's retained copy (a broker may store it
        # just after its PUBACK, so a subscriber of that same millisecond may get the live copy instead)
        async with raw_client(broker, f"late-{uid}") as late:
            await late.subscribe(state_topic, qos=1)
            first = await asyncio.wait_for(anext(aiter(late.messages())), 5)
        if not first.retain:
            async with raw_client(broker, f"later-{uid}") as later:
                await later.subscribe(state_topic, qos=1)
                first = await asyncio.wait_for(anext(aiter(later.messages())), 5)
        assert json.loads(first.payload)["body"]["status"] == "online" and first.retain
        seen: list[dict] = []
        async with raw_client(broker, f"watch-{uid}") as watcher:
            await watcher.subscribe(state_topic, qos=1)

            async def watch():
                async for m in watcher.messages():
                    seen.append(json.loads(m.payload)["body"] | {"retained": bool(m.retain)})

            task = asyncio.create_task(watch())
            await wait_until(lambda: seen)
            assert seen[0]["status"] == "online"
            # the connection dies without a DISCONNECT: the broker publishes the will
            relay.cut()
            await wait_until(lambda: any(s["status"] == "offline" for s in seen), timeout=10)
            # and the gateway comes back by itself, saying so
            await wait_until(lambda: seen[-1]["status"] == "online" and bsp.connections == 2, timeout=10)
            task.cancel()
    # every state of this process names its start, the will (built before the first 'online') too, so
    # that a receiver orders them by start and, within it, by arrival: offline after the cut, then back
    assert {s["started_at"] for s in seen} == {seen[0]["started_at"]}
    presence, sender = Presence(), str(p["bsp"])
    verdicts = []
    for s in seen:
        retained = s.pop("retained")
        presence.update(sender, ActorState.model_validate(s), retained=retained)
        verdicts.append(presence.is_online(sender))
    cut_at = next(i for i, s in enumerate(seen) if s["status"] == "offline")
    assert verdicts[:cut_at] == [True] * cut_at and not verdicts[cut_at] and verdicts[-1]


async def test_reading_the_retained_again_brings_the_brokers_copies_once_more_and_acts_on_none_twice(broker, uid):
    """``reread_retained`` (what the TSO does while a peer it waits for is missing): the broker sends its
    retained states again; the copies of states already handled are ignored as duplicates."""
    p = parties(uid)
    async with Gateway(p["bsp"], broker.url), Gateway(p["tso"], broker.url) as tso:
        states: list[str] = []
        tso.on(ActorState, lambda m: states.append(f"{m.sender}:{m.body.status}"))
        await wait_until(lambda: f"{p['bsp']}:online" in states)
        ignored, handled = tso.stats["ignored"], len(states)
        await tso.reread_retained()
        await wait_until(lambda: tso.stats["ignored"] >= ignored + 2)  # the BSP's and the TSO's own state
        assert len(states) == handled  # those copies, handled: neither acted on


async def test_clean_stop_leaves_offline_state_retained(broker, uid):
    p = parties(uid)
    async with Gateway(p["dso"], broker.url):
        pass
    async with raw_client(broker, f"late-{uid}") as late:
        await late.subscribe(topic_for(p["dso"], "actor_state", ALL), qos=1)
        msg = await asyncio.wait_for(anext(aiter(late.messages())), 5)
    assert json.loads(msg.payload)["body"]["status"] == "offline" and msg.retain


async def test_a_sends_only_gateway_sends_for_its_actor_and_says_no_presence_and_hears_nothing(broker, uid):
    """A second connection of the TSO (a fan-out sender process): what it sends reaches the DSO as the
    TSO's; it neither says 'online' / 'offline' for the TSO nor takes messages meant for the TSO."""
    p = parties(uid)
    states: list[str] = []
    async with Gateway(p["dso"], broker.url) as dso, Gateway(p["tso"], broker.url) as tso:
        dso.on(ActorState, lambda m: states.append(m.body.status) if m.sender == p["tso"] else None)
        heard = []
        dso.on(Heartbeat, lambda m: heard.append(m))
        tso_heard, helper_heard = [], []
        tso.on(Heartbeat, lambda m: tso_heard.append(m))
        await wait_until(lambda: states == ["online"], 30)
        async with Gateway(p["tso"], broker.url, client_id=f"tso-{uid}-helper", sends_only=True) as helper:
            helper.on(Heartbeat, lambda m: helper_heard.append(m))
            env = await helper.publish(Heartbeat(sent_at=datetime.now(UTC), interval_s=1), p["dso"])
            await wait_until(lambda: len(heard) == 1, 30)
            await dso.publish(Heartbeat(sent_at=datetime.now(UTC), interval_s=1), p["tso"])
            await wait_until(lambda: len(tso_heard) == 1, 30)
        await dso.publish(Heartbeat(sent_at=datetime.now(UTC), interval_s=1), p["tso"])
        await wait_until(lambda: len(tso_heard) == 2, 30)  # after the helper closed: later than anything it said
        assert states == ["online"]  # (the TSO's own 'offline' follows when it closes)
    assert heard[0].sender == p["tso"] and heard[0].envelope.message_id == env.message_id
    assert helper_heard == []
