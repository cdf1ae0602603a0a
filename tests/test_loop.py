"""The loop every tsodso process runs on batches each connection's writes per turn: what a peer
receives is unchanged (every byte, in order, closed after the last), only the number of writes falls.
Real sockets: a TCP server of the test's own, and the brokers (embedded and Mosquitto)."""

import asyncio
import uuid

from tests.test_gateway import wait_until
from tsodso.gateway.connection import BrokerSpec
from tsodso.gateway.loop import DIRECT_WRITES, BatchedTransport, run
from tsodso.gateway.mqtt import Incoming, MqttConnection


class Recorder:
    """A TCP server that keeps what each connection sent, and in how many reads it came."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.reads = 0
        self.closed = asyncio.Event()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while chunk := await reader.read(1 << 20):
            self.data += chunk
            self.reads += 1
        self.closed.set()
        writer.close()


async def recorder() -> tuple[Recorder, asyncio.Server, int]:
    rec = Recorder()
    server = await asyncio.start_server(rec.serve, "127.0.0.1", 0)
    return rec, server, server.sockets[0].getsockname()[1]


async def test_a_thousand_writes_in_one_turn_arrive_whole_in_order_in_few_reads():
    rec, server, port = await recorder()
    async with server:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        assert isinstance(writer.transport, BatchedTransport)
        pieces = [f"{k:06d};".encode() for k in range(1000)]
        for piece in pieces:
            writer.write(piece)
        # the first few left at once (an answer waits for nothing), the rest are held until the turn ends
        assert writer.transport.get_write_buffer_size() == 7 * (1000 - DIRECT_WRITES)
        await writer.drain()
        writer.close()  # what is still pending goes out before the close
        await asyncio.wait_for(rec.closed.wait(), 10)
    assert bytes(rec.data) == b"".join(pieces)
    # a few writes: the server reads them at once, not a thousand times
    assert rec.reads <= 10


async def test_close_in_the_same_turn_sends_what_was_written_and_abort_drops_what_waits():
    rec, server, port = await recorder()
    async with server:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        for piece in (b"one;", b"two;", b"three;", b"four;", b"five"):
            writer.write(piece)
        writer.close()  # no await between: the bytes are still pending when close is called
        await asyncio.wait_for(rec.closed.wait(), 10)
        assert bytes(rec.data) == b"one;two;three;four;five"

        rec2, server2, port2 = await recorder()
        async with server2:
            _, writer2 = await asyncio.open_connection("127.0.0.1", port2)
            for _ in range(DIRECT_WRITES):
                writer2.write(b"sent;")
            writer2.write(b"never")
            writer2.transport.abort()
            await asyncio.wait_for(rec2.closed.wait(), 10)
            assert bytes(rec2.data) == b"sent;" * DIRECT_WRITES


async def test_writes_beyond_the_flush_size_leave_without_waiting_for_the_turn():
    rec, server, port = await recorder()
    async with server:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(DIRECT_WRITES):  # the turn's first writes: at once
            writer.write(b"x")
        writer.write(b"x" * (300 * 1024))  # past FLUSH_BYTES: handed to the socket at once too
        assert writer.transport.get_write_buffer_size() < 300 * 1024  # (the socket took a part at once)
        await writer.drain()
        writer.close()
        await asyncio.wait_for(rec.closed.wait(), 10)
    assert len(rec.data) == 300 * 1024 + DIRECT_WRITES


async def test_a_burst_of_qos1_publishes_arrives_complete_and_in_order(broker):
    spec = BrokerSpec.parse(broker.url)
    tag = uuid.uuid4().hex[:8]
    topic = f"tsodso/test/loop/{tag}"
    got: list[bytes] = []

    def take(m: Incoming) -> None:
        got.append(m.payload)

    async with (
        MqttConnection(spec, f"loop-rx-{tag}", on_message=take) as rx,
        MqttConnection(spec, f"loop-tx-{tag}", on_message=lambda m: None) as tx,
    ):
        await rx.subscribe([topic], qos=1)
        sent = [f"{k:05d}".encode() + b"." * 500 for k in range(3000)]
        for payload in sent:  # one turn for as many as the broker's window takes
            if not tx.ready(1):
                await tx.wait_ready(1)
            tx.publish(topic, payload, qos=1)
        await asyncio.wait_for(tx.drained(), 30)
        await wait_until(lambda: len(got) >= len(sent), timeout=30)
    assert got == sent


def test_run_returns_the_coroutines_result_and_raises_its_error():
    async def answer() -> int:
        await asyncio.sleep(0)
        return 42

    async def fail() -> None:
        raise ValueError("the culprit")

    assert run(answer()) == 42
    try:
        run(fail())
    except ValueError as exc:
        assert str(exc) == "the culprit"
    else:
        raise AssertionError("run swallowed the error")
