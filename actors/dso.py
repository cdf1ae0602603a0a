"""The DSO: checks prequalified DN assets against its grid, publishes its interface forecast,
validates merit order lists with AC power flows, watches its grid in real time from telemetry and
limits activations that would congest it, reports faults and answers curtailment requests
(seed 000 Figs. 3-4, seed 004 §3)."""

import asyncio
import time
from datetime import datetime, timedelta
from pathlib import Path

import pandas as pd
import pandapower as pp

from actors import grid as grids
from actors.base import Actor
from actors.config import ISP, DsoConfig
from actors.powerflow import FastAC, GridState
from actors.validation import largest_activation, validate_mol
from gateway import Received
from schemas.codes import Connection, Direction
from schemas.envelope import Party
from schemas.messages import (
    AssetVerdict,
    CurtailmentRequest,
    CurtailmentResponse,
    FaultReport,
    Forecast,
    MeritOrderList,
    MolValidation,
    PrequalificationForward,
    PrequalificationResult,
    Schedule,
    SystemStateNotice,
    Telemetry,
    TerminationSignal,
)


class DSO(Actor):
    def __init__(self, gateway, clock, scenario, config: DsoConfig, out_dir: Path | None = None):  # noqa: ANN001
        super().__init__(gateway, clock, scenario)
        self.config = config
        self.out_dir = out_dir
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
        self.loading: list[tuple[datetime, str, float]] = []  # (instant, most loaded element, %)
        self.congestion_s = 0.0
        self.validation_ms: list[float] = []
        self.schedule_changes: list[tuple[str, float]] = []
        self.validated_mols: list = []
        self.faults_reported = 0
        self.curtailments: list[CurtailmentResponse] = []
        self.states_seen: list[SystemStateNotice] = []
        gateway.on(PrequalificationForward, self.on_prequalification)
        gateway.on(MeritOrderList, self.on_mol)
        gateway.on(Telemetry, self.on_telemetry)
        gateway.on(Schedule, self.on_schedule)
        gateway.on(CurtailmentRequest, self.on_curtailment)
        gateway.on(SystemStateNotice, self.on_system_state)

    # --- grid state -------------------------------------------------------------------------

    def _element_bus(self, element: str) -> tuple[int, float]:
        """Bus of 'sgen:<name>' / 'load:<name>' and the sign of a +1 MW change as an injection."""
        table, name = element.split(":", 1)
        idx = grids.element_index(self.net, table, name)
        return int(self.net[table].bus.at[idx]), (1.0 if table == "sgen" else -1.0)

    def event_injections(self, t: datetime, *, forecast: bool) -> dict[int, float]:
        """Redispatch active at ``t`` (and, in real time, the changes nobody forecast), bus -> MW."""
        out: dict[int, float] = {}
        changes = list(self.config.redispatch) + ([] if forecast else list(self.config.unforecast))
        for change in changes:
            if change.at <= t:
                bus, sign = self._element_bus(change.element)
                out[bus] = out.get(bus, 0.0) + sign * change.delta_mw
        return out

    def bus_of(self, name: str) -> int:
        return grids.bus_index(self.net, name)

    # --- prequalification (Fig. 3) ----------------------------------------------------------

    async def on_prequalification(self, msg: Received[PrequalificationForward]) -> None:
        """Connection bus exists; capacity within the hosting capacity at that bus, computed by AC
        power flow on the base case (largest injection / withdrawal that breaks no limit)."""
        verdicts = []
        for asset in msg.body.assets:
            try:
                bus = self.bus_of(asset.connection_bus or "")
            except KeyError:
                verdicts.append(AssetVerdict(asset_id=asset.asset_id, qualified=False, validated_capacity_up_mw=0,
                                             validated_capacity_down_mw=0, checked_by="dso",
                                             reason=f"connection bus {asset.connection_bus!r} is not in the grid of "
                                                    f"{self.me.id}"))  # fmt: skip
                continue
            up, _ = largest_activation(self.fast, {}, {bus: 1.0}, asset.capacity_up_mw)
            down, _ = largest_activation(self.fast, {}, {bus: -1.0}, asset.capacity_down_mw)
            ok = up >= asset.capacity_up_mw - 1e-9 and down >= asset.capacity_down_mw - 1e-9
            if ok:
                self.assets[asset.asset_id] = bus
            verdicts.append(AssetVerdict(
                asset_id=asset.asset_id, qualified=ok, checked_by="dso", validated_capacity_up_mw=up,
                validated_capacity_down_mw=down,
                reason=None if ok else f"hosting capacity at {asset.connection_bus}: +{up:.2f} / -{down:.2f} MW, "
                                       f"asked +{asset.capacity_up_mw} / -{asset.capacity_down_mw} MW",
            ))  # fmt: skip
        await self.gw.reply(msg, PrequalificationResult(bsp_id=msg.body.bsp_id, verdicts=verdicts))

    def scheduled(self, asset: str, t: datetime) -> float:
        """The asset's scheduled output at ``t`` [MW] (0 without a schedule)."""
        if asset not in self.schedules:
            return 0.0
        start, step, values = self.schedules[asset]
        i = int((t - start) / step)
        return values[min(max(i, 0), len(values) - 1)]

    def scheduled_injections(self, t: datetime) -> dict[int, float]:
        """The DN assets' scheduled outputs at their buses (the grid model holds no BSP assets)."""
        out: dict[int, float] = {}
        for asset, bus in self.connections.items():
            out[bus] = out.get(bus, 0.0) + self.scheduled(asset, t)
        return out

    async def on_schedule(self, msg: Received[Schedule]) -> None:
        """Final schedules of the DN resources (seed 004 §3). When they would break a limit of the
        grid in the forecast state, the DSO scales them down to what fits (largest common factor,
        by AC power flow) and informs the TSO with a 'dso_modified' schedule and the reason."""
        series = [x for x in msg.body.series if x.asset_id in self.connections]
        step = {"PT15M": ISP, "PT5M": ISP / 3, "PT1M": ISP / 15}.get(msg.body.resolution.value, ISP)
        for x in series:
            self.schedules[x.asset_id] = (msg.body.start, step, list(x.p_mw))
        if not series or msg.body.kind != "final":
            return
        factors, worst = [], None
        for i in range(len(series[0].p_mw)):
            events = self.event_injections(msg.body.start + i * step + step / 2, forecast=True)
            per_unit: dict[int, float] = {}
            for x in series:
                bus = self.connections[x.asset_id]
                per_unit[bus] = per_unit.get(bus, 0.0) + x.p_mw[i]
            factor, violations = largest_activation(self.fast, events, per_unit, 1.0, step_mw=0.001)
            factors.append(factor)
            if violations and worst is None:
                worst = violations[0]
        if worst is None:
            return
        for x in series:
            self.schedules[x.asset_id] = (msg.body.start, step, [p * f for p, f in zip(x.p_mw, factors)])
        self.schedule_changes.append((worst.element, min(factors)))
        await self.gw.publish(Schedule(
            kind="dso_modified", start=msg.body.start, resolution=msg.body.resolution,
            series=[x.model_copy(update={"p_mw": [round(p * f, 4) for p, f in zip(x.p_mw, factors)]}) for x in series],
            reason=f"{worst.element} at {worst.value:.1f} % with the schedules: scaled to "
                   f"{', '.join(f'{f:.3f}' for f in factors)} per step",
        ), self.tso)  # fmt: skip

    # --- forecast (seed 004 §3) ---------------------------------------------------------------

    async def publish_forecast(self) -> None:
        """Interface flow (P, Q at the coupling element, from the TSO into the DSO) per ISP, from AC
        power flows of the forecast state (the DSO's redispatch included)."""
        isps = self.scenario.isps()
        flows, qs = [], []
        for isp in isps:
            self.fast.solve(self.event_injections(isp + ISP / 2, forecast=True))
            p, q = self.fast.flow(self.config.interface)
            flows.append(round(p, 4))
            qs.append(round(q, 4))
        await self.gw.publish(
            Forecast(dso_id=self.me.id, interface_id=self.config.interface, kind="interface_flow", start=isps[0],
                     p_mw=flows, q_mvar=qs),
            self.tso,
        )  # fmt: skip

    # --- merit order list validation (Fig. 4) -----------------------------------------------

    async def on_mol(self, msg: Received[MeritOrderList]) -> None:
        if self.config.validation_delay_s:
            await asyncio.sleep(self.config.validation_delay_s)
        t0 = time.perf_counter()
        mol = msg.body
        base = self.event_injections(mol.isp_start + ISP / 2, forecast=True)
        for bus, mw in self.scheduled_injections(mol.isp_start + ISP / 2).items():
            base[bus] = base.get(bus, 0.0) + mw
        validated = validate_mol(self.fast, mol.bids, self.me.id, self.bus_of, base=base)
        elapsed = time.perf_counter() - t0
        self.validation_ms.append(elapsed * 1000)
        for entry in mol.bids:
            for asset in entry.assets:
                if asset.connection == Connection.DN and asset.dso_id == self.me.id:
                    self.asset_bids.setdefault(asset.asset_id, {})[entry.bid_id] = (
                        asset.share_mw, entry.quantity_mw, entry.direction)
        for r in validated.results:
            self.validated[r.bid_id] = r.upper_bound_mw
        await self.gw.reply(msg, MolValidation(mol_id=mol.mol_id, iteration=mol.iteration, dso_id=self.me.id,
                                               results=validated.results, computation_time_s=elapsed))  # fmt: skip
        self.validated_mols.append((mol, validated))  # written to the run directory when the run ends

    def save_validated_nets(self, mol: MeritOrderList, validated) -> None:  # noqa: ANN001
        """The net each direction was validated on, every bid at its limit, with a 'bid_validation'
        table marking each bid's bus and limiting element: pandapower JSON anyone can re-check."""
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
                    if asset.connection == Connection.DN and asset.dso_id == self.me.id:
                        rows.append({"bid_id": entry.bid_id, "asset_id": asset.asset_id, "bus": asset.connection_bus,
                                     "status": r.status.value, "upper_bound_mw": r.upper_bound_mw,
                                     "limiting_element": r.limiting_element, "loading_percent": r.loading_percent})  # fmt: skip
            if not rows:
                continue
            net = self.fast.audit(injections)
            net["bid_validation"] = pd.DataFrame(rows)
            name = f"{self.me.id}-{mol.mol_id}-iter{mol.iteration}-{'up' if direction == Direction.UP else 'down'}.json"
            pp.to_json(net, str(directory / name))

    # --- real time ---------------------------------------------------------------------------

    async def on_telemetry(self, msg: Received[Telemetry]) -> None:
        for m in msg.body.measurements:
            self.measured[m.resource_id] = m.p_mw

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

    async def watch(self, t: datetime) -> GridState:
        """One real-time check: power flow of the telemetered state; record the loading; with
        coordination, send the TSO a limit for an activation that breaks a limit."""
        events, total = self.real_time_injections(t)
        reference = self.fast.solve(events)
        state = self.fast.solve(total)
        element, loading = self.fast.max_line_loading(state)
        self.loading.append((t, element, loading))
        if loading > 100.0 + 1e-6:
            self.congestion_s += self.scenario.setpoint_period_s
        if self.scenario.coordination:
            violations = self.fast.violations(state, reference)
            if violations:
                await self.limit_activations(events, reference, violations)
        return state

    async def limit_activations(self, events, reference, violations) -> None:  # noqa: ANN001
        """Limit each activated bid with DN assets here to what the grid takes now (termination when
        nothing fits). Only a limit below the bid's current bound is sent."""
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
        for bid, per_mw in bids.items():
            allowed, _ = largest_activation(self.fast, events, per_mw, bounds[bid], reference=reference)
            if allowed >= bounds[bid] - 1e-6:
                continue  # this bid is not what breaks the limit
            self.limited_in_real_time[bid] = allowed
            worst = violations[0]
            await self.gw.publish(
                TerminationSignal(dso_id=self.me.id, bid_id=bid, action="terminate" if allowed <= 0 else "limit",
                                  max_mw=allowed, limiting_element=worst.element,
                                  loading_percent=round(worst.value, 3) if worst.element.startswith(("line", "trafo"))
                                  else None,
                                  reason=f"{worst.element} at {worst.value:.1f} in real time"),
                self.tso,
            )  # fmt: skip

    # --- emergencies (seed 004 §3) -----------------------------------------------------------

    async def on_system_state(self, msg: Received[SystemStateNotice]) -> None:
        self.states_seen.append(msg.body)

    async def on_curtailment(self, msg: Received[CurtailmentRequest]) -> None:
        req = msg.body
        accepted = min(req.amount_mw, self.config.curtailable_load_mw if req.target == "load" else req.amount_mw)
        status = "accepted" if accepted >= req.amount_mw else ("partial" if accepted > 0 else "refused")
        answer = CurtailmentResponse(dso_id=self.me.id, accepted_mw=accepted, status=status,
                                     reason=None if status == "accepted" else "curtailable load exhausted")  # fmt: skip
        self.curtailments.append(answer)
        await self.gw.reply(msg, answer)

    async def report_fault(self, fault) -> None:  # noqa: ANN001
        self.faults_reported += 1
        await self.gw.publish(
            FaultReport(dso_id=self.me.id, element_id=fault.element, fault_type=fault.fault_type,
                        occurred_at=fault.at, lost_load_mw=fault.lost_load_mw,
                        lost_generation_mw=fault.lost_generation_mw),
            self.tso,
        )  # fmt: skip

    # --- the run -----------------------------------------------------------------------------

    async def run(self) -> None:
        await self.publish_forecast()
        faults = sorted(self.config.faults, key=lambda f: f.at)
        for _, t in self.cycles(self.scenario.start, self.scenario.end):
            await self.clock.sleep_until(t)
            while faults and faults[0].at <= t:
                await self.report_fault(faults.pop(0))
            await self.watch(t)

    def results(self) -> dict:
        """What the DSO saw, for the run's summary (JSON-able)."""
        return {
            "dso_id": self.me.id,
            "congestion_seconds": self.congestion_s,
            "loading": [[t.isoformat(), element, round(v, 4)] for t, element, v in self.loading],
            "validation_ms": self.validation_ms,
            "faults_reported": self.faults_reported,
            "schedule_changes": [{"element": e, "factor": round(f, 4)} for e, f in self.schedule_changes],
        }

    def write_results(self) -> None:
        """After the run (pp.runpp audits would stall the real-time loop): the validated nets."""
        if self.out_dir is not None:
            for mol, validated in self.validated_mols:
                self.save_validated_nets(mol, validated)

