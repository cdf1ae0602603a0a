"""What the connection guarantees: nothing lost across broker restarts, MQTT 5 properties from the
delivery policy, MQTT 3.1.1 mode, access lists and passwords on Mosquitto."""

import asyncio
import json
import math
import sqlite3
import uuid
from datetime import UTC, datetime

import aiomqtt
import pytest

from tests.conftest import mosquitto_or_skip
from tests.test_gateway import parties, sample, wait_until
from tsodso.broker.acl import username, write_auth
from tsodso.broker.launch import start_broker
from tsodso.gateway import ExchangeLog, Gateway
from tsodso.gateway.client import BrokerUnreachable
from tsodso.gateway.connection import BrokerSpec
from tsodso.schemas import Party
from tsodso.schemas.messages import MeritOrderList, Schedule, ScheduleSeries


def schedule(i: int) -> Schedule:
    return Schedule(
        kind="final",
        start=datetime(2026, 11, 23, tzinfo=UTC),
        series=[ScheduleSeries(asset_id=f"der{i}", dso_id="dso1", p_mw=[float(i)])],
    )


async def collect(gw, into, body_type=None):
    async for msg in gw.messages():
        if body_type is None or isinstance(msg.body, body_type):
            into.append(msg)


@pytest.mark.parametrize("own_broker", ["embedded", "mosquitto"], indirect=True)
async def test_qos1_messages_sent_while_the_broker_restarts_are_delivered_once(own_broker, uid, tmp_path):
    p = parties(uid)
    got: list = []
    with ExchangeLog(tmp_path / "x.sqlite", run_id=uid) as log:
        async with (
            Gateway(p["tso"], own_broker.url, log=log, reconnect_delay_s=(0.05, 0.5)) as tso,
            Gateway(p["dso"], own_broker.url, log=log, reconnect_delay_s=(0.05, 0.5)) as dso,
        ):
            reader = asyncio.create_task(collect(dso, got, Schedule))
            own_broker.stop()
            # sent while the broker is gone: those the gateway wrote before it noticed stay with the connection
            # until acknowledged, the rest wait for the connection; all are delivered after the restart
            sends = [asyncio.create_task(tso.publish(schedule(i), p["dso"])) for i in range(20)]
            await asyncio.sleep(0.3)
            own_broker.start()
            await asyncio.wait_for(asyncio.gather(*sends), 30)
            await wait_until(lambda: len({m.envelope.message_id for m in got}) == 20, timeout=30)
            await asyncio.sleep(0.3)
            reader.cancel()
    assert sorted(m.body.series[0].p_mw[0] for m in got) == [float(i) for i in range(20)]
    assert len(got) == 20  # each exactly once to the actor
    assert tso.connections >= 2 and dso.connections >= 2
    sent = (
        sqlite3.connect(log.path)
        .execute("SELECT COUNT(*) FROM exchange WHERE direction='out' AND type='schedule' AND outcome='sent'")
        .fetchone()[0]
    )
    assert sent == 20


async def test_messages_queued_for_an_absent_actor_survive_a_mosquitto_restart(own_mosquitto, uid):
    p = parties(uid)
    async with Gateway(p["dso"], own_mosquitto.url):
        pass  # the DSO has a persistent session and is now away
    async with Gateway(p["tso"], own_mosquitto.url) as tso:
        for i in range(10):
            await tso.publish(schedule(i), p["dso"])
    own_mosquitto.restart()
    got: list = []
    async with Gateway(p["dso"], own_mosquitto.url, resume_session=True) as dso:
        reader = asyncio.create_task(collect(dso, got))
        await wait_until(lambda: len([m for m in got if isinstance(m.body, Schedule)]) == 10, timeout=10)
        reader.cancel()
    assert [m.body.series[0].p_mw[0] for m in got if isinstance(m.body, Schedule)] == [float(i) for i in range(10)]


async def test_an_actor_that_starts_fresh_does_not_get_a_previous_runs_queue(own_mosquitto, uid):
    p = parties(uid)
    async with Gateway(p["dso"], own_mosquitto.url):
        pass
    async with Gateway(p["tso"], own_mosquitto.url) as tso:
        await tso.publish(schedule(1), p["dso"])
    got: list = []
    async with Gateway(p["dso"], own_mosquitto.url) as dso:  # resume_session=False: a new run
        reader = asyncio.create_task(collect(dso, got))
        await asyncio.sleep(0.5)
        reader.cancel()
    assert not [m for m in got if isinstance(m.body, Schedule)]


