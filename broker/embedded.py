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
- amqtt keeps sessions in memory, so a restart would lose the subscriptions of persistent sessions,
  the QoS 1 messages queued for absent actors and the retained messages. With ``--store FILE`` the
  embedded broker keeps them in SQLite (written when they change, off the path of messages to
  connected clients) and restores them before it listens again. amqtt's own SessionDBPlugin was
  not used: it writes each queued message in a concurrent read-modify-write of a JSON list (lost
  updates) and never deletes delivered messages (replayed after every restart).

    python -m broker.embedded --port 1883
"""

import argparse
import asyncio
import logging
import signal
import sqlite3
import sys


def config(host: str, port: int) -> dict:
    return {
        "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}", "max_connections": 0}},
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": False}},
    }


STORE_SCHEMA = """
CREATE TABLE IF NOT EXISTS subscriptions (client_id TEXT, filter TEXT, qos INTEGER, PRIMARY KEY (client_id, filter));
CREATE TABLE IF NOT EXISTS queued (id INTEGER PRIMARY KEY, client_id TEXT, topic TEXT, data BLOB, qos INTEGER);
CREATE TABLE IF NOT EXISTS retained (topic TEXT PRIMARY KEY, data BLOB, qos INTEGER);
"""


def _broker_class() -> type:
    from amqtt.broker import Broker, RetainedApplicationMessage

    class EmbeddedBroker(Broker):
        def __init__(self, config: dict, store: str | None = None) -> None:
            super().__init__(config)
            self._store = None
            if store:
                self._store = sqlite3.connect(store, isolation_level=None)
                self._store.execute("PRAGMA journal_mode=WAL")
                self._store.executescript(STORE_SCHEMA)

        @staticmethod
        def _persistent(session) -> bool:  # noqa: ANN001
            return not session.clean_session and not session.is_anonymous

        async def _publish_retained_messages_for_subscription(self, subscription, session) -> None:  # noqa: ANN001
            subscribers = self._subscriptions.get(subscription[0], ())
            if any(s is session for s, _ in subscribers):
                await super()._publish_retained_messages_for_subscription(subscription, session)

        async def _start_listeners(self) -> None:
            if self._store is not None:
                await self._restore()
            await super()._start_listeners()

        async def _restore(self) -> None:
            db = self._store
            sessions = {}
            for client_id, flt, qos in db.execute("SELECT client_id, filter, qos FROM subscriptions"):
                if client_id not in sessions:
                    handler, session = self.create_offline_session(client_id)
                    session.clean_session = False
                    self._sessions[client_id] = (session, handler)
                    sessions[client_id] = session
                await super().add_subscription((flt, qos), sessions[client_id])
            for client_id, topic, data, qos in db.execute("SELECT client_id, topic, data, qos FROM queued ORDER BY id"):
                if client_id in sessions:
                    await sessions[client_id].retained_messages.put(RetainedApplicationMessage(None, topic, data, qos))
            for topic, data, qos in db.execute("SELECT topic, data, qos FROM retained"):
                self._retained_messages[topic] = RetainedApplicationMessage(None, topic, data, qos)

        async def add_subscription(self, subscription, session) -> int:  # noqa: ANN001
            granted = await super().add_subscription(subscription, session)
            if self._store is not None and granted != 0x80 and self._persistent(session):
                self._store.execute("INSERT OR REPLACE INTO subscriptions VALUES (?, ?, ?)",
                                    (session.client_id, subscription[0], granted))  # fmt: skip
            return granted

        async def _delete_session(self, client_id: str) -> None:
            await super()._delete_session(client_id)
            if self._store is not None:
                self._store.execute("DELETE FROM subscriptions WHERE client_id = ?", (client_id,))
                self._store.execute("DELETE FROM queued WHERE client_id = ?", (client_id,))

        async def _retain_broadcast_message(self, broadcast, qos, target_session) -> None:  # noqa: ANN001
            await super()._retain_broadcast_message(broadcast, qos, target_session)
            if self._store is not None:
                self._store.execute("INSERT INTO queued (client_id, topic, data, qos) VALUES (?, ?, ?, ?)",
                                    (target_session.client_id, broadcast["topic"], bytes(broadcast["data"]), qos))  # fmt: skip

        async def _publish_session_retained_messages(self, session) -> None:  # noqa: ANN001
            await super()._publish_session_retained_messages(session)
            if self._store is not None:
                self._store.execute("DELETE FROM queued WHERE client_id = ?", (session.client_id,))

        async def retain_message(self, source_session, topic_name, data, qos=None) -> None:  # noqa: ANN001
            await super().retain_message(source_session, topic_name, data, qos)
            if self._store is not None and topic_name is not None:
                if data:
                    self._store.execute("INSERT OR REPLACE INTO retained VALUES (?, ?, ?)",
                                        (topic_name, bytes(data), qos or 0))  # fmt: skip
                else:
                    self._store.execute("DELETE FROM retained WHERE topic = ?", (topic_name,))

    return EmbeddedBroker


async def serve(host: str, port: int, ready: asyncio.Event | None = None, store: str | None = None) -> None:
    """Run the broker until cancelled; ``store``: SQLite file that keeps sessions across restarts."""
    broker = _broker_class()(config(host, port), store)
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
    parser.add_argument("--store", help="SQLite file keeping sessions, queued and retained messages across restarts")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    for noisy in ("amqtt", "transitions"):
        logging.getLogger(noisy).setLevel(logging.ERROR)

    async def run() -> None:
        ready = asyncio.Event()
        task = asyncio.create_task(serve(args.host, args.port, ready, args.store))
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
