"""The DSO agent: feeds what arrives to the DSO's core (``actors.dso_core``), publishes what it
decides, and keeps the run's time: its forecast at the start, its local market at each local gate,
faults at their instants, one real-time check of its grid per setpoint period (CS review Figs. 3-4,
Birk et al. 2017 §3)."""

import asyncio
import shutil
from pathlib import Path

import pandapower as pp
import pandas as pd

from tsodso.actors import rules
from tsodso.actors.base import Actor
from tsodso.actors.config import DsoConfig
from tsodso.actors.dso_core import DsoCore
from tsodso.actors.rules import ISP
from tsodso.actors.validation import Validated
from tsodso.gateway import Received
from tsodso.schemas.codes import Connection, Direction
from tsodso.schemas.messages import (
    CurtailmentRequest,
    EnergyBid,
    FlexActivation,
    MarketResult,
    MeritOrderList,
    PrequalificationForward,
    Schedule,
    SystemStateNotice,
    Telemetry,
)


class DSO(Actor):
    STATE = (
        "assets",
        "schedules",
        "measured",
        "asset_bids",
        "validated",
        "limited_in_real_time",
        "over_delivery",
        "loading",
        "congestion_s",
        "validation_ms",
        "schedule_changes",
        "validated_mols",
        "faults_reported",
        "curtailments",
        "local_bids",
        "entries",
        "flex_mw",
        "flex",
        "needs",
        "compute_ms",
        "forwarded",
    )

    def __init__(self, gateway, clock, scenario, config: DsoConfig, out_dir: Path | None = None):
        super().__init__(gateway, clock, scenario)
        self.config = config
        self.out_dir = out_dir
        self._saved_nets: dict[bytes, Path] = {}  # what an audited net's file depends on -> that file
        self.core = DsoCore(scenario, config, gateway.me.id)
        gateway.on(EnergyBid, self.on_bid)
        gateway.on(MarketResult, self.on_market_result)
        gateway.on(FlexActivation, self.on_flex)
        gateway.on(PrequalificationForward, self.on_prequalification)
        # without a configured delay the validation is answered at once, on the receiving path
        gateway.on(MeritOrderList, self.on_mol_late if config.validation_delay_s else self.on_mol)
        gateway.on(Telemetry, self.on_telemetry)
        gateway.on(Schedule, self.on_schedule)
        gateway.on(CurtailmentRequest, self.on_curtailment)
        gateway.on(SystemStateNotice, self.on_system_state)

    # --- what arrives ---------------------------------------------------------------------------

    def on_prequalification(self, msg: Received[PrequalificationForward]) -> None:
        self.gw.reply_now(msg, self.core.prequalify(msg.body))

    async def on_schedule(self, msg: Received[Schedule]) -> None:
        await self.send(self.core.take_schedule(msg.body))

    def on_mol(self, msg: Received[MeritOrderList]) -> None:
        self.gw.reply_now(msg, self.core.validate(msg.body))

    async def on_mol_late(self, msg: Received[MeritOrderList]) -> None:
        """The validation after the configured delay (a slow DSO, for the TSO's timeouts)."""
        await asyncio.sleep(self.config.validation_delay_s)
        await self.gw.reply(msg, self.core.validate(msg.body))

    async def on_bid(self, msg: Received[EnergyBid]) -> None:
        if refusal := self.core.take_bid(msg.body):
            self.gw.refuse(msg, refusal)

    async def on_market_result(self, msg: Received[MarketResult]) -> None:
        await self.send(self.core.take_market_result(msg.body))

    async def on_flex(self, msg: Received[FlexActivation]) -> None:
        self.core.apply_flex(msg.body)

    def on_telemetry(self, msg: Received[Telemetry]) -> None:
        if refusal := self.core.take_telemetry(msg.body, msg.sender):
            self.gw.refuse(msg, refusal)

    async def on_system_state(self, msg: Received[SystemStateNotice]) -> None:
        """The TSO's system state (normal, alert, emergency, blackout, restoration: NC ER): logged; the
        DSO acts on the curtailment requests that come with it."""
        self.log.info("system state", state=msg.body.state, since=msg.body.since.isoformat(), reason=msg.body.reason)

    def on_curtailment(self, msg: Received[CurtailmentRequest]) -> None:
        self.gw.reply_now(msg, self.core.curtail(msg.body))

    # --- the run -----------------------------------------------------------------------------

    async def run(self) -> None:
        core, scenario = self.core, self.scenario
        if self.resumed_at is None:
            await self.publish_forecast()
        since = self.resumed_at or scenario.start  # after a restart: what fell while away is missed
        faults = sorted((f for f in self.config.faults if f.at >= since), key=lambda f: f.at)
        local = scenario.scheme.dso_local_market
        gates = sorted(isp - rules.LOCAL_GATE for isp in scenario.isps() if local and isp - rules.LOCAL_GATE >= since)
        forward_valid_for = self.clock.wall_seconds(ISP.total_seconds()) + 60
        for _, t in self.cycles(scenario.start, scenario.end):
            await self.clock.sleep_until(t)
            while gates and gates[0] <= t:
                await self.send(core.local_market(gates.pop(0) + rules.LOCAL_GATE, forward_valid_for))
            while faults and faults[0].at <= t:
                await self.send([core.fault_report(faults.pop(0))])
            _, limits = core.watch(t)
            await self.send(limits)

    async def publish_forecast(self) -> None:
        """The interface forecast (``DsoCore.forecast``), to the TSO."""
        await self.send([self.core.forecast()])

    def results(self) -> dict:
        return self.core.results()

    def write_results(self) -> None:
        """After the run (pp.runpp audits would stall the real-time loop): the validated nets."""
        if self.out_dir is not None:
            for mol, validated in self.core.validated_mols:
                self.save_validated_nets(mol, validated)

    def save_validated_nets(self, mol: MeritOrderList, validated: Validated) -> None:
        """The net each direction was validated on, every bid at its limit, with a 'bid_validation'
        table marking each bid's bus and limiting element: pandapower JSON anyone can re-check."""
        assert self.out_dir is not None
        me = self.core.me
        directory = self.out_dir / "nets"
        directory.mkdir(parents=True, exist_ok=True)
        by_bid = {r.bid_id: r for r in validated.results}
        for direction, injections in validated.injections.items():
            rows = []
            for entry in mol.bids:
                if entry.direction != direction or entry.bid_id not in by_bid:
                    continue
                r = by_bid[entry.bid_id]
                for asset in entry.assets:
                    if asset.connection == Connection.DN and asset.dso_id == me:
                        rows.append(
                            {
                                "bid_id": entry.bid_id,
                                "asset_id": asset.asset_id,
                                "bus": asset.connection_bus,
                                "status": r.status.value,
                                "upper_bound_mw": r.upper_bound_mw,
                                "limiting_element": r.limiting_element,
                                "loading_percent": r.loading_percent,
                            }
                        )
            if not rows:
                continue
            name = f"{me}-{mol.mol_id}-iter{mol.iteration}-{'up' if direction == Direction.UP else 'down'}.json"
            # a list validated on the same state with the same outcome as an earlier one has the same net:
            # a copy of that file (a day's 192 lists of one bid at one limit are two nets, not 192 power flows)
            key = self.core.fast.state_key(injections) + repr(rows).encode()
            earlier = self._saved_nets.get(key)
            if earlier is not None:
                if earlier != directory / name:  # (the same list validated again is written once)
                    shutil.copyfile(earlier, directory / name)
                continue
            net = self.core.fast.audit(injections)
            net["bid_validation"] = pd.DataFrame(rows)
            pp.to_json(net, str(directory / name))
            self._saved_nets[key] = directory / name
