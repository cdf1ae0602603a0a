"""One clock per run: scenario time paced to absolute wall-clock deadlines (``Clock``), or virtual
time that advances when every actor has finished (``VirtualClock``).

``speed`` 1 is real time; ``speed`` 50 runs 4-second setpoint cycles every 80 ms. Every deadline is
computed from the run's origin, never from the previous wake-up, so lateness does not accumulate
over thousands of cycles (no drift).
"""

import asyncio
import contextlib
import heapq
import math
import time
from datetime import datetime, timedelta
from typing import Any

import structlog

from tsodso.gateway.traffic import reaches
from tsodso.schemas.envelope import Party


class Clock:
    def __init__(self, start: datetime, speed: float = 1.0, *, wall_origin: float | None = None):
        if speed <= 0:
            raise ValueError("speed must be > 0")
        self.start = start
        self.speed = speed
        self.wall_origin = time.time() if wall_origin is None else wall_origin

    def now(self) -> datetime:
        """The scenario time now."""
        return self.start + timedelta(seconds=(time.time() - self.wall_origin) * self.speed)

    def wall(self, t: datetime) -> float:
        """Wall-clock (epoch seconds) at which scenario time ``t`` happens."""
        return self.wall_origin + (t - self.start).total_seconds() / self.speed

    def wall_seconds(self, scenario_seconds: float) -> float:
        return scenario_seconds / self.speed

    async def sleep_until(self, t: datetime) -> float:
        """Sleep until scenario time ``t``; returns how late the wake-up was (wall seconds, >= 0)."""
        delay = self.wall(t) - time.time()
        if delay > 0:
            await asyncio.sleep(delay)
        return max(0.0, time.time() - self.wall(t))

    async def settled(self, timeout_s: float = 10.0) -> None:
        """Paced time does not wait for messages: what is on its way arrives when the network says."""


class VirtualClock:
    """Scenario time that moves only when the run is quiet: a time coordinator for the actors of one
    process, in the manner of HELICS time requests and grants.

    Every actor that waits for a scenario instant (``sleep_until``) requests that time; the clock
    grants the earliest request once no message is on its way (the gateways report what they send
    and when each receiver has handled it: ``gateway.traffic``) and every actor waits. Requests for
    the same instant are granted one at a time, in the order the actors joined, each after the
    previous one's messages have all been handled: the same run gives the same outcome every time,
    as fast as the actors compute, over a real broker.

    Wall-clock durations (a message's validity, a request's timeout) stay wall-clock: a message is
    valid for its scenario duration in wall seconds, far longer than the cycle takes here.
    """

    speed = math.inf

    def __init__(self, start: datetime, *, stall_s: float = 5.0):
        self.start = start
        self.wall_origin = time.time()
        self.stall_s = stall_s  # [s, wall] a message unhandled this long is given up (lost), with a warning
        self.grants = 0
        self.given_up = 0  # messages the clock stopped waiting for
        self._now = start
        self._parties: list[Party] = []
        self._expected: dict[str, int] = {}  # message id -> receivers that have not handled it yet
        self._order: dict[asyncio.Task[Any], int] = {}  # participant -> the order it joined in
        self._waiting: set[asyncio.Task[Any]] = set()
        self._requests: list[tuple[datetime, int, int, asyncio.Future[None]]] = []
        self._seq = 0
        self._changed = asyncio.Event()
        self._log = structlog.get_logger("clock")

    # --- the Clock every actor reads ---------------------------------------------------------

    def now(self) -> datetime:
        return self._now

    def wall_seconds(self, scenario_seconds: float) -> float:
        return scenario_seconds

    def wall(self, t: datetime) -> float:
        raise ValueError("virtual time has no wall-clock instant for a scenario time (use --speed for link outages)")

    async def sleep_until(self, t: datetime) -> float:
        if t <= self._now:
            return 0.0
        task = asyncio.current_task()
        assert task is not None
        self.attach(task)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._seq += 1
        heapq.heappush(self._requests, (t, self._order[task], self._seq, future))
        self._waiting.add(task)
        self._changed.set()
        try:
            await future
        finally:
            self._waiting.discard(task)
        return 0.0

    def attach(self, task: asyncio.Task[Any]) -> None:
        """Count ``task`` as an actor of the run: time waits for it until it requests time or ends."""
        if task not in self._order:
            self._order[task] = len(self._order)
            task.add_done_callback(self._left)

    def _left(self, task: asyncio.Task[Any]) -> None:
        self._waiting.discard(task)
        self._changed.set()

    # --- gateway.traffic.Traffic ----------------------------------------------------------------

    def join(self, party: Party) -> None:
        """A gateway of the run: messages addressed to ``party`` are waited for."""
        self._parties.append(party)

    def expect(self, message_id: str, to: Party, sender: Party) -> None:
        n = sum(1 for p in self._parties if reaches(to, p))
        if n:
            self._expected[message_id] = n

    def cancel(self, message_id: str) -> None:
        if self._expected.pop(message_id, None) is not None:
            self._changed.set()

    def handled(self, message_id: str) -> None:
        left = self._expected.get(message_id)
        if left is None:
            return
        if left <= 1:
            del self._expected[message_id]
            self._changed.set()
        else:
            self._expected[message_id] = left - 1

    # --- the coordinator --------------------------------------------------------------------------

    def _quiet(self) -> bool:
        live = [t for t in self._order if not t.done()]
        return not self._expected and all(t in self._waiting for t in live)

    async def settled(self, timeout_s: float = 10.0) -> None:
        """Until no message is on its way (or ``timeout_s`` wall seconds)."""
        deadline = time.monotonic() + timeout_s
        while self._expected and time.monotonic() < deadline:
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), max(0.0, deadline - time.monotonic()))

    async def run(self) -> None:
        """Grant time requests, one at a time, whenever the run is quiet. Runs until cancelled."""
        while True:
            self._changed.clear()
            if not self._quiet():
                try:
                    await asyncio.wait_for(self._changed.wait(), self.stall_s)
                except TimeoutError:
                    self._give_up()
                continue
            for _ in range(3):  # let what was just woken run before granting the next request
                await asyncio.sleep(0)
            if not self._quiet() or not self._requests:
                if not self._requests:
                    await self._changed.wait()
                continue
            t, _, _, future = heapq.heappop(self._requests)
            if future.done():
                continue
            self._now = max(self._now, t)
            self.grants += 1
            future.set_result(None)

    def _give_up(self) -> None:
        """Nothing moved for ``stall_s``: when every actor waits for time, a message still expected
        was lost (or its receiver is gone); stop waiting for it, and say so."""
        live = [t for t in self._order if not t.done()]
        if self._expected and all(t in self._waiting for t in live):
            self.given_up += len(self._expected)
            self._log.warning(
                "messages never handled; time goes on", count=len(self._expected), at=self._now.isoformat()
            )
            self._expected.clear()
