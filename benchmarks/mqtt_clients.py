"""Which MQTT client should the gateway stand on? Each candidate, raw (no gateway), through the project's
Mosquitto (``set_tcp_nodelay true``) on loopback, TCP_NODELAY on every client:

- round trip: a ~600-byte QoS 1 request, echoed as a ~570-byte QoS 1 response by a second client of the
  same library in the same process; p50 / p99 over ``--n`` round trips, after 200 of warm-up;
- throughput: ``--count`` messages of 600 bytes published as fast as the library takes them, by one
  client to another in the same process, QoS 0 and QoS 1; messages per second from the first publish to
  the last arrival, and how many arrived.

Candidates: gmqtt (asyncio-native, MQTT 5 and 3.1.1) and aiomqtt 2 (paho-mqtt driven by asyncio, what
the gateway stood on). Only gmqtt is a dependency of the project; aiomqtt is measured where it is
installed (``pip install 'aiomqtt>=2.3,<3'``). Interleaved: each round measures every candidate once;
the table shows the median of ``--rounds`` rounds.

    .venv/bin/python benchmarks/mqtt_clients.py [--n 2000] [--count 20000] [--rounds 3] [--protocol 5|3.1.1]
"""

import argparse
import asyncio
import importlib.util
import socket
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

from tsodso.broker import start_broker
from tsodso.testbed.stats import summary

REQUEST, RESPONSE = b"q" * 600, b"r" * 570
NODELAY = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]


# --- gmqtt --------------------------------------------------------------------------------------------


async def _gmqtt_pair(port: int, v5: bool, tag: str) -> tuple[Any, Any, asyncio.Queue, asyncio.Queue]:
    import gmqtt
    from gmqtt.mqtt.constants import MQTTv50, MQTTv311

    queues: list[asyncio.Queue] = [asyncio.Queue(), asyncio.Queue()]
    clients = []
    for i in range(2):
        c = gmqtt.Client(f"bench-gmqtt-{tag}-{i}")
        c.on_message = lambda _c, topic, payload, qos, props, q=queues[i]: q.put_nowait(payload) or 0
        await c.connect("127.0.0.1", port, version=MQTTv50 if v5 else MQTTv311)  # asyncio sets TCP_NODELAY
        clients.append(c)
    return clients[0], clients[1], queues[0], queues[1]


async def gmqtt_rtt(port: int, v5: bool, n: int) -> list[float]:
    req, rep, req_q, rep_q = await _gmqtt_pair(port, v5, "rtt")
    req.subscribe("bench/rep", qos=1)
    rep.subscribe("bench/req", qos=1)
    await asyncio.sleep(0.2)  # SUBACKs

    async def echo() -> None:
        while True:
            await rep_q.get()
            rep.publish("bench/rep", RESPONSE, qos=1)

    task = asyncio.create_task(echo())
    out = []
    for i in range(n + 200):
        t0 = time.perf_counter()
        req.publish("bench/req", REQUEST, qos=1)
        await asyncio.wait_for(req_q.get(), 5)
        if i >= 200:
            out.append((time.perf_counter() - t0) * 1000)
    task.cancel()
    await req.disconnect()
    await rep.disconnect()
    return out


async def gmqtt_throughput(port: int, v5: bool, count: int, qos: int) -> tuple[float, int]:
    pub, sub, _, sub_q = await _gmqtt_pair(port, v5, f"tp{qos}")
    sub.subscribe("bench/tp", qos=qos)
    await asyncio.sleep(0.2)
    t0 = time.perf_counter()
    for i in range(count):
        pub.publish("bench/tp", REQUEST, qos=qos)
        if i % 100 == 99:
            await asyncio.sleep(0)  # let the socket drain and the PUBACKs in, as a sender's loop would
    got = await _drain(sub_q, count)
    elapsed = time.perf_counter() - t0
    await pub.disconnect()
    await sub.disconnect()
    return count / elapsed, got


# --- aiomqtt 2 ----------------------------------------------------------------------------------------


def _aiomqtt(port: int, v5: bool, ident: str) -> Any:
    import aiomqtt

    version = aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311
    return aiomqtt.Client(
        "127.0.0.1", port, identifier=ident, protocol=version, socket_options=NODELAY, max_inflight_messages=1000
    )


