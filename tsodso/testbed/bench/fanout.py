"""`tsodso bench fanout --endpoints N`: one TSO sends a delta setpoint to N BSP endpoints every
cycle, on a real broker; every endpoint is its own MQTT connection.

The endpoints live in ``--workers`` separate processes (plain ``gateway.mqtt`` connections, TCP_NODELAY,
QoS 1 subscriptions), so that receiving does not compete with sending in one Python process. Per cycle
the sender publishes N setpoints concurrently and every endpoint notes its arrival time. A
delivery is *missed* when it arrives after the cycle ends (the setpoint's life) or not at all; a
cycle is missed when any endpoint missed it (sender and endpoints share this host's clock). Latency = arrival - that message's publish
time (envelope created_at on the gateway path, a stamp in the payload on the raw path).

Two paths in the same run, same endpoints: the gateway (typed ``DeltaSetpoint``, envelope, policy,
exchange log) and the raw client (``gateway.mqtt``, gmqtt) publishing payloads of the same size. The
raw path is the floor for one Python sender on this host; the goal is measured against it: the last
delivery of a cycle (after the cycle began) within 1.5x the raw path's.

``--senders K`` spreads the gateway path over K processes, each the TSO's gateway on its own connection
(client id ``tso-<id>-<k>``, ``sends_only``: no subscription, no presence) sending to every K-th endpoint: a
receiver sees the same sender, topics and per-topic sequence numbers as from one process.
"""

import asyncio
import contextlib
import json
import logging
import multiprocessing as mp
import platform
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tsodso.gateway import ExchangeLog, Gateway
from tsodso.gateway.connection import BrokerSpec
from tsodso.gateway.logs import configure_logging
from tsodso.gateway.loop import run as run_batched
from tsodso.gateway.mqtt import Incoming, MqttConnection
from tsodso.schemas.envelope import Party
from tsodso.schemas.messages import DeltaSetpoint
from tsodso.testbed.stats import summary

TSO = Party(role="tso", id="fanout-tso")


def endpoint_topic(i: int) -> str:
    return f"bench/fanout/raw/{i}"


async def _endpoints(url: str, ids: list[int], ready, results, stop) -> None:
    spec = BrokerSpec.parse(url)
    raw_arrivals: list[tuple[int, int, Incoming]] = []  # (endpoint, arrival ns, message): read after the run
    sem = asyncio.Semaphore(64)
    clients: list[MqttConnection] = []

    def arrived(i: int, m: Incoming) -> None:  # the same work for both paths: note the time, keep the bytes
        raw_arrivals.append((i, time.time_ns(), m))

    def receiver(i: int) -> Callable[[Incoming], None]:
        return lambda m: arrived(i, m)

    async def connect(i: int) -> None:
        async with sem:
            c = MqttConnection(spec, f"bsp-fanout-{i}", on_message=receiver(i), keepalive_s=120)
            await c.connect(60)
            await c.subscribe([f"tsodso/v1/tso/{TSO.id}/delta_setpoint/bsp/fanout-{i}", endpoint_topic(i)], qos=1)
            clients.append(c)

    await asyncio.gather(*(connect(i) for i in ids))
    ready.put(len(clients))
    while not stop.is_set():
        await asyncio.sleep(0.05)
    arrivals: list[tuple[str, int, int, int, int]] = []  # (path, endpoint, cycle, arrival ns, published ns)
    for i, now, m in raw_arrivals:
        if m.topic.startswith("bench/"):
            arrivals.append(("raw", i, int(m.payload[:8]), now, int(m.payload[8:28])))
        else:
            doc = json.loads(m.payload)
            created = datetime.fromisoformat(doc["envelope"]["created_at"].replace("Z", "+00:00"))
            arrivals.append(("gateway", i, doc["body"]["cycle"], now, int(created.timestamp() * 1e9)))
    results.put(arrivals)
    for c in clients:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(c.close(), 1)


