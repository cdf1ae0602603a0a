"""`tsodso bench rtt`: the gateway's typed request/response round trip against the raw MQTT client.

Both paths run in the same process, on the same broker, with the same payload sizes, QoS and
socket options (TCP_NODELAY on the clients), in alternating blocks so that machine noise hits both
alike. The gateway path is TSO → DSO ``merit_order_list`` answered by ``mol_validation``: envelope,
JSON, pydantic validation on both ends, rights/expiry/duplicate checks, exchange-log rows. The raw
path echoes opaque bytes of the same sizes between two plain connections of the client the gateway
stands on (``gateway.mqtt``: gmqtt, nothing of the gateway), with the MQTT 5 properties a
request/response carries anyway (message expiry, response topic, correlation data). Where gcc and
libmosquitto are installed, a third path gives the floor: the same round trip between two libmosquitto
clients in C (``c_rtt.c``, built at run time), run after the other two.
"""

import asyncio
import ctypes.util
import platform
import shutil
import subprocess
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tsodso.gateway import DELIVERY_POLICY, DeliveryPolicy, ExchangeLog, Gateway
from tsodso.gateway.arrival import Trust
from tsodso.gateway.connection import BrokerSpec
from tsodso.gateway.mqtt import Incoming, MqttConnection
from tsodso.schemas import signing
from tsodso.schemas.codes import BidStatus, Connection, Direction, ProcessType
from tsodso.schemas.envelope import Party
from tsodso.schemas.messages import (
    BidAsset,
    BidValidation,
    MeritOrderList,
    MolEntry,
    MolValidation,
)
from tsodso.testbed.stats import summary

TSO = Party(role="tso", id="bench-tso")
DSO = Party(role="dso", id="bench-dso")


def rtt_policy(qos: int = 1) -> dict[str, DeliveryPolicy]:
    """The delivery policy of the round trip: request and answer at ``qos``, valid 15 min."""
    return {
        **DELIVERY_POLICY,
        "merit_order_list": DeliveryPolicy(qos=qos, expiry_s=900),
        "mol_validation": DeliveryPolicy(qos=qos, expiry_s=900),
    }


def sample_mol(n_bids: int = 1) -> MeritOrderList:
    return MeritOrderList(
        mol_id="bench",
        process=ProcessType.AFRR,
        isp_start=datetime(2026, 1, 1, 10, tzinfo=UTC),
        bids=[
            MolEntry(
                rank=i + 1,
                bid_id=f"bid{i}",
                bsp_id="bsp1",
                direction=Direction.UP,
                price_eur_per_mwh=50 + i,
                quantity_mw=20,
                upper_bound_mw=20,
                assets=[
                    BidAsset(
                        asset_id=f"der{i}", connection=Connection.DN, dso_id=DSO.id, connection_bus="bus7", share_mw=10
                    )
                ],
            )
            for i in range(n_bids)
        ],
    )


def sample_validation(mol: MeritOrderList) -> MolValidation:
    return MolValidation(
        mol_id=mol.mol_id,
        iteration=1,
        dso_id=DSO.id,
        results=[
            BidValidation(bid_id=b.bid_id, status=BidStatus.ACCEPTED, upper_bound_mw=b.quantity_mw) for b in mol.bids
        ],
    )


