"""The TSO: prequalifies (forwarding DN assets to their DSO), collects bids, builds the merit order
list per ISP and has it validated by the DSOs, activates aFRR by 4-second delta setpoints within
the validated bounds, checks delivery, limits activations a DSO objects to, signals emergencies and
settles per ISP (CS review Figs. 3-4 and §IV.B, Birk et al. 2017 §3)."""

import asyncio
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from actors import rules, schemes
from actors.base import Actor
from actors.config import TsoConfig
from actors.market import clear_in_order, joint_dispatch, per_bid
from actors.rules import isp_of
from gateway import Received, RequestTimeout
from schemas.codes import BidStatus, Connection, Direction, ProcessType
from schemas.envelope import Party
from schemas.messages import (
    AcceptedOffer,
    ActivationLimit,
    AssetVerdict,
    Award,
    CurtailmentRequest,
    CurtailmentResponse,
    DeltaSetpoint,
    EnergyBid,
    FaultReport,
    FlexActivation,
    FlexibilityNeed,
    Forecast,
    MarketResult,
    MeritOrderList,
    MolEntry,
    MonitoringReport,
    OfferAcceptance,
    PrequalificationForward,
    PrequalificationRequest,
    PrequalificationResult,
    Schedule,
    ScheduleSeries,
    SettlementLine,
    SettlementReport,
    SystemStateNotice,
    Telemetry,
    TerminationSignal,
)


@dataclass
class Activated:
    """A bid accepted for the current ISP and how far it is activated."""

    bid: EnergyBid
    rank: int
    upper_mw: float
    activated_mw: float = 0.0
    energy_mwh: float = 0.0

    @property
    def sign(self) -> float:
        return 1.0 if self.bid.direction == Direction.UP else -1.0


