"""`tsodso bench throughput`: messages per second through one gateway, with every check and the exchange
log on, against the raw MQTT client in the same run.

- **send**: this process's gateway (a TSO) publishes ``n`` delta setpoints to one BSP as fast as it can
  (envelope, serialisation, policy, MQTT 5 properties, exchange-log row for each); another process counts
  what arrives on a plain connection. Rate = n / (last arrival - first publish).
- **receive**: another process publishes ``n`` valid, distinct delta setpoints (built beforehand by a
  gateway's ``build``) as fast as the raw client writes them; this process's gateway (the BSP) takes each
  through every check on arrival (bounds, one parse and validation, topic, rights, time bounds, replay
  window, sequence), logs it and hands it to a handler. Rate = n / (last handled - first arrival).
- the same two with the raw client in place of the gateway (payloads of the same size): the floor.

Lost = n - arrived (QoS 1 must lose none). The processes are separate so that sender and receiver do
not share one core's Python. :func:`step_costs` times each step of the gateway alone, in this process.
"""

import asyncio
import gc
import multiprocessing as mp
import platform
import tempfile
import time
import uuid
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tsodso.gateway import DELIVERY_POLICY, DeliveryPolicy, ExchangeLog, Gateway
from tsodso.gateway.arrival import ArrivalCheck, encode
from tsodso.gateway.connection import BrokerSpec
from tsodso.gateway.loop import run as run_batched
from tsodso.gateway.mqtt import Incoming, MqttConnection
from tsodso.schemas.envelope import Party
from tsodso.schemas.messages import DeltaSetpoint
from tsodso.schemas.rights import default_rights
from tsodso.schemas.topics import topic_for

TSO = Party(role="tso", id="tp-tso")
BSP = Party(role="bsp", id="tp-bsp")
VALID_S = 60.0  # long enough for a burst of any size to be taken before it expires


def policy(qos: int = 1) -> dict[str, DeliveryPolicy]:
    """The delivery policy with delta setpoints at ``qos`` and accepted for up to ``VALID_S``."""
    return {
        **DELIVERY_POLICY,
        "delta_setpoint": replace(DELIVERY_POLICY["delta_setpoint"], qos=qos, max_validity_s=VALID_S),
    }


def setpoint(k: int) -> DeltaSetpoint:
    return DeltaSetpoint(
        bsp_id=BSP.id,
        cycle=k,
        instant=datetime.now(UTC),
        reference_mw=200.0,
        delta_mw=1.0,
        bid_deltas_mw={f"{BSP.id}-up": 1.0},
    )


# --- the other process --------------------------------------------------------------------------------


def _counter(url: str, topic: str, n: int, ready: Any, out: Any) -> None:
    """Count arrivals on ``topic`` until ``n`` came or none for 5 s; put (count, first ns, last ns)."""

    async def main() -> None:
        times: list[int] = []
        arrived = asyncio.Event()

        def on(m: Incoming) -> None:
            times.append(time.time_ns())
            arrived.set()

        async with MqttConnection(BrokerSpec.parse(url), f"tp-counter-{uuid.uuid4().hex[:6]}", on_message=on) as c:
            await c.subscribe([topic], qos=1)
            ready.put(True)
            while len(times) < n:
                arrived.clear()
                try:
                    await asyncio.wait_for(arrived.wait(), 5.0)
                except TimeoutError:
                    break
        out.put((len(times), times[0] if times else 0, times[-1] if times else 0))

    run_batched(main())


