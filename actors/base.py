"""What every actor has: its gateway, the run's clock and the scenario."""

from datetime import datetime, timedelta
from typing import Protocol

import structlog

from actors.config import Scenario
from gateway import Gateway


class Clock(Protocol):
    speed: float

    def now(self) -> datetime: ...

    def wall_seconds(self, scenario_seconds: float) -> float: ...

    async def sleep_until(self, t: datetime) -> float: ...


class Actor:
    def __init__(self, gateway: Gateway, clock: Clock, scenario: Scenario):
        self.gw = gateway
        self.clock = clock
        self.scenario = scenario
        self.me = gateway.me
        self.log = structlog.get_logger("actor").bind(actor=str(self.me))

    def cycles(self, start: datetime, end: datetime):
        """Setpoint instants from ``start`` (inclusive) to ``end`` (exclusive), every setpoint period."""
        period = timedelta(seconds=self.scenario.setpoint_period_s)
        k = 0
        while start + k * period < end:
            yield k, start + k * period
            k += 1
