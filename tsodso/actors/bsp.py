"""The BSP agent: feeds what arrives to the BSP's core (``actors.bsp_core``) and publishes what it
decides: at the start its prequalification request, schedule, bids and needs; then, for every delta
setpoint, its telemetry at once (CS review Figs. 3-4, §IV.B)."""

from datetime import datetime

from tsodso.actors.base import Actor
from tsodso.actors.bsp_core import AssetState, BspCore, admissible_deltas, asset_data, bid_assets
from tsodso.actors.config import BspConfig
from tsodso.gateway import Received
from tsodso.schemas.messages import (
    ActivationLimit,
    DeltaSetpoint,
    FlexActivation,
    MarketResult,
    MonitoringReport,
    OfferAcceptance,
    SettlementReport,
    Telemetry,
)

__all__ = ["BSP", "AssetState", "admissible_deltas", "asset_data", "bid_assets"]


class BSP(Actor):
    STATE = (
        "assets",
        "qualified",
        "accepted",
        "limits",
        "last_cycle",
        "fleet_at",
        "targets",
        "refused_setpoints",
        "settlements",
        "monitoring",
        "flex_mw",
        "market_results",
    )

    def __init__(self, gateway, clock, scenario, config: BspConfig):
        super().__init__(gateway, clock, scenario)
        self.config = config
        self.core = BspCore(scenario, config, gateway.me.id)
        self.tso = self.core.tso
        gateway.on(DeltaSetpoint, self.on_setpoint)
        gateway.on(FlexActivation, self.on_flex)
        gateway.on(MarketResult, self.on_market_result)
        gateway.on(ActivationLimit, self.on_limit)
        gateway.on(OfferAcceptance, self.on_acceptance)
        gateway.on(SettlementReport, self.on_settlement)
        gateway.on(MonitoringReport, self.on_monitoring)

    # the core's state, read by tests, tools and the device emulator as the BSP's
    @property
    def assets(self) -> dict[str, AssetState]:
        return self.core.assets

    @property
    def bids(self):
        return self.core.bids

    @property
    def accepted(self):
        return self.core.accepted

    @property
    def last_cycle(self) -> int:
        return self.core.last_cycle

    @property
    def targets(self) -> dict[str, float]:
        return self.core.targets

    # --- before the ISPs -------------------------------------------------------------------------

    async def run(self) -> None:
        if self.resumed_at is not None:
            return  # rejoined after a restart: prequalified and bid before; it follows setpoints from here
        await self.prequalify()
        await self.send_schedule()
        await self.send_bids()
        await self.send(self.core.needs())

    async def prequalify(self) -> None:
        answer = await self.gw.request(self.core.prequalification_request(), self.tso, timeout=10, retries=1)
        for v in self.core.take_prequalification(answer.body):
            self.log.warning("asset not prequalified", asset=v.asset_id, reason=v.reason)

    async def send_schedule(self) -> None:
        await self.send([self.core.schedule()])

    async def send_bids(self, isps: list[datetime] | None = None) -> None:
        """One bid per configured bid and ISP, with qualified assets only: for ``isps``, by default
        the scenario's ISPs whose gate has not closed (``actors.rules.GATE_CLOSURE``)."""
        now = self.clock.now()
        bids, unsent = self.core.bids_for(
            self.core.open_isps(now) if isps is None else isps, now, self.clock.wall_seconds
        )
        for bid_id in sorted(set(unsent)):
            self.log.warning("bid not sent: an asset is not prequalified", bid=bid_id)
        await self.send(bids)

    # --- what arrives ---------------------------------------------------------------------------

    async def on_acceptance(self, msg: Received[OfferAcceptance]) -> None:
        if refusal := self.core.take_acceptance(msg.body, msg.sender):
            self.gw.refuse(msg, refusal)

    async def on_flex(self, msg: Received[FlexActivation]) -> None:
        if refusal := self.core.take_flex(msg.body):
            self.gw.refuse(msg, refusal)

    async def on_market_result(self, msg: Received[MarketResult]) -> None:
        self.core.market_results.append(msg.body)

    async def on_limit(self, msg: Received[ActivationLimit]) -> None:
        if refusal := self.core.take_limit(msg.body, msg.sender):
            self.gw.refuse(msg, refusal)
            return
        self.log.info("activation limit", bid=msg.body.bid_id, max_mw=msg.body.max_mw)

    async def on_settlement(self, msg: Received[SettlementReport]) -> None:
        self.core.settlements.append(msg.body)

    async def on_monitoring(self, msg: Received[MonitoringReport]) -> None:
        self.core.monitoring.append(msg.body)

    def asset_targets(self, setpoint: DeltaSetpoint) -> dict[str, float]:
        """How the fleet splits what it follows (``BspCore.asset_targets``); a device emulator's fault
        may replace it."""
        return self.core.asset_targets(setpoint)

    async def on_setpoint(self, msg: Received[DeltaSetpoint]) -> None:
        why = self.core.setpoint_refusal(msg.body, msg.sender, self.clock.now())
        if why is not None:
            self.core.refused_setpoints += 1
            self.gw.refuse(msg, why)
            return
        await self.answer(msg, *self.core.follow(msg.body, self.asset_targets))

    async def answer(self, msg: Received[DeltaSetpoint], answer: Telemetry, to_dsos: list, cut: list[str]) -> None:
        """A followed setpoint's telemetry: the answer to the TSO, then each DSO's; what was cut, refused."""
        env = msg.envelope
        await self.gw.publish(
            answer, self.tso, causation_id=env.message_id, correlation_id=env.correlation_id or env.message_id
        )
        await self.send(to_dsos)
        if cut:
            self.gw.refuse(msg, "followed in part: " + "; ".join(cut))
