"""The TSO's decisions, apart from any I/O: its state and the functions of (state, input, scenario
time) that change it and say which messages to send (:class:`Send`). No ``await``, no gateway: the
agent (``actors.tso.TSO``) feeds it what arrives and publishes what it returns, and a test drives it
in microseconds.

What it decides: prequalification of TN assets (DN assets go to their DSO), which bids it takes
(gate closure, prequalified assets, whether the scheme lets the TSO reach DERs), the merit order
list and what each DSO's validation changes in it, the clearing of the ISP as the scheme says, the
activation of aFRR by delta setpoints within the validated bounds and the ramp, delivery against
the band every monitoring period, activation limits a DSO asks for, settlement per ISP
(CS review Figs. 3-4, §IV.A-B; Birk et al. 2017 §3). The rules are ``actors.rules``'.
"""

import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from tsodso.actors import rules, schemes
from tsodso.actors.config import Emergency, Scenario, TsoConfig
from tsodso.actors.market import Award as Cleared
from tsodso.actors.market import clear_in_order, joint_dispatch, per_bid
from tsodso.actors.outbox import Send
from tsodso.actors.rules import isp_of
from tsodso.schemas.codes import BidStatus, Connection, Direction, ProcessType
from tsodso.schemas.envelope import Party
from tsodso.schemas.messages import (
    AcceptedOffer,
    ActivationLimit,
    AssetData,
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
    MolValidation,
    MonitoringReport,
    OfferAcceptance,
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


def _dso(dso_id: str) -> Party:
    return Party(role="dso", id=dso_id)


def _bsp(bsp_id: str) -> Party:
    return Party(role="bsp", id=bsp_id)


def _unqualified(asset_id: str, reason: str) -> AssetVerdict:
    return AssetVerdict(
        asset_id=asset_id,
        qualified=False,
        checked_by="tso",
        validated_capacity_up_mw=0,
        validated_capacity_down_mw=0,
        reason=reason,
    )


class TsoCore:
    """The TSO's state and decisions (see the module's docstring)."""

    def __init__(self, scenario: Scenario, config: TsoConfig, me: str):
        self.scenario = scenario
        self.config = config
        self.me = me
        self.scheme = scenario.scheme
        self.system_profile = schemes.system_imbalance_profile(scenario, with_areas=True)  # TSO + DSO areas
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
        self.conversation: uuid.UUID | None = None  # the running ISP's: MOL, validations, acceptance, setpoints
        self.late_cycles = 0
        self.flex: list[FlexActivation] = []  # block activations by DSOs and markets (copies)
        self.market_results: dict[datetime, MarketResult] = {}  # integrated market: what the operator gave
        self.clearing_ms: list[float] = []
        self.balance = {"need_mwh": 0.0, "residual_mwh": 0.0}
        self.der_energy_mwh = 0.0
        self.energy_by_isp: dict[str, float] = defaultdict(float)  # ISP -> net aFRR energy (up +) [MWh]
        self.cost_eur = 0.0
        # where the run is: the ISP being activated, the next instant the setpoints may move (the ramp
        # step), the first cycle of the running monitoring period, the last cycle run (number, instant)
        self.isp_start: datetime | None = None
        self.next_step: datetime | None = None
        self.first_cycle_of_period = 0
        self.last_cycle: tuple[int, datetime] | None = None
        self.refusals: list[str] = []  # what it refused of what the BSPs offered (assets, bids), once each

    # --- prequalification (CS review Fig. 3) ---------------------------------------------------

    def prequalification_refusal(self, req: PrequalificationRequest, sender: Party) -> str | None:
        if req.bsp_id != sender.id:
            return f"prequalification of {req.bsp_id} asked by {sender}: a BSP asks for itself"
        return None

    def prequalify(self, req: PrequalificationRequest) -> tuple[list[AssetVerdict], dict[str, list[AssetData]]]:
        """The TSO's verdicts on the assets it checks itself, and the DN assets each DSO must check
        (where the scheme has DSOs validate)."""
        verdicts: list[AssetVerdict] = []
        by_dso: dict[str, list[AssetData]] = defaultdict(list)
        dsos = [d.id for d in self.scenario.dsos]
        for asset in req.assets:
            if asset.connection == Connection.DN and self.scheme.dso_validates:
                if asset.dso_id is None:
                    verdicts.append(_unqualified(asset.asset_id, "DN asset without a DSO"))
                elif asset.dso_id not in dsos:
                    why = f"DSO {asset.dso_id!r} is not a DSO of this TSO's area (its DSOs: {', '.join(dsos)})"
                    verdicts.append(_unqualified(asset.asset_id, why))
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
        return verdicts, dict(by_dso)

    @staticmethod
    def dso_silent(dso_id: str, assets: list[AssetData], why: str) -> list[AssetVerdict]:
        """Verdicts for assets whose DSO did not answer: not qualified."""
        return [_unqualified(a.asset_id, f"DSO {dso_id} did not answer: {why}") for a in assets]

    def qualify(self, bsp_id: str, verdicts: list[AssetVerdict]) -> PrequalificationResult:
        self.qualified[bsp_id] |= {v.asset_id for v in verdicts if v.qualified}
        for v in verdicts:
            if not v.qualified:
                self._refused(f"asset {v.asset_id} of {bsp_id} not prequalified by {v.checked_by}: {v.reason}")
        return PrequalificationResult(bsp_id=bsp_id, verdicts=verdicts)

    def _refused(self, why: str) -> None:
        if why not in self.refusals:
            self.refusals.append(why)

    # --- schedules, forecasts, faults, bids ----------------------------------------------------

    def take_schedule(self, schedule: Schedule, sender: Party) -> list[Send]:
        """Final schedules of DN-connected resources go to their DSO (Birk et al. 2017 §3); a DSO's
        change to them is recorded."""
        if sender.role == "dso":
            self.schedule_changes.append(schedule.model_dump(mode="json"))
            return []
        by_dso: dict[str, list[ScheduleSeries]] = defaultdict(list)
        for series in schedule.series:
            if series.dso_id:
                by_dso[series.dso_id].append(series)
        return [
            Send(Schedule(kind="final", start=schedule.start, resolution=schedule.resolution, series=listed), _dso(d))
            for d, listed in by_dso.items()
        ]

    def take_forecast(self, forecast: Forecast) -> None:
        self.forecasts.append(forecast)

    def take_fault(self, fault: FaultReport) -> None:
        self.faults.append(fault)

    def take_bid(self, bid: EnergyBid, sender: Party, now: datetime) -> str | None:
        """Keep the bid for its ISP's merit order list, or say why not."""
        refusal = self._bid_refusal(bid, sender, now)
        if refusal is None:
            self.bids[bid.isp_start][bid.bid_id] = bid
        elif sender.role == "bsp" and bid.bsp_id == sender.id and not refusal.startswith("late:"):
            self._refused(refusal)
        return refusal

    def _bid_refusal(self, bid: EnergyBid, sender: Party, now: datetime) -> str | None:
        if sender.role == "bsp" and bid.bsp_id != sender.id:
            return f"a bid of {bid.bsp_id} from {sender}: a BSP bids for itself"
        if not rules.bid_in_time(bid.isp_start, now):
            return rules.late_bid_reason(bid.isp_start, now)
        if not self.scheme.tso_reaches_der and schemes.dn_dsos(bid):
            return f"bid {bid.bid_id} has DERs: the TSO does not reach DERs in the {self.scheme.label} scheme"
        missing = {a.asset_id for a in bid.assets} - self.qualified[bid.bsp_id]
        if missing:
            return f"bid {bid.bid_id}: assets not prequalified: {', '.join(sorted(missing))}"
        return None

    # --- the merit order list (CS review Fig. 4) -----------------------------------------------

    def open_isp(self, isp: datetime) -> dict[str, MolEntry]:
        """A new ISP: its conversation (the MOL, its validations, the acceptance, the setpoints and
        the telemetry answering them share one correlation id) and its bids ranked per direction."""
        self.conversation = uuid.uuid4()
        return schemes.ranked(list(self.bids.get(isp, {}).values()))

    def dsos_to_ask(self, entries: dict[str, MolEntry]) -> list[str]:
        """The DSOs whose grids hold a listed bid, where the scheme has the TSO ask them."""
        if not self.scheme.tso_asks_dsos:
            return []
        return sorted({d for e in entries.values() for d in schemes.dn_dsos(e)})

    @staticmethod
    def mol_for(dso_id: str, isp: datetime, iteration: int, entries: dict[str, MolEntry]) -> MeritOrderList | None:
        """The list one DSO validates: the bids with assets in its grid (None when there is none)."""
        mine = [
            e for e in entries.values() if any(a.connection == Connection.DN and a.dso_id == dso_id for a in e.assets)
        ]
        if not mine:
            return None
        return MeritOrderList(
            mol_id=f"mol-{isp:%Y%m%d%H%M}", process=ProcessType.AFRR, isp_start=isp, iteration=iteration, bids=mine
        )

    def take_validation(
        self, dso_id: str, iteration: int, answer: MolValidation, entries: dict[str, MolEntry], round_trip_ms: float
    ) -> bool:
        """Apply one DSO's verdicts to the list (``entries`` is changed in place); whether any bid
        changed, so that the list must go round again (``rules.MOL_ITERATIONS`` at most)."""
        self.mol_round_trip_ms.append(round_trip_ms)
        self.mol_iterations[dso_id] = iteration
        changed = False
        for r in answer.results:
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
        return changed

    def validation_missed(self, dso_id: str, mol: MeritOrderList, entries: dict[str, MolEntry]) -> None:
        """A DSO did not answer in its window: the scenario's fallback (leave its DN bids out, or keep
        them as offered)."""
        self.fallbacks.append(f"{dso_id}:{mol.mol_id}:{self.config.mol_fallback}")
        if self.config.mol_fallback == "exclude_dn":
            for e in mol.bids:
                entries.pop(e.bid_id, None)

    def clear(self, isp: datetime, entries: dict[str, MolEntry], dso_needs: list[FlexibilityNeed]) -> list[Send]:
        """Clear the ISP as the scheme says, activate the TSO's share, accept the offers and (where
        the scheme says) tell each DSO the outcome."""
        bids = self.bids.get(isp, {})
        t0 = time.perf_counter()
        need = schemes.balancing_need(self.scenario, isp, self.me, with_areas=self.scheme.tso_balances_areas)
        mine_need = [schemes.market_need(need, "tso")] if need else []
        if self.scheme.clearing == "joint_dispatch":
            dso_wants = [schemes.market_need(n, "dso") for n in dso_needs]
            awards = joint_dispatch(dso_wants + mine_need, schemes.offers(entries))
        else:
            awards = clear_in_order(mine_need, schemes.offers(entries))
        self.clearing_ms.append((time.perf_counter() - t0) * 1000)
        if self.scheme.clearing == "joint_dispatch":  # the TSO activates what the market gave it, the DSOs the rest
            given = per_bid([a for a in awards if a.buyer == f"tso/{self.me}"])
            entries = {
                b: e.model_copy(update={"upper_bound_mw": round(given[b], 4)}) for b, e in entries.items() if b in given
            }
        self.active = {e.bid_id: Activated(bids[e.bid_id], e.rank, e.upper_bound_mw) for e in entries.values()}
        out = self.acceptances(isp, bids)
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
            out += [Send(result, _dso(d), self.conversation) for d in sorted(d.id for d in self.scenario.dsos)]
        return out

    @staticmethod
    def award(entry: MolEntry, bid: EnergyBid, a: Cleared) -> Award:
        role, buyer = a.buyer.split("/", 1)
        return Award(
            **entry.model_dump(),
            buyer_id=buyer,
            buyer_role=role,  # type: ignore[arg-type]  # a buyer is 'role/id' of a tso, dso or bsp
            need_id=a.need_id,
            awarded_mw=a.mw,
            ramp_rate_mw_per_min=bid.ramp_rate_mw_per_min,
            reference_mw=bid.reference_mw,
        )

    def acceptances(self, isp: datetime, bids: dict[str, EnergyBid]) -> list[Send]:
        out = []
        for bsp in sorted({b.bsp_id for b in bids.values()}):
            accepted = [
                AcceptedOffer(bid_id=a.bid.bid_id, direction=a.bid.direction, upper_bound_mw=a.upper_mw)
                for a in self.active.values()
                if a.bid.bsp_id == bsp
            ]
            rejected = sorted(b.bid_id for b in bids.values() if b.bsp_id == bsp and b.bid_id not in self.active)
            out.append(
                Send(
                    OfferAcceptance(isp_start=isp, accepted=accepted, rejected_bid_ids=rejected),
                    _bsp(bsp),
                    self.conversation,
                )
            )
        return out

    # --- the integrated market ------------------------------------------------------------------

    def market_needs(self) -> list[Send]:
        """The TSO's balancing need of every ISP the market operator clears, to the operator."""
        mo = Party(role="mo", id=self.scenario.market_operator)
        out = []
        for isp in self.scenario.isps():
            if isp - rules.MARKET_GATE >= self.scenario.start:
                need = schemes.balancing_need(self.scenario, isp, self.me)
                if need is not None:
                    out.append(Send(need, mo))
        return out

    def take_market_result(self, result: MarketResult) -> None:
        self.market_results[result.isp_start] = result

    def activate_market_result(self, isp: datetime) -> bool:
        """Activate what the market operator gave the TSO for ``isp``; False (and the fallback
        recorded) when no result came."""
        result = self.market_results.get(isp)
        self.active = {}
        if result is None:
            self.fallbacks.append(f"{self.scenario.market_operator}:{isp:%H%M}:no market result")
            return False
        for a in result.awards:
            if a.buyer_role == "tso" and a.buyer_id == self.me:
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
        return True

    def take_flex(self, f: FlexActivation) -> None:
        """A block activation by a DSO or a market: part of the system balance from its ISP on
        (unless the DSOs balance their areas). Where the DSO relieves what remains, the TSO's list
        holds the whole of each bid, so what a DSO bought is taken off it."""
        self.flex.append(f)
        a = self.active.get(f.bid_id)
        if self.scheme.dso_relieves_rest and a is not None and a.bid.isp_start == f.isp_start:
            a.upper_mw = max(0.0, a.upper_mw - f.activated_mw)

    def flex_net(self, t: datetime) -> float:
        """Net block activation in the ISP of ``t`` (MW, up +)."""
        isp = isp_of(t)
        return sum(schemes.sign(f.direction) * f.activated_mw for f in self.flex if f.isp_start == isp)

    # --- activation (CS review §IV.B) -----------------------------------------------------------

    def exogenous(self, t: datetime) -> float:
        """The imbalance the scenario gives: the TSO's profile plus the DSO areas' (MW short +)."""
        return schemes.profile_at(self.system_profile, t)

    def imbalance(self, t: datetime) -> float:
        """What the TSO balances at ``t`` (MW short +): its own area's imbalance and, where the scheme
        has it balance the whole system, the DSO areas' and what DSOs and markets activated."""
        if not self.scheme.tso_balances_areas:
            return schemes.profile_at(self.config.imbalance, t)
        return self.exogenous(t) - self.flex_net(t)

    def step_activations(self, t: datetime, stepping: bool) -> None:
        """Allocate the demand over the bids in merit order within their bounds; at a step instant
        move each bid toward its share by at most one ramp step (``rules.ramp_step_mw``)."""
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

    def setpoints(self, cycle: int, t: datetime, valid_for_s: float) -> list[Send]:
        """Cycle ``cycle``'s delta setpoint to each BSP with an activated bid, and the books: energy,
        cost, DER share."""
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
        out = []
        for bsp, deltas in per_bsp.items():
            delta = round(sum(deltas.values()), 6)
            rec = self.records[bsp]
            rec.setpoints[cycle] = delta
            rec.instants[cycle] = t
            body = DeltaSetpoint(
                bsp_id=bsp, cycle=cycle, instant=t, reference_mw=reference[bsp], delta_mw=delta, bid_deltas_mw=deltas
            )
            out.append(Send(body, _bsp(bsp), self.conversation, valid_for_s=valid_for_s))
        return out

    def take_telemetry(self, body: Telemetry, sender: Party) -> str | None:
        if sender.role == "bsp" and body.source_id != sender.id:
            return f"telemetry of {body.source_id} from {sender}: a BSP reports its own resources"
        if sender.role == "bsp" and body.cycle is not None and body.delivered_delta_mw is not None:
            self.records[body.source_id].delivered[body.cycle] = body.delivered_delta_mw
        return None

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

    def monitoring_reports(self, start: datetime, end: datetime, first: int, last: int) -> list[Send]:
        """Requested vs delivered over cycles ``first``..``last`` (CS review §IV.A), one report per BSP."""
        out = []
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
            out.append(Send(report, _bsp(bsp)))
        return out

    def settlement(self, isp: datetime) -> list[Send]:
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
        out = []
        for bsp, lines in by_bsp.items():
            report = SettlementReport(
                bsp_id=bsp, isp_start=isp, lines=lines, total_eur=round(sum(x.amount_eur for x in lines), 2)
            )
            self.settlements.append(report)
            out.append(Send(report, _bsp(bsp)))
        return out

    # --- real-time coordination and emergencies -------------------------------------------------

    def take_termination(
        self, sig: TerminationSignal, sender: Party, now: datetime, correlation_id: uuid.UUID | None, cause: uuid.UUID
    ) -> tuple[str | None, list[Send]]:
        """A DSO's termination or limit becomes an activation limit to the BSP, when it comes from
        the DSO whose grid holds the bid's assets (CS review Fig. 4). (refusal, messages)."""
        a = self.active.get(sig.bid_id)
        holders = schemes.dn_dsos(a.bid) if a is not None else {sig.dso_id}
        if sender.id != sig.dso_id or sig.dso_id not in holders:
            grids = ", ".join(sorted(holders)) or "no DSO"
            return f"{sender} may not limit {sig.bid_id}: its DN assets are in the grid of {grids}", []
        self.terminations.append(sig)
        if a is None:
            return None, []
        self.rt_limits[sig.bid_id] = sig.max_mw
        a.activated_mw = min(a.activated_mw, sig.max_mw)
        limit = ActivationLimit(
            bsp_id=a.bid.bsp_id,
            bid_id=sig.bid_id,
            direction=a.bid.direction,
            max_mw=sig.max_mw,
            valid_from=now,
            requested_by=sig.dso_id,
            reason=sig.reason,
        )
        return None, [Send(limit, _bsp(a.bid.bsp_id), correlation_id, cause)]

    def emergency(self, e: Emergency) -> tuple[Send, Send | None]:
        """The system state notice to every DSO and, where the emergency asks one, the curtailment
        request (Birk et al. 2017 §3)."""
        notice = Send(
            SystemStateNotice(state=e.state, area=self.config.area, since=e.at, reason="system state changed"),
            Party(role="dso", id="all"),
        )
        if not (e.curtail_dso and e.amount_mw > 0):
            return notice, None
        request = CurtailmentRequest(
            dso_id=e.curtail_dso,
            target=e.target,
            amount_mw=e.amount_mw,
            start=e.at,
            duration_s=e.duration_s,
            state=e.state,
        )
        return notice, Send(request, _dso(e.curtail_dso))

    # --- the run, one setpoint cycle at a time ---------------------------------------------------

    def enter(self, t: datetime) -> tuple[datetime | None, bool]:
        """At cycle instant ``t``: (the ISP to settle now, if one ended; whether to build the list of
        the ISP that begins: a whole ISP ahead, or the next one reached late after a restart)."""
        isp = isp_of(t)
        if isp == self.isp_start:
            return None, False
        ended, first = self.isp_start, self.isp_start is None
        self.isp_start = isp
        return ended, t == isp or not first

    def cycle(self, k: int, t: datetime, valid_for_s: float) -> list[Send]:
        """Cycle ``k`` at ``t``: judge the monitoring period that ended with the cycle before (its last
        telemetry, the answer to setpoint k-1, has arrived by now), move the activations (at a ramp
        step instant), send the setpoints and keep the balance."""
        period = timedelta(seconds=self.scenario.setpoint_period_s)
        out = []
        period_cycles = round(self.config.monitoring_period_s / self.scenario.setpoint_period_s)
        if k > 0 and k % period_cycles == 0:
            out += self.close_period(k - 1, t - period)
        if self.next_step is None:
            self.next_step = self.scenario.start
        stepping = t >= self.next_step
        while self.next_step <= t:
            self.next_step += timedelta(seconds=self.config.setpoint_step_s)
        self.step_activations(t, stepping)
        if self.active:
            out += self.setpoints(k, t, valid_for_s)
        self.account_balance(t)
        self.last_cycle = (k, t)
        return out

    def close_period(self, last: int, last_at: datetime) -> list[Send]:
        """Judge the running monitoring period's cycles up to ``last`` (run at ``last_at``) and start the
        next period after it."""
        first = self.first_cycle_of_period
        if last < first:
            return []
        start = last_at - (last - first) * timedelta(seconds=self.scenario.setpoint_period_s)
        self.first_cycle_of_period = last + 1
        return self.monitoring_reports(start, last_at, first, last)

    def finish(self) -> list[Send]:
        """At the run's end (a setpoint period after the last cycle, when its telemetry is in): judge the
        cycles of the period in progress, so that no cycle goes unjudged."""
        if self.last_cycle is None:
            return []
        return self.close_period(*self.last_cycle)

    def account_balance(self, t: datetime) -> None:
        """The system balance over one setpoint period: the scenario's imbalance against what aFRR
        and the block activations delivered (as requested), MWh."""
        h = self.scenario.setpoint_period_s / 3600
        afrr = sum(a.sign * a.activated_mw for a in self.active.values())
        need = self.exogenous(t)
        self.balance["need_mwh"] += abs(need) * h
        self.balance["residual_mwh"] += abs(need - afrr - self.flex_net(t)) * h

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
            "refusals": self.refusals,
        }