async def _gateway_block(tso: Gateway, mol: MeritOrderList, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter_ns()
        await tso.request(mol, DSO, timeout=10)
        out.append((time.perf_counter_ns() - t0) / 1e6)
    return out


async def _raw_block(
    req: MqttConnection, answers: asyncio.Queue[Incoming], payload: bytes, qos: int, n: int
) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter_ns()
        # MQTT 5 request/response the plain way: the same Expiry, Response Topic and Correlation Data
        req.publish(
            "bench/raw/req", payload, qos, expiry_s=900, response_topic="bench/raw/rep", correlation=uuid.uuid4().bytes
        )
        await answers.get()
        out.append((time.perf_counter_ns() - t0) / 1e6)
    return out


def c_floor(spec: BrokerSpec, n: int, qos: int, request_bytes: int, response_bytes: int) -> dict[str, Any]:
    """The round trip between two libmosquitto clients in C: {"p50_ms", "p99_ms"}, or {"missing": why}."""
    if shutil.which("gcc") is None or ctypes.util.find_library("mosquitto") is None:
        return {"missing": "needs gcc and libmosquitto (Debian: libmosquitto1)"}
    if spec.tls or spec.username:
        return {"missing": "the C floor runs on plain, anonymous brokers only"}
    source = Path(__file__).with_name("c_rtt.c")
    with tempfile.TemporaryDirectory() as tmp:
        binary = Path(tmp) / "c_rtt"
        built = subprocess.run(
            ["gcc", "-O2", "-o", str(binary), str(source), "-l:libmosquitto.so.1", "-lpthread"],
            capture_output=True,
            text=True,
        )
        if built.returncode != 0:
            return {"missing": f"could not build c_rtt.c: {built.stderr.strip()[:200]}"}
        ran = subprocess.run(
            [
                str(binary),
                spec.host,
                str(spec.port),
                str(n),
                str(qos),
                str(request_bytes),
                str(response_bytes),
                str(spec.protocol),
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
    if ran.returncode != 0:
        return {"missing": f"c_rtt failed: {ran.stderr.strip()[:200]}"}
    p50, p99 = (float(v) for v in ran.stdout.split())
    return {"p50_ms": p50, "p99_ms": p99}


async def run_rtt(
    broker_url: str, *, n: int = 1000, qos: int = 1, block: int = 100, warmup: int = 50, signed: bool = False
) -> dict[str, Any]:
    """``signed``: both gateways sign what they send (Ed25519) and check every signature, as a secured
    deployment does (``schemas.signing``)."""
    spec = BrokerSpec.parse(broker_url)
    security: dict[Party, dict[str, Any]] = {TSO: {}, DSO: {}}
    if signed:
        keys = signing.generate([str(TSO), str(DSO)])
        trust = Trust(signing.public_keys(keys))
        security = {p: {"signing_key": keys[str(p)], "trust": trust} for p in (TSO, DSO)}
    policy = rtt_policy(qos)
    mol = sample_mol()
    answer = sample_validation(mol)
    answers: asyncio.Queue[Incoming] = asyncio.Queue()
    raw_rep: MqttConnection

    def echo(m: Incoming) -> None:
        raw_rep.publish("bench/raw/rep", rep_payload, qos, expiry_s=900, correlation=m.property("correlation_data"))

    raw_req = MqttConnection(spec, "bench-raw-req", on_message=answers.put_nowait)
    raw_rep = MqttConnection(spec, "bench-raw-rep", on_message=echo)
    with tempfile.TemporaryDirectory() as tmp:
        log = ExchangeLog(Path(tmp) / "exchange.sqlite", run_id="bench-rtt")
        async with (
            Gateway(TSO, spec, log=log, policy=policy, **security[TSO]) as tso,
            Gateway(DSO, spec, log=log, policy=policy, **security[DSO]) as dso,
            raw_req,
            raw_rep,
        ):

            @dso.on(MeritOrderList)
            def validate(msg: Any) -> None:  # answers without waiting: a plain call, no task per request
                dso.reply_now(msg, answer)

            # raw payloads of the same sizes as the gateway's wire messages
            req_env, req_bytes = tso.build(mol, DSO)
            _, rep_bytes = dso.build(answer, TSO)
            req_payload = b"x" * len(req_bytes)
            rep_payload = b"y" * len(rep_bytes)
            await raw_req.subscribe(["bench/raw/rep"], qos=qos)
            await raw_rep.subscribe(["bench/raw/req"], qos=qos)
            await _gateway_block(tso, mol, warmup)
            await _raw_block(raw_req, answers, req_payload, qos, warmup)
            gw_ms: list[float] = []
            raw_ms: list[float] = []
            while len(gw_ms) < n:
                k = min(block, n - len(gw_ms))
                raw_ms += await _raw_block(raw_req, answers, req_payload, qos, k)
                gw_ms += await _gateway_block(tso, mol, k)
        log.close()
    g, r = summary(gw_ms), summary(raw_ms)
    c = await asyncio.to_thread(c_floor, spec, n, qos, len(req_bytes), len(rep_bytes))
    return {
        "benchmark": "rtt",
        "metric": "request_response_p50",
        "value": round(g["p50"], 4),
        "unit": "ms",
        "goal": "p50 <= 0.8 ms on Mosquitto and ratio_p50 <= 1.5, p99 <= 2 ms",
        "baseline": "raw gmqtt request/response: same payload sizes, QoS, socket options and (MQTT 5) the same "
        "expiry, response-topic and correlation-data properties",
        "baseline_value": round(r["p50"], 4),
        "ratio": round(g["p50"] / r["p50"], 3),
        "gateway_p50_ms": round(g["p50"], 4),
        "gateway_p99_ms": round(g["p99"], 4),
        "raw_p50_ms": round(r["p50"], 4),
        "raw_p99_ms": round(r["p99"], 4),
        "c_p50_ms": c.get("p50_ms"),
        "c_p99_ms": c.get("p99_ms"),
        "c_missing": c.get("missing"),
        "ratio_p50": round(g["p50"] / r["p50"], 3),
        "n": n,
        "qos": qos,
        "signed": signed,
        "request_bytes": len(req_bytes),
        "response_bytes": len(rep_bytes),
        "broker": spec.url,
        "protocol": "5" if spec.protocol == 5 else "3.1.1",
        "client_tcp_nodelay": True,
        "machine": f"{platform.machine()}, {platform.python_implementation()} {platform.python_version()}, "
        f"{platform.system()} {platform.release()}",
    }