@dataclass
class BspRecord:
    setpoints: dict[int, float] = field(default_factory=dict)  # cycle -> delta [MW]
    delivered: dict[int, float] = field(default_factory=dict)  # cycle -> delivered delta at that instant [MW]
    instants: dict[int, datetime] = field(default_factory=dict)


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
    )

    def __init__(self, gateway, clock, scenario, config: TsoConfig):
        super().__init__(gateway, clock, scenario)
        self.isp_start: datetime | None = None  # the ISP being activated
        self.next_step: datetime | None = None  # next instant the setpoints may change (the ramp step)
        self.first_cycle_of_period = 0  # first cycle of the running 5-minute monitoring period
        self.config = config
        self.bids: dict[datetime, dict[str, EnergyBid]] = defaultdict(dict)
        self.qualified: dict[str, set[str]] = defaultdict(set)  # bsp -> qualified asset ids
        self.active: dict[str, Activated] = {}  # bid id -> current ISP activation
        self.validations: dict[str, dict] = {}  # bid id -> last verdict (as dict)
        self.dso_limits_mw: dict[str, float] = {}
        self.rt_limits: dict[str, float] = {}
        self.mol_round_trip_ms: list[float] = []
        self.mol_iterations: dict[str, int] = {}
        self.fallbacks: list[str] = []
        self.records: dict[str, BspRecord] = defaultdict(BspRecord)
        self.monitoring: list[MonitoringReport] = []
        self.settlements: list[SettlementReport] = []
        self.forecasts: list[Forecast] = []
        self.faults: list[FaultReport] = []
        self.curtailments: list[CurtailmentResponse] = []
        self.terminations: list[TerminationSignal] = []
        self.schedule_changes: list[dict] = []
        self.conversation: uuid.UUID | None = None
        self.late_cycles = 0
        # the coordination schemes (actors.schemes)
        self.scheme = scenario.scheme
        self.system_profile = schemes.system_imbalance_profile(scenario, with_areas=True)  # TSO + DSO areas
        self.flex: list[FlexActivation] = []  # block activations by DSOs and markets (copies)
        self.market_results: dict[datetime, MarketResult] = {}  # integrated market: what the operator gave
        self.result_arrived = asyncio.Event()
        self.clearing_ms: list[float] = []
        self.balance = {"need_mwh": 0.0, "residual_mwh": 0.0}
        self.der_energy_mwh = 0.0
        self.energy_by_isp: dict[str, float] = defaultdict(float)  # ISP -> net aFRR energy (up +) [MWh]
        self.cost_eur = 0.0
        gateway.on(FlexActivation, self.on_flex)
        gateway.on(MarketResult, self.on_market_result)
        gateway.on(PrequalificationRequest, self.on_prequalification)
        gateway.on(EnergyBid, self.on_bid)
        gateway.on(Schedule, self.on_schedule)
        gateway.on(Telemetry, self.on_telemetry)
        gateway.on(TerminationSignal, self.on_termination)
        gateway.on(FaultReport, self.on_fault)
        gateway.on(Forecast, self.on_forecast)

    # --- prequalification (Fig. 3) ----------------------------------------------------------

    async def on_prequalification(self, msg: Received[PrequalificationRequest]) -> None:
        req = msg.body
        if req.bsp_id != msg.sender.id:
            await self.gw.refuse(msg, f"prequalification of {req.bsp_id} asked by {msg.sender}: a BSP asks for itself")
            return
        verdicts: list[AssetVerdict] = []
        by_dso: dict[str, list] = defaultdict(list)
        for asset in req.assets:
            if asset.connection == Connection.DN and self.scenario.dso_validates:
                if asset.dso_id is None:
                    verdicts.append(
                        AssetVerdict(
                            asset_id=asset.asset_id,
                            qualified=False,
                            checked_by="tso",
                            validated_capacity_up_mw=0,
                            validated_capacity_down_mw=0,
                            reason="DN asset without a DSO",
                        )
                    )
                else:
                    by_dso[asset.dso_id].append(asset)
                continue
            ok = asset.product == ProcessType.AFRR and asset.capacity_up_mw + asset.capacity_down_mw > 0
            verdicts.append(
                AssetVerdict(
                    asset_id=asset.asset_id,
                    qualified=ok,
                    checked_by="tso",
                    validated_capacity_up_mw=asset.capacity_up_mw if ok else 0,
                    validated_capacity_down_mw=asset.capacity_down_mw if ok else 0,
                    reason=None if ok else "not an aFRR-capable asset",
                )
            )
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
                verdicts += [
                    AssetVerdict(
                        asset_id=a.asset_id,
                        qualified=False,
                        checked_by="tso",
                        validated_capacity_up_mw=0,
                        validated_capacity_down_mw=0,
                        reason=f"DSO {dso_id} did not answer: {exc}",
                    )
                    for a in assets
                ]
        self.qualified[req.bsp_id] |= {v.asset_id for v in verdicts if v.qualified}
        await self.gw.reply(msg, PrequalificationResult(bsp_id=req.bsp_id, verdicts=verdicts))

    # --- schedules, forecasts, bids ---------------------------------------------------------

    async def on_schedule(self, msg: Received[Schedule]) -> None:
        """Pass the final schedules of DN-connected resources to their DSO (Birk et al. 2017 §3); record
        the DSOs' changes to them."""
        if msg.sender.role == "dso":
            self.schedule_changes.append(msg.body.model_dump(mode="json"))
            self.log.warning("DSO changed DER schedules", dso=msg.sender.id, reason=msg.body.reason)
            return
        by_dso: dict[str, list[ScheduleSeries]] = defaultdict(list)
        for series in msg.body.series:
            if series.dso_id:
                by_dso[series.dso_id].append(series)
        for dso_id, listed in by_dso.items():
            await self.gw.publish(
                Schedule(kind="final", start=msg.body.start, resolution=msg.body.resolution, series=listed),
                Party(role="dso", id=dso_id),
            )

    async def on_forecast(self, msg: Received[Forecast]) -> None:
        self.forecasts.append(msg.body)

    async def on_bid(self, msg: Received[EnergyBid]) -> None:
        bid = msg.body
        if msg.sender.role == "bsp" and bid.bsp_id != msg.sender.id:
            await self.gw.refuse(msg, f"a bid of {bid.bsp_id} from {msg.sender}: a BSP bids for itself")
            return
        now = self.clock.now()
        if not rules.bid_in_time(bid.isp_start, now):
            await self.gw.refuse(msg, rules.late_bid_reason(bid.isp_start, now))
            return
        if not self.scheme.tso_reaches_der and schemes.dn_dsos(bid):
            self.log.warning("bid refused: the TSO cannot reach DERs in the fragmented scheme", bid=bid.bid_id)
            return
        missing = {a.asset_id for a in bid.assets} - self.qualified[bid.bsp_id]
        if missing:
            self.log.warning("bid refused: assets not prequalified", bid=bid.bid_id, assets=sorted(missing))
            return
        self.bids[bid.isp_start][bid.bid_id] = bid

    # --- the merit order list (Fig. 4) ------------------------------------------------------

    async def build_mol(self, isp: datetime) -> None:
        """Rank the ISP's bids per direction; where the scheme has DSOs validate, have every
        affected DSO validate them, re-sending with the new bounds until no bid changes; clear the
        ISP as the scheme says (actors.schemes) and accept the offers."""
        # one conversation per ISP: the MOL, its validations, the acceptance, the setpoints and the
        # telemetry answering them share this correlation id (the chain the reports follow)
        self.conversation = uuid.uuid4()
        if self.scheme.tso_activates_from_market:
            await self.take_market_result(isp)
            return
        bids = self.bids.get(isp, {})
        entries = schemes.ranked(list(bids.values()))
        mol_id = f"mol-{isp:%Y%m%d%H%M}"
        dso_needs: list[FlexibilityNeed] = []
        if self.scheme.tso_asks_dsos:
            dsos = sorted({d for e in entries.values() for d in schemes.dn_dsos(e)})
            for needs in await asyncio.gather(*(self.validate_with(dso, mol_id, isp, entries) for dso in dsos)):
                dso_needs += needs
        t0 = time.perf_counter()
        need = schemes.balancing_need(self.scenario, isp, self.me.id, with_areas=self.scheme.tso_balances_areas)
        if self.scheme.clearing == "joint_dispatch":
            awards = joint_dispatch(
                [schemes.market_need(n, "dso") for n in dso_needs]
                + ([schemes.market_need(need, "tso")] if need else []),
                schemes.offers(entries),
            )
        else:
            awards = clear_in_order([schemes.market_need(need, "tso")] if need else [], schemes.offers(entries))
        self.clearing_ms.append((time.perf_counter() - t0) * 1000)
        if self.scheme.clearing == "joint_dispatch":  # the TSO activates what the market gave it, the DSOs the rest
            mine = per_bid([a for a in awards if a.buyer == f"tso/{self.me.id}"])
            entries = {
                b: e.model_copy(update={"upper_bound_mw": round(mine[b], 4)}) for b, e in entries.items() if b in mine
            }
        self.active = {e.bid_id: Activated(bids[e.bid_id], e.rank, e.upper_bound_mw) for e in entries.values()}
        await self.accept_offers(isp, bids)
        if self.scheme.tso_publishes_result:
            # hybrid: what the TSO expects to activate, so each DSO relieves what remains with the
            # rest; common market: what the joint dispatch gave each DSO
            listed = schemes.ranked(list(bids.values()))
            result = MarketResult(
                isp_start=isp,
                scheme=self.scheme.name,
                computation_time_s=self.clearing_ms[-1] / 1000,
                awards=[self.award(listed[a.bid_id], bids[a.bid_id], a) for a in awards],
            )
            for dso in sorted(d.id for d in self.scenario.dsos):
                await self.gw.publish(result, Party(role="dso", id=dso), correlation_id=self.conversation)

    @staticmethod
    def award(entry, bid: EnergyBid, a) -> Award:
        role, buyer = a.buyer.split("/", 1)
        return Award(
            **entry.model_dump(),
            buyer_id=buyer,
            buyer_role=role,
            need_id=a.need_id,
            awarded_mw=a.mw,
            ramp_rate_mw_per_min=bid.ramp_rate_mw_per_min,
            reference_mw=bid.reference_mw,
        )

    async def take_market_result(self, isp: datetime) -> None:
        """Integrated market: activate what the market operator gave the TSO (its need went to the
        operator at the start of the run)."""
        deadline = time.monotonic() + self.config.mol_timeout_s
        while isp not in self.market_results and time.monotonic() < deadline:
            self.result_arrived.clear()
            try:
                await asyncio.wait_for(self.result_arrived.wait(), deadline - time.monotonic())
            except TimeoutError:
                break
        result = self.market_results.get(isp)
        self.active = {}
        if result is None:
            self.fallbacks.append(f"{self.scenario.market_operator}:{isp:%H%M}:no market result")
            self.log.warning("no market result for the ISP", isp=isp.isoformat())
            return
        for a in result.awards:
            if a.buyer_role == "tso" and a.buyer_id == self.me.id:
                bid = EnergyBid(
                    bid_id=a.bid_id,
                    bsp_id=a.bsp_id,
                    process=ProcessType.AFRR,
                    direction=a.direction,
                    isp_start=isp,
                    quantity_mw=a.quantity_mw,
                    price_eur_per_mwh=a.price_eur_per_mwh,
                    reference_mw=a.reference_mw,
                    ramp_rate_mw_per_min=a.ramp_rate_mw_per_min,
                    assets=a.assets,
                )
                self.active[a.bid_id] = Activated(bid, a.rank, a.awarded_mw)

    async def on_market_result(self, msg: Received[MarketResult]) -> None:
        self.market_results[msg.body.isp_start] = msg.body
        self.result_arrived.set()

    async def send_needs(self) -> None:
        """Integrated market: the TSO's balancing need of every ISP to the market operator."""
        mo = Party(role="mo", id=self.scenario.market_operator)
        for isp in self.scenario.isps():
            if isp - rules.MARKET_GATE >= self.scenario.start:
                need = schemes.balancing_need(self.scenario, isp, self.me.id)
                if need is not None:
                    await self.gw.publish(need, mo)

    async def on_flex(self, msg: Received[FlexActivation]) -> None:
        """A block activation by a DSO or a market: part of the system balance from its ISP on
        (except in the fragmented scheme, where the DSO balances its area itself). In the hybrid
        scheme the TSO's list holds the whole of each bid, so what a DSO buys is taken off it."""
        f = msg.body
        self.flex.append(f)
        a = self.active.get(f.bid_id)
        if self.scheme.dso_relieves_rest and a is not None and a.bid.isp_start == f.isp_start:
            a.upper_mw = max(0.0, a.upper_mw - f.activated_mw)  # the DSO bought what the TSO left

    def flex_net(self, t: datetime) -> float:
        """Net block activation in the ISP of ``t`` (MW, up +)."""
        isp = isp_of(t)
        return sum(schemes.sign(f.direction) * f.activated_mw for f in self.flex if f.isp_start == isp)

    async def validate_with(
        self, dso_id: str, mol_id: str, isp: datetime, entries: dict[str, MolEntry]
    ) -> list[FlexibilityNeed]:
        """Have one DSO validate the list; returns the needs it sent with its last answer."""
        dso = Party(role="dso", id=dso_id)
        needs: list[FlexibilityNeed] = []
        for iteration in range(1, rules.MOL_ITERATIONS + 1):
            mine = [
                e
                for e in entries.values()
                if any(a.connection == Connection.DN and a.dso_id == dso_id for a in e.assets)
            ]
            if not mine:
                return needs
            mol = MeritOrderList(mol_id=mol_id, process=ProcessType.AFRR, isp_start=isp, iteration=iteration, bids=mine)
            t0 = time.perf_counter()
            try:
                answer = await self.gw.request(
                    mol,
                    dso,
                    timeout=self.config.mol_timeout_s,
                    retries=self.config.mol_retries,
                    correlation_id=self.conversation,
                )
            except RequestTimeout:
                self.fallbacks.append(f"{dso_id}:{mol_id}:{self.config.mol_fallback}")
                self.log.warning(
                    "MOL validation missed its window; fallback", dso=dso_id, fallback=self.config.mol_fallback
                )
                if self.config.mol_fallback == "exclude_dn":
                    for e in mine:
                        entries.pop(e.bid_id, None)
                return needs
            self.mol_round_trip_ms.append((time.perf_counter() - t0) * 1000)
            needs = answer.body.needs
            self.mol_iterations[dso_id] = iteration
            changed = False
            for r in answer.body.results:
                if r.status != BidStatus.ACCEPTED or r.bid_id not in self.validations:
                    self.validations[r.bid_id] = r.model_dump(mode="json")  # the verdict that set the bound
                if r.bid_id not in entries:
                    continue
                if r.status == BidStatus.REJECTED:
                    entries.pop(r.bid_id)
                    self.dso_limits_mw[r.bid_id] = 0.0
                    changed = True
                elif r.upper_bound_mw < entries[r.bid_id].upper_bound_mw - 1e-9:
                    entries[r.bid_id] = entries[r.bid_id].model_copy(update={"upper_bound_mw": r.upper_bound_mw})
                    self.dso_limits_mw[r.bid_id] = r.upper_bound_mw
                    changed = True
            if not changed:
                return needs  # the DSO accepted the list as it stands
        return needs

    async def accept_offers(self, isp: datetime, bids: dict[str, EnergyBid]) -> None:
        for bsp in sorted({b.bsp_id for b in bids.values()}):
            accepted = [
                AcceptedOffer(bid_id=a.bid.bid_id, direction=a.bid.direction, upper_bound_mw=a.upper_mw)
                for a in self.active.values()
                if a.bid.bsp_id == bsp
            ]
            rejected = sorted(b.bid_id for b in bids.values() if b.bsp_id == bsp and b.bid_id not in self.active)
            await self.gw.publish(
                OfferAcceptance(isp_start=isp, accepted=accepted, rejected_bid_ids=rejected),
                Party(role="bsp", id=bsp),
                correlation_id=self.conversation,
            )

    # --- activation (§IV.B) -------------------------------------------------------------------

    def exogenous(self, t: datetime) -> float:
        """The imbalance the scenario gives: the TSO's profile plus the DSO areas' (MW short +)."""
        return schemes.profile_at(self.system_profile, t)

    def imbalance(self, t: datetime) -> float:
        """What the TSO balances at ``t`` (MW short +): its own area's imbalance and, unless the
        scheme is fragmented, the DSO areas' and what DSOs and markets activated outside aFRR."""
        if not self.scheme.tso_balances_areas:
            return schemes.profile_at(self.config.imbalance, t)
        return self.exogenous(t) - self.flex_net(t)

    def step_activations(self, t: datetime, stepping: bool) -> None:
        """Allocate the demand over the bids in merit order within their bounds; at a step instant
        move each bid toward its share by at most ramp x step period (1 MW per 30 s at 2 MW/min)."""
        demand = self.imbalance(t - timedelta(seconds=self.config.activation_delay_s))
        direction = Direction.UP if demand >= 0 else Direction.DOWN
        remaining = abs(demand)
        for a in sorted(self.active.values(), key=lambda a: (a.bid.direction != direction, a.rank)):
            bound = min(a.upper_mw, self.rt_limits.get(a.bid.bid_id, a.upper_mw))
            target = 0.0
            if a.bid.direction == direction:
                target = min(bound, remaining)
                remaining -= target
            if a.activated_mw > bound:
                a.activated_mw = bound  # a new limit applies at once
            if stepping:
                step = rules.ramp_step_mw(a.bid.ramp_rate_mw_per_min, self.config.setpoint_step_s)
                a.activated_mw += max(-step, min(step, target - a.activated_mw))

    async def send_setpoints(self, cycle: int, t: datetime) -> None:
        per_bsp: dict[str, dict[str, float]] = defaultdict(dict)
        h = self.scenario.setpoint_period_s / 3600
        for a in self.active.values():
            per_bsp[a.bid.bsp_id][a.bid.bid_id] = round(a.sign * a.activated_mw, 6)
            a.energy_mwh += a.activated_mw * h
            self.cost_eur += a.activated_mw * h * a.bid.price_eur_per_mwh
            self.energy_by_isp[isp_of(t).isoformat()] += a.sign * a.activated_mw * h
            dn = sum(x.share_mw for x in a.bid.assets if x.connection == Connection.DN)
            self.der_energy_mwh += a.activated_mw * h * dn / sum(x.share_mw for x in a.bid.assets)
        reference = {a.bid.bsp_id: a.bid.reference_mw for a in self.active.values()}
        valid_for = self.clock.wall_seconds(self.scenario.setpoint_period_s)
        for bsp, deltas in per_bsp.items():
            delta = round(sum(deltas.values()), 6)
            rec = self.records[bsp]
            rec.setpoints[cycle] = delta
            rec.instants[cycle] = t
            await self.gw.publish(
                DeltaSetpoint(
                    bsp_id=bsp,
                    cycle=cycle,
                    instant=t,
                    reference_mw=reference[bsp],
                    delta_mw=delta,
                    bid_deltas_mw=deltas,
                ),
                Party(role="bsp", id=bsp),
                valid_for_s=valid_for,
                correlation_id=self.conversation,
            )

    async def on_telemetry(self, msg: Received[Telemetry]) -> None:
        body = msg.body
        if msg.sender.role == "bsp" and body.source_id != msg.sender.id:
            await self.gw.refuse(
                msg, f"telemetry of {body.source_id} from {msg.sender}: a BSP reports its own resources"
            )
            return
        if msg.sender.role == "bsp" and body.cycle is not None and body.delivered_delta_mw is not None:
            self.records[body.source_id].delivered[body.cycle] = body.delivered_delta_mw

    def delivery(self, bsp: str, cycles: range) -> tuple[float, float, float, int]:
        """(requested MWh, delivered MWh, share of steady cycles within the band, cycles checked).

        Telemetry of cycle k is the fleet's output just before setpoint k, i.e. its answer to
        setpoint k-1; which cycles are judged, and the band, are ``actors.rules``'."""
        rec = self.records[bsp]
        h = self.scenario.setpoint_period_s / 3600
        requested = delivered = 0.0
        ok = checked = 0
        for k in cycles:
            sp = rec.setpoints.get(k - 1)
            got = rec.delivered.get(k)
            if sp is None:
                continue
            requested += abs(sp) * h
            delivered += abs(got or 0.0) * h
            if rules.is_steady(sp, rec.setpoints.get(k - 2)):
                checked += 1
                if got is not None and rules.within_band(sp, got):
                    ok += 1
        return requested, delivered, (ok / checked if checked else 1.0), checked

    async def monitor(self, start: datetime, end: datetime, first: int, last: int) -> None:
        """Requested vs delivered every 5 minutes (CS review §IV.A), one report per BSP."""
        for bsp in sorted(self.records):
            requested, delivered, ratio, _ = self.delivery(bsp, range(first, last + 1))
            report = MonitoringReport(
                bsp_id=bsp,
                period_start=start,
                period_end=end,
                requested_energy_mwh=round(requested, 6),
                delivered_energy_mwh=round(delivered, 6),
                within_tolerance_ratio=round(ratio, 4),
                compliant=rules.compliant(requested, delivered, ratio),
            )
            self.monitoring.append(report)
            await self.gw.publish(report, Party(role="bsp", id=bsp))

    async def settle(self, isp: datetime) -> None:
        """Per ISP: activated energy x price, per bid, to each BSP (CS review §IV.A)."""
        by_bsp: dict[str, list[SettlementLine]] = defaultdict(list)
        for a in self.active.values():
            amount = a.energy_mwh * a.bid.price_eur_per_mwh * a.sign
            by_bsp[a.bid.bsp_id].append(
                SettlementLine(
                    bid_id=a.bid.bid_id,
                    direction=a.bid.direction,
                    activated_energy_mwh=round(a.energy_mwh, 6),
                    price_eur_per_mwh=a.bid.price_eur_per_mwh,
                    amount_eur=round(amount, 2),
                )
            )
        for bsp, lines in by_bsp.items():
            report = SettlementReport(
                bsp_id=bsp, isp_start=isp, lines=lines, total_eur=round(sum(x.amount_eur for x in lines), 2)
            )
            self.settlements.append(report)
            await self.gw.publish(report, Party(role="bsp", id=bsp))

    # --- real-time coordination and emergencies ----------------------------------------------

    async def on_termination(self, msg: Received[TerminationSignal]) -> None:
        """A DSO's termination or limit becomes an activation limit to the BSP, when it comes from the
        DSO whose grid holds the bid's assets (CS review Fig. 4)."""
        sig = msg.body
        a = self.active.get(sig.bid_id)
        holders = schemes.dn_dsos(a.bid) if a is not None else {sig.dso_id}
        if msg.sender.id != sig.dso_id or sig.dso_id not in holders:
            await self.gw.refuse(
                msg,
                f"{msg.sender} may not limit {sig.bid_id}: its DN assets are in the grid of "
                f"{', '.join(sorted(holders)) or 'no DSO'}",
            )
            return
        self.terminations.append(sig)
        if a is None:
            return
        self.rt_limits[sig.bid_id] = sig.max_mw
        a.activated_mw = min(a.activated_mw, sig.max_mw)
        await self.gw.publish(
            ActivationLimit(
                bsp_id=a.bid.bsp_id,
                bid_id=sig.bid_id,
                direction=a.bid.direction,
                max_mw=sig.max_mw,
                valid_from=self.clock.now(),
                requested_by=sig.dso_id,
                reason=sig.reason,
            ),
            Party(role="bsp", id=a.bid.bsp_id),
            correlation_id=msg.envelope.correlation_id,
            causation_id=msg.envelope.message_id,
        )

    async def on_fault(self, msg: Received[FaultReport]) -> None:
        self.faults.append(msg.body)
        self.log.warning("fault reported", dso=msg.body.dso_id, element=msg.body.element_id)

    async def emergencies(self) -> None:
        for e in sorted(self.config.emergencies, key=lambda e: e.at):
            if self.resumed_at is not None and e.at < self.resumed_at:
                continue  # before a restart: announced then, or missed while away
            await self.clock.sleep_until(e.at)
            await self.gw.publish(
                SystemStateNotice(state=e.state, area=self.config.area, since=e.at, reason="system state changed"),
                Party(role="dso", id="all"),
            )
            if e.curtail_dso and e.amount_mw > 0:
                try:
                    answer = await self.gw.request(
                        CurtailmentRequest(
                            dso_id=e.curtail_dso,
                            target=e.target,
                            amount_mw=e.amount_mw,
                            start=e.at,
                            duration_s=e.duration_s,
                            state=e.state,
                        ),
                        Party(role="dso", id=e.curtail_dso),
                        timeout=5,
                        retries=1,
                    )
                    self.curtailments.append(answer.body)
                except RequestTimeout as exc:
                    self.log.error("curtailment unanswered", error=str(exc))

    # --- the run -----------------------------------------------------------------------------

    def account_balance(self, t: datetime) -> None:
        """The system balance over one setpoint period: the scenario's imbalance against what aFRR
        and the block activations delivered (as requested), MWh."""
        h = self.scenario.setpoint_period_s / 3600
        afrr = sum(a.sign * a.activated_mw for a in self.active.values())
        need = self.exogenous(t)
        self.balance["need_mwh"] += abs(need) * h
        self.balance["residual_mwh"] += abs(need - afrr - self.flex_net(t)) * h

    async def run(self) -> None:
        if self.scheme.market_operator and self.resumed_at is None:
            await self.send_needs()
        emergencies = asyncio.create_task(self.emergencies())
        scenario = self.scenario
        step = timedelta(seconds=self.config.setpoint_step_s)
        if self.next_step is None:
            self.next_step = scenario.start
        period_cycles = round(self.config.monitoring_period_s / scenario.setpoint_period_s)
        try:
            for k, t in self.cycles(scenario.start, scenario.end):
                late = await self.clock.sleep_until(t)
                if late > self.clock.wall_seconds(scenario.setpoint_period_s):
                    self.late_cycles += 1
                isp = isp_of(t)
                if isp != self.isp_start:
                    first = self.isp_start is None
                    if self.isp_start is not None:
                        await self.settle(self.isp_start)
                    self.isp_start = isp
                    if t == isp or not first:  # a whole ISP ahead (or the next ISP, reached late after a restart)
                        await self.build_mol(isp)
                stepping = t >= self.next_step
                if stepping:
                    while self.next_step <= t:
                        self.next_step += step
                self.step_activations(t, stepping)
                if self.active:
                    await self.send_setpoints(k, t)
                self.account_balance(t)
                if (k + 1) % period_cycles == 0:
                    await self.monitor(
                        t
                        - timedelta(seconds=self.config.monitoring_period_s)
                        + timedelta(seconds=scenario.setpoint_period_s),
                        t,
                        self.first_cycle_of_period,
                        k,
                    )
                    self.first_cycle_of_period = k + 1
            if self.isp_start is not None and self.active:
                await self.settle(self.isp_start)
        finally:
            emergencies.cancel()

    def results(self) -> dict:
        """What the TSO did, for the run's summary (JSON-able)."""
        return {
            "dso_limits_mw": self.dso_limits_mw,
            "validations": self.validations,
            "mol_iterations": self.mol_iterations,
            "mol_fallbacks": self.fallbacks,
            "activated_energy_mwh": round(sum(a.energy_mwh for a in self.active.values()), 6),
            "max_delta_setpoint_mw": {
                b: max((abs(v) for v in r.setpoints.values()), default=0.0) for b, r in self.records.items()
            },
            "late_cycles": self.late_cycles,
            "monitoring": [m.model_dump(mode="json") for m in self.monitoring],
            "real_time_limits": [t.model_dump(mode="json") for t in self.terminations],
            "faults_reported": [f.model_dump(mode="json") for f in self.faults],
            "curtailments": [c.model_dump(mode="json") for c in self.curtailments],
            "settlement": [x.model_dump(mode="json") for x in self.settlements],
            "mol_round_trip_ms": self.mol_round_trip_ms,
            "setpoints": {b: r.setpoints for b, r in self.records.items()},
            "delivered": {b: r.delivered for b, r in self.records.items()},
            "limits_mw": {**self.dso_limits_mw, **self.rt_limits},
            "schedule_changes": self.schedule_changes,
            "scheme": self.scheme.name,
            "afrr_cost_eur": round(self.cost_eur, 2),
            "afrr_der_energy_mwh": round(self.der_energy_mwh, 6),
            "afrr_energy_by_isp_mwh": {k: round(v, 6) for k, v in self.energy_by_isp.items()},
            "balance_mwh": {k: round(v, 6) for k, v in self.balance.items()},
            "flex_activations": [f.model_dump(mode="json") for f in self.flex],
            "clearing_ms": self.clearing_ms,
        }
