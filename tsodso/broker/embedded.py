"""The embedded broker: a small MQTT 3.1.1 broker in pure Python (asyncio), installed with the project.

    python -m tsodso.broker.embedded --port 1883 [--store FILE]

Why the project's own: the testbed needs an embedded broker that installs with pip, keeps no daemon,
sets TCP_NODELAY, and behaves as the standard says where the testbed's guarantees depend on it. The
candidates measured here (BENCHMARKS.md, ``benchmarks/paho_interop.py`` with Eclipse
paho.mqtt.testing) fell short: amqtt 0.12 never drops a client that goes silent (no will) and
forgets an unacknowledged QoS 1 message when its session resumes; iotcore (rumqttd) fails the
suite's set-up and stalls each QoS 1 hop ~44 ms without TCP_NODELAY; moat-mqtt does not install
cleanly; moat-lib-mqtt has no will and no keepalive. This broker does what the testbed relies on:

- keepalive: a client silent for 1.5 x its keepalive is dropped and its will published (§3.1.2.10);
- persistent sessions: subscriptions kept, QoS 1/2 messages queued while the client is away, and
  every message sent but not acknowledged sent again (DUP) when the session resumes (§4.4);
- retained messages, wills (published on any end but DISCONNECT, a take-over included), QoS 0/1/2
  delivered at min(published, granted) QoS, '+' and '#' wildcards ('$' topics apart, §4.7.2);
- ``--store FILE``: persistent sessions' subscriptions, the messages queued for absent clients and
  the retained messages survive a restart (SQLite, written as they change).

It speaks MQTT 3.1.1 only (gateways use ``?protocol=3.1.1``), lets any client in (bind it to
loopback; use Mosquitto or NATS with ``tsodso secure init`` for access control), and refuses packets
over 2 MiB. The wire format is ``broker.mqtt311``.
"""

import argparse
import asyncio
import itertools
import logging
import signal
import socket
import sqlite3
import sys
import uuid
from collections import OrderedDict, deque
from dataclasses import dataclass, field

from tsodso.broker import mqtt311 as m

log = logging.getLogger("broker.embedded")

MAX_PACKET_BYTES = 2 * 1024 * 1024
MAX_QUEUED = 100_000  # messages kept for one absent client; the oldest go first beyond it
MAX_WRITE_BUFFER = 16 * 1024 * 1024  # a client this far behind is dropped
CONNECT_TIMEOUT_S = 10.0

STORE_SCHEMA = """
CREATE TABLE IF NOT EXISTS subscriptions (client_id TEXT, filter TEXT, qos INTEGER, PRIMARY KEY (client_id, filter));
CREATE TABLE IF NOT EXISTS queued (id INTEGER PRIMARY KEY, client_id TEXT, topic TEXT, data BLOB, qos INTEGER);
CREATE TABLE IF NOT EXISTS retained (topic TEXT PRIMARY KEY, data BLOB, qos INTEGER);
"""


@dataclass
class Message:
    topic: str
    payload: bytes
    qos: int


@dataclass
class Outgoing:
    message: Message
    released: bool = False  # QoS 2: PUBREC received, PUBREL sent, waiting for PUBCOMP


@dataclass
class Session:
    client_id: str
    persistent: bool
    subscriptions: dict[str, int] = field(default_factory=dict)
    queue: deque[Message] = field(default_factory=deque)  # waiting for the client to come back
    inflight: "OrderedDict[int, Outgoing]" = field(default_factory=OrderedDict)  # sent, not yet acknowledged
    received_qos2: set[int] = field(default_factory=set)  # QoS 2 packet ids taken, PUBREL not yet seen
    connection: "Connection | None" = None
    _ids: itertools.count = field(default_factory=lambda: itertools.count(1))

    def next_id(self) -> int:
        while True:
            pid = next(self._ids) % 65536
            if pid and pid not in self.inflight:
                return pid


