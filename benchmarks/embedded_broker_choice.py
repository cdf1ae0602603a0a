"""Which broker can the testbed embed? Through each candidate on loopback: raw aiomqtt QoS 1
request/response p50/p99 (TCP_NODELAY on the clients), and how long after a client goes silent
(socket open, nothing sent, keepalive 2 s) its will arrives. amqtt and iotcore are measured when
installed (`pip install amqtt iotcore`); neither is a dependency of the project. Redelivery on
session resume is checked by Eclipse paho.mqtt.testing (`benchmarks/paho_interop.py`).

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

from tsodso.broker import free_port, start_broker, wait_for_port
from tsodso.testbed.stats import summary

NODELAY = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]


async def rtt(port: int, protocol: aiomqtt.ProtocolVersion, n: int) -> dict:
    def client(ident: str) -> aiomqtt.Client:
        return aiomqtt.Client(
            "127.0.0.1", port, identifier=ident, username=ident, protocol=protocol, socket_options=NODELAY
        )

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


async def will_delay(port: int, keepalive_s: int = 2, limit_s: float = 20.0) -> float | None:
    """Seconds from a client's last packet (its CONNECT) to its will reaching a watcher, or None."""
    from tsodso.broker import mqtt311 as m

    async with aiomqtt.Client(
        "127.0.0.1", port, identifier="cand-watch", username="cand-watch", protocol=aiomqtt.ProtocolVersion.V311
    ) as watch:
        await watch.subscribe("cand/will", qos=1)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            m.connect(
                "cand-silent",
                username="cand-silent",
                keepalive_s=keepalive_s,
                will=m.Will("cand/will", b"gone", 1, False),
            )
        )
        await reader.readexactly(4)  # CONNACK; from now on the client says nothing
        t0 = time.monotonic()
        try:
            async with asyncio.timeout(limit_s):
                async for _ in watch.messages:
                    return time.monotonic() - t0
        except TimeoutError:
            return None
        finally:
            writer.transport.abort()
    return None


def _start_module(args: list[str]) -> tuple[subprocess.Popen, int]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, *[a.replace("{port}", str(port)) for a in args]],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for_port("127.0.0.1", port, proc=proc)
    return proc, port


AMQTT = (
    "-c",
    "import asyncio; from amqtt.broker import Broker\n"
    "async def main():\n"
    "    b = Broker({'listeners': {'default': {'type': 'tcp', 'bind': '127.0.0.1:{port}'}},"
    " 'plugins': {'amqtt.plugins.authentication.AnonymousAuthPlugin': {'allow_anonymous': True}}})\n"
    "    await b.start(); await asyncio.Event().wait()\n"
    "asyncio.run(main())",
)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=300)
    n = parser.parse_args().n
    rows = []
    v311, v5 = aiomqtt.ProtocolVersion.V311, aiomqtt.ProtocolVersion.V5
    with start_broker("embedded") as b:
        rows.append(
            ("embedded (broker.embedded)", "3.1.1", asyncio.run(rtt(b.port, v311, n)), asyncio.run(will_delay(b.port)))
        )
    with start_broker("mosquitto") as b:
        rows.append(
            ("mosquitto (project config)", "5", asyncio.run(rtt(b.port, v5, n)), asyncio.run(will_delay(b.port)))
        )
    optional = (
        ("amqtt", "amqtt", list(AMQTT)),
        ("iotcore (rumqttd)", "iotcore", ["-m", "iotcore", "--port", "{port}", "--listen", "127.0.0.1"]),
    )
    for name, module, args in optional:
        if importlib.util.find_spec(module):
            proc, port = _start_module(args)
            try:
                rows.append((name, "3.1.1", asyncio.run(rtt(port, v311, n)), asyncio.run(will_delay(port))))
            finally:
                proc.terminate()
    for name, proto, s, will in rows:
        after = f"{will:5.1f} s" if will is not None else "never (20 s)"
        print(
            f"{name:30s} MQTT {proto:5s} p50 {s['p50']:7.3f} ms  p99 {s['p99']:7.3f} ms  (n={s['count']})  "
            f"will after silence (keepalive 2 s): {after}"
        )


if __name__ == "__main__":
    main()
