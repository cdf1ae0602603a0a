"""Which broker can the testbed embed? Raw aiomqtt QoS 1 request/response p50 on loopback through
each candidate, with TCP_NODELAY on the clients. iotcore is measured when installed
(`pip install iotcore`); it is not a dependency of the project.

    .venv/bin/python benchmarks/embedded_broker_choice.py [--n 300]
"""

import argparse
import asyncio
import importlib.util
import socket
import subprocess
import sys
import time

import aiomqtt

from broker import free_port, start_broker, wait_for_port
from testbed.stats import summary

NODELAY = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]


async def rtt(port: int, protocol: aiomqtt.ProtocolVersion, n: int) -> dict:
    def client(ident: str) -> aiomqtt.Client:
        return aiomqtt.Client("127.0.0.1", port, identifier=ident, username=ident, protocol=protocol,
                              socket_options=NODELAY)  # fmt: skip

    async with client("cand-req") as req, client("cand-rep") as rep:
        await req.subscribe("cand/rep", qos=1)
        await rep.subscribe("cand/req", qos=1)

        async def echo() -> None:
            async for m in rep.messages:
                await rep.publish("cand/rep", m.payload, qos=1)

        task = asyncio.create_task(echo())
        it = req.messages.__aiter__()
        out = []
        for _ in range(n):
            t0 = time.perf_counter()
            await req.publish("cand/req", b"x" * 600, qos=1)
            await asyncio.wait_for(it.__anext__(), 5)
            out.append((time.perf_counter() - t0) * 1000)
        task.cancel()
    return summary(out)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=300)
    n = parser.parse_args().n
    rows = []
    with start_broker("embedded") as b:
        rows.append(("embedded (broker.embedded)", "3.1.1", asyncio.run(rtt(b.port, aiomqtt.ProtocolVersion.V311, n))))
    with start_broker("mosquitto") as b:
        rows.append(("mosquitto (project config)", "5", asyncio.run(rtt(b.port, aiomqtt.ProtocolVersion.V5, n))))
    if importlib.util.find_spec("iotcore"):
        port = free_port()
        proc = subprocess.Popen([sys.executable, "-m", "iotcore", "--port", str(port), "--listen", "127.0.0.1"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        try:
            wait_for_port("127.0.0.1", port, proc=proc)
            rows.append(("iotcore (rumqttd)", "3.1.1", asyncio.run(rtt(port, aiomqtt.ProtocolVersion.V311, n))))
        finally:
            proc.terminate()
    for name, proto, s in rows:
        print(f"{name:30s} MQTT {proto:5s} p50 {s['p50']:7.3f} ms  p99 {s['p99']:7.3f} ms  (n={s['count']})")


if __name__ == "__main__":
    main()
