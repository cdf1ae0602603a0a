"""The event loop every tsodso process runs on: asyncio's, with the writes of each connection batched.

On loopback (and on any link) the cost of an MQTT message in a sending process is mostly the
``send`` system call and the wake-up of the broker it causes, not the bytes: a Python client writes
each PUBLISH (and each PUBACK) with a call of its own. Measured here (BENCHMARKS.md "Writes batched
per turn of the loop"), one write costs 12 µs when the writes follow each other and 20 µs when each message's own
work spaces them out. Every connection opened on this loop instead collects what is written to it
during one turn of the loop after its first few writes, and sends that with one call at the end of
the turn: a burst of a thousand setpoints leaves in a few large writes, a request or its answer at
once (no timer, no wait), and bytes leave in the order written.

Built on asyncio's public API only: ``create_connection`` of a loop subclass gives the connection's
protocol a :class:`BatchedTransport` in place of the socket's transport; the MQTT client (or any
stream) writes to it unaware. Run a coroutine on it with :func:`run`.

    from tsodso.gateway.loop import run
    run(main())
"""

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

FLUSH_BYTES = 256 * 1024  # a turn that writes more sends it at once, in pieces of this size
# a turn's first writes leave at once: an MQTT request or answer is a PUBACK and a PUBLISH or two, and
# must not wait for the end of the turn; a burst beyond them waits and leaves in one write
DIRECT_WRITES = 4


class BatchedTransport(asyncio.Transport):
    """A connection's transport whose writes in one turn of the loop go out in at most
    ``DIRECT_WRITES`` + 1 ``write`` calls of the transport beneath: the first ones at once, the rest
    together at the end of the turn (or at once past ``FLUSH_BYTES``). ``close`` and ``write_eof`` send
    what is pending first; ``abort`` drops it, as the transport beneath drops its own buffer. Everything
    else is the transport beneath."""

    def __init__(self, inner: asyncio.Transport, protocol: asyncio.BaseProtocol, loop: asyncio.AbstractEventLoop):
        super().__init__()
        self._inner = inner
        self._protocol = protocol
        self._loop = loop
        self._pending = bytearray()
        self._written = 0  # writes handed on in this turn of the loop

    # --- writing ------------------------------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        if self._written < DIRECT_WRITES:  # a turn's first writes leave at once: an answer waits for nothing
            if self._written == 0:
                self._loop.call_soon(self._end_of_turn)
            self._written += 1
            if not self._inner.is_closing():
                self._inner.write(data)
            return
        self._pending += data  # the turn's later writes leave together when it ends
        if len(self._pending) >= FLUSH_BYTES:
            self.flush()

    def writelines(self, list_of_data: Any) -> None:
        for data in list_of_data:
            self.write(data)

    def _end_of_turn(self) -> None:
        self._written = 0
        self.flush()

    def flush(self) -> None:
        """Hand what is pending to the transport beneath now (dropped if it is closing: the
        connection is gone, and with it what it had not sent)."""
        if not self._pending:
            return
        data, self._pending = self._pending, bytearray()  # never changed again: the transport may keep it
        if not self._inner.is_closing():
            self._inner.write(data)

    def get_write_buffer_size(self) -> int:
        return self._inner.get_write_buffer_size() + len(self._pending)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._inner.set_write_buffer_limits(high, low)

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._inner.get_write_buffer_limits()

    def write_eof(self) -> None:
        self.flush()
        self._inner.write_eof()

    def can_write_eof(self) -> bool:
        return self._inner.can_write_eof()

    # --- closing ------------------------------------------------------------------------------------

    def close(self) -> None:
        self.flush()
        self._inner.close()

    def abort(self) -> None:
        self.drop_pending()
        self._inner.abort()

    def drop_pending(self) -> None:
        """Forget what waits for the end of the turn (the connection is gone, or being aborted)."""
        self._pending.clear()

    def is_closing(self) -> bool:
        return self._inner.is_closing()

    # --- the rest: the transport beneath ------------------------------------------------------------

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._inner.get_extra_info(name, default)

    def pause_reading(self) -> None:
        self._inner.pause_reading()

    def resume_reading(self) -> None:
        self._inner.resume_reading()

    def is_reading(self) -> bool:
        return self._inner.is_reading()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol
        self._inner.set_protocol(_Relay(protocol, self))

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol


class _Relay(asyncio.Protocol):
    """Stands between the socket's transport and the connection's protocol: hands the protocol a
    :class:`BatchedTransport` when the connection is made, and relays every other event as it comes."""

    def __init__(self, protocol: asyncio.BaseProtocol, batched: "BatchedTransport | None" = None):
        self.protocol = protocol
        self.batched = batched

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.batched = BatchedTransport(transport, self.protocol, asyncio.get_running_loop())
        self.protocol.connection_made(self.batched)

    def data_received(self, data: bytes) -> None:
        self.protocol.data_received(data)  # type: ignore[attr-defined]

    def eof_received(self) -> bool | None:
        return self.protocol.eof_received()  # type: ignore[attr-defined]

    def connection_lost(self, exc: Exception | None) -> None:
        if self.batched is not None:
            self.batched.drop_pending()  # the connection is gone: nothing more leaves by it
        self.protocol.connection_lost(exc)

    def pause_writing(self) -> None:
        self.protocol.pause_writing()

    def resume_writing(self) -> None:
        self.protocol.resume_writing()


class BatchingEventLoop(asyncio.SelectorEventLoop):
    """asyncio's loop, whose client connections (``create_connection``, so ``open_connection`` too)
    batch their writes per turn (:class:`BatchedTransport`). Protocols that read into their own buffer
    (``asyncio.BufferedProtocol``) keep the plain transport."""

    async def create_connection(  # type: ignore[override]
        self, protocol_factory: Callable[[], asyncio.BaseProtocol], *args: Any, **kwargs: Any
    ) -> tuple[asyncio.Transport, asyncio.BaseProtocol]:
        relays: list[_Relay] = []

        def relay() -> asyncio.BaseProtocol:
            protocol = protocol_factory()
            if isinstance(protocol, asyncio.BufferedProtocol):
                return protocol
            relays.append(_Relay(protocol))
            return relays[-1]

        transport, protocol = await super().create_connection(relay, *args, **kwargs)
        if relays and relays[0].batched is not None:
            return relays[0].batched, relays[0].protocol
        return transport, protocol


def new_event_loop() -> asyncio.AbstractEventLoop:
    return BatchingEventLoop()


def run(main: Coroutine[Any, Any, Any], *, debug: bool | None = None) -> Any:
    """``asyncio.run(main)`` on a :class:`BatchingEventLoop`."""
    with asyncio.Runner(debug=debug, loop_factory=new_event_loop) as runner:
        return runner.run(main)
