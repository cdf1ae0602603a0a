"""IEC 60870-5-104 at the edge of the bus: the one module that owns the IEC 104 library (c104, on lib60870).

Two sides, each one asset-by-asset over a short floating point setpoint and a short floating point measured
value (docs/iec104.md has the mapping):

- :class:`SiteLink`, the controlling station (client): what a bridge uses to command a BSP's site. A
  command waits for the site's confirmation (ACT_CON) and then for the site's measured value of the
  same instant (its time tag), each within a deadline; what did not come is said, never waited for.
- :class:`ControlledStation`, the controlled station (server): what a site emulator serves. Commands
  arrive on the library's thread and are answered there.

Values on the wire are MW / ``scale_mw``; time tags are CP56Time2a in UTC (millisecond resolution).
"""

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import c104

MIN_TIMEOUT_S = 0.05  # the library's ticks are 50 ms at the finest
UNMUTE_AFTER_S = 1.0
"""[s, wall] A session left 'open_muted' this long (its start of data transfer went unconfirmed on a busy host;
the library does not ask again) is unmuted, and again each such interval until it is open."""
LIBRARY_WAIT_S = 0.25
"""[s, wall] How long the library waits for a command's confirmation (at most a quarter of the link's
confirmation timeout). c104 2.2 can miss one that came: its wait (``Connection::awaitCommandSuccess``) does not
look for a confirmation that arrived before it began waiting, which a busy host makes likely, and times out. So
the link also reads every confirmation off the wire itself (``SiteLink._on_raw``) and waits on that for the rest
of the confirmation timeout: a confirmation that came is never missed, one that came late is still taken."""
ACT_CON = 7  # cause of transmission: activation confirmation (IEC 60870-5-101 7.2.3)
TYPE_ID = {c104.Type.C_SE_NC_1: 50, c104.Type.C_SE_TC_1: 63}  # the setpoint commands' type identifications


@dataclass(frozen=True)
class AssetPoints:
    """One asset's information object addresses at a site."""

    setpoint_ioa: int
    delivered_ioa: int
    limit_up_ioa: int | None = None  # the asset's activation limit commands, where the site has them
    limit_down_ioa: int | None = None


@dataclass
class Measured:
    """The last value a site reported for an asset."""

    mw: float
    recorded_at: datetime | None  # the value's time tag (UTC), None without one
    seq: int  # arrival order on this link


@dataclass(frozen=True)
class SiteAnswer:
    """What a site answered to one setpoint command: per asset its value [MW] and whether it is of the
    commanded instant (``fresh``); the wall milliseconds from sending until the last confirmation and
    until the last measured value (None where it never came)."""

    values_mw: dict[str, float]
    fresh: dict[str, bool]
    confirmed_ms: float
    measured_ms: float | None


def _add_point(station: c104.Station | None, ioa: int, kind: c104.Type) -> c104.Point:
    point = station.add_point(io_address=ioa, type=kind) if station is not None else None
    if point is None:
        raise ValueError(f"IEC 104 information object {ioa}: the library refused it (used twice, or out of range)")
    return point


def _point_types(time_tag: bool) -> tuple[c104.Type, c104.Type]:
    """A site's (setpoint command, measured value) types: short floats, with time tag or without."""
    if time_tag:
        return c104.Type.C_SE_TC_1, c104.Type.M_ME_TF_1
    return c104.Type.C_SE_NC_1, c104.Type.M_ME_NC_1


def _value(point: c104.Point) -> float:
    """A short floating point (command or measured value) as a float."""
    value = point.value
    if not isinstance(value, (int, float)):
        raise ValueError(f"IEC 104 information object {point.io_address}: {value!r} is not a short float")
    return float(value)


