"""`tsodso bench rtt`: the gateway's typed request/response round trip against raw aiomqtt.

Both paths run in the same process, on the same broker, with the same payload sizes, QoS and
socket options (TCP_NODELAY on the clients), in alternating blocks so that machine noise hits both
alike. The gateway path is TSO → DSO ``merit_order_list`` answered by ``mol_validation``: envelope,
JSON, pydantic validation on both ends, rights/expiry/duplicate checks, exchange-log rows. The raw
path echoes opaque bytes of the same sizes between two aiomqtt clients, with the MQTT 5 properties a
request/response carries anyway (message expiry, response topic, correlation data): paho decodes
received MQTT 5 properties slowly (~40 µs a message here), and that cost belongs to MQTT 5, not
to the gateway.
"""

import asyncio
import platform
import socket
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiomqtt

from tsodso.gateway import DELIVERY_POLICY, DeliveryPolicy, ExchangeLog, Gateway
from tsodso.gateway.arrival import Trust
from tsodso.gateway.client import PublishProperties
from tsodso.gateway.connection import BrokerSpec
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

NODELAY = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]
TSO = Party(role="tso", id="bench-tso")
DSO = Party(role="dso", id="bench-dso")


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


def _raw(spec: BrokerSpec, protocol: aiomqtt.ProtocolVersion, ident: str) -> aiomqtt.Client:
    return aiomqtt.Client(
        spec.host,
        spec.port,
        username=spec.username or ident,
        password=spec.password,
        protocol=protocol,
        socket_options=NODELAY,
        identifier=ident,
    )


async def _gateway_block(tso: Gateway, mol: MeritOrderList, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter_ns()
        await tso.request(mol, DSO, timeout=10)
        out.append((time.perf_counter_ns() - t0) / 1e6)
    return out


async def _raw_block(req: aiomqtt.Client, it: Any, payload: bytes, qos: int, n: int, v5: bool) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter_ns()
        # MQTT 5 request/response the plain way: the same Expiry, Response Topic and Correlation Data
        props = PublishProperties(900, "bench/raw/rep", uuid.uuid4().bytes) if v5 else None
        await req.publish("bench/raw/req", payload, qos=qos, properties=props)
        await it.__anext__()
        out.append((time.perf_counter_ns() - t0) / 1e6)
    return out


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
    policy = {
        **DELIVERY_POLICY,
        "merit_order_list": DeliveryPolicy(qos=qos, expiry_s=900),
        "mol_validation": DeliveryPolicy(qos=qos, expiry_s=900),
    }
    mol = sample_mol()
    answer = sample_validation(mol)
    v5 = spec.protocol == 5
    protocol = aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311
    with tempfile.TemporaryDirectory() as tmp:
        log = ExchangeLog(Path(tmp) / "exchange.sqlite", run_id="bench-rtt")
        async with (
            Gateway(TSO, spec, log=log, policy=policy, **security[TSO]) as tso,
            Gateway(DSO, spec, log=log, policy=policy, **security[DSO]) as dso,
            _raw(spec, protocol, "bench-raw-req") as raw_req,
            _raw(spec, protocol, "bench-raw-rep") as raw_rep,
        ):

            @dso.on(MeritOrderList)
            async def validate(msg: Any) -> None:
                await dso.reply(msg, answer)

            # raw payloads of the same sizes as the gateway's wire messages
            req_env, req_bytes = tso.build(mol, DSO)
            _, rep_bytes = dso.build(answer, TSO)
            req_payload = b"x" * len(req_bytes)
            rep_payload = b"y" * len(rep_bytes)
            await raw_req.subscribe("bench/raw/rep", qos=qos)
            await raw_rep.subscribe("bench/raw/req", qos=qos)

            async def echo() -> None:
                async for m in raw_rep.messages:
                    props = PublishProperties(900, None, getattr(m.properties, "CorrelationData", None)) if v5 else None
                    await raw_rep.publish("bench/raw/rep", rep_payload, qos=qos, properties=props)

            echo_task = asyncio.create_task(echo())
            it = raw_req.messages.__aiter__()
            await _gateway_block(tso, mol, warmup)
            await _raw_block(raw_req, it, req_payload, qos, warmup, v5)
            gw_ms: list[float] = []
            raw_ms: list[float] = []
            while len(gw_ms) < n:
                k = min(block, n - len(gw_ms))
                raw_ms += await _raw_block(raw_req, it, req_payload, qos, k, v5)
                gw_ms += await _gateway_block(tso, mol, k)
            echo_task.cancel()
        log.close()
    g, r = summary(gw_ms), summary(raw_ms)
    return {
        "benchmark": "rtt",
        "metric": "request_response_p50",
        "value": round(g["p50"], 4),
        "unit": "ms",
        "goal": "ratio_p50 <= 1.3",
        "baseline": "raw aiomqtt request/response: same payload sizes, QoS, socket options and (MQTT 5) the same "
        "expiry, response-topic and correlation-data properties",
        "baseline_value": round(r["p50"], 4),
        "ratio": round(g["p50"] / r["p50"], 3),
        "gateway_p50_ms": round(g["p50"], 4),
        "gateway_p99_ms": round(g["p99"], 4),
        "raw_p50_ms": round(r["p50"], 4),
        "raw_p99_ms": round(r["p99"], 4),
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