def _blaster(url: str, path: str, n: int, qos: int, size: int, ready: Any, go: Any, out: Any) -> None:
    """Publish ``n`` messages on the raw client as fast as it writes them: valid setpoints built by a
    gateway (``path`` 'gateway'), or opaque payloads of ``size`` bytes ('raw'); put the first publish ns."""

    async def main() -> None:
        spec = BrokerSpec.parse(url)
        topic = topic_for(TSO, "delta_setpoint", BSP)
        if path == "gateway":
            builder = Gateway(TSO, spec, policy=policy(qos))  # only builds: never connected
            payloads = [builder.build(setpoint(k), BSP, valid_for_s=VALID_S)[1] for k in range(n)]
        else:
            payloads = [b"x" * size] * n
        async with MqttConnection(spec, f"tp-blaster-{uuid.uuid4().hex[:6]}", on_message=lambda m: None) as c:
            ready.put(True)
            go.wait()
            first = time.time_ns()
            for p in payloads:
                if not c.ready(qos):
                    await c.wait_ready(qos)
                c.publish(topic, p, qos)
            await c.drained()
            out.put(first)
            await asyncio.sleep(0.5)

    run_batched(main())


# --- this process -------------------------------------------------------------------------------------


async def _send(url: str, path: str, n: int, qos: int, log_dir: Path) -> tuple[int, int, int]:
    """This process sends; another counts. Returns (arrived, first publish ns, last arrival ns)."""
    ctx = mp.get_context("spawn")
    ready, out = ctx.Queue(), ctx.Queue()
    topic = topic_for(TSO, "delta_setpoint", BSP)
    proc = ctx.Process(target=_counter, args=(url, topic, n, ready, out), daemon=True)
    proc.start()
    await asyncio.to_thread(ready.get, True, 120)
    spec = BrokerSpec.parse(url)
    with ExchangeLog(log_dir / f"send-{path}-{qos}.sqlite", run_id="bench-throughput") as log:
        if path == "gateway":
            async with Gateway(TSO, spec, log=log, policy=policy(qos)) as gw:
                bodies = [setpoint(k) for k in range(n)]
                first = time.time_ns()
                for body in bodies:
                    await gw.publish(body, BSP, valid_for_s=VALID_S)
        else:
            size = len(Gateway(TSO, spec).build(setpoint(0), BSP, valid_for_s=VALID_S)[1])
            payload = b"x" * size
            async with MqttConnection(spec, "tp-raw-sender", on_message=lambda m: None) as c:
                first = time.time_ns()
                for _ in range(n):
                    if not c.ready(qos):
                        await c.wait_ready(qos)
                    c.publish(topic, payload, qos)
                await c.drained()
    count, _, last = await asyncio.to_thread(out.get, True, 120)
    proc.join(10)
    return count, first, last


async def _receive(url: str, path: str, n: int, qos: int, log_dir: Path) -> tuple[int, int, int]:
    """Another process sends; this one receives (the gateway with every check, or the raw client).
    Returns (taken, first publish ns, last taken ns)."""
    ctx = mp.get_context("spawn")
    ready, go, out = ctx.Queue(), ctx.Event(), ctx.Queue()
    spec = BrokerSpec.parse(url)
    size = len(Gateway(TSO, spec).build(setpoint(0), BSP, valid_for_s=VALID_S)[1])
    proc = ctx.Process(target=_blaster, args=(url, path, n, qos, size, ready, go, out), daemon=True)
    proc.start()
    await asyncio.to_thread(ready.get, True, 120)
    times: list[int] = []
    done = asyncio.Event()

    def take(_: Any) -> None:
        times.append(time.time_ns())
        if len(times) >= n:
            done.set()

    with ExchangeLog(log_dir / f"receive-{path}-{qos}.sqlite", run_id="bench-throughput") as log:
        if path == "gateway":
            gw = Gateway(BSP, spec, log=log, policy=policy(qos))
            gw.on(DeltaSetpoint, take)
            async with gw:
                await _taken(go, done, times)
        else:
            async with MqttConnection(spec, "tp-raw-receiver", on_message=take) as c:
                await c.subscribe([topic_for(TSO, "delta_setpoint", BSP)], qos=qos)
                await _taken(go, done, times)
    first = await asyncio.to_thread(out.get, True, 120)
    proc.join(10)
    return len(times), first, times[-1] if times else first


