"""Hostile and faulty peers on real brokers: no message stops an actor, no stranger steers a BSP, a
gateway that dies says so. Each broker test runs on the embedded broker and on Mosquitto."""

import asyncio
import json
import random
import sqlite3
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.test_gateway import raw_client, sample, wait_until
from tsodso.actors.bsp import BSP
from tsodso.broker import start_broker
from tsodso.gateway import ExchangeLog, Gateway
from tsodso.gateway.arrival import Trust, encode
from tsodso.gateway.client import GatewayFailed
from tsodso.schemas import Envelope, Party, signing
from tsodso.schemas.codes import Direction
from tsodso.schemas.messages import (
    AcceptedOffer,
    ActorState,
    DeltaSetpoint,
    MeritOrderList,
    MolValidation,
    OfferAcceptance,
)
from tsodso.schemas.topics import ALL, topic_for
from tsodso.testbed.clock import Clock
from tsodso.testbed.hostile import KINDS, hostile_message
from tsodso.testbed.runner import run_scenario
from tsodso.testbed.scenario import load_scenario
from tsodso.testbed.summary import setpoints_text

SCENARIO = "scenarios/nl-afrr-congestion.yaml"
ROOT = Path(__file__).resolve().parents[1]


def parties(uid: str) -> dict[str, Party]:
    return {role: Party(role=role, id=f"{role}-{uid}") for role in ("tso", "dso", "bsp")}


async def test_no_hostile_message_stops_an_actor_and_retained_poison_does_not_stop_a_newcomer(broker, uid, tmp_path):
    """Every kind of hostile message the hostile peer knows, sent at a BSP (and one left retained on
    the broker for the next TSO): the BSP still takes the real TSO's next setpoint, its loop is
    alive, every hostile message is in its exchange log with its reason, and a TSO started
    afterwards on the poisoned broker still gets its MOL validated."""
    p = parties(uid)
    rng = random.Random(7)
    messages = [hostile_message(k, p["bsp"], tso=p["tso"], dso=p["dso"], seen=[], rng=rng) for k in KINDS]
    poison_topic = topic_for(p["bsp"], "telemetry", p["tso"])
    poison = b'{"envelope":' + b"[" * 50_000 + b"]" * 50_000 + b',"body":{}}'
    with ExchangeLog(tmp_path / "x.sqlite", run_id=uid) as log:
        async with Gateway(p["bsp"], broker.url, log=log) as bsp, Gateway(p["dso"], broker.url, log=log) as dso:
            setpoints: list = []

            @bsp.on(DeltaSetpoint)
            async def follow(msg):
                setpoints.append(msg)

            @dso.on(MeritOrderList)
            async def validate(msg):
                await dso.reply(msg, sample("mol_validation"))

            async with raw_client(broker, f"raw-{uid}") as raw:
                for topic, payload in messages:
                    await raw.publish(topic, payload, qos=1)
                await raw.publish(poison_topic, poison, qos=1, retain=True)
            # all but 'forged' and 'replay' are refused on arrival; those two are schema-valid and, in an
            # open deployment like this one, left to the actor's plausibility checks (the next test)
            await wait_until(lambda: bsp.stats["rejected"] >= len(messages) - 2, timeout=10)
            async with Gateway(p["tso"], broker.url, log=log) as tso:  # starts on the poisoned broker
                real = await tso.publish(_setpoint(p["bsp"], 0, datetime.now(UTC), 1.0), p["bsp"])
                await wait_until(lambda: any(m.envelope.message_id == real.message_id for m in setpoints))
                answer = await tso.request(sample("merit_order_list"), p["dso"], timeout=5)
                assert isinstance(answer.body, MolValidation)
                await wait_until(lambda: tso.stats["rejected"] >= 1)  # the retained poison, refused
                assert tso.failed is None and bsp.failed is None and dso.failed is None
            async with raw_client(broker, f"raw2-{uid}") as raw:  # clean up the retained poison
                await raw.publish(poison_topic, b"", qos=1, retain=True)
    db = sqlite3.connect(log.path)
    rows = db.execute(
        "SELECT outcome, reason FROM exchange WHERE actor=? AND direction='in' AND outcome != 'delivered'",
        (str(p["bsp"]),),
    ).fetchall()
    reasons = " | ".join(r for _, r in rows)
    for expected in (
        "not UTF-8 JSON",
        "nested too deeply",
        "a number of 5000 digits",
        "is not a number JSON allows",
        "unknown message type 'tttt",
        "at most 16 items",
        "ahead of this clock",
    ):
        assert expected in reasons, (expected, reasons)
    poisoned = db.execute(
        "SELECT reason FROM exchange WHERE actor=? AND topic=?", (str(p["tso"]), poison_topic)
    ).fetchone()
    assert poisoned and "nested too deeply" in poisoned[0]


