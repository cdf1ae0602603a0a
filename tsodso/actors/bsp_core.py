"""The BSP's decisions, apart from any I/O: its fleet (each asset's deviation from schedule with ramp
and first-order response), its contract (prequalified assets, accepted offers, activation limits) and
the functions of (state, input, scenario time) that say what it sends: prequalification request,
schedule, bids, and for each delta setpoint its telemetry and what of the setpoint it follows
(CS review Figs. 3-4, §IV.B). The agent (``actors.bsp.BSP``) feeds it and publishes.
"""

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from tsodso.actors import rules, schemes
from tsodso.actors.config import AssetConfig, BidConfig, BspConfig, Scenario
from tsodso.actors.outbox import Send
from tsodso.actors.rules import ISP, isp_of
from tsodso.schemas.codes import Connection, Direction, ProcessType, Quality
from tsodso.schemas.envelope import Party
from tsodso.schemas.messages import (
    AcceptedOffer,
    ActivationLimit,
    AssetData,
    AssetVerdict,
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
    PrequalificationResult,
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


@dataclass(frozen=True)
class SiteReading:
    """What a site outside the testbed measured of one asset at a setpoint's instant (a BSP behind a field
    protocol bridge: ``actors.bsp_iec104``)."""

    delivered_mw: float  # [MW] the asset's deviation from its schedule
    quality: Quality = Quality.GOOD


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


class BspCore:
    """The BSP's fleet, contract and decisions (see the module's docstring)."""

    def __init__(self, scenario: Scenario, config: BspConfig, me: str):
        self.scenario = scenario
        self.config = config
        self.me = me
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

    # --- before the ISPs: prequalification, schedule, bids, needs --------------------------------

    def prequalification_request(self) -> PrequalificationRequest:
        return PrequalificationRequest(bsp_id=self.me, assets=[asset_data(a) for a in self.config.assets])

    def take_prequalification(self, result: PrequalificationResult) -> list[AssetVerdict]:
        """The assets the TSO (and their DSO) qualified; the verdicts of those it did not."""
        self.qualified = {v.asset_id for v in result.verdicts if v.qualified}
        return [v for v in result.verdicts if not v.qualified]

    def schedule(self) -> Send:
        isps = self.scenario.isps()
        series = [
            ScheduleSeries(asset_id=a.asset_id, dso_id=a.dso_id, p_mw=[a.scheduled_mw] * len(isps))
            for a in self.config.assets
        ]
        return Send(Schedule(kind="day_ahead", start=isps[0], series=series), self.tso)

    def destination(self, bid: BidConfig) -> Party:
        """Where the scheme sends this bid (``actors.schemes.bid_destination``)."""
        configs = [self.assets[a].config for a in bid.assets]
        dsos = {c.dso_id for c in configs if c.connection == Connection.DN and c.dso_id is not None}
        role, party = schemes.bid_destination(self.scenario.scheme, dsos, self.scenario.market_operator, self.tso.id)
        return Party.of(role, party)

    def open_isps(self, now: datetime) -> list[datetime]:
        """The scenario's ISPs whose gate has not closed at ``now`` (``rules.GATE_CLOSURE``)."""
        return [isp for isp in self.scenario.isps() if rules.bid_in_time(isp, now)]

    def bids_for(
        self, isps: list[datetime], now: datetime, wall_seconds: Callable[[float], float]
    ) -> tuple[list[Send], list[str]]:
        """One bid per configured bid and ISP, with qualified assets only, valid until its ISP ends (and
        a minute); the bids not sent for want of a prequalified asset."""
        by_id = {a.asset_id: a for a in self.config.assets}
        out, unsent = [], []
        for isp in isps:
            for bid in self.config.bids:
                if not set(bid.assets) <= self.qualified:
                    unsent.append(bid.bid_id)
                    continue
                body = EnergyBid(
                    bid_id=bid.bid_id,
                    bsp_id=self.me,
                    process=ProcessType.AFRR,
                    direction=bid.code,
                    isp_start=isp,
                    quantity_mw=bid.quantity_mw,
                    price_eur_per_mwh=bid.price_eur_per_mwh,
                    reference_mw=self.config.reference_mw,
                    ramp_rate_mw_per_min=bid.ramp_rate_mw_per_min,
                    assets=bid_assets(bid, by_id),
                )
                valid_for = wall_seconds((isp + ISP - now).total_seconds()) + 60
                out.append(Send(body, self.destination(bid), valid_for_s=valid_for))
        return out, unsent

    def needs(self) -> list[Send]:
        """Where a market operator takes needs: the BSP's own needs as a commercial party."""
        if not self.scenario.scheme.market_operator:
            return []
        mo = Party(role="mo", id=self.scenario.market_operator)
        return [
            Send(
                FlexibilityNeed(
                    need_id=f"{self.me}-{need.isp_start:%Y%m%d%H%M}-{i}",
                    buyer_id=self.me,
                    kind="commercial",
                    isp_start=need.isp_start,
                    direction=Direction.UP if need.direction == "up" else Direction.DOWN,
                    quantity=need.quantity_mw,
                    unit="MW",
                    max_price_eur_per_mwh=need.max_price_eur_per_mwh,
                ),
                mo,
            )
            for i, need in enumerate(self.config.needs)
        ]

    # --- the contract --------------------------------------------------------------------------

    def contracted(self, sender: Party) -> bool:
        """The parties whose offer acceptances this BSP takes: its TSO and the market operator of the
        integrated market."""
        return sender == self.tso or sender == Party(role="mo", id=self.scenario.market_operator)

    def take_acceptance(self, body: OfferAcceptance, sender: Party) -> str | None:
        if not self.contracted(sender):
            return f"offer acceptances are taken from {self.tso} and the market operator only"
        mine = {b.bid_id for b in self.config.bids}
        self.accepted[body.isp_start] = {o.bid_id: o for o in body.accepted if o.bid_id in mine}
        return None

    def take_flex(self, f: FlexActivation) -> str | None:
        """A block activation by a DSO or a market: the assets' schedules move for its ISP."""
        bid = self.bids.get(f.bid_id)
        if f.bsp_id != self.me or bid is None or f.activated_mw > bid.quantity_mw + 1e-9:
            return (
                f"block activation of {f.bid_id} ({f.activated_mw:g} MW): not one of this BSP's "
                f"bids, or beyond its quantity"
            )
        for asset, mw in schemes.asset_moves(f).items():
            if asset in self.assets:
                self.flex_mw[(asset, f.isp_start)] = self.flex_mw.get((asset, f.isp_start), 0.0) + mw
        return None

    def take_limit(self, body: ActivationLimit, sender: Party) -> str | None:
        if sender != self.tso or body.bsp_id != self.me or body.bid_id not in self.bids:
            return f"activation limits are taken from {self.tso} for this BSP's own bids only"
        self.limits[body.bid_id] = body.max_mw
        return None

    def asset_limits(self) -> dict[str, dict[str, float]]:
        """Per direction ('up', 'down'), the largest deviation from schedule each asset may make under the
        activation limits [MW, a magnitude]: the sum over its bids of that direction of the bid's limit
        (else its quantity) times the asset's share of the bid."""
        most = {"up": dict.fromkeys(self.assets, 0.0), "down": dict.fromkeys(self.assets, 0.0)}
        for bid in self.bids.values():
            cap = min(self.limits.get(bid.bid_id, bid.quantity_mw), bid.quantity_mw)
            for asset, share in bid.assets.items():
                if asset in most[bid.direction]:
                    most[bid.direction][asset] += cap * share / bid.quantity_mw
        return most

    # --- following setpoints (CS review §IV.B) ------------------------------------------------------

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

    def setpoint_refusal(self, sp: DeltaSetpoint, sender: Party, now: datetime) -> str | None:
        """Why a setpoint is not followed at all, or None: only from the contracted TSO, for this BSP,
        one per cycle, in order, and not about an instant more than two periods ahead."""
        period = self.scenario.setpoint_period_s
        if sender != self.tso:
            return f"setpoints are taken from {self.tso} only (the contracted TSO), not from {sender}"
        if sp.bsp_id != self.me:
            return f"setpoint for {sp.bsp_id}, not for {self.me}"
        if sp.cycle <= self.last_cycle:
            return f"cycle {sp.cycle} comes after cycle {self.last_cycle}: at most one setpoint per cycle, in order"
        if sp.instant > now + timedelta(seconds=2 * period):
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

    def follow(
        self,
        sp: DeltaSetpoint,
        targets_of: Callable[[DeltaSetpoint], dict[str, float]] | None = None,
        measured: Mapping[str, SiteReading] | None = None,
    ) -> tuple[Telemetry, list[Send], list[str]]:
        """Take setpoint ``sp`` (already found acceptable by ``setpoint_refusal``): the fleet has
        followed the previous targets until its instant (the model's, or as a site ``measured`` it);
        its telemetry (to the TSO: the answer; to each DSO: its DN assets), then the new targets from
        what the contract admits of the setpoint, and what was cut of it."""
        self.last_cycle = sp.cycle
        if measured is None:
            self.advance_fleet(sp.instant)
        else:
            for asset_id, reading in measured.items():
                self.assets[asset_id].delta_mw = reading.delivered_mw
            self.fleet_at = sp.instant
        delivered = sum(a.delta_mw for a in self.assets.values())
        isp = isp_of(sp.instant)
        measurements = [
            Measurement(
                resource_id=a.config.asset_id,
                quality=measured[a.config.asset_id].quality if measured else Quality.GOOD,
                p_mw=a.config.scheduled_mw + self.flex_mw.get((a.config.asset_id, isp), 0.0) + a.delta_mw,
            )
            for a in self.assets.values()
        ]
        answer = Telemetry(
            source_id=self.me,
            instant=sp.instant,
            cycle=sp.cycle,
            delivered_delta_mw=delivered,
            measurements=measurements,
        )
        to_dsos = []
        for dso_id in sorted(
            {a.config.dso_id for a in self.assets.values() if a.config.connection == Connection.DN and a.config.dso_id}
        ):
            dn = [m for m, a in zip(measurements, self.assets.values()) if a.config.dso_id == dso_id]
            body = Telemetry(source_id=self.me, instant=sp.instant, cycle=sp.cycle, measurements=dn)
            to_dsos.append(Send(body, Party(role="dso", id=dso_id)))
        self.targets, cut = self.new_targets(sp, targets_of)
        return answer, to_dsos, cut

    def new_targets(
        self, sp: DeltaSetpoint, targets_of: Callable[[DeltaSetpoint], dict[str, float]] | None = None
    ) -> tuple[dict[str, float], list[str]]:
        """What each asset follows after setpoint ``sp`` [MW], from what the contract admits of it; and
        what was cut of it."""
        follow, cut = admissible_deltas(sp, self.accepted.get(isp_of(sp.instant), {}), self.limits)
        return (targets_of or self.asset_targets)(sp.model_copy(update={"bid_deltas_mw": follow})), cut