async def aiomqtt_rtt(port: int, v5: bool, n: int) -> list[float]:
    async with _aiomqtt(port, v5, "bench-aio-req") as req, _aiomqtt(port, v5, "bench-aio-rep") as rep:
        await req.subscribe("bench/rep", qos=1)
        await rep.subscribe("bench/req", qos=1)

        async def echo() -> None:
            async for _ in rep.messages:
                await rep.publish("bench/rep", RESPONSE, qos=1)

        task = asyncio.create_task(echo())
        it = req.messages.__aiter__()
        out = []
        for i in range(n + 200):
            t0 = time.perf_counter()
            await req.publish("bench/req", REQUEST, qos=1)
            await asyncio.wait_for(it.__anext__(), 5)
            if i >= 200:
                out.append((time.perf_counter() - t0) * 1000)
        task.cancel()
    return out


async def aiomqtt_throughput(port: int, v5: bool, count: int, qos: int) -> tuple[float, int]:
    async with _aiomqtt(port, v5, f"bench-aio-pub{qos}") as pub, _aiomqtt(port, v5, f"bench-aio-sub{qos}") as sub:
        await sub.subscribe("bench/tp", qos=qos)
        q: asyncio.Queue = asyncio.Queue()

        async def read() -> None:
            async for m in sub.messages:
                q.put_nowait(m.payload)

        task = asyncio.create_task(read())
        t0 = time.perf_counter()
        # aiomqtt's publish waits for the PUBACK (QoS 1) or the write: 100 at a time, as a sender would
        for start in range(0, count, 100):
            await asyncio.gather(*(pub.publish("bench/tp", REQUEST, qos=qos) for _ in range(min(100, count - start))))
        got = await _drain(q, count)
        elapsed = time.perf_counter() - t0
        task.cancel()
    return count / elapsed, got


async def _drain(q: asyncio.Queue, count: int, idle_s: float = 2.0) -> int:
    got = 0
    while got < count:
        try:
            await asyncio.wait_for(q.get(), idle_s)
        except TimeoutError:
            break
        got += 1
    return got


Candidate = tuple[Callable[..., Awaitable[list[float]]], Callable[..., Awaitable[tuple[float, int]]]]
CANDIDATES: dict[str, tuple[str, Candidate]] = {
    "gmqtt": ("gmqtt", (gmqtt_rtt, gmqtt_throughput)),
    "aiomqtt 2 (paho on asyncio)": ("aiomqtt", (aiomqtt_rtt, aiomqtt_throughput)),
}


async def measure(port: int, v5: bool, n: int, count: int, rounds: int) -> dict[str, dict[str, Any]]:
    found = {name: fns for name, (module, fns) in CANDIDATES.items() if importlib.util.find_spec(module)}
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in found}
    for _ in range(rounds):
        for name, (rtt, throughput) in found.items():
            s = summary(await rtt(port, v5, n))
            q0, got0 = await throughput(port, v5, count, 0)
            q1, got1 = await throughput(port, v5, count, 1)
            runs[name].append({"p50": s["p50"], "p99": s["p99"], "qos0": q0, "qos1": q1, "lost": count - got1})
    return {
        name: {k: statistics.median(r[k] for r in rs) for k in ("p50", "p99", "qos0", "qos1", "lost")}
        for name, rs in runs.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--count", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--protocol", choices=["5", "3.1.1"], default="5")
    args = parser.parse_args()
    with start_broker("mosquitto") as broker:
        results = asyncio.run(measure(broker.port, args.protocol == "5", args.n, args.count, args.rounds))
    print(f"Mosquitto (set_tcp_nodelay true), loopback, MQTT {args.protocol}, median of {args.rounds} rounds")
    print("| client | round trip p50 ms | p99 ms | QoS 0 msg/s | QoS 1 msg/s | QoS 1 lost |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, r in results.items():
        print(f"| {name} | {r['p50']:.3f} | {r['p99']:.3f} | {r['qos0']:,.0f} | {r['qos1']:,.0f} | {r['lost']:.0f} |")


if __name__ == "__main__":
    main()