def _bsp(gw: Gateway, scenario, tso: Party) -> BSP:
    """The scenario's BSP under this test's ids, its scenario time beginning now."""
    cfg = scenario.bsps[0].model_copy(update={"id": gw.me.id})
    scenario = scenario.model_copy(update={"tso": scenario.tso.model_copy(update={"id": tso.id})})
    return BSP(gw, Clock(scenario.start, 50.0), scenario, cfg)


def _setpoint(bsp: Party, cycle: int, instant: datetime, delta: float) -> DeltaSetpoint:
    return DeltaSetpoint(
        bsp_id=bsp.id, cycle=cycle, instant=instant, reference_mw=200, delta_mw=delta, bid_deltas_mw={"bsp1-up": delta}
    )


def _forged(tso: Party, bsp: Party, body: DeltaSetpoint) -> bytes:
    now = datetime.now(UTC)
    env = Envelope(
        message_id=uuid.uuid4(),
        type=body.type_name,
        schema_version="1.0",
        sender=tso,
        recipients=[bsp],
        sequence=99,
        created_at=now,
        valid_until=now + timedelta(seconds=4),
    )
    return encode(env, body)


@pytest.mark.parametrize("signed", [False, True], ids=["open", "signed"])
async def test_a_forged_setpoint_is_refused_and_the_refusal_says_why(broker, uid, tmp_path, signed):
    """A stranger on the broker publishes a schema-valid setpoint 'from' the TSO, fresh id, valid
    expiry, for 20 MW. Signed deployment: refused as unsigned, the BSP's fleet does not move. Open
    deployment (no keys): the BSP follows its contract, not the message: 20 MW is cut to the bid's
    accepted bound (15 MW), and a setpoint for a bid not accepted is not followed."""
    p = parties(uid)
    scenario = load_scenario(SCENARIO)
    keys = signing.generate([str(p["tso"]), str(p["bsp"])])
    trust = Trust(signing.public_keys(keys)) if signed else None
    sec = lambda party: {"signing_key": keys[str(party)], "trust": trust} if signed else {}  # noqa: E731
    with ExchangeLog(tmp_path / "x.sqlite", run_id=uid) as log:
        async with (
            Gateway(p["tso"], broker.url, log=log, **sec(p["tso"])) as tso,
            Gateway(p["bsp"], broker.url, log=log, **sec(p["bsp"])) as bsp_gw,
        ):
            bsp = _bsp(bsp_gw, scenario, p["tso"])
            isp = scenario.isps()[0]
            await tso.publish(
                OfferAcceptance(
                    isp_start=isp,
                    accepted=[AcceptedOffer(bid_id="bsp1-up", direction=Direction.UP, upper_bound_mw=15.0)],
                ),
                p["bsp"],
            )
            await wait_until(lambda: isp in bsp.accepted)
            await tso.publish(_setpoint(p["bsp"], 0, scenario.start, 5.0), p["bsp"])  # the real TSO
            await wait_until(lambda: bsp.last_cycle == 0)
            assert sum(bsp.targets.values()) == pytest.approx(5.0)
            async with raw_client(broker, f"forger-{uid}") as forger:
                topic = topic_for(p["tso"], "delta_setpoint", p["bsp"])
                await forger.publish(
                    topic,
                    _forged(p["tso"], p["bsp"], _setpoint(p["bsp"], 1, scenario.start + timedelta(seconds=4), 20.0)),
                    qos=1,
                )
                other = _setpoint(p["bsp"], 2, scenario.start + timedelta(seconds=8), 3.0)
                other.bid_deltas_mw = {"bsp1-down": 3.0}
                await forger.publish(topic, _forged(p["tso"], p["bsp"], other), qos=1)
            await wait_until(lambda: bsp_gw.stats["rejected"] + bsp_gw.stats["refused"] >= 2 or bsp.last_cycle == 2)
            await asyncio.sleep(0.2)  # both handled
    db = sqlite3.connect(log.path)
    rows = db.execute(
        "SELECT outcome, reason FROM exchange WHERE actor=? AND type='delta_setpoint' AND "
        "outcome IN ('rejected','refused') ORDER BY id",
        (str(p["bsp"]),),
    ).fetchall()
    if signed:
        assert rows == [("rejected", f"unauthenticated: unsigned: every message from {p['tso']} must be signed")] * 2
        assert sum(bsp.targets.values()) == pytest.approx(5.0)  # still the real TSO's 5 MW
    else:
        assert rows[0] == ("refused", "refused: followed in part: bsp1-up: 20 MW above its bound of 15 MW")
        isp = scenario.isps()[0]
        assert rows[1][1] == f"refused: followed in part: bsp1-down: not accepted for the ISP from {isp:%H:%M}"
        assert sum(bsp.targets.values()) == 0.0  # the last forged setpoint asked nothing it may follow