def _worker(url: str, ids: list[int], ready, results, stop) -> None:
    run_batched(_endpoints(url, ids, ready, results, stop))


def _setpoint(bsp: Party, cycle: int, instant: datetime) -> DeltaSetpoint:
    return DeltaSetpoint(bsp_id=bsp.id, cycle=cycle, instant=instant, reference_mw=200, delta_mw=float(cycle))


async def _gateway_cycles(
    tso: Gateway, bsps: list[Party], cycles: int, period_s: float, t0: float, starts: list[int]
) -> None:
    """The gateway path's cycles from wall time ``t0``: each cycle's setpoints in order, one after the other,
    as an actor sends a cycle (``Actor.send``); its start (ns) appended to ``starts``."""
    for k in range(cycles):
        await asyncio.sleep(max(0.0, t0 + k * period_s - time.time()))
        starts.append(time.time_ns())
        instant = datetime.now(UTC)
        for b in bsps:
            await tso.publish(_setpoint(b, k, instant), b, valid_for_s=period_s)


async def _sender(url: str, ids: list[int], k: int, cycles: int, period_s: float, log_path: str, ready, go, done):
    """One of ``--senders`` processes: the TSO's gateway (its own connection, client id ``tso-<id>-<k>``)
    sending to endpoints ``ids`` (each endpoint's topic from one process only: its sequence stays in order)."""
    configure_logging(level=logging.WARNING)  # a spawned process: its events to stderr, as the bench's own
    spec = BrokerSpec.parse(url)
    with ExchangeLog(Path(log_path), run_id=f"bench-fanout-{k}") as log:
        async with Gateway(TSO, spec, log=log, client_id=f"tso-{TSO.id}-{k}", sends_only=True) as tso:
            ready.put(k)
            t0 = await asyncio.to_thread(go.get)
            starts: list[int] = []
            await _gateway_cycles(tso, [Party(role="bsp", id=f"fanout-{i}") for i in ids], cycles, period_s, t0, starts)
    done.put(starts)


def _sender_process(*args: Any) -> None:
    run_batched(_sender(*args))


