"""The BSP: prequalifies its assets, sends schedules and bids, follows delta setpoints with its
fleet and reports telemetry every setpoint cycle (CS review Figs. 3-4, §IV.B)."""

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from actors import rules, schemes
from actors.base import Actor
from actors.config import AssetConfig, BidConfig, BspConfig
from actors.rules import ISP, isp_of
from gateway import Received
from schemas.codes import Connection, Direction, ProcessType, Quality
from schemas.envelope import Party
from schemas.messages import (
    AcceptedOffer,
    ActivationLimit,
    AssetData,
    BidAsset,
    DeltaSetpoint,
    EnergyBid,
    FlexActivation,
    FlexibilityNeed,
    MarketResult,
    Measurement,
    MonitoringReport,
    OfferAcceptance,
    PrequalificationRequest,
    Schedule,
    ScheduleSeries,
    SettlementReport,
    Telemetry,
)


@dataclass
class AssetState:
    """One asset's deviation from its schedule, following a target with a ramp limit and a
    first-order response (time constant)."""

    config: AssetConfig
    delta_mw: float = 0.0

    def step(self, target_mw: float, dt_s: float) -> float:
        c = self.config
        target = min(max(target_mw, -c.capacity_down_mw), c.capacity_up_mw)
        move = (
            (target - self.delta_mw) * (1 - math.exp(-dt_s / c.time_constant_s))
            if c.time_constant_s
            else target - self.delta_mw
        )
        limit = c.ramp_rate_mw_per_min * dt_s / 60
        self.delta_mw += max(-limit, min(limit, move))
        return self.delta_mw


def asset_data(a: AssetConfig) -> AssetData:
    """An asset's technical data as a prequalification request carries it (aFRR)."""
    return AssetData(
        asset_id=a.asset_id,
        connection=a.connection,
        dso_id=a.dso_id,
        connection_bus=a.connection_bus,
        product=ProcessType.AFRR,
        capacity_up_mw=a.capacity_up_mw,
        capacity_down_mw=a.capacity_down_mw,
        ramp_rate_mw_per_min=a.ramp_rate_mw_per_min,
        time_constant_s=a.time_constant_s,
    )


def bid_assets(bid: BidConfig, assets: dict[str, AssetConfig]) -> list[BidAsset]:
    """Where a bid's quantity comes from: its assets, their connection and share."""
    return [
        BidAsset(
            asset_id=a,
            connection=assets[a].connection,
            dso_id=assets[a].dso_id,
            connection_bus=assets[a].connection_bus,
            share_mw=share,
        )
        for a, share in bid.assets.items()
    ]


