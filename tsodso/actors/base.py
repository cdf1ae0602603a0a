"""What every actor has: its gateway, the run's clock and the scenario; and what it needs to rejoin a
running scenario after a restart: a snapshot of its state and where in the run it was."""

import math
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any, Protocol

import structlog

from tsodso.actors.config import Scenario
from tsodso.actors.outbox import Send
from tsodso.gateway import Gateway


class Clock(Protocol):
    speed: float

    def now(self) -> datetime: ...

    def wall_seconds(self, scenario_seconds: float) -> float: ...

    async def sleep_until(self, t: datetime) -> float: ...

    async def settled(self, timeout_s: float = ...) -> None: ...


class Actor:
    STATE: tuple[str, ...] = ()
    """The attributes of the actor's core (its decisions' state: ``actors.tso_core``...) that a restarted
    actor takes back from its last snapshot (``snapshot``/``restore``) to rejoin the run where it left it."""

    def __init__(self, gateway: Gateway, clock: Clock, scenario: Scenario):
        self.gw = gateway
        self.clock = clock
        self._scenario = scenario
        self.me = gateway.me
        self.log = structlog.get_logger("actor").bind(actor=str(self.me))
        self.resumed_at: datetime | None = None  # scenario instant this actor rejoined the run, after a restart

    async def run(self) -> None:
        """The actor's part of the run, from its start to the scenario's end."""
        raise NotImplementedError

    def results(self) -> dict[str, Any]:
        """What the actor did, for the run's summary (JSON-able); nothing by default."""
        return {}

    @property
    def scenario(self) -> Scenario:
        return self._scenario

    @scenario.setter
    def scenario(self, scenario: Scenario) -> None:
        """A new scenario for the actor and its core (a device emulator moves each session's in time)."""
        self._scenario = scenario
        core = self.__dict__.get("core")
        if core is not None:
            core.scenario = scenario

    @property
    def state_holder(self) -> Any:
        """Where the state lives: the actor's core, or the actor itself when it has none."""
        return getattr(self, "core", self)

    async def send(self, messages: Iterable[Send]) -> None:
        """Publish what the core decided, in order."""
        for m in messages:
            await self.gw.publish(
                m.body, m.to, correlation_id=m.correlation_id, causation_id=m.causation_id, valid_for_s=m.valid_for_s
            )

    def snapshot(self) -> dict[str, Any]:
        return {name: getattr(self.state_holder, name) for name in self.STATE}

    def restore(self, state: dict[str, Any], at: datetime) -> None:
        """Take back a snapshot's state; the run goes on from scenario instant ``at`` (what fell between
        the snapshot and ``at`` is missed, and the actor's loops skip it)."""
        for name in self.STATE:
            if name in state:
                setattr(self.state_holder, name, state[name])
        self.resumed_at = at

    def cycles(self, start: datetime, end: datetime):
        """Setpoint instants from ``start`` (inclusive) to ``end`` (exclusive), every setpoint period;
        after a restart, from the first one not yet past."""
        period = timedelta(seconds=self.scenario.setpoint_period_s)
        k = 0
        if self.resumed_at is not None and self.resumed_at > start:
            k = math.ceil((self.resumed_at - start) / period)
        while start + k * period < end:
            yield k, start + k * period
            k += 1