def _spread_gateway(url: str, n: int, cycles: int, period_s: float, senders: int, log_dir: Path) -> list[int]:
    """The gateway path over ``senders`` processes; each cycle's start (ns): the earliest of the senders'."""
    ctx = mp.get_context("spawn")
    ready, done = ctx.Queue(), ctx.Queue()
    gos = [ctx.Queue() for _ in range(senders)]
    ids = list(range(n))
    procs = [
        ctx.Process(
            target=_sender_process,
            args=(url, ids[k::senders], k, cycles, period_s, str(log_dir / f"fanout-{k}.sqlite"), ready, gos[k], done),
            daemon=True,
        )
        for k in range(senders)
    ]
    for p in procs:
        p.start()
    for _ in procs:
        ready.get(timeout=120)
    t0 = time.time() + 0.5
    for go in gos:
        go.put(t0)
    per_sender = [done.get(timeout=cycles * period_s + 120) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    return [min(column) for column in zip(*per_sender, strict=True)]


async def _send(
    url: str, n: int, cycles: int, period_s: float, log_dir: Path, senders: int = 1
) -> dict[str, list[int]]:
    """Publish cycles on both paths; return cycle start times (ns) per path. The gateway path in this process,
    or spread over ``senders`` processes; the raw path always in this one (the floor for one Python sender)."""
    spec = BrokerSpec.parse(url)
    starts: dict[str, list[int]] = {"gateway": [], "raw": []}
    bsps = [Party(role="bsp", id=f"fanout-{i}") for i in range(n)]
    if senders > 1:
        starts["gateway"] = await asyncio.to_thread(_spread_gateway, url, n, cycles, period_s, senders, log_dir)
    with ExchangeLog(log_dir / "fanout.sqlite", run_id="bench-fanout") as log:
        async with (
            Gateway(TSO, spec, log=log) as tso,
            MqttConnection(spec, "fanout-raw", on_message=lambda m: None) as raw,
        ):
            size = len(tso.build(_setpoint(bsps[0], 0, datetime.now(UTC)), bsps[0])[1])
            t0 = time.time() + 0.5
            if senders == 1:
                await _gateway_cycles(tso, bsps, cycles, period_s, t0, starts["gateway"])
                t0 = t0 + cycles * period_s + 1.0
            pad = b"x" * (size - 28)
            for k in range(cycles):
                await asyncio.sleep(max(0.0, t0 + k * period_s - time.time()))
                starts["raw"].append(time.time_ns())
                for i in range(n):
                    await raw.wait_ready(1)
                    payload = f"{k:08d}{time.time_ns():020d}".encode() + pad  # cycle, publish time
                    raw.publish(endpoint_topic(i), payload, qos=1)
    return starts


def run_fanout(
    broker_url: str,
    endpoints: int = 1000,
    cycles: int = 5,
    period_s: float = 4.0,
    workers: int = 2,
    senders: int = 1,
) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    ready, results, stop = ctx.Queue(), ctx.Queue(), ctx.Event()
    ids = list(range(endpoints))
    procs = [
        ctx.Process(target=_worker, args=(broker_url, ids[w::workers], ready, results, stop), daemon=True)
        for w in range(workers)
    ]
    t_connect = time.time()
    for p in procs:
        p.start()
    connected = sum(ready.get(timeout=600) for _ in procs)
    connect_s = time.time() - t_connect
    with tempfile.TemporaryDirectory() as tmp:
        starts = run_batched(_send(broker_url, endpoints, cycles, period_s, Path(tmp), senders))
    time.sleep(period_s)
    stop.set()
    arrivals = [a for _ in procs for a in results.get(timeout=120)]
    for p in procs:
        p.join(timeout=30)
        if p.is_alive():
            p.kill()
    out: dict[str, Any] = {}
    for path in ("gateway", "raw"):
        lat, missed, missed_cycles, last = [], 0, set(), []
        got = {(i, k): (t, sent) for p_, i, k, t, sent in arrivals if p_ == path}
        for k, start in enumerate(starts[path]):
            latest = 0
            for i in range(endpoints):
                t, sent = got.get((i, k), (None, None))
                if t is None or t - start > period_s * 1e9:
                    missed += 1
                    missed_cycles.add(k)
                if t is not None:
                    lat.append((t - sent) / 1e6)
                    latest = max(latest, t - start)
            last.append(latest / 1e6)
        s = summary(lat)
        out[path] = {
            "p50_ms": round(s["p50"], 3),
            "p99_ms": round(s["p99"], 3),
            "max_ms": round(s["max"], 3),
            "last_delivery_ms": round(max(last), 1) if last else None,  # after its cycle began, worst cycle
            "deliveries": len(lat),
            "missed_deliveries": missed,
            "missed_cycles": len(missed_cycles),
        }
    g, r = out["gateway"], out["raw"]
    return {
        "benchmark": "fanout",
        "metric": "publish_to_receive_p99",
        "value": g["p99_ms"],
        "unit": "ms",
        "goal": "0 missed cycles; last delivery of a cycle <= 1.5x the raw client's",
        "baseline": "raw gmqtt fan-out of the same size, same endpoints, same run",
        "baseline_value": r["p99_ms"],
        "ratio": round(g["p99_ms"] / r["p99_ms"], 3) if r["p99_ms"] else None,
        "last_delivery_ratio": round(g["last_delivery_ms"] / r["last_delivery_ms"], 3)
        if g["last_delivery_ms"] and r["last_delivery_ms"]
        else None,
        "endpoints": endpoints,
        "connected": connected,
        "connect_s": round(connect_s, 1),
        "cycles": cycles,
        "period_s": period_s,
        "workers": workers,
        "senders": senders,
        "gateway": g,
        "raw": r,
        "broker": broker_url,
        "machine": f"{platform.machine()}, {platform.python_implementation()} {platform.python_version()}",
    }
