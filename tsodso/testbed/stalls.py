"""How long this process's event loop could not run: the host's share of an accelerated run's timing.

At 50x a delta setpoint lives 80 ms of wall time (one 4 s period, CS review §III.A); a stall of the
whole process (scheduler, virtual machine, paging) longer than that makes a setpoint arrive expired
although nothing in the testbed was slow. The runner watches its loop so that a summary can tell
the two apart: ``loop_stalls`` next to ``setpoints_expired``.
"""

import asyncio
import time
from datetime import datetime
from typing import Any

from tsodso.actors.base import Clock


class LoopWatch:
    """Sleep ``period_s`` again and again; every wake-up later than ``threshold_ms`` is a stall."""

    def __init__(self, clock: Clock, *, period_s: float = 0.01, threshold_ms: float = 20.0):
        self.clock = clock
        self.period_s = period_s
        self.threshold_ms = threshold_ms
        self.stalls: list[tuple[datetime, float]] = []  # (scenario time at the wake-up, stall in ms)

    async def run(self) -> None:
        while True:
            before = time.perf_counter()
            await asyncio.sleep(self.period_s)
            late_ms = (time.perf_counter() - before - self.period_s) * 1000
            if late_ms > self.threshold_ms:
                self.stalls.append((self.clock.now(), late_ms))

    def results(self) -> dict[str, Any]:
        worst = sorted(self.stalls, key=lambda s: -s[1])[:5]
        return {
            "threshold_ms": self.threshold_ms,
            "count": len(self.stalls),
            "max_ms": round(worst[0][1], 1) if worst else 0.0,
            "worst": [{"at": t.isoformat(), "ms": round(ms, 1)} for t, ms in worst],
        }
