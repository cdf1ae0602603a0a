"""One clock per run: scenario time paced to absolute wall-clock deadlines.

``speed`` 1 is real time; ``speed`` 50 runs 4-second setpoint cycles every 80 ms. Every deadline is
computed from the run's origin, never from the previous wake-up, so lateness does not accumulate
over thousands of cycles (no drift).
"""

import asyncio
import time
from datetime import datetime, timedelta


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