def admissible_deltas(
    sp: DeltaSetpoint, accepted: Mapping[str, AcceptedOffer], limits: Mapping[str, float]
) -> tuple[dict[str, float], list[str]]:
    """What of a setpoint the BSP follows: per bid, only a bid accepted for the setpoint's ISP, in its
    accepted direction, at most its accepted upper bound and its activation limit (MW, up +); and
    why anything was cut. The TSO's MOL, the DSO's validation and the limits are the contract; a
    setpoint beyond them (a forgery, a bug) is not followed beyond them."""
    follow: dict[str, float] = {}
    cut: list[str] = []
    for bid_id, delta in sp.bid_deltas_mw.items():
        offer = accepted.get(bid_id)
        if offer is None:
            cut.append(f"{bid_id}: not accepted for the ISP from {isp_of(sp.instant):%H:%M}")
            continue
        sign = 1.0 if offer.direction == Direction.UP else -1.0
        if delta * sign < 0:
            cut.append(f"{bid_id}: {delta:+g} MW against its direction ({offer.direction.value})")
            continue
        cap = min(offer.upper_bound_mw, limits.get(bid_id, math.inf))
        if abs(delta) > cap + 1e-9:
            cut.append(f"{bid_id}: {abs(delta):g} MW above its bound of {cap:g} MW")
        follow[bid_id] = sign * min(abs(delta), cap)
    return follow, cut


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
        self.tso = Party(role="tso", id=scenario.tso.id)
        self.assets = {a.asset_id: AssetState(a) for a in config.assets}
        self.qualified: set[str] = set()
        self.accepted: dict[datetime, dict[str, AcceptedOffer]] = {}  # ISP -> bid id -> accepted offer
        self.limits: dict[str, float] = {}  # bid id -> activation limit [MW]
        self.last_cycle = -1  # the last setpoint cycle followed: at most one setpoint per cycle
        self.fleet_at: datetime | None = None  # scenario instant the fleet's state is at
        self.targets: dict[str, float] = {a: 0.0 for a in self.assets}  # what each asset follows now [MW]
        self.refused_setpoints = 0
        self.bids = {b.bid_id: b for b in config.bids}
        self.settlements: list[SettlementReport] = []
        self.monitoring: list[MonitoringReport] = []
        self.flex_mw: dict[tuple[str, object], float] = {}  # (asset, ISP) -> block activation [MW]
        self.market_results: list[MarketResult] = []
        gateway.on(DeltaSetpoint, self.on_setpoint)
        gateway.on(FlexActivation, self.on_flex)
        gateway.on(MarketResult, self.on_market_result)
        gateway.on(ActivationLimit, self.on_limit)
        gateway.on(OfferAcceptance, self.on_acceptance)
        gateway.on(SettlementReport, self.on_settlement)
        gateway.on(MonitoringReport, self.on_monitoring)

    async def run(self) -> None:
        if self.resumed_at is not None:
            return  # rejoined after a restart: prequalified and bid before; it follows setpoints from here
        await self.prequalify()
        await self.send_schedule()
        await self.send_bids()
        await self.send_needs()

    async def send_needs(self) -> None:
        """Where a market operator takes needs: the BSP's own needs as a commercial party."""
        if not self.scenario.scheme.market_operator:
            return
        for i, need in enumerate(self.config.needs):
            await self.gw.publish(
                FlexibilityNeed(
                    need_id=f"{self.me.id}-{need.isp_start:%Y%m%d%H%M}-{i}",
                    buyer_id=self.me.id,
                    kind="commercial",
                    isp_start=need.isp_start,
                    direction=Direction.UP if need.direction == "up" else Direction.DOWN,
                    quantity=need.quantity_mw,
                    unit="MW",
                    max_price_eur_per_mwh=need.max_price_eur_per_mwh,
                ),
                Party(role="mo", id=self.scenario.market_operator),
            )

    def destination(self, bid: BidConfig) -> Party:
        """Where the scheme sends this bid (actors.schemes.bid_destination)."""
        configs = [self.assets[a].config for a in bid.assets]
        dsos = {c.dso_id for c in configs if c.connection == Connection.DN and c.dso_id is not None}
        role, party = schemes.bid_destination(self.scenario.scheme, dsos, self.scenario.market_operator, self.tso.id)
        return Party.of(role, party)

    async def prequalify(self) -> None:
        assets = [asset_data(a) for a in self.config.assets]
        answer = await self.gw.request(
            PrequalificationRequest(bsp_id=self.me.id, assets=assets), self.tso, timeout=10, retries=1
        )
        self.qualified = {v.asset_id for v in answer.body.verdicts if v.qualified}
        for v in answer.body.verdicts:
            if not v.qualified:
                self.log.warning("asset not prequalified", asset=v.asset_id, reason=v.reason)

    async def send_schedule(self) -> None:
        start = self.scenario.isps()[0]
        series = [
            ScheduleSeries(asset_id=a.asset_id, dso_id=a.dso_id, p_mw=[a.scheduled_mw] * len(self.scenario.isps()))
            for a in self.config.assets
        ]
        await self.gw.publish(Schedule(kind="day_ahead", start=start, series=series), self.tso)

    async def send_bids(self, isps: list[datetime] | None = None) -> None:
        """One bid per configured bid and ISP, with qualified assets only: for ``isps``, by default
        the scenario's ISPs whose gate has not closed (one already begun is skipped:
        ``actors.rules.GATE_CLOSURE``)."""
        by_id = {a.asset_id: a for a in self.config.assets}
        if isps is None:
            isps = [isp for isp in self.scenario.isps() if rules.bid_in_time(isp, self.clock.now())]
        for isp in isps:
            for bid in self.config.bids:
                if not set(bid.assets) <= self.qualified:
                    self.log.warning("bid not sent: an asset is not prequalified", bid=bid.bid_id)
                    continue
                assets = bid_assets(bid, by_id)
                await self.gw.publish(
                    EnergyBid(
                        bid_id=bid.bid_id,
                        bsp_id=self.me.id,
                        process=ProcessType.AFRR,
                        direction=bid.code,
                        isp_start=isp,
                        quantity_mw=bid.quantity_mw,
                        price_eur_per_mwh=bid.price_eur_per_mwh,
                        reference_mw=self.config.reference_mw,
                        ramp_rate_mw_per_min=bid.ramp_rate_mw_per_min,
                        assets=assets,
                    ),
                    self.destination(bid),
                    valid_for_s=self.clock.wall_seconds((isp + ISP - self.clock.now()).total_seconds()) + 60,
                )

    def contracted(self, sender: Party) -> bool:
        """The parties whose offer acceptances this BSP takes: its TSO and the market operator of the
        integrated market."""
        return sender == self.tso or sender == Party(role="mo", id=self.scenario.market_operator)

    async def on_acceptance(self, msg: Received[OfferAcceptance]) -> None:
        if not self.contracted(msg.sender):
            await self.gw.refuse(msg, f"offer acceptances are taken from {self.tso} and the market operator only")
            return
        mine = {b.bid_id for b in self.config.bids}
        self.accepted[msg.body.isp_start] = {o.bid_id: o for o in msg.body.accepted if o.bid_id in mine}

    async def on_flex(self, msg: Received[FlexActivation]) -> None:
        """A block activation by a DSO or a market: the assets' schedules move for its ISP."""
        f = msg.body
        bid = self.bids.get(f.bid_id)
        if f.bsp_id != self.me.id or bid is None or f.activated_mw > bid.quantity_mw + 1e-9:
            await self.gw.refuse(
                msg,
                f"block activation of {f.bid_id} ({f.activated_mw:g} MW): not one of this BSP's "
                f"bids, or beyond its quantity",
            )
            return
        for asset, mw in schemes.asset_moves(f).items():
            if asset in self.assets:
                self.flex_mw[(asset, f.isp_start)] = self.flex_mw.get((asset, f.isp_start), 0.0) + mw

    async def on_market_result(self, msg: Received[MarketResult]) -> None:
        self.market_results.append(msg.body)

    async def on_limit(self, msg: Received[ActivationLimit]) -> None:
        if msg.sender != self.tso or msg.body.bsp_id != self.me.id or msg.body.bid_id not in self.bids:
            await self.gw.refuse(msg, f"activation limits are taken from {self.tso} for this BSP's own bids only")
            return
        self.limits[msg.body.bid_id] = msg.body.max_mw
        self.log.info("activation limit", bid=msg.body.bid_id, max_mw=msg.body.max_mw)

    async def on_settlement(self, msg: Received[SettlementReport]) -> None:
        self.settlements.append(msg.body)

    async def on_monitoring(self, msg: Received[MonitoringReport]) -> None:
        self.monitoring.append(msg.body)

    def asset_targets(self, setpoint: DeltaSetpoint) -> dict[str, float]:
        """Split the per-bid deltas over the assets by their shares; honour activation limits."""
        targets = {a: 0.0 for a in self.assets}
        for bid_id, delta in setpoint.bid_deltas_mw.items():
            bid = self.bids.get(bid_id)
            if bid is None:
                continue
            if bid_id in self.limits:
                delta = math.copysign(min(abs(delta), self.limits[bid_id]), delta)
            for asset, share in bid.assets.items():
                targets[asset] += delta * share / bid.quantity_mw * self.config.follow_factor
        return targets

    def setpoint_refusal(self, msg: Received[DeltaSetpoint]) -> str | None:
        """Why a setpoint is not followed at all, or None: only from the contracted TSO, for this BSP,
        one per cycle, in order, and not about an instant more than two periods ahead."""
        sp, period = msg.body, self.scenario.setpoint_period_s
        if msg.sender != self.tso:
            return f"setpoints are taken from {self.tso} only (the contracted TSO), not from {msg.sender}"
        if sp.bsp_id != self.me.id:
            return f"setpoint for {sp.bsp_id}, not for {self.me.id}"
        if sp.cycle <= self.last_cycle:
            return f"cycle {sp.cycle} comes after cycle {self.last_cycle}: at most one setpoint per cycle, in order"
        if sp.instant > self.clock.now() + timedelta(seconds=2 * period):
            return f"instant {sp.instant.isoformat()} is more than two setpoint periods ahead of the scenario clock"
        if self.fleet_at is not None and sp.instant <= self.fleet_at:
            return f"instant {sp.instant.isoformat()} is not after the last setpoint's ({self.fleet_at.isoformat()})"
        return None

    def advance_fleet(self, to: datetime) -> None:
        """The fleet follows its targets for the scenario time since its last step: by time, not by
        the number of messages received."""
        if self.fleet_at is not None:
            dt = min((to - self.fleet_at).total_seconds(), 3600.0)
            if dt > 0:
                for asset_id, state in self.assets.items():
                    state.step(self.targets[asset_id], dt)
        self.fleet_at = to

    async def on_setpoint(self, msg: Received[DeltaSetpoint]) -> None:
        why = self.setpoint_refusal(msg)
        if why is not None:
            self.refused_setpoints += 1
            await self.gw.refuse(msg, why)
            return
        sp = msg.body
        self.last_cycle = sp.cycle
        # the fleet has followed the previous targets until now; report, then take the new setpoint
        self.advance_fleet(sp.instant)
        delivered = sum(a.delta_mw for a in self.assets.values())
        isp = isp_of(sp.instant)
        measurements = [
            Measurement(
                resource_id=a.config.asset_id,
                quality=Quality.GOOD,
                p_mw=a.config.scheduled_mw + self.flex_mw.get((a.config.asset_id, isp), 0.0) + a.delta_mw,
            )
            for a in self.assets.values()
        ]
        telemetry = Telemetry(
            source_id=self.me.id,
            instant=sp.instant,
            cycle=sp.cycle,
            delivered_delta_mw=delivered,
            measurements=measurements,
        )
        await self.gw.publish(
            telemetry,
            self.tso,
            causation_id=msg.envelope.message_id,
            correlation_id=msg.envelope.correlation_id or msg.envelope.message_id,
        )
        for dso_id in {
            a.config.dso_id for a in self.assets.values() if a.config.connection == Connection.DN and a.config.dso_id
        }:
            dn = [m for m, a in zip(measurements, self.assets.values()) if a.config.dso_id == dso_id]
            await self.gw.publish(
                Telemetry(source_id=self.me.id, instant=sp.instant, cycle=sp.cycle, measurements=dn),
                Party(role="dso", id=dso_id),
            )
        follow, cut = admissible_deltas(sp, self.accepted.get(isp, {}), self.limits)
        if cut:
            await self.gw.refuse(msg, "followed in part: " + "; ".join(cut))
        self.targets = self.asset_targets(sp.model_copy(update={"bid_deltas_mw": follow}))