async def _taken(go: Any, done: asyncio.Event, times: list[int]) -> None:
    go.set()
    while not done.is_set():
        seen = len(times)
        try:
            await asyncio.wait_for(done.wait(), 5.0)
        except TimeoutError:
            if len(times) == seen:
                return  # nothing more for 5 s: the rest is lost


def step_costs(n: int = 20_000) -> dict[str, float]:
    """µs per message of each step of the gateway, alone (no broker): build (envelope + serialisation),
    log (the exchange-log row), check (every check on arrival) and dispatch (log row, handler). The
    collector is off while a step is timed, as a run keeps it off the hot path (``gc.freeze``): here
    the messages of all ``n`` steps are held at once, which a run never does."""
    with tempfile.TemporaryDirectory() as tmp:
        log = ExchangeLog(Path(tmp) / "steps.sqlite", run_id="steps")
        gw = Gateway(TSO, "memory://steps", log=log, policy=policy())
        receiver = Gateway(BSP, "memory://steps", log=log, policy=policy())
        receiver.on(DeltaSetpoint, lambda msg: None)
        check = ArrivalCheck(BSP, default_rights(), policy=policy())
        topic = topic_for(TSO, "delta_setpoint", BSP)
        bodies = [setpoint(k) for k in range(n)]
        out: dict[str, float] = {}
        gc.collect()
        gc.disable()
        t0 = time.perf_counter()
        built = [gw._make(b, BSP, valid_for_s=VALID_S) for b in bodies]  # as publish makes them
        out["build_us"] = (time.perf_counter() - t0) / n * 1e6
        env = built[0].envelope
        t0 = time.perf_counter()
        for made in built:
            gw._record_out(made, 1, 0, None)
        out["log_out_us"] = (time.perf_counter() - t0) / n * 1e6
        now = gw.now_us()
        t0 = time.perf_counter()
        checked = [check.check(topic, made.payload, now) for made in built]
        out["check_us"] = (time.perf_counter() - t0) / n * 1e6
        t0 = time.perf_counter()
        for msg in checked:
            receiver._deliver(msg, 1)
        out["dispatch_us"] = (time.perf_counter() - t0) / n * 1e6
        t0 = time.perf_counter()
        for _ in range(n):
            encode(env, bodies[0])
        out["of_build_serialise_us"] = (time.perf_counter() - t0) / n * 1e6
        gc.enable()
        log.close()
    return {k: round(v, 2) for k, v in out.items()}


def run_throughput(broker_url: str, *, n: int = 20_000) -> dict[str, Any]:
    rows: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for qos in (0, 1):
            for direction, fn in (("send", _send), ("receive", _receive)):
                for path in ("raw", "gateway"):
                    got, first, last = run_batched(fn(broker_url, path, n, qos, Path(tmp)))
                    rate = got / ((last - first) / 1e9) if last > first else 0.0
                    rows[f"{direction}_{path}_qos{qos}"] = {"msg_per_s": round(rate), "arrived": got, "lost": n - got}
    steps = step_costs()
    goals = {
        "qos0": min(rows["send_gateway_qos0"]["msg_per_s"], rows["receive_gateway_qos0"]["msg_per_s"]) >= 20_000,
        "qos1": min(rows["send_gateway_qos1"]["msg_per_s"], rows["receive_gateway_qos1"]["msg_per_s"]) >= 10_000,
        "qos1_lost": rows["send_gateway_qos1"]["lost"] == 0 and rows["receive_gateway_qos1"]["lost"] == 0,
    }
    return {
        "benchmark": "throughput",
        "n": n,
        "rows": rows,
        "steps_us": steps,
        "goals_met": goals,
        "goal": ">= 20 000/s QoS 0 and >= 10 000/s QoS 1 through the gateway, each way, 0 lost at QoS 1",
        "broker": broker_url,
        "machine": f"{platform.machine()}, {platform.python_implementation()} {platform.python_version()}, "
        f"{platform.system()} {platform.release()}",
    }