async def test_mqtt5_properties_follow_the_delivery_policy(own_mosquitto, uid):
    p = parties(uid)
    spec = BrokerSpec.parse(own_mosquitto.url)
    seen: dict[str, aiomqtt.Message] = {}
    async with (
        aiomqtt.Client(spec.host, spec.port, protocol=aiomqtt.ProtocolVersion.V5, identifier=f"spy-{uid}") as spy,
        Gateway(p["tso"], own_mosquitto.url) as tso,
        Gateway(p["dso"], own_mosquitto.url) as dso,
    ):
        await spy.subscribe("tsodso/v1/#", qos=1)

        async def watch():
            async for m in spy.messages:
                if m.topic.value.endswith(uid):
                    seen[m.topic.value.split("/")[4]] = m

        task = asyncio.create_task(watch())

        @dso.on(MeritOrderList)
        async def validate(msg):
            await dso.reply(msg, sample("mol_validation"))

        answer = await tso.request(sample("merit_order_list"), p["dso"], timeout=5)
        await tso.publish(sample("delta_setpoint"), p["bsp"])
        await wait_until(lambda: {"merit_order_list", "mol_validation", "delta_setpoint"} <= set(seen))
        task.cancel()
    setpoint = seen["delta_setpoint"].properties
    env = json.loads(seen["delta_setpoint"].payload)["envelope"]
    validity_s = (
        datetime.fromisoformat(env["valid_until"]) - datetime.fromisoformat(env["created_at"])
    ).total_seconds()
    # the broker's expiry follows the envelope's validity, a second more for MQTT's whole seconds
    assert setpoint.MessageExpiryInterval == math.ceil(validity_s - 1e-9) + 1 and seen["delta_setpoint"].qos == 1
    request = seen["merit_order_list"]
    request_env = json.loads(request.payload)["envelope"]
    assert (
        request.properties.ResponseTopic
        == request_env["reply_to"]
        == f"tsodso/v1/dso/{p['dso'].id}/mol_validation/tso/{p['tso'].id}"
    )
    assert uuid.UUID(bytes=request.properties.CorrelationData) == uuid.UUID(request_env["message_id"])
    assert uuid.UUID(bytes=seen["mol_validation"].properties.CorrelationData) == answer.envelope.causation_id


async def test_mqtt_311_mode_on_mosquitto(own_mosquitto, uid):
    """Devices in the field often speak 3.1.1: correlation and expiry travel in the envelope only."""
    url = own_mosquitto.url + "?protocol=3.1.1"
    p = parties(uid)
    async with Gateway(p["tso"], url) as tso, Gateway(p["dso"], url) as dso:
        assert BrokerSpec.parse(url).protocol == 4

        @dso.on(MeritOrderList)
        async def validate(msg):
            await dso.reply(msg, sample("mol_validation"))

        answer = await tso.request(sample("merit_order_list"), p["dso"], timeout=5)
        assert answer.envelope.causation_id is not None and answer.envelope.valid_until is not None
        assert answer.envelope.correlation_id == answer.envelope.causation_id


async def test_access_list_and_passwords_from_the_rights_table(tmp_path, uid):
    mosquitto_or_skip()
    p = parties(uid)
    actors = list(p.values())
    auth = write_auth(tmp_path / "auth", actors, {username(a): f"pw-{a.role}" for a in actors})
    acl = (tmp_path / "auth" / "acl").read_text()
    assert f"topic write tsodso/v1/bsp/{p['bsp'].id}/energy_bid/tso/+" in acl
    assert f"topic write tsodso/v1/bsp/{p['bsp'].id}/merit_order_list" not in acl
    with start_broker("mosquitto", data_dir=tmp_path / "mq", auth=auth) as running:
        spec = BrokerSpec.parse(running.url)

        def url(actor: Party, password: str) -> BrokerSpec:
            return spec.with_credentials(username(actor), password)

        # a wrong password: the broker's own reason, at once (not after the connect timeout)
        t0 = asyncio.get_running_loop().time()
        with pytest.raises(
            BrokerUnreachable, match=r"refused the connection: .*(Not authori[sz]ed|Bad user name or password)"
        ):
            async with Gateway(p["bsp"], url(p["bsp"], "wrong"), connect_timeout_s=30):
                pass
        assert asyncio.get_running_loop().time() - t0 < 30
        got: list = []
        async with (
            Gateway(p["tso"], url(p["tso"], "pw-tso")) as tso,
            Gateway(p["dso"], url(p["dso"], "pw-dso")) as dso,
            Gateway(p["bsp"], url(p["bsp"], "pw-bsp")) as bsp,
        ):
            readers = [asyncio.create_task(collect(gw, got)) for gw in (tso, dso)]
            # a BSP may not send a merit order list: the broker drops it, the DSO never sees it
            await bsp.publish(sample("merit_order_list"), p["dso"])
            # what a BSP may send gets through
            await bsp.publish(sample("energy_bid"), p["tso"])
            await wait_until(lambda: any(m.envelope.type == "energy_bid" for m in got))
            await asyncio.sleep(0.3)
            for r in readers:
                r.cancel()
        assert not [m for m in got if m.envelope.type == "merit_order_list"]
        assert dso.stats["rejected"] == 0  # stopped at the broker, not at the gateway


async def test_nothing_listening_is_named_with_a_hint(uid):
    import socket

    with socket.socket() as sock:  # a port nobody listens on: bound, never listening
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        with pytest.raises(BrokerUnreachable) as refused:
            async with Gateway(Party(role="bsp", id=f"bsp-{uid}"), f"mqtt://127.0.0.1:{port}", connect_timeout_s=1):
                pass
    message = str(refused.value)
    assert f"could not connect to mqtt://127.0.0.1:{port} within 1 s: [Errno 111] Connection refused" in message
    assert "nothing listens there" in message


