"""The TSO agent: feeds what arrives to the TSO's core (``actors.tso_core``), publishes what it
decides, and keeps the run's time: one setpoint cycle per period, the merit order list at the start
of each ISP with the DSOs' validations (requests over the bus), emergencies at their instants
(CS review Figs. 3-4 and §IV.B, Birk et al. 2017 §3)."""

import asyncio
import time

from tsodso.actors import rules
from tsodso.actors.base import Actor
from tsodso.actors.config import TsoConfig
from tsodso.actors.tso_core import TsoCore
from tsodso.gateway import Received, RequestTimeout
from tsodso.schemas.envelope import Party
from tsodso.schemas.messages import (
    EnergyBid,
    FaultReport,
    FlexActivation,
    FlexibilityNeed,
    Forecast,
    MarketResult,
    MolEntry,
    PrequalificationForward,
    PrequalificationRequest,
    Schedule,
    Telemetry,
    TerminationSignal,
)


class TSO(Actor):
    STATE = (
        "bids",
        "qualified",
        "active",
        "validations",
        "dso_limits_mw",
        "rt_limits",
        "mol_round_trip_ms",
        "mol_iterations",
        "fallbacks",
        "records",
        "monitoring",
        "settlements",
        "forecasts",
        "faults",
        "curtailments",
        "terminations",
        "schedule_changes",
        "conversation",
        "late_cycles",
        "flex",
        "market_results",
        "clearing_ms",
        "balance",
        "der_energy_mwh",
        "energy_by_isp",
        "cost_eur",
        "isp_start",
        "next_step",
        "first_cycle_of_period",
        "last_cycle",
        "refusals",
    )

    def __init__(self, gateway, clock, scenario, config: TsoConfig):
        super().__init__(gateway, clock, scenario)
        self.config = config
        self.core = TsoCore(scenario, config, gateway.me.id)
        self.result_arrived = asyncio.Event()
        gateway.on(FlexActivation, self.on_flex)
        gateway.on(MarketResult, self.on_market_result)
        gateway.on(PrequalificationRequest, self.on_prequalification)
        gateway.on(EnergyBid, self.on_bid)
        gateway.on(Schedule, self.on_schedule)
        gateway.on(Telemetry, self.on_telemetry)
        gateway.on(TerminationSignal, self.on_termination)
        gateway.on(FaultReport, self.on_fault)
        gateway.on(Forecast, self.on_forecast)

    # --- what arrives ---------------------------------------------------------------------------

    async def on_prequalification(self, msg: Received[PrequalificationRequest]) -> None:
        req = msg.body
        if refusal := self.core.prequalification_refusal(req, msg.sender):
            self.gw.refuse(msg, refusal)
            return
        verdicts, by_dso = self.core.prequalify(req)
        for dso_id, assets in by_dso.items():
            try:
                answer = await self.gw.request(
                    PrequalificationForward(bsp_id=req.bsp_id, dso_id=dso_id, assets=assets),
                    Party(role="dso", id=dso_id),
                    timeout=10,
                    retries=1,
                    correlation_id=msg.envelope.correlation_id or msg.envelope.message_id,
                )
                verdicts += answer.body.verdicts
            except RequestTimeout as exc:
                verdicts += self.core.dso_silent(dso_id, assets, str(exc))
        await self.gw.reply(msg, self.core.qualify(req.bsp_id, verdicts))

    async def on_schedule(self, msg: Received[Schedule]) -> None:
        if msg.sender.role == "dso":
            self.log.warning("DSO changed DER schedules", dso=msg.sender.id, reason=msg.body.reason)
        await self.send(self.core.take_schedule(msg.body, msg.sender))

    async def on_forecast(self, msg: Received[Forecast]) -> None:
        self.core.take_forecast(msg.body)

    async def on_fault(self, msg: Received[FaultReport]) -> None:
        self.core.take_fault(msg.body)
        self.log.warning("fault reported", dso=msg.body.dso_id, element=msg.body.element_id)

    async def on_bid(self, msg: Received[EnergyBid]) -> None:
        if refusal := self.core.take_bid(msg.body, msg.sender, self.clock.now()):
            self.gw.refuse(msg, refusal)

    async def on_flex(self, msg: Received[FlexActivation]) -> None:
        self.core.take_flex(msg.body)

    async def on_market_result(self, msg: Received[MarketResult]) -> None:
        self.core.take_market_result(msg.body)
        self.result_arrived.set()

    def on_telemetry(self, msg: Received[Telemetry]) -> None:
        if refusal := self.core.take_telemetry(msg.body, msg.sender):
            self.gw.refuse(msg, refusal)

    async def on_termination(self, msg: Received[TerminationSignal]) -> None:
        env = msg.envelope
        refusal, out = self.core.take_termination(
            msg.body, msg.sender, self.clock.now(), env.correlation_id, env.message_id
        )
        if refusal:
            self.gw.refuse(msg, refusal)
        await self.send(out)

    # --- the merit order list (CS review Fig. 4) ------------------------------------------------

    async def build_mol(self, isp) -> None:
        """Rank the ISP's bids; where the scheme says, have every affected DSO validate them, re-sending
        with the new bounds until no bid changes; clear the ISP and accept the offers."""
        entries = self.core.open_isp(isp)
        if self.core.scheme.tso_activates_from_market:
            await self.take_market_result(isp)
            return
        dso_needs: list[FlexibilityNeed] = []
        for needs in await asyncio.gather(
            *(self.validate_with(dso, isp, entries) for dso in self.core.dsos_to_ask(entries))
        ):
            dso_needs += needs
        await self.send(self.core.clear(isp, entries, dso_needs))

    async def validate_with(self, dso_id: str, isp, entries: dict[str, MolEntry]) -> list[FlexibilityNeed]:
        """Have one DSO validate the list (``rules.MOL_ITERATIONS`` rounds at most); the needs it sent
        with its last answer."""
        needs: list[FlexibilityNeed] = []
        for iteration in range(1, rules.MOL_ITERATIONS + 1):
            mol = self.core.mol_for(dso_id, isp, iteration, entries)
            if mol is None:
                return needs
            t0 = time.perf_counter()
            try:
                answer = await self.gw.request(
                    mol,
                    Party(role="dso", id=dso_id),
                    timeout=self.config.mol_timeout_s,
                    retries=self.config.mol_retries,
                    correlation_id=self.core.conversation,
                )
            except RequestTimeout:
                self.core.validation_missed(dso_id, mol, entries)
                self.log.warning(
                    "MOL validation missed its window; fallback", dso=dso_id, fallback=self.config.mol_fallback
                )
                return needs
            needs = answer.body.needs
            if not self.core.take_validation(dso_id, iteration, answer.body, entries, (time.perf_counter() - t0) * 1e3):
                return needs  # the DSO accepted the list as it stands
        return needs

    async def take_market_result(self, isp) -> None:
        """Integrated market: activate what the market operator gave the TSO (its need went to the
        operator at the start of the run); wait for it at most the MOL timeout."""
        deadline = time.monotonic() + self.config.mol_timeout_s
        while isp not in self.core.market_results and time.monotonic() < deadline:
            self.result_arrived.clear()
            try:
                await asyncio.wait_for(self.result_arrived.wait(), deadline - time.monotonic())
            except TimeoutError:
                break
        if not self.core.activate_market_result(isp):
            self.log.warning("no market result for the ISP", isp=isp.isoformat())

    # --- emergencies and the run -------------------------------------------------------------------

    async def emergencies(self) -> None:
        for e in sorted(self.config.emergencies, key=lambda e: e.at):
            if self.resumed_at is not None and e.at < self.resumed_at:
                continue  # before a restart: announced then, or missed while away
            await self.clock.sleep_until(e.at)
            notice, curtailment = self.core.emergency(e)
            await self.send([notice])
            if curtailment is not None:
                try:
                    answer = await self.gw.request(curtailment.body, curtailment.to, timeout=5, retries=1)
                    self.core.curtailments.append(answer.body)
                except RequestTimeout as exc:
                    self.log.error("curtailment unanswered", error=str(exc))

    async def run(self) -> None:
        core, scenario = self.core, self.scenario
        if core.scheme.market_operator and self.resumed_at is None:
            await self.send(core.market_needs())
        emergencies = asyncio.create_task(self.emergencies())
        try:
            for k, t in self.cycles(scenario.start, scenario.end):
                late = await self.clock.sleep_until(t)
                valid_for = self.clock.wall_seconds(scenario.setpoint_period_s)
                if late > valid_for:
                    core.late_cycles += 1
                ended, build = core.enter(t)
                if ended is not None:
                    await self.send(core.settlement(ended))
                if build:
                    await self.build_mol(core.isp_start)
                    # in virtual time, what the clearing set off (the DSOs' block activations) is handled
                    # before the ISP's first setpoint, so that every run orders them the same way
                    await self.clock.settled()
                await self.send(core.cycle(k, t, valid_for))
            if core.isp_start is not None and core.active:
                await self.send(core.settlement(core.isp_start))
            # the last cycle's telemetry answers its setpoint within a period: judge it at the run's end
            await self.clock.sleep_until(scenario.end)
            await self.send(core.finish())
        finally:
            emergencies.cancel()

    def results(self) -> dict:
        return self.core.results()