async def test_a_gateway_whose_loop_dies_says_offline_and_fails_its_actor(broker, uid):
    """A failure outside any one message's handling (here: the handling code itself replaced by one
    that raises) ends the gateway: 'offline' is published retained, a waiting actor gets
    GatewayFailed at once instead of hanging as a zombie that looks online, and sending fails too."""
    p = parties(uid)
    states: list[str] = []
    async with Gateway(p["dso"], broker.url) as watcher:

        @watcher.on(ActorState)
        async def presence(msg):
            if msg.sender == p["bsp"]:
                states.append(msg.body.status)

        async with Gateway(p["bsp"], broker.url) as gw:
            await wait_until(lambda: states[-1:] == ["online"])

            def broken(message):
                raise RuntimeError("a bug outside the per-message isolation")

            gw._on_message = broken  # the next message kills the loop
            await watcher.publish(sample("heartbeat"), ALL)
            with pytest.raises(GatewayFailed, match="a bug outside"):
                await asyncio.wait_for(gw.guard(asyncio.sleep(30)), 10)
            with pytest.raises(GatewayFailed):
                await gw.publish(sample("telemetry"), p["tso"])
        await wait_until(lambda: states[-1:] == ["offline"])


async def test_the_replay_window_survives_a_restart(broker, uid, tmp_path):
    """A message taken before a restart is refused as a duplicate after it (the exchange log keeps the
    ids), where an actor with only memory would take it twice."""
    p = parties(uid)
    now = datetime.now(UTC)
    env = Envelope(
        message_id=uuid.uuid4(),
        type="mol_validation",
        schema_version="1.0",
        sender=p["dso"],
        recipients=[p["tso"]],
        sequence=1,
        created_at=now,
        valid_until=now + timedelta(seconds=600),
    )
    payload = encode(env, sample("mol_validation"))
    topic = topic_for(p["dso"], "mol_validation", p["tso"])
    with ExchangeLog(tmp_path / "x.sqlite", run_id=uid) as log:
        for attempt in range(2):
            async with Gateway(p["tso"], broker.url, log=log) as tso:
                got: list = []

                @tso.on(MolValidation)
                async def take(msg, got: list = got):
                    got.append(msg)

                async with raw_client(broker, f"replayer-{uid}") as raw:
                    await raw.publish(topic, payload, qos=1)
                await wait_until(lambda got=got: got or tso.stats["ignored"])
                await asyncio.sleep(0.2)
                assert len(got) == (1 if attempt == 0 else 0)
            log.flush()
    outcomes = [
        r
        for (r,) in sqlite3.connect(log.path).execute(
            "SELECT outcome FROM exchange WHERE actor=? AND message_id=? ORDER BY id",
            (str(p["tso"]), str(env.message_id)),
        )
    ]
    assert outcomes == ["delivered", "ignored"]


