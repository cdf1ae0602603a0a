"""The DSO's decisions, apart from any I/O: its grid (a pandapower net and its AC power flow), its
state and the functions of (state, input, scenario time) that change it and say which messages to
send (``actors.outbox.Send``). No ``await``, no gateway: the agent (``actors.dso.DSO``) feeds it
and publishes what it returns.

What it decides: which DN assets its grid hosts (hosting capacity by AC power flow), whether final
schedules fit (scaled down when they do not), its interface forecast, the bounds of the bids in a
merit order list, its congestion needs and what it buys for them where the scheme lets it, and in
real time which activations to limit or terminate (CS review Figs. 3-4; Birk et al. 2017 §3).
"""

import time
from datetime import datetime, timedelta
from typing import Any, Literal

import structlog

from tsodso.actors import grid as grids
from tsodso.actors import schemes
from tsodso.actors.config import DsoConfig, Fault, Scenario
from tsodso.actors.market import Award, Need, clear_in_order, per_bid
from tsodso.actors.outbox import Send
from tsodso.actors.powerflow import FastAC, GridState
from tsodso.actors.rules import ISP, isp_of
from tsodso.actors.validation import Validated, largest_activation, per_mw_injection, validate_mol
from tsodso.schemas.codes import Connection, Direction
from tsodso.schemas.envelope import Party
from tsodso.schemas.messages import (
    AssetVerdict,
    CurtailmentRequest,
    CurtailmentResponse,
    EnergyBid,
    FaultReport,
    FlexActivation,
    FlexibilityNeed,
    Forecast,
    MarketResult,
    MeritOrderList,
    MolEntry,
    MolValidation,
    PrequalificationForward,
    PrequalificationResult,
    Schedule,
    Telemetry,
    TerminationSignal,
)

OVER_DELIVERY_MW = 0.1  # a bid measured this much above what the grid takes is limited again