class TopicTree:
    """Subscriptions by topic filter level: a publish is matched in O(levels), not O(subscriptions)."""

    def __init__(self) -> None:
        self.children: dict[str, TopicTree] = {}
        self.subscribers: dict[str, int] = {}  # client id -> QoS (filters ending here)

    def add(self, flt: str, client_id: str, qos: int) -> None:
        node = self
        for level in flt.split("/"):
            node = node.children.setdefault(level, TopicTree())
        node.subscribers[client_id] = qos

    def remove(self, flt: str, client_id: str) -> None:
        path, node = [], self
        for level in flt.split("/"):
            if level not in node.children:
                return
            path.append((node, level))
            node = node.children[level]
        node.subscribers.pop(client_id, None)
        for parent, level in reversed(path):  # prune empty branches
            child = parent.children[level]
            if child.subscribers or child.children:
                break
            del parent.children[level]

    def match(self, topic: str) -> dict[str, int]:
        """Client id -> the highest QoS of its filters that match ``topic``."""
        out: dict[str, int] = {}
        levels = topic.split("/")
        dollar = topic.startswith("$")

        def walk(node: TopicTree, i: int) -> None:
            wild = not (dollar and i == 0)  # '+' and '#' do not match a first level starting with '$'
            if wild and "#" in node.children:
                for cid, qos in node.children["#"].subscribers.items():
                    out[cid] = max(qos, out.get(cid, 0))
            if i == len(levels):
                for cid, qos in node.subscribers.items():
                    out[cid] = max(qos, out.get(cid, 0))
                return
            child = node.children.get(levels[i])
            if child is not None:
                walk(child, i + 1)
            if wild and "+" in node.children:
                walk(node.children["+"], i + 1)

        walk(self, 0)
        return out