@pytest.mark.xdist_group("cpu-heavy")  # never beside the 18-device conformance test: both load every core
def test_the_reference_run_under_a_hostile_flood_ends_as_a_clean_run(tmp_path):
    """The reference scenario (every actor signs, every actor checks) while a hostile peer sends
    ~1 000 messages/s of every hostile kind at the TSO, the DSO and the BSP: the outcome is the
    clean run's (DSO limit 15.01 MW, no congestion, no setpoint lost), and every hostile message
    is refused."""
    scenario = load_scenario(SCENARIO, coordination=True)
    with start_broker("embedded", data_dir=tmp_path / "broker") as running:
        flood = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tsodso.testbed.hostile",
                "--broker",
                running.url,
                "--rate",
                "1000",
                "--duration",
                "25",
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
        )
        try:
            summary = asyncio.run(run_scenario(scenario, running.url, tmp_path / "run", speed=50))
        finally:
            out, _ = flood.communicate(timeout=60)
    sent = json.loads(out)["sent"]
    assert sent > 1_000  # ~1 000/s over the run's ~20 s on a quiet host; a busy one sends fewer
    assert summary["dso_limits_mw"]["bsp1-up"] == pytest.approx(15.01, abs=0.01)
    assert summary["congestion_seconds"] == 0
    assert summary["max_delta_setpoint_mw"]["bsp1"] == pytest.approx(15.01, abs=0.01)
    # nothing lost; on a host too busy to carry the flood and the run at 50x, setpoints may arrive after
    # their 80 ms and are refused as expired (counted apart): that is the host's speed, not a fault
    assert summary["setpoints_lost"] == 0, setpoints_text(summary)
    assert summary["setpoints_missed"] == summary["setpoints_expired"], setpoints_text(summary)
    assert summary["setpoints_sent"] == 225 and summary["refused_messages"] == 0
    # the flood reached the actors (how much of it before the run ended depends on the host) and not one
    # hostile message got through: everything an actor took was sent by an actor of the run
    assert summary["rejected_messages"] > 100
    db = sqlite3.connect(tmp_path / "run" / "exchange.sqlite")
    smuggled = db.execute(
        "SELECT COUNT(*) FROM exchange WHERE direction='in' AND outcome='delivered' "
        "AND message_id NOT IN (SELECT message_id FROM exchange WHERE direction='out')"
    ).fetchone()[0]
    assert smuggled == 0


def test_a_bsp_that_over_delivers_is_limited_then_terminated_by_what_the_dso_measures(tmp_path):
    """A BSP delivering 1.33 x its setpoints: the DSO's real-time power flow of the telemetered state
    sees the line behind the coupling point over 100 % although the setpoint is within the validated
    bound, limits the bid, and terminates it when the measured activation does not come down."""
    scenario = load_scenario(SCENARIO, coordination=True)
    scenario.bsps[0].follow_factor = 1.33
    with start_broker("embedded", data_dir=tmp_path / "broker") as running:
        summary = asyncio.run(run_scenario(scenario, running.url, tmp_path / "run", speed=50))
    signals = summary["real_time_limits"]
    assert [s["action"] for s in signals[:2]] == ["limit", "terminate"], signals
    assert "bsp1-up measured at" in signals[0]["reason"]
    assert summary["non_compliant_bsps"] == ["bsp1"]
    assert 0 < summary["congestion_seconds"] <= 60  # ended by the termination, not left for the run