class DsoCore:
    """The DSO's grid, state and decisions (see the module's docstring)."""

    def __init__(self, scenario: Scenario, config: DsoConfig, me: str):
        self.scenario = scenario
        self.config = config
        self.me = me
        self.log = structlog.get_logger("actor").bind(actor=f"dso/{me}")
        self.tso = Party(role="tso", id=scenario.tso.id)
        self.net = grids.build(config.grid)
        self.fast = FastAC(self.net, self.net.bus.index)  # every bus may carry flex injections
        self.assets: dict[str, int] = {}  # qualified DN asset id -> bus
        # connection agreements: every DN asset in this grid, qualified for balancing or not
        self.connections: dict[str, int] = {}
        for bsp in scenario.bsps:
            for a in bsp.assets:
                if a.connection == Connection.DN and a.dso_id == config.id:
                    try:
                        self.connections[a.asset_id] = self.bus_of(a.connection_bus or "")
                    except KeyError:
                        self.log.warning("asset connected to an unknown bus", asset=a.asset_id, bus=a.connection_bus)
        self.schedules: dict[str, tuple[datetime, timedelta, list[float]]] = {}  # asset -> (start, step, MW)
        self.measured: dict[str, float] = {}  # asset id -> latest telemetered MW
        self.asset_bids: dict[str, dict[str, tuple[float, float, Direction]]] = {}  # asset -> bid -> (share, q, dir)
        self.validated: dict[str, float] = {}  # bid id -> upper bound from the last validation
        self.limited_in_real_time: dict[str, float] = {}
        self._element_buses: dict[str, tuple[int, float]] = {}  # element -> (bus, sign)
        self.over_delivery: dict[str, tuple[datetime, float]] = {}  # bid -> last measured over-delivery (when, MW)
        self.loading: list[tuple[datetime, str, float]] = []  # (instant, most loaded element, %)
        self.congestion_s = 0.0
        self.validation_ms: list[float] = []
        self.schedule_changes: list[tuple[str, float]] = []
        self.validated_mols: list[tuple[MeritOrderList, Validated]] = []
        self.faults_reported = 0
        self.curtailments: list[CurtailmentResponse] = []
        # the coordination schemes
        self.local_bids: dict[datetime, dict[str, EnergyBid]] = {}  # DER bids to its local market, per ISP
        self.entries: dict[datetime, dict[str, MolEntry]] = {}  # the bids it has seen per ISP, validated bounds
        self.flex_mw: dict[tuple[str, datetime], float] = {}  # (asset, ISP) -> schedule change by flex [MW]
        self.flex: list[FlexActivation] = []  # every block activation in its grid, its own and others'
        self.needs: list[dict] = []  # congestion needs found
        self.compute_ms: list[float] = []  # needs, local clearing, validation
        self.forwarded: list[str] = []

    # --- grid state -------------------------------------------------------------------------

    def _element_bus(self, element: str) -> tuple[int, float]:
        """Bus of 'sgen:<name>' / 'load:<name>' and the sign of a +1 MW change as an injection (the
        grid's topology does not change in a run: looked up once per element)."""
        found = self._element_buses.get(element)
        if found is None:
            table, name = element.split(":", 1)
            idx = grids.element_index(self.net, table, name)
            found = self._element_buses[element] = (int(self.net[table].bus.at[idx]), 1.0 if table == "sgen" else -1.0)
        return found

    def event_injections(self, t: datetime, *, forecast: bool) -> dict[int, float]:
        """Conditions and redispatch active at ``t`` (and, in real time, the changes nobody
        forecast), bus -> MW."""
        out: dict[int, float] = {}
        changes: list[Any] = [
            *self.config.conditions,
            *self.config.redispatch,
            *([] if forecast else self.config.unforecast),
        ]
        for change in changes:
            if change.at <= t:
                bus, sign = self._element_bus(change.element)
                out[bus] = out.get(bus, 0.0) + sign * change.delta_mw
        return out

    def bus_of(self, name: str) -> int:
        return grids.bus_index(self.net, name)

    def scheduled(self, asset: str, t: datetime) -> float:
        """The asset's scheduled output at ``t`` [MW] (0 without a schedule), with the block
        activations (flex) of its ISP."""
        flex = self.flex_mw.get((asset, isp_of(t)), 0.0)
        if asset not in self.schedules:
            return flex
        start, step, values = self.schedules[asset]
        i = int((t - start) / step)
        return values[min(max(i, 0), len(values) - 1)] + flex

    def scheduled_injections(self, t: datetime) -> dict[int, float]:
        """The DN assets' scheduled outputs at their buses (the grid model holds no BSP assets)."""
        out: dict[int, float] = {}
        for asset, bus in self.connections.items():
            out[bus] = out.get(bus, 0.0) + self.scheduled(asset, t)
        return out

    def planned_injections(self, isp: datetime) -> dict[int, float]:
        """The forecast state of an ISP at its middle: redispatch, the DN assets' schedules and the
        block activations already bought for it, bus -> MW."""
        base = self.event_injections(isp + ISP / 2, forecast=True)
        for bus, mw in self.scheduled_injections(isp + ISP / 2).items():
            base[bus] = base.get(bus, 0.0) + mw
        return base

    def bid_injection(self, entry: MolEntry) -> dict[int, float]:
        """Injection per MW of a bid's activation at this grid's buses (empty when it has no asset here)."""
        try:
            return per_mw_injection(
                entry,
                {
                    a.connection_bus or "": self.bus_of(a.connection_bus or "")
                    for a in entry.assets
                    if a.connection == Connection.DN and a.dso_id == self.me
                },
                self.me,
            )
        except KeyError:
            return {}

    def congestion_needs(
        self, isp: datetime, entries: list[MolEntry], extra: dict[int, float] | None = None
    ) -> list[FlexibilityNeed]:
        """The ISP's congestion needs from an AC power flow of its forecast state (plus ``extra``
        injections, e.g. what the TSO expects to activate): one per overloaded line or transformer,
        the percentage points to take off to reach 100 % minus the margin, and each bid's
        effectiveness (points relieved per MW activated, by a second power flow)."""
        base = self.planned_injections(isp)
        for bus, mw in (extra or {}).items():
            base[bus] = base.get(bus, 0.0) + mw
        vec = self.fast.vector(base)
        loadings = self.fast.loadings(self.fast.solve(vec))
        overloaded = {element: loading for element, loading in sorted(loadings.items()) if loading > 100.0 + 1e-6}
        if not overloaded:
            return []
        after: dict[str, dict[str, float]] = {}  # bid -> loadings with 1 MW of it activated (one power flow per bid)
        for e in entries:
            per_mw = self.bid_injection(e)
            if per_mw:
                after[e.bid_id] = self.fast.loadings(self.fast.solve(vec + self.fast.vector(per_mw)))
        target = 100.0 - self.config.congestion_margin_percent
        needs = []
        for element, loading in overloaded.items():
            effectiveness = {}
            for bid_id, with_bid in after.items():
                relieved = loading - with_bid[element]
                if relieved > 1e-3:
                    effectiveness[bid_id] = round(relieved, 4)
            needs.append(
                FlexibilityNeed(
                    need_id=f"{self.me}-{isp:%Y%m%d%H%M}-{element.replace(':', '-')}",
                    buyer_id=self.me,
                    kind="congestion",
                    isp_start=isp,
                    quantity=round(loading - target, 4),
                    unit="%",
                    max_price_eur_per_mwh=self.config.max_price_eur_per_mwh,
                    element=element,
                    loading_percent=round(loading, 3),
                    effectiveness=effectiveness,
                )
            )
        return needs

    def note_bid(self, bid: EnergyBid | MolEntry) -> None:
        """Which of its assets' bids are in play (real-time limits find the bid of a violating asset)."""
        for asset in bid.assets:
            if asset.connection == Connection.DN and asset.dso_id == self.me:
                self.asset_bids.setdefault(asset.asset_id, {})[bid.bid_id] = (
                    asset.share_mw,
                    bid.quantity_mw,
                    bid.direction,
                )

    def record_needs(self, isp: datetime, needs: list[FlexibilityNeed]) -> None:
        for n in needs:
            self.needs.append(
                {
                    "isp": isp.isoformat(),
                    "element": n.element,
                    "loading_percent": n.loading_percent,
                    "relief_percent": n.quantity,
                }
            )

    def apply_flex(self, f: FlexActivation) -> None:
        """A block activation moves the schedules of the assets in this grid for its ISP."""
        self.flex.append(f)
        for asset, mw in schemes.asset_moves(f).items():
            if asset in self.connections:  # the DN assets in this grid
                self.flex_mw[(asset, f.isp_start)] = self.flex_mw.get((asset, f.isp_start), 0.0) + mw

    def real_time_injections(self, t: datetime) -> tuple[dict[int, float], dict[int, float]]:
        """(events + the DN assets at their schedules: the state without aFRR; events + the DN
        assets as telemetered, or at their schedules until telemetry arrives)."""
        events = self.event_injections(t, forecast=False)
        scheduled, total = dict(events), dict(events)
        for asset, bus in self.connections.items():
            planned = self.scheduled(asset, t)
            scheduled[bus] = scheduled.get(bus, 0.0) + planned
            total[bus] = total.get(bus, 0.0) + self.measured.get(asset, planned)
        return scheduled, total

    def measured_activation(self, bid: str, t: datetime) -> float | None:
        """A bid's activation as its DN assets here show it [MW, in the bid's direction]: their
        telemetered deviation from schedule, scaled by the bid's quantity over its DN share here (the
        BSP splits a bid over its assets by their shares). None until they have reported."""
        deviation = share_here = 0.0
        quantity = None
        for asset, by_bid in self.asset_bids.items():
            if bid not in by_bid or asset not in self.connections or asset not in self.measured:
                continue
            share, quantity, direction = by_bid[bid]
            sign = 1.0 if direction == Direction.UP else -1.0
            deviation += sign * (self.measured[asset] - self.scheduled(asset, t))
            share_here += share
        if quantity is None or share_here <= 0:
            return None
        return deviation * quantity / share_here

    # --- prequalification (CS review Fig. 3) ----------------------------------------------------

    def prequalify(self, forward: PrequalificationForward) -> PrequalificationResult:
        """Connection bus exists; capacity within the hosting capacity at that bus, computed by AC
        power flow on the base case (largest injection / withdrawal that breaks no limit)."""
        verdicts = []
        for asset in forward.assets:
            try:
                bus = self.bus_of(asset.connection_bus or "")
            except KeyError:
                verdicts.append(
                    AssetVerdict(
                        asset_id=asset.asset_id,
                        qualified=False,
                        validated_capacity_up_mw=0,
                        validated_capacity_down_mw=0,
                        checked_by="dso",
                        reason=f"connection bus {asset.connection_bus!r} is not in the grid of {self.me}",
                    )
                )
                continue
            up, _ = largest_activation(self.fast, {}, {bus: 1.0}, asset.capacity_up_mw)
            down, _ = largest_activation(self.fast, {}, {bus: -1.0}, asset.capacity_down_mw)
            ok = up >= asset.capacity_up_mw - 1e-9 and down >= asset.capacity_down_mw - 1e-9
            if ok:
                self.assets[asset.asset_id] = bus
            verdicts.append(
                AssetVerdict(
                    asset_id=asset.asset_id,
                    qualified=ok,
                    checked_by="dso",
                    validated_capacity_up_mw=up,
                    validated_capacity_down_mw=down,
                    reason=None
                    if ok
                    else f"hosting capacity at {asset.connection_bus}: +{up:.2f} / -{down:.2f} MW, "
                    f"asked +{asset.capacity_up_mw} / -{asset.capacity_down_mw} MW",
                )
            )
        return PrequalificationResult(bsp_id=forward.bsp_id, verdicts=verdicts)

    # --- schedules and the forecast (Birk et al. 2017 §3) ------------------------------------------

    def take_schedule(self, schedule: Schedule) -> list[Send]:
        """Final schedules of the DN resources. When they would break a limit of the grid in the
        forecast state, the DSO scales them down to what fits (largest common factor, by AC power
        flow) and informs the TSO with a 'dso_modified' schedule and the reason."""
        series = [x for x in schedule.series if x.asset_id in self.connections]
        step = {"PT15M": ISP, "PT5M": ISP / 3, "PT1M": ISP / 15}.get(schedule.resolution.value, ISP)
        for x in series:
            self.schedules[x.asset_id] = (schedule.start, step, list(x.p_mw))
        if not series or schedule.kind != "final":
            return []
        factors, worst = [], None
        for i in range(len(series[0].p_mw)):
            events = self.event_injections(schedule.start + i * step + step / 2, forecast=True)
            per_unit: dict[int, float] = {}
            for x in series:
                bus = self.connections[x.asset_id]
                per_unit[bus] = per_unit.get(bus, 0.0) + x.p_mw[i]
            factor, violations = largest_activation(self.fast, events, per_unit, 1.0, step_mw=0.001)
            factors.append(factor)
            if violations and worst is None:
                worst = violations[0]
        if worst is None:
            return []
        for x in series:
            self.schedules[x.asset_id] = (schedule.start, step, [p * f for p, f in zip(x.p_mw, factors)])
        self.schedule_changes.append((worst.element, min(factors)))
        modified = Schedule(
            kind="dso_modified",
            start=schedule.start,
            resolution=schedule.resolution,
            series=[x.model_copy(update={"p_mw": [round(p * f, 4) for p, f in zip(x.p_mw, factors)]}) for x in series],
            reason=f"{worst.element} at {worst.value:.1f} % with the schedules: scaled to "
            f"{', '.join(f'{f:.3f}' for f in factors)} per step",
        )
        return [Send(modified, self.tso)]

    def forecast(self) -> Send:
        """Interface flow (P, Q at the coupling element, from the TSO into the DSO) per ISP, from AC
        power flows of the forecast state (the DSO's redispatch included)."""
        isps = self.scenario.isps()
        flows, qs = [], []
        for isp in isps:
            self.fast.solve(self.event_injections(isp + ISP / 2, forecast=True))
            p, q = self.fast.flow(self.config.interface)
            flows.append(round(p, 4))
            qs.append(round(q, 4))
        body = Forecast(
            dso_id=self.me,
            interface_id=self.config.interface,
            kind="interface_flow",
            start=isps[0],
            p_mw=flows,
            q_mvar=qs,
        )
        return Send(body, self.tso)

    # --- merit order list validation (CS review Fig. 4) ---------------------------------------------

    def validate(self, mol: MeritOrderList) -> MolValidation:
        """Every bid's bounds in this grid by AC power flow of the ISP's forecast state; where the
        scheme asks, the congestion needs too."""
        t0 = time.perf_counter()
        base = self.planned_injections(mol.isp_start)
        validated = validate_mol(self.fast, mol.bids, self.me, self.bus_of, base=base)
        bounds = {r.bid_id: r.upper_bound_mw for r in validated.results}
        self.entries[mol.isp_start] = {
            e.bid_id: e.model_copy(update={"upper_bound_mw": bounds.get(e.bid_id, e.upper_bound_mw)}) for e in mol.bids
        }
        needs = []
        if self.scenario.scheme.dso_states_needs:
            needs = self.congestion_needs(mol.isp_start, list(self.entries[mol.isp_start].values()))
        elapsed = time.perf_counter() - t0
        self.validation_ms.append(elapsed * 1000)
        self.compute_ms.append(elapsed * 1000)
        for entry in mol.bids:
            self.note_bid(entry)
        for r in validated.results:
            self.validated[r.bid_id] = r.upper_bound_mw
        self.validated_mols.append((mol, validated))  # written to the run directory when the run ends
        return MolValidation(
            mol_id=mol.mol_id,
            iteration=mol.iteration,
            dso_id=self.me,
            results=validated.results,
            computation_time_s=elapsed,
            needs=needs,
        )

    # --- the coordination schemes ---------------------------------------------------------------

    def take_bid(self, bid: EnergyBid) -> str | None:
        """A DER bid to the DSO's local market (where the scheme has one), or why not."""
        if self.me not in schemes.dn_dsos(bid):
            return f"bid {bid.bid_id} has no asset in the grid of {self.me}"
        self.local_bids.setdefault(bid.isp_start, {})[bid.bid_id] = bid
        self.note_bid(bid)
        return None

    def local_market(self, isp: datetime, forward_valid_for_s: float) -> list[Send]:
        """At the local gate: buy for its own congestion first (cheapest per point relieved); where the
        scheme says, also balance its area, or validate what is left and forward it to the TSO
        (CS review Table I, schemes 2 and 3)."""
        t0 = time.perf_counter()
        bids = list(self.local_bids.get(isp, {}).values())
        entries = schemes.ranked(bids)
        base = self.planned_injections(isp)
        validated = validate_mol(self.fast, list(entries.values()), self.me, self.bus_of, base=base)
        for r in validated.results:
            entries[r.bid_id] = entries[r.bid_id].model_copy(update={"upper_bound_mw": r.upper_bound_mw})
        self.entries[isp] = entries
        needs = self.congestion_needs(isp, list(entries.values()))
        awards = clear_in_order([schemes.market_need(n, "dso") for n in needs], schemes.offers(entries))
        if self.scenario.scheme.dso_balances_area:
            area = schemes.peak_in_isp(self.config.area_imbalance, isp)
            net = sum(schemes.sign(entries[a.bid_id].direction) * a.mw for a in awards)
            short = area - net  # MW the area still lacks (+) or has too much (-)
            if abs(short) > 1e-3:
                balance = Need(
                    f"{self.me}-{isp:%Y%m%d%H%M}-area",
                    f"dso/{self.me}",
                    "balancing",
                    abs(short),
                    direction=Direction.UP if short > 0 else Direction.DOWN,
                )
                awards += clear_in_order([balance], schemes.offers(entries, per_bid(awards)))
        self.record_needs(isp, needs)
        self.compute_ms.append((time.perf_counter() - t0) * 1000)
        out = [m for award in awards for m in self.activate(isp, award, entries[award.bid_id])]
        if self.scenario.scheme.dso_forwards_rest:
            out += self.forward_rest(isp, bids, awards, forward_valid_for_s)
        return out

    def forward_rest(self, isp: datetime, bids: list[EnergyBid], awards: list[Award], valid_for_s: float) -> list[Send]:
        """What the DSO did not buy, validated on its grid with its own activations in the base,
        to the TSO as bids of their BSPs."""
        taken = per_bid(awards)
        rest = [
            b.model_copy(update={"quantity_mw": round(b.quantity_mw - taken.get(b.bid_id, 0.0), 4)})
            for b in bids
            if b.quantity_mw - taken.get(b.bid_id, 0.0) > 0.01
        ]
        validated = validate_mol(
            self.fast, list(schemes.ranked(rest).values()), self.me, self.bus_of, base=self.planned_injections(isp)
        )
        bound = {r.bid_id: r.upper_bound_mw for r in validated.results}
        out = []
        for b in rest:
            q = round(bound.get(b.bid_id, 0.0), 4)
            if q > 0.01:
                self.forwarded.append(b.bid_id)
                forwarded = b.model_copy(update={"quantity_mw": q, "min_quantity_mw": min(b.min_quantity_mw, q)})
                out.append(Send(forwarded, self.tso, valid_for_s=valid_for_s))
        return out

    def take_market_result(self, result: MarketResult) -> list[Send]:
        """Where the DSO relieves what remains: the TSO's expected activations, and what congestion
        is left bought with the rest. Where a market gave the DSO awards: activate them."""
        isp = result.isp_start
        entries = self.entries.get(isp, {})
        if self.scenario.scheme.dso_relieves_rest:
            t0 = time.perf_counter()
            expected: dict[int, float] = {}
            taken: dict[str, float] = {}
            for a in result.awards:
                taken[a.bid_id] = taken.get(a.bid_id, 0.0) + a.awarded_mw
                for bus, k in self.bid_injection(a).items():
                    expected[bus] = expected.get(bus, 0.0) + k * a.awarded_mw
            needs = self.congestion_needs(isp, list(entries.values()), extra=expected)
            awards = clear_in_order([schemes.market_need(n, "dso") for n in needs], schemes.offers(entries, taken))
            self.record_needs(isp, needs)
            self.compute_ms.append((time.perf_counter() - t0) * 1000)
            return [m for award in awards for m in self.activate(isp, award, entries[award.bid_id])]
        out = []
        for a in result.awards:
            if a.buyer_role == "dso" and a.buyer_id == self.me:
                out += self.activate(
                    isp, Award(a.need_id, f"dso/{self.me}", a.bid_id, a.awarded_mw, a.price_eur_per_mwh), a
                )
        return out

    def activate(self, isp: datetime, award: Award, entry: MolEntry) -> list[Send]:
        """Activate a bid as a block for the ISP: to its BSP, copies to the TSO and the other DSOs
        whose grid holds its assets."""
        purpose: Literal["balancing", "congestion"] = "balancing" if award.need_id.endswith("-area") else "congestion"
        body = FlexActivation(
            activation_id=f"{self.me}-{isp:%Y%m%d%H%M}-{award.bid_id}"[:64],
            buyer_id=self.me,
            buyer_role="dso",
            purpose=purpose,
            bid_id=award.bid_id,
            bsp_id=entry.bsp_id,
            direction=entry.direction,
            isp_start=isp,
            activated_mw=round(award.mw, 4),
            price_eur_per_mwh=entry.price_eur_per_mwh,
            assets=entry.assets,
        )
        self.apply_flex(body)
        others = [Party(role="dso", id=d) for d in sorted(schemes.dn_dsos(entry) - {self.me})]
        return [Send(body, to) for to in [Party(role="bsp", id=entry.bsp_id), self.tso, *others]]

    # --- real time ---------------------------------------------------------------------------

    def take_telemetry(self, body: Telemetry, sender: Party) -> str | None:
        """Measurements of the DN assets in this grid, from the BSP that owns them."""
        if sender.role == "bsp" and body.source_id != sender.id:
            return f"telemetry of {body.source_id} from {sender}: a BSP reports its own resources"
        own = {a.asset_id for b in self.scenario.bsps if b.id == sender.id for a in b.assets}
        for m in body.measurements:
            if sender.role != "bsp" or m.resource_id in own:
                self.measured[m.resource_id] = m.p_mw
        return None

    def watch(self, t: datetime) -> tuple[GridState, list[Send]]:
        """One real-time check: power flow of the telemetered state; record the loading; with
        coordination, a limit to the TSO for an activation that breaks a limit."""
        events, total = self.real_time_injections(t)
        reference = self.fast.solve(events)
        state = self.fast.solve(total)
        element, loading = self.fast.max_line_loading(state)
        self.loading.append((t, element, loading))
        if loading > 100.0 + 1e-6:
            self.congestion_s += self.scenario.setpoint_period_s
        out: list[Send] = []
        if self.scenario.dso_validates:
            violations = self.fast.violations(state, reference)
            if violations:
                out = self.limit_activations(events, reference, violations, t)
        return state, out

    def limit_activations(
        self, events: dict[int, float], reference: GridState, violations: list, t: datetime
    ) -> list[Send]:
        """Limit each activated bid with DN assets here to what the grid takes now (termination when
        nothing fits). A limit is sent when it is below the bid's current bound, or when the bid's
        measured activation (telemetry) exceeds what the grid takes, whatever its bound says: a BSP
        that over-delivers, or follows a setpoint it should not have, is caught by what it does; one
        that is not coming down four cycles after such a limit has its activation terminated."""
        bids: dict[str, dict[int, float]] = {}
        bounds: dict[str, float] = {}
        for asset, by_bid in self.asset_bids.items():
            if asset not in self.connections:
                continue
            bus = self.connections[asset]
            for bid, (share, quantity, direction) in by_bid.items():
                sign = 1.0 if direction == Direction.UP else -1.0
                bids.setdefault(bid, {})
                bids[bid][bus] = bids[bid].get(bus, 0.0) + sign * share / quantity
                bounds[bid] = min(self.validated.get(bid, quantity), self.limited_in_real_time.get(bid, quantity))
        out = []
        for bid, per_mw in bids.items():
            allowed, _ = largest_activation(self.fast, events, per_mw, bounds[bid], reference=reference)
            measured = self.measured_activation(bid, t)
            over = measured is not None and measured > allowed + OVER_DELIVERY_MW
            if over and measured is not None:
                last = self.over_delivery.get(bid)
                if last is not None and (t - last[0]).total_seconds() < 4 * self.scenario.setpoint_period_s:
                    continue  # told the TSO a moment ago
                if last is not None and measured >= last[1] - OVER_DELIVERY_MW:
                    allowed = 0.0  # limited before and not coming down: terminate the activation
                self.over_delivery[bid] = (t, measured)
                self.log.warning(
                    "measured over-delivery", bid=bid, measured_mw=round(measured, 3), allowed_mw=round(allowed, 3)
                )
            elif allowed >= bounds[bid] - 1e-6:
                continue  # this bid is not what breaks the limit
            self.limited_in_real_time[bid] = allowed
            worst = violations[0]
            signal = TerminationSignal(
                dso_id=self.me,
                bid_id=bid,
                action="terminate" if allowed <= 0 else "limit",
                max_mw=allowed,
                limiting_element=worst.element,
                loading_percent=round(worst.value, 3) if worst.element.startswith(("line", "trafo")) else None,
                reason=f"{worst.element} at {worst.value:.1f} in real time"
                + (f"; {bid} measured at {measured:.2f} MW" if over else ""),
            )
            out.append(Send(signal, self.tso))
        return out

    # --- emergencies (Birk et al. 2017 §3) -----------------------------------------------------------

    def curtail(self, req: CurtailmentRequest) -> CurtailmentResponse:
        accepted = min(req.amount_mw, self.config.curtailable_load_mw if req.target == "load" else req.amount_mw)
        status: Literal["accepted", "partial", "refused"] = (
            "accepted" if accepted >= req.amount_mw else ("partial" if accepted > 0 else "refused")
        )
        answer = CurtailmentResponse(
            dso_id=self.me,
            accepted_mw=accepted,
            status=status,
            reason=None if status == "accepted" else "curtailable load exhausted",
        )
        self.curtailments.append(answer)
        return answer

    def fault_report(self, fault: Fault) -> Send:
        self.faults_reported += 1
        body = FaultReport(
            dso_id=self.me,
            element_id=fault.element,
            fault_type=fault.fault_type,
            occurred_at=fault.at,
            lost_load_mw=fault.lost_load_mw,
            lost_generation_mw=fault.lost_generation_mw,
        )
        return Send(body, self.tso)

    def results(self) -> dict[str, Any]:
        """What the DSO saw, for the run's summary (JSON-able)."""
        return {
            "dso_id": self.me,
            "congestion_seconds": self.congestion_s,
            "loading": [[t.isoformat(), element, round(v, 4)] for t, element, v in self.loading],
            "validation_ms": self.validation_ms,
            "faults_reported": self.faults_reported,
            "schedule_changes": [{"element": e, "factor": round(f, 4)} for e, f in self.schedule_changes],
            "congestion_needs": self.needs,
            "flex_activations": [f.model_dump(mode="json") for f in self.flex if f.buyer_id == self.me],
            "forwarded_bids": self.forwarded,
            "compute_ms": self.compute_ms,
        }