class Store:
    """Persistent sessions, queued and retained messages in SQLite (``--store``)."""

    def __init__(self, path: str):
        self.db = sqlite3.connect(path, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(STORE_SCHEMA)

    def subscribe(self, client_id: str, flt: str, qos: int) -> None:
        self.db.execute("INSERT OR REPLACE INTO subscriptions VALUES (?, ?, ?)", (client_id, flt, qos))

    def unsubscribe(self, client_id: str, flt: str) -> None:
        self.db.execute("DELETE FROM subscriptions WHERE client_id = ? AND filter = ?", (client_id, flt))

    def forget(self, client_id: str) -> None:
        self.db.execute("DELETE FROM subscriptions WHERE client_id = ?", (client_id,))
        self.db.execute("DELETE FROM queued WHERE client_id = ?", (client_id,))

    def queue(self, client_id: str, msg: Message) -> None:
        self.db.execute(
            "INSERT INTO queued (client_id, topic, data, qos) VALUES (?, ?, ?, ?)",
            (client_id, msg.topic, msg.payload, msg.qos),
        )

    def dequeued(self, client_id: str) -> None:
        self.db.execute("DELETE FROM queued WHERE client_id = ?", (client_id,))

    def retain(self, msg: Message) -> None:
        if msg.payload:
            self.db.execute("INSERT OR REPLACE INTO retained VALUES (?, ?, ?)", (msg.topic, msg.payload, msg.qos))
        else:
            self.db.execute("DELETE FROM retained WHERE topic = ?", (msg.topic,))


class Connection:
    """One client's network connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer
        self.session: Session | None = None
        self.will: m.Will | None = None
        self.closed = False
        peer = writer.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)

    def send(self, data: bytes) -> None:
        if self.closed:
            return
        self.writer.write(data)
        if self.writer.transport.get_write_buffer_size() > MAX_WRITE_BUFFER:
            log.warning("client %s too far behind: dropped", self.session and self.session.client_id)
            self.close()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.writer.close()

    async def read_packet(self) -> tuple[int, int, bytes]:
        first = (await self.reader.readexactly(1))[0]
        length, shift = 0, 0
        for _ in range(4):
            byte = (await self.reader.readexactly(1))[0]
            length |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        else:
            raise m.ProtocolError("remaining length longer than 4 bytes")
        if length > MAX_PACKET_BYTES:
            raise m.ProtocolError(f"packet of {length} bytes (at most {MAX_PACKET_BYTES})")
        return first >> 4, first & 0x0F, await self.reader.readexactly(length)


class Broker:
    def __init__(self, store: str | None = None):
        self.sessions: dict[str, Session] = {}
        self.tree = TopicTree()
        self.retained: dict[str, Message] = {}
        self.store = Store(store) if store else None
        if self.store is not None:
            self._restore()

    def _restore(self) -> None:
        db = self.store.db  # type: ignore[union-attr]
        for client_id, flt, qos in db.execute("SELECT client_id, filter, qos FROM subscriptions"):
            session = self.sessions.setdefault(client_id, Session(client_id, persistent=True))
            session.subscriptions[flt] = qos
            self.tree.add(flt, client_id, qos)
        for client_id, topic, data, qos in db.execute("SELECT client_id, topic, data, qos FROM queued ORDER BY id"):
            if client_id in self.sessions:
                self.sessions[client_id].queue.append(Message(topic, bytes(data), qos))
        for topic, data, qos in db.execute("SELECT topic, data, qos FROM retained"):
            self.retained[topic] = Message(topic, bytes(data), qos)

    # --- a client's connection -------------------------------------------------------------

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = Connection(reader, writer)
        clean_end = False
        try:
            kind, _, body = await asyncio.wait_for(conn.read_packet(), CONNECT_TIMEOUT_S)
            if kind != m.CONNECT:
                raise m.ProtocolError("the first packet is not CONNECT")
            connect = m.parse_connect(body)
            if not self._accept(conn, connect):
                return
            timeout = connect.keepalive_s * 1.5 if connect.keepalive_s else None
            while True:
                async with asyncio.timeout(timeout):
                    kind, flags, body = await conn.read_packet()
                if kind == m.DISCONNECT:
                    clean_end = True
                    return
                self._on_packet(conn, kind, flags, body)
        except TimeoutError:
            if conn.session is not None:
                log.warning(
                    "client %s silent for 1.5 x its keepalive: dropped, its will published", conn.session.client_id
                )
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        except m.ProtocolError as exc:
            log.warning("client %s: %s; connection closed", conn.peer, exc)
        finally:
            self._end(conn, clean_end)

    def _accept(self, conn: Connection, connect: m.Connect) -> bool:
        if connect.protocol_level not in (3, 4):
            conn.send(m.connack_v5_unsupported() if connect.protocol_level == 5 else m.connack(False, m.BAD_PROTOCOL))
            return False
        client_id = connect.client_id
        if not client_id:
            if not connect.clean:
                conn.send(m.connack(False, m.BAD_IDENTIFIER))
                return False
            client_id = f"auto-{uuid.uuid4().hex}"
        old = self.sessions.get(client_id)
        if old is not None and old.connection is not None:  # take-over (§3.1.4): the old connection ends
            old.connection.close()
            self._publish_will(old.connection)
            old.connection.session = None
            old.connection = None
        if connect.clean or old is None or not old.persistent:
            if old is not None:
                self._drop_session(old)
            session = self.sessions[client_id] = Session(client_id, persistent=not connect.clean)
            present = False
        else:
            session, present = old, True
        session.connection, conn.session, conn.will = conn, session, connect.will
        conn.send(m.connack(present, m.ACCEPTED))
        for pid, out in session.inflight.items():  # sent before, never acknowledged: again (§4.4)
            msg = out.message
            conn.send(
                m.ack(m.PUBREL, pid)
                if out.released
                else m.publish(msg.topic, msg.payload, msg.qos, False, pid, dup=True)
            )
        if session.queue:
            queued, session.queue = session.queue, deque()
            for msg in queued:
                self._deliver(session, msg, msg.qos)
            if self.store is not None:
                self.store.dequeued(client_id)
        return True

    def _end(self, conn: Connection, clean: bool) -> None:
        conn.close()
        session = conn.session
        if session is None:
            return  # refused, or taken over
        if not clean:
            self._publish_will(conn)
        session.connection = None
        conn.session = None
        if not session.persistent:
            self._drop_session(session)

    def _drop_session(self, session: Session) -> None:
        for flt in session.subscriptions:
            self.tree.remove(flt, session.client_id)
        if self.sessions.get(session.client_id) is session:
            del self.sessions[session.client_id]
        if self.store is not None and session.persistent:
            self.store.forget(session.client_id)

    def _publish_will(self, conn: Connection) -> None:
        will, conn.will = conn.will, None
        if will is not None:
            self.route(Message(will.topic, will.payload, will.qos), will.retain)

    # --- packets ----------------------------------------------------------------------------

    def _on_packet(self, conn: Connection, kind: int, flags: int, body: bytes) -> None:
        session = conn.session
        assert session is not None
        if kind == m.PUBLISH:
            topic, payload, qos, retain, pid = m.parse_publish(flags, body)
            if qos == 2:
                conn.send(m.ack(m.PUBREC, pid))  # type: ignore[arg-type]
                if pid in session.received_qos2:
                    return  # a copy of one already taken (§4.3.3)
                session.received_qos2.add(pid)  # type: ignore[arg-type]
            self.route(Message(topic, payload, qos), retain)
            if qos == 1:
                conn.send(m.ack(m.PUBACK, pid))  # type: ignore[arg-type]
        elif kind == m.PUBREL:
            pid = m.Reader(body).u16()
            session.received_qos2.discard(pid)
            conn.send(m.ack(m.PUBCOMP, pid))
        elif kind == m.PUBACK or kind == m.PUBCOMP:
            session.inflight.pop(m.Reader(body).u16(), None)
        elif kind == m.PUBREC:
            pid = m.Reader(body).u16()
            out = session.inflight.get(pid)
            if out is not None:
                out.released = True
            conn.send(m.ack(m.PUBREL, pid))
        elif kind == m.SUBSCRIBE:
            self._subscribe(conn, session, body)
        elif kind == m.UNSUBSCRIBE:
            pid, filters = m.parse_unsubscribe(body)
            for flt in filters:
                if session.subscriptions.pop(flt, None) is not None:
                    self.tree.remove(flt, session.client_id)
                    if self.store is not None and session.persistent:
                        self.store.unsubscribe(session.client_id, flt)
            conn.send(m.ack(m.UNSUBACK, pid))
        elif kind == m.PINGREQ:
            conn.send(m.packet(m.PINGRESP, 0, b""))
        else:
            raise m.ProtocolError(f"unexpected packet type {kind}")

    def _subscribe(self, conn: Connection, session: Session, body: bytes) -> None:
        pid, filters = m.parse_subscribe(body)
        granted = []
        for flt, qos in filters:
            if not m.valid_filter(flt):
                granted.append(0x80)
                continue
            session.subscriptions[flt] = qos
            self.tree.add(flt, session.client_id, qos)
            if self.store is not None and session.persistent:
                self.store.subscribe(session.client_id, flt, qos)
            granted.append(qos)
        conn.send(m.suback(pid, granted))
        for (flt, qos), code in zip(filters, granted):  # the retained messages the new filters match (§3.3.1.3)
            if code == 0x80:
                continue
            one = TopicTree()
            one.add(flt, "-", qos)
            for msg in list(self.retained.values()):
                if one.match(msg.topic):
                    self._deliver(session, msg, min(msg.qos, qos), retain=True)

    # --- routing ----------------------------------------------------------------------------

    def route(self, msg: Message, retain: bool = False) -> None:
        """A published message to every matching subscription (and, retained, kept for later ones)."""
        if retain:
            if msg.payload:
                self.retained[msg.topic] = msg
            else:
                self.retained.pop(msg.topic, None)
            if self.store is not None:
                self.store.retain(msg)
            if not msg.payload:
                return  # clearing a retained message is not delivered as a message (§3.3.1.3)
        for client_id, granted in self.tree.match(msg.topic).items():
            session = self.sessions.get(client_id)
            if session is not None:
                self._deliver(session, msg, min(msg.qos, granted))

    def _deliver(self, session: Session, msg: Message, qos: int, *, retain: bool = False) -> None:
        conn = session.connection
        if conn is None or conn.closed:
            if session.persistent and qos > 0:
                if len(session.queue) >= MAX_QUEUED:
                    session.queue.popleft()
                queued = Message(msg.topic, msg.payload, qos)
                session.queue.append(queued)
                if self.store is not None:
                    self.store.queue(session.client_id, queued)
            return
        if qos == 0:
            conn.send(m.publish(msg.topic, msg.payload, 0, retain, None))
            return
        pid = session.next_id()
        session.inflight[pid] = Outgoing(Message(msg.topic, msg.payload, qos))
        conn.send(m.publish(msg.topic, msg.payload, qos, retain, pid))


async def serve(host: str, port: int, ready: asyncio.Event | None = None, store: str | None = None) -> None:
    """Run the broker until cancelled; ``store``: SQLite file that keeps sessions across restarts."""
    broker = Broker(store)
    server = await asyncio.start_server(broker.handle, host, port, reuse_address=True)
    if ready is not None:
        ready.set()
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m tsodso.broker.embedded", description="Run the embedded MQTT broker."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1883)
    parser.add_argument("--store", help="SQLite file keeping sessions, queued and retained messages across restarts")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    async def run() -> int:
        ready = asyncio.Event()
        task = asyncio.create_task(serve(args.host, args.port, ready, args.store))
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        waiting = asyncio.create_task(ready.wait())
        await asyncio.wait({task, waiting}, return_when=asyncio.FIRST_COMPLETED)
        if task.done() and not task.cancelled() and task.exception() is not None:
            print(f"embedded broker: cannot listen on {args.host}:{args.port}: {task.exception()}", file=sys.stderr)
            return 1
        print(f"embedded broker (MQTT 3.1.1) listening on mqtt://{args.host}:{args.port}?protocol=3.1.1", flush=True)
        try:
            await task
        except asyncio.CancelledError:
            pass
        return 0

    sys.exit(asyncio.run(run()))


if __name__ == "__main__":
    main()