async def test_mutual_tls_lets_in_only_the_deployments_certificates_and_the_access_list_binds_each_to_itself(tmp_path):
    """`tsodso secure init` + Mosquitto with `--tls`: an actor with its own client certificate (of the
    deployment's CA) gets in and is known by it; a client without a certificate, or with one of
    another CA, does not get in; and a BSP's certificate cannot be used to publish as the TSO."""
    from tests.conftest import mosquitto_or_skip
    from tsodso.broker.acl import tls_auth_lines
    from tsodso.gateway.connection import BrokerSpec
    from tsodso.testbed.security import init, tls_files

    mosquitto_or_skip()
    scenario = load_scenario(SCENARIO)
    secrets, other = tmp_path / "secrets", tmp_path / "other"
    init(secrets, scenario)
    init(other, scenario)  # another deployment's CA
    with start_broker(
        "mosquitto", data_dir=tmp_path / "mosquitto", auth=tls_auth_lines(secrets / "mosquitto", secrets / "tls")
    ) as running:
        plain = BrokerSpec.parse(running.url.replace("mqtt://", "mqtts://"))
        tso, bsp = Party(role="tso", id="tso"), Party(role="bsp", id="bsp1")
        as_tso = plain.with_certificate(*tls_files(secrets, "tso-tso"))
        as_bsp = plain.with_certificate(*tls_files(secrets, "bsp-bsp1"))
        got: list = []
        async with Gateway(bsp, as_bsp) as bsp_gw, Gateway(tso, as_tso) as tso_gw:

            @bsp_gw.on(DeltaSetpoint)
            async def follow(msg):
                got.append(msg)

            await tso_gw.publish(_setpoint(bsp, 0, datetime.now(UTC), 1.0), bsp)
            await wait_until(lambda: len(got) == 1)
            # the BSP's certificate publishing a setpoint 'from the TSO': the broker's access list drops it
            await bsp_gw.publish_bytes(
                topic_for(tso, "delta_setpoint", bsp), _forged(tso, bsp, _setpoint(bsp, 1, datetime.now(UTC), 20.0))
            )
            await tso_gw.publish(_setpoint(bsp, 2, datetime.now(UTC), 2.0), bsp)
            await wait_until(lambda: len(got) == 2)
            assert [m.body.cycle for m in got] == [0, 2]
        ca, _, _ = tls_files(secrets, "tso-tso")
        no_certificate = BrokerSpec.parse(f"mqtts://{plain.host}:{plain.port}?ca={ca}")
        other_ca = plain.with_certificate(ca, *tls_files(other, "tso-tso")[1:])
        for spec in (no_certificate, other_ca):
            with pytest.raises(ConnectionError):
                async with Gateway(tso, spec, connect_timeout_s=3):
                    pass


async def test_nats_gets_the_same_per_actor_users_and_permissions_from_the_rights_table(tmp_path):
    """`tsodso secure init` writes nats-server users and permissions too: on NATS's MQTT interface
    each actor logs in with its own password, receives what is addressed to it, and cannot publish
    as another actor; a wrong password is refused."""
    from tsodso.broker.nats import NatsMissing, binary
    from tsodso.testbed.security import init, load_identity

    try:
        binary()
    except NatsMissing as exc:
        pytest.skip(str(exc))
    secrets = tmp_path / "secrets"
    init(secrets, load_scenario(SCENARIO))
    auth = (secrets / "nats" / "authorization.conf").read_text()
    tso, bsp = Party(role="tso", id="tso"), Party(role="bsp", id="bsp1")
    with start_broker("nats", data_dir=tmp_path / "nats", auth=auth) as running:
        from tsodso.gateway.connection import BrokerSpec

        spec = BrokerSpec.parse(running.url)

        def login(party: Party) -> BrokerSpec:
            identity = load_identity(secrets, party)
            return spec.with_credentials(identity.username, identity.password)

        got: list = []
        async with Gateway(bsp, login(bsp)) as bsp_gw, Gateway(tso, login(tso)) as tso_gw:

            @bsp_gw.on(DeltaSetpoint)
            async def follow(msg):
                got.append(msg)

            await tso_gw.publish(_setpoint(bsp, 0, datetime.now(UTC), 1.0), bsp)
            await wait_until(lambda: len(got) == 1, timeout=10)
            # the BSP's login publishing a setpoint 'from the TSO': NATS refuses the publish
            await bsp_gw.publish_bytes(
                topic_for(tso, "delta_setpoint", bsp),
                _forged(tso, bsp, _setpoint(bsp, 1, datetime.now(UTC), 20.0)),
                qos=0,
            )
            await tso_gw.publish(_setpoint(bsp, 2, datetime.now(UTC), 2.0), bsp)
            await wait_until(lambda: len(got) == 2, timeout=10)
            assert [m.body.cycle for m in got] == [0, 2]
        with pytest.raises(ConnectionError):
            async with Gateway(tso, spec.with_credentials("tso-tso", "not-the-password"), connect_timeout_s=3):
                pass
