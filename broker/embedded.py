"""The embedded broker: amqtt (pure Python, MQTT 3.1.1), installed by pip with the project.

Why amqtt: measured on this project's machines (BENCHMARKS.md), a QoS 1 request/response through
amqtt takes ~1.3 ms p50 on loopback, while iotcore (rumqttd, MQTT 5) stalls every one ~44 ms
(Nagle + delayed ACK, no TCP_NODELAY option). amqtt speaks MQTT 3.1.1 only, so gateways talk to it
in 3.1.1 mode: correlation and expiry travel in the envelope. asyncio sets TCP_NODELAY on every
socket it accepts, so the broker side needs no option.

Two amqtt behaviours are handled here:
- amqtt queues QoS 1 messages for an offline persistent session only when the client is not
  anonymous. The broker therefore requires a username (any; there are no passwords), and the
  gateway always sends one (its client id).
- On every connect amqtt 0.12 sends the connecting client the retained messages matching *every*
  client's subscriptions, not only its own. :class:`EmbeddedBroker` sends only those of its own.

    python -m broker.embedded --port 1883
"""

import argparse
import asyncio
import logging
import signal
import sys


def config(host: str, port: int) -> dict:
    return {
        "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}", "max_connections": 0}},
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": False}},
    }


def _broker_class() -> type:
    from amqtt.broker import Broker

    class EmbeddedBroker(Broker):
        async def _publish_retained_messages_for_subscription(self, subscription, session) -> None:  # noqa: ANN001
            subscribers = self._subscriptions.get(subscription[0], ())
            if any(s is session for s, _ in subscribers):
                await super()._publish_retained_messages_for_subscription(subscription, session)

    return EmbeddedBroker


async def serve(host: str, port: int, ready: asyncio.Event | None = None) -> None:
    """Run the broker until cancelled."""
    broker = _broker_class()(config(host, port))
    await broker.start()
    if ready is not None:
        ready.set()
    try:
        await asyncio.Event().wait()
    finally:
        await broker.shutdown()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m broker.embedded", description="Run the embedded MQTT broker.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1883)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    for noisy in ("amqtt", "transitions"):
        logging.getLogger(noisy).setLevel(logging.ERROR)

    async def run() -> None:
        ready = asyncio.Event()
        task = asyncio.create_task(serve(args.host, args.port, ready))
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        await ready.wait()
        print(f"embedded broker (amqtt, MQTT 3.1.1) listening on mqtt://{args.host}:{args.port}?protocol=3.1.1",
              flush=True)
        try:
            await task
        except asyncio.CancelledError:
            pass

    asyncio.run(run())
    sys.exit(0)


if __name__ == "__main__":
    main()