def confirmation(apdu: bytes, common_address: int, type_id: int) -> tuple[int, bool] | None:
    """(information object address, positive) of a command confirmation (ACT_CON) of type ``type_id`` to
    ``common_address`` in an APDU as received (IEC 60870-5-104 with its standard sizes: a two-octet cause of
    transmission, a two-octet common address, a three-octet address; those c104 uses); None for any other."""
    if len(apdu) < 15 or apdu[0] != 0x68 or apdu[2] & 0x01:  # too short, not a start, not an I-format frame
        return None
    asdu = apdu[6:]
    if asdu[0] != type_id or asdu[2] & 0x3F != ACT_CON or asdu[4] | asdu[5] << 8 != common_address:
        return None
    return asdu[6] | asdu[7] << 8 | asdu[8] << 16, not asdu[2] & 0x40


def _utc(t: datetime | None) -> datetime | None:
    """A time tag as an aware UTC instant, to the millisecond (the library gives naive UTC)."""
    if t is None:
        return None
    t = t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)
    return t.replace(microsecond=t.microsecond // 1000 * 1000)


class SiteUnavailable(Exception):
    """The site did not take a command: not connected, or no confirmation in time. The message says which."""


class SiteLink:
    """The controlling station's connection to one site (see the module's docstring). Use as an async
    context manager; it reconnects by itself (the library retries every second)."""

    def __init__(
        self,
        host: str,
        port: int,
        common_address: int,
        points: dict[str, AssetPoints],
        *,
        time_tag: bool = True,
        scale_mw: float = 1.0,
        confirm_timeout_s: float = 1.0,
    ):
        self.where = f"{host}:{port} (common address {common_address})"
        self.points = points
        self.time_tag = time_tag
        self.scale_mw = scale_mw
        self.confirm_timeout_s = max(confirm_timeout_s, MIN_TIMEOUT_S)
        self.measured: dict[str, Measured] = {}
        self.confirmations_missed = 0  # commands the library missed the confirmation of, taken all the same (_send)
        self.state = "closed"
        self.on_state: Callable[[bool], None] | None = None  # called on the loop when the site comes or goes
        self._seq = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._changed: asyncio.Event | None = None
        self._lock: asyncio.Lock | None = None
        self._limit_lock: asyncio.Lock | None = None
        self._client = c104.Client(
            tick_rate_ms=50,
            command_timeout_ms=int(max(MIN_TIMEOUT_S, min(self.confirm_timeout_s / 4, LIBRARY_WAIT_S)) * 1000),
        )
        connection = self._client.add_connection(ip=host, port=port, init=c104.Init.ALL)
        if connection is None:
            raise ValueError(f"IEC 104 site {host}:{port}: not an address the library can connect to")
        self._connection: c104.Connection = connection
        self._connection.on_state_change(callable=self._on_state)
        self._connection.on_receive_raw(callable=self._on_raw)
        self.common_address = common_address
        station = self._connection.add_station(common_address=common_address)
        kinds = _point_types(time_tag)
        self._command_type = TYPE_ID[kinds[0]]
        self._confirmed: dict[int, tuple[int, bool]] = {}  # IOA -> (confirmations so far, the last one positive)
        self._commands: dict[str, c104.Point] = {}
        self._limits: dict[tuple[str, str], c104.Point] = {}  # (asset, 'up' | 'down') -> its limit command
        self._limits_sent: dict[tuple[str, str], float] = {}  # what the site confirmed on this connection
        by_ioa: dict[int, str] = {}
        for asset, p in points.items():
            self._commands[asset] = _add_point(station, p.setpoint_ioa, kinds[0])
            for direction, ioa in (("up", p.limit_up_ioa), ("down", p.limit_down_ioa)):
                if ioa is not None:
                    self._limits[(asset, direction)] = _add_point(station, ioa, kinds[0])
            measured = _add_point(station, p.delivered_ioa, kinds[1])
            measured.on_receive(callable=self._on_measured)
            by_ioa[p.delivered_ioa] = asset
        self._asset_of = by_ioa

    # --- the library's thread ----------------------------------------------------------------------

    def _on_state(self, connection: c104.Connection, state: c104.ConnectionState) -> None:
        self._call(self._set_state, "open" if state == c104.ConnectionState.OPEN else state.name.lower())

    def _on_raw(self, connection: c104.Connection, data: bytes) -> None:
        if (confirmed := confirmation(data, self.common_address, self._command_type)) is not None:
            self._call(self._confirmation, *confirmed)

    def _on_measured(
        self, point: c104.Point, previous_info: c104.Information, message: c104.IncomingMessage
    ) -> c104.ResponseState:
        self._call(self._arrived, point.io_address, _value(point), point.recorded_at)
        return c104.ResponseState.SUCCESS

    def _call(self, fn: Callable[..., None], *args: object) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(fn, *args)

    # --- the event loop ------------------------------------------------------------------------------

    def _set_state(self, state: str) -> None:
        was_open, self.state = self.state == "open", state
        if state != "open":
            self._limits_sent.clear()  # a site that comes back is told its limits again
        if self.on_state is not None and was_open != (state == "open"):
            self.on_state(state == "open")
        if state == "open_muted" and self._loop is not None:  # on a reconnect as on the first connect
            self._loop.call_later(UNMUTE_AFTER_S, self._unmute)

    def _unmute(self) -> None:
        if self.state == "open_muted" and self._loop is not None and not self._loop.is_closed():
            self._loop.run_in_executor(None, self._connection.unmute)
            self._loop.call_later(UNMUTE_AFTER_S, self._unmute)
        assert self._changed is not None
        self._changed.set()

    def _confirmation(self, ioa: int, positive: bool) -> None:
        count, _ = self._confirmed.get(ioa, (0, False))
        self._confirmed[ioa] = (count + 1, positive)
        assert self._changed is not None
        self._changed.set()

    def _arrived(self, ioa: int, value: float, recorded_at: datetime | None) -> None:
        asset = self._asset_of.get(ioa)
        if asset is None:
            return
        self._seq += 1
        self.measured[asset] = Measured(value * self.scale_mw, _utc(recorded_at), self._seq)
        assert self._changed is not None
        self._changed.set()

    async def _changes(self, until: float) -> bool:
        """Wait for the next change (a state, a value) until loop time ``until``; False when it passed."""
        assert self._loop is not None and self._changed is not None
        self._changed.clear()
        try:
            await asyncio.wait_for(self._changed.wait(), max(0.0, until - self._loop.time()))
        except TimeoutError:
            return False
        return True

    @property
    def connected(self) -> bool:
        return self.state == "open"

    async def __aenter__(self) -> "SiteLink":
        self._loop = asyncio.get_running_loop()
        self._changed = asyncio.Event()
        self._lock = asyncio.Lock()
        self._limit_lock = asyncio.Lock()
        await asyncio.to_thread(self._client.start)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.on_state = None  # closing is not the site going
        await asyncio.to_thread(self._client.stop)
        self._loop = None

    async def wait_connected(self, timeout_s: float) -> bool:
        """True once the site accepted the connection and started data transfer, within ``timeout_s`` (a
        session left muted is unmuted meanwhile: ``_set_state``)."""
        assert self._loop is not None
        until = self._loop.time() + timeout_s
        while not self.connected:
            if not await self._changes(until):
                return self.connected
        return True

    async def command(self, instant: datetime, targets_mw: dict[str, float], within_s: float) -> SiteAnswer:
        """Send each asset its target (MW, time-tagged ``instant`` where the site uses time tags), each
        confirmed within the confirmation timeout, then wait until ``within_s`` after the start for every
        asset's measured value sent since. Raises :class:`SiteUnavailable` when a command is not taken. A
        value is ``fresh`` when it came since the command with the time tag ``instant`` (without time tags:
        when it came since); one that did not come is the last known one, not fresh."""
        assert self._lock is not None
        async with self._lock:  # one command at a time: a point holds one command's information
            return await self._command(instant, targets_mw, within_s)

    async def limit(self, valid_from: datetime, limits_mw: dict[str, dict[str, float]]) -> list[str]:
        """Send each asset's limit points (``limits_mw``: per direction 'up' / 'down', asset -> the largest
        deviation from schedule it may make [MW]), time-tagged ``valid_from`` where the site uses time tags;
        returns the points commanded ('asset up', ...): those whose value the site has not confirmed on this
        connection yet, each confirmed within the confirmation timeout; raises :class:`SiteUnavailable` when
        one is not taken. Limits go beside the setpoint commands (other
        points), never holding one up; one limit at a time."""
        assert self._limit_lock is not None and self._loop is not None
        async with self._limit_lock:
            if not self.connected:
                raise SiteUnavailable(f"IEC 104 site {self.where} is not connected ({self.state})")
            tag = _utc(valid_from) if self.time_tag else None
            sent = []
            for (asset, direction), point in self._limits.items():
                mw = limits_mw.get(direction, {}).get(asset)
                if mw is None or self._limits_sent.get((asset, direction)) == mw:
                    continue
                point.info = c104.ShortCmd(target=mw / self.scale_mw, recorded_at=tag)
                if not await self._send(point, self._loop.time() + self.confirm_timeout_s):
                    raise SiteUnavailable(
                        f"IEC 104 site {self.where} did not confirm the {direction} limit of {asset} (IOA "
                        f"{point.io_address})" + ("" if self.connected else f"; the connection is {self.state}")
                    )
                self._limits_sent[(asset, direction)] = mw
                sent.append(f"{asset} {direction}")
            return sent

    async def _send(self, point: c104.Point, until: float, executed: Callable[[], bool] | None = None) -> bool:
        """Send ``point``'s command; True once the site confirmed it positively by loop time ``until``: as the
        library saw it, or as this link read it off the wire (see :data:`LIBRARY_WAIT_S`), or, where
        ``executed`` is given, once that says the site executed it (its measured value of the command's
        instant, which a site sends only having done so)."""
        ioa = point.io_address
        before, _ = self._confirmed.get(ioa, (0, False))
        if await asyncio.to_thread(point.transmit, c104.Cot.ACTIVATION):
            return True

        def answered() -> bool:
            return self._confirmed.get(ioa, (0, False))[0] > before or (executed is not None and executed())

        while self.connected and not answered() and await self._changes(until):
            pass
        count, positive = self._confirmed.get(ioa, (0, False))
        taken = (count > before and positive) or (executed is not None and executed())
        self.confirmations_missed += taken
        return taken

    async def _transmit(self, asset: str, value: float, tag: datetime | None, until: float) -> bool:
        """One asset's setpoint command (see :meth:`_send`), time-tagged ``tag`` where the site uses time tags."""
        point = self._commands[asset]
        point.info = c104.ShortCmd(target=value, recorded_at=tag)
        sent_seq = self._seq

        def executed() -> bool:
            m = self.measured.get(asset)
            return m is not None and m.seq > sent_seq and m.recorded_at == tag

        return await self._send(point, until, executed if tag is not None else None)

    async def _command(self, instant: datetime, targets_mw: dict[str, float], within_s: float) -> SiteAnswer:
        if not self.connected:
            raise SiteUnavailable(f"IEC 104 site {self.where} is not connected ({self.state})")
        assert self._loop is not None
        start, began = self._loop.time(), time.perf_counter()
        tag = _utc(instant) if self.time_tag else None
        sent_seq = self._seq
        for asset, mw in targets_mw.items():
            if not await self._transmit(asset, mw / self.scale_mw, tag, start + self.confirm_timeout_s):
                raise SiteUnavailable(
                    f"IEC 104 site {self.where} did not confirm the setpoint of {asset} (IOA "
                    f"{self.points[asset].setpoint_ioa}) within {self.confirm_timeout_s:.3g} s"
                    + ("" if self.connected else f"; the connection is {self.state}")
                )
        confirmed_ms = (time.perf_counter() - began) * 1000

        def answered(asset: str) -> bool:  # a value arrived since the command
            m = self.measured.get(asset)
            return m is not None and m.seq > sent_seq

        def fresh(asset: str) -> bool:  # ... and it is of the commanded instant
            m = self.measured.get(asset)
            return answered(asset) and (tag is None or (m is not None and m.recorded_at == tag))

        until = start + within_s
        while not all(answered(a) for a in targets_mw) and await self._changes(until):
            pass
        done = all(answered(a) for a in targets_mw)
        return SiteAnswer(
            values_mw={a: self.measured[a].mw for a in targets_mw if a in self.measured},
            fresh={a: fresh(a) for a in targets_mw},
            confirmed_ms=confirmed_ms,
            measured_ms=(time.perf_counter() - began) * 1000 if done else None,
        )


Command = Callable[[str, float, datetime | None], bool]
"""A controlled station's handler of a setpoint: (asset, MW, time tag or None) -> confirm it."""
LimitCommand = Callable[[str, str, float, datetime | None], bool]
"""... of a limit: (asset, 'up' | 'down', MW, time tag or None) -> confirm it."""


class ControlledStation:
    """A site's IEC 104 server (see the module's docstring): each asset's setpoint command goes to
    ``on_command`` on the library's thread, which answers it (positive confirmation when it returns
    True), and its limit command to ``on_limit`` alike; :meth:`report` sends an asset's measured value
    spontaneously."""

    def __init__(
        self,
        host: str,
        port: int,
        common_address: int,
        points: dict[str, AssetPoints],
        on_command: Command,
        *,
        on_limit: LimitCommand | None = None,
        time_tag: bool = True,
        scale_mw: float = 1.0,
    ):
        self.where = f"{host}:{port}"
        self.scale_mw = scale_mw
        self.time_tag = time_tag
        self._on_command = on_command
        self._on_limit = on_limit
        self._server = c104.Server(ip=host, port=port, tick_rate_ms=50)
        station = self._server.add_station(common_address=common_address)
        kinds = _point_types(time_tag)
        self._asset_of: dict[int, str] = {}
        self._limit_of: dict[int, tuple[str, str]] = {}
        self._measured: dict[str, c104.Point] = {}
        for asset, p in points.items():
            command = _add_point(station, p.setpoint_ioa, kinds[0])
            command.on_receive(callable=self._on_setpoint)
            self._asset_of[p.setpoint_ioa] = asset
            self._measured[asset] = _add_point(station, p.delivered_ioa, kinds[1])
            for direction, ioa in (("up", p.limit_up_ioa), ("down", p.limit_down_ioa)):
                if ioa is not None and on_limit is not None:
                    _add_point(station, ioa, kinds[0]).on_receive(callable=self._on_limit_command)
                    self._limit_of[ioa] = (asset, direction)
        self._lock = threading.Lock()

    def _on_setpoint(
        self, point: c104.Point, previous_info: c104.Information, message: c104.IncomingMessage
    ) -> c104.ResponseState:
        asset = self._asset_of[point.io_address]
        taken = self._on_command(asset, _value(point) * self.scale_mw, _utc(point.recorded_at))
        return c104.ResponseState.SUCCESS if taken else c104.ResponseState.FAILURE

    def _on_limit_command(
        self, point: c104.Point, previous_info: c104.Information, message: c104.IncomingMessage
    ) -> c104.ResponseState:
        assert self._on_limit is not None
        asset, direction = self._limit_of[point.io_address]
        taken = self._on_limit(asset, direction, _value(point) * self.scale_mw, _utc(point.recorded_at))
        return c104.ResponseState.SUCCESS if taken else c104.ResponseState.FAILURE

    def report(self, asset: str, mw: float, at: datetime | None) -> bool:
        """Send ``asset``'s measured value [MW] (time-tagged ``at`` where the site uses time tags)."""
        point = self._measured[asset]
        with self._lock:
            point.info = c104.ShortInfo(actual=mw / self.scale_mw, recorded_at=at if self.time_tag else None)
            return point.transmit(cause=c104.Cot.SPONTANEOUS)

    @property
    def clients(self) -> int:
        return self._server.active_connection_count

    def start(self) -> None:
        self._server.start()
        if not self._server.is_running:
            raise OSError(f"IEC 104 site {self.where}: the server did not start (is the port in use?)")

    def stop(self) -> None:
        self._server.stop()