async def test_a_broker_that_refuses_mqtt5_is_spoken_to_in_311(uid):
    """The embedded broker speaks MQTT 3.1.1 only and refuses a version-5 CONNECT (reason: protocol):
    a gateway asked for MQTT 5 falls back to 3.1.1 and works (NATS and RabbitMQ answer the same way)."""
    with start_broker("embedded") as running:
        url = BrokerSpec.parse(running.url).url.replace("?protocol=3.1.1", "")
        assert BrokerSpec.parse(url).protocol == 5
        p = parties(uid)
        got: list = []
        async with Gateway(p["tso"], url) as tso, Gateway(p["bsp"], url) as bsp:
            reader = asyncio.create_task(collect(bsp, got))
            await tso.publish(sample("delta_setpoint"), p["bsp"])
            await wait_until(lambda: any(m.envelope.type == "delta_setpoint" for m in got))
            reader.cancel()
        assert tso.connections == bsp.connections == 1


def test_broker_url_parsing():
    spec = BrokerSpec.parse("mqtts://bsp-1:s%40cret@broker.example:8884?protocol=3.1.1&ca=/etc/ca.pem")
    assert (spec.host, spec.port, spec.tls, spec.protocol, spec.username, spec.password, spec.ca_file) == (
        "broker.example",
        8884,
        True,
        4,
        "bsp-1",
        "s@cret",
        "/etc/ca.pem",
    )
    assert "s@cret" not in spec.url and "s@cret" not in repr(spec)
    assert BrokerSpec.parse("mqtt://h").port == 1883 and BrokerSpec.parse("mqtts://h").port == 8883
    with pytest.raises(ValueError, match="scheme must be mqtt"):
        BrokerSpec.parse("http://h:1883")
    with pytest.raises(ValueError, match="protocol must be 5 or 3.1.1"):
        BrokerSpec.parse("mqtt://h?protocol=6")


@pytest.mark.parametrize("call", ["publish", "publish_now"])
async def test_a_burst_beyond_the_brokers_window_of_messages_in_flight_is_delivered_whole(call, uid, tmp_path):
    """A broker allows only so many unacknowledged QoS 1 messages per client (MQTT 5 Receive Maximum:
    Mosquitto's max_inflight_messages, 20 by default). A burst of 300 waits for room instead of failing,
    and every message arrives, once: awaited ``publish`` calls, or plain ``publish_now`` calls (those
    beyond the window wait for room in the gateway's tasks)."""
    from tsodso.broker.launch import RunningBroker, free_port
    from tsodso.broker.mosquitto import binary

    mosquitto_or_skip()
    port = free_port()
    conf = tmp_path / "small-window.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\nset_tcp_nodelay true\nmax_inflight_messages 5\n")
    url = f"mqtt://127.0.0.1:{port}"
    with RunningBroker("mosquitto", url, port=port, command=[binary(), "-c", str(conf)], data_dir=tmp_path).start():
        p = parties(uid)
        got: list = []
        async with Gateway(p["tso"], url) as tso, Gateway(p["dso"], url) as dso:
            reader = asyncio.create_task(collect(dso, got, Schedule))
            for i in range(300):
                if call == "publish":
                    await tso.publish(schedule(i), p["dso"])
                else:
                    tso.publish_now(schedule(i), p["dso"])
            await wait_until(lambda: len(got) >= 300, timeout=30)
            reader.cancel()
    assert sorted(m.body.series[0].p_mw[0] for m in got) == [float(i) for i in range(300)]
    assert not tso.stats["dropped"]


@pytest.mark.parametrize("own_broker", ["embedded", "mosquitto"], indirect=True)
async def test_publish_now_while_the_broker_is_gone_delivers_everything_once(own_broker, uid):
    """``publish_now`` writes at once where it can; where it cannot (no connection), the message goes
    on in a task of the gateway and is delivered after the reconnect, once."""
    p = parties(uid)
    got: list = []
    async with (
        Gateway(p["tso"], own_broker.url, reconnect_delay_s=(0.05, 0.5)) as tso,
        Gateway(p["dso"], own_broker.url, reconnect_delay_s=(0.05, 0.5)) as dso,
    ):
        reader = asyncio.create_task(collect(dso, got, Schedule))
        own_broker.stop()
        envelopes = [tso.publish_now(schedule(i), p["dso"]) for i in range(20)]  # plain calls: nothing awaited
        await asyncio.sleep(0.3)
        own_broker.start()
        await wait_until(lambda: len({m.envelope.message_id for m in got}) == 20, timeout=30)
        await asyncio.sleep(0.3)
        reader.cancel()
    assert sorted(m.envelope.message_id for m in got) == sorted(e.message_id for e in envelopes)
    assert len(got) == 20 and not tso.stats["dropped"]
