"""The message bodies: one pydantic model per message the operators exchange (docs/domain.md).

Every field carries a description with its unit in brackets and, for JSON Schema readers, an
``x-unit`` keyword (MW, Mvar, MWh, EUR/MWh, EUR, s, %, p.u., UTC). Code values follow ENTSO-E where
it defines them (``schemas.codes``). Sources: CS review Figs. 3-4 and §IV.B, Birk et al. 2017 §3.
"""

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from tsodso.schemas.codes import (
    MEASUREMENT_UNIT_MW,
    BidStatus,
    Connection,
    Direction,
    ProcessType,
    Quality,
    RejectReason,
    Resolution,
    SystemState,
)
from tsodso.schemas.envelope import MAX_INT, PartyId, UtcTime


def _f(unit: str, description: str, **kw: Any) -> Any:
    return Field(description=f"{description} [{unit}]", json_schema_extra={"x-unit": unit}, **kw)


def MW(description: str, **kw: Any) -> Any:
    return _f("MW", description, **kw)


def Mvar(description: str, **kw: Any) -> Any:
    return _f("Mvar", description, **kw)


def MWh(description: str, **kw: Any) -> Any:
    return _f("MWh", description, **kw)


def EUR_per_MWh(description: str, **kw: Any) -> Any:
    return _f("EUR/MWh", description, **kw)


def EUR(description: str, **kw: Any) -> Any:
    return _f("EUR", description, **kw)


def seconds(description: str, **kw: Any) -> Any:
    return _f("s", description, **kw)


def percent(description: str, **kw: Any) -> Any:
    return _f("%", description, **kw)


def utc(description: str, **kw: Any) -> Any:
    return _f("UTC", description, **kw)


class Body(BaseModel):
    """Base of every message body. ``type_name`` is the envelope's ``type`` for this body."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    type_name: ClassVar[str]


# --- prequalification (CS review Fig. 3) -------------------------------------------------------


class AssetData(BaseModel):
    """Technical data of one asset offered for balancing."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    asset_id: PartyId
    connection: Connection = Field(description="TN: transmission-connected; DN: behind a DSO.")
    dso_id: PartyId | None = Field(default=None, description="Responsible DSO for a DN-connected asset.")
    connection_bus: str | None = Field(
        default=None, max_length=64, description="Bus (node) name in the DSO's grid model where the asset connects."
    )
    product: ProcessType = Field(description="ENTSO-E process type the asset is offered for (A51 aFRR, A47 mFRR).")
    capacity_up_mw: float = MW("Upward capacity offered", ge=0)
    capacity_down_mw: float = MW("Downward capacity offered", ge=0)
    ramp_rate_mw_per_min: float = _f("MW/min", "Maximum rate of change of output", gt=0)
    time_constant_s: float = seconds("Time constant of the asset's first-order response", ge=0, default=0.0)


class PrequalificationRequest(Body):
    """BSP → TSO: prequalify these assets (CS review Fig. 3)."""

    type_name: ClassVar[str] = "prequalification_request"
    bsp_id: PartyId
    assets: list[AssetData] = Field(description="Assets to prequalify.", min_length=1)


class PrequalificationForward(Body):
    """TSO → DSO: the DN-connected assets of a BSP's request, for the DSO to check (CS review Fig. 3)."""

    type_name: ClassVar[str] = "prequalification_forward"
    bsp_id: PartyId
    dso_id: PartyId
    assets: list[AssetData] = Field(description="The DN-connected assets to check.", min_length=1)


class AssetVerdict(BaseModel):
    """The outcome for one asset."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    asset_id: PartyId
    qualified: bool = Field(description="True when the asset may bid.")
    validated_capacity_up_mw: float = MW("Upward capacity the asset is qualified for", ge=0)
    validated_capacity_down_mw: float = MW("Downward capacity the asset is qualified for", ge=0)
    checked_by: Literal["tso", "dso"] = Field(description="Operator that checked the asset.")
    reason: str | None = Field(default=None, max_length=512, description="Why the asset failed or was reduced.")


class PrequalificationResult(Body):
    """DSO → TSO (checked DN assets) and TSO → BSP (final answer) (CS review Fig. 3)."""

    type_name: ClassVar[str] = "prequalification_result"
    bsp_id: PartyId
    verdicts: list[AssetVerdict] = Field(description="One verdict per asset.", min_length=1)


# --- schedules and forecasts (Birk et al. 2017 §3) ----------------------------------------------------


class ScheduleSeries(BaseModel):
    """Active power of one asset per time step."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    asset_id: PartyId
    dso_id: PartyId | None = Field(default=None, description="DSO of a DN-connected asset.")
    p_mw: list[float] = MW("Scheduled active power per step, generation positive", min_length=1)


class Schedule(Body):
    """Schedules per PTU: BSP → TSO day-ahead, TSO → DSO final schedules of DN resources, DSO → TSO
    changes it made to DER schedules for local constraints (Birk et al. 2017 §3)."""

    type_name: ClassVar[str] = "schedule"
    kind: Literal["day_ahead", "final", "dso_modified"] = Field(description="Which schedule this is.")
    start: UtcTime = utc("Start of the first step")
    resolution: Resolution = Field(default=Resolution.PT15M, description="Length of one step (PTU = PT15M).")
    series: list[ScheduleSeries] = Field(description="One series per asset.", min_length=1)
    reason: str | None = Field(default=None, max_length=512, description="Why a DSO modified the schedule.")


class Forecast(Body):
    """DSO → TSO: forecast at a TSO-DSO interface (Birk et al. 2017 §3: energy flows and forecasting)."""

    type_name: ClassVar[str] = "forecast"
    dso_id: PartyId
    interface_id: str = Field(max_length=64, description="Coupling point (transformer) the forecast is for.")
    kind: Literal["interface_flow", "load", "generation"] = Field(description="What is forecast.")
    start: UtcTime = utc("Start of the first step")
    resolution: Resolution = Field(default=Resolution.PT15M, description="Length of one step.")
    p_mw: list[float] = MW("Active power per step, flow from TSO into DSO positive", min_length=1)
    q_mvar: list[float] | None = Mvar("Reactive power per step", default=None)
    hosting_capacity_mw: float | None = MW("Remaining hosting capacity at the interface", default=None)


# --- offering (CS review Fig. 4) ---------------------------------------------------------------


class BidAsset(BaseModel):
    """The share of a bid that one asset delivers."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    asset_id: PartyId
    connection: Connection = Field(description="TN or DN connection of the asset.")
    dso_id: PartyId | None = Field(default=None, description="DSO of a DN-connected asset.")
    connection_bus: str | None = Field(default=None, max_length=64, description="Bus in the DSO's grid.")
    share_mw: float = MW("Part of the bid quantity this asset delivers", ge=0)


class EnergyBid(Body):
    """BSP → TSO: a balancing energy bid for one ISP and direction, before gate closure."""

    type_name: ClassVar[str] = "energy_bid"
    bid_id: PartyId
    bsp_id: PartyId
    process: ProcessType = Field(description="A51 aFRR or A47 mFRR.")
    direction: Direction = Field(description="A01 up, A02 down.")
    isp_start: UtcTime = utc("Start of the imbalance settlement period (15 min) the bid is for")
    unit: Literal["MAW"] = Field(default=MEASUREMENT_UNIT_MW, description="ENTSO-E unit of quantities (MAW = MW).")
    quantity_mw: float = MW("Offered quantity", gt=0)
    min_quantity_mw: float = MW("Smallest activation the bid accepts (divisibility)", ge=0, default=0.0)
    price_eur_per_mwh: float = EUR_per_MWh("Energy price")
    reference_mw: float = MW("BSP's reference (scheduled) output the delta setpoints apply to", default=0.0)
    ramp_rate_mw_per_min: float = _f("MW/min", "Fastest change of the activated quantity", gt=0)
    assets: list[BidAsset] = Field(
        min_length=1,
        description="Which assets deliver the bid and where they connect; each asset once, their share_mw adding up "
        "to quantity_mw (to 1 kW).",
    )

    @model_validator(mode="after")
    def _shares_add_up(self) -> "EnergyBid":
        ids = [a.asset_id for a in self.assets]
        if len(set(ids)) != len(ids):
            raise ValueError(f"bid {self.bid_id}: an asset is listed twice ({', '.join(ids)})")
        total = sum(a.share_mw for a in self.assets)
        if abs(total - self.quantity_mw) > 1e-3:
            raise ValueError(
                f"bid {self.bid_id}: the assets' share_mw add up to {total:g} MW, not its quantity_mw {self.quantity_mw:g}"
            )
        return self


class MolEntry(BaseModel):
    """One bid in a merit order list."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    rank: int = Field(ge=1, le=MAX_INT, description="Position in the merit order of its direction (1 = cheapest).")
    bid_id: PartyId
    bsp_id: PartyId
    direction: Direction = Field(description="A01 up, A02 down.")
    price_eur_per_mwh: float = EUR_per_MWh("Energy price")
    quantity_mw: float = MW("Offered quantity", gt=0)
    lower_bound_mw: float = MW("Smallest activation currently allowed", ge=0, default=0.0)
    upper_bound_mw: float = MW("Largest activation currently allowed", ge=0)
    assets: list[BidAsset] = Field(description="Assets delivering the bid and where they connect.", min_length=1)


class MeritOrderList(Body):
    """TSO → DSO: the bids of one ISP in merit order, for validation (CS review Fig. 4)."""

    type_name: ClassVar[str] = "merit_order_list"
    mol_id: PartyId
    process: ProcessType = Field(description="ENTSO-E process type: A51 aFRR, A47 mFRR.")
    isp_start: UtcTime = utc("Start of the ISP the list is for")
    iteration: int = Field(ge=1, le=MAX_INT, default=1, description="1 for the first sending, +1 for each re-send.")
    bids: list[MolEntry] = Field(description="Bids, ordered by direction then rank.")


class BidValidation(BaseModel):
    """The DSO's verdict on one bid, with the grid element that decided it."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    bid_id: PartyId
    status: BidStatus = Field(description="accepted, limited (new bounds) or rejected.")
    lower_bound_mw: float = MW("Smallest activation the DSO allows", ge=0, default=0.0)
    upper_bound_mw: float = MW("Largest activation the DSO allows (0 when rejected)", ge=0)
    limiting_element: str | None = Field(
        default=None, max_length=64, description="Grid element that limits the bid, e.g. 'line:3' or 'trafo:0'."
    )
    loading_percent: float | None = percent(
        "Loading of the limiting element at the full bid (the violation that caused the limit)", default=None
    )
    voltage_pu: float | None = _f("p.u.", "Voltage at the limiting bus, when a voltage limit decided", default=None)
    reason: str | None = Field(description="Explanation of the verdict.", default=None, max_length=512)


class FlexibilityNeed(Body):
    """A need for flexibility in one ISP, to the party that clears it (the TSO in the common market,
    the market operator in the integrated market; CS review Table I).

    A balancing need is ``quantity`` MW in ``direction``; any bid in that direction covers it MW for
    MW. A congestion need is ``quantity`` percentage points of loading to take off ``element``;
    ``effectiveness`` says how many points one MW of each listed bid takes off (the DSO's AC power
    flow). A bid not listed does not help."""

    type_name: ClassVar[str] = "flexibility_need"
    need_id: PartyId
    buyer_id: PartyId = Field(description="The party that needs it (TSO, DSO or commercial party).")
    kind: Literal["balancing", "congestion", "commercial"] = Field(description="Whose need and what for.")
    isp_start: UtcTime = utc("Start of the ISP the need is for")
    direction: Direction | None = Field(default=None, description="A01 up, A02 down; none for a congestion need.")
    quantity: float = _f(
        "MW | %",
        "MW for balancing and commercial needs, percentage points of loading for congestion; ``unit`` says which",
        gt=0,
    )
    unit: Literal["MW", "%"] = Field(default="MW", description="Unit of ``quantity``.")
    max_price_eur_per_mwh: float = EUR_per_MWh("Willingness to pay")
    element: str | None = Field(default=None, max_length=64, description="Congested element, e.g. 'line:south-pv'.")
    loading_percent: float | None = percent("Loading of the element without flexibility", default=None)
    effectiveness: dict[PartyId, float] | None = Field(
        default=None,
        max_length=10_000,
        description="bid id -> % of loading relieved per MW activated (congestion needs) [%/MW]",
    )


class MolValidation(Body):
    """DSO → TSO: the validated merit order list (CS review Fig. 4, 'check and clear invalid bid')."""

    type_name: ClassVar[str] = "mol_validation"
    mol_id: PartyId
    iteration: int = Field(description="Iteration of the merit order list this validation answers.", ge=1, le=MAX_INT)
    dso_id: PartyId
    results: list[BidValidation] = Field(description="One verdict per bid of the list that touches this DSO's grid.")
    computation_time_s: float | None = seconds("Time the DSO spent validating", default=None, ge=0)
    needs: list[FlexibilityNeed] = Field(
        default_factory=list, description="The DSO's own needs for the ISP (common and integrated markets)."
    )


class AcceptedOffer(BaseModel):
    """One offer the TSO accepted, with the bounds it may be activated in."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    bid_id: PartyId
    direction: Direction = Field(description="A01 up, A02 down.")
    lower_bound_mw: float = MW("Smallest activation", ge=0, default=0.0)
    upper_bound_mw: float = MW("Largest activation", ge=0)


class Award(MolEntry):
    """One bid (or part of it) a market gave to a buyer for one ISP."""

    buyer_id: PartyId = Field(description="Who gets it: the TSO, a DSO or a commercial party.")
    buyer_role: Literal["tso", "dso", "bsp"] = Field(description="Role of the buyer (bsp: a commercial party).")
    need_id: PartyId
    awarded_mw: float = MW("Activation awarded to this buyer", ge=0)
    ramp_rate_mw_per_min: float = _f("MW/min", "The bid's ramp", gt=0)
    reference_mw: float = MW("The BSP's reference output", default=0.0)


class MarketResult(Body):
    """Clearing party → buyers: what a TSO-DSO market gave to whom for one ISP (schemes 4-6 of
    CS review Table I), with the cost the clearing minimised and its computation time."""

    type_name: ClassVar[str] = "market_result"
    isp_start: UtcTime = utc("Start of the ISP")
    scheme: str = Field(max_length=32, description="Coordination scheme that cleared it.")
    awards: list[Award] = Field(description="Bids given to buyers, with the MW each.")
    computation_time_s: float = seconds("Time the clearing took", ge=0)


class FlexActivation(Body):
    """Buyer (DSO, market operator) → BSP: activate a bid as a block for one ISP, outside aFRR: the
    assets' schedules move by ``activated_mw`` (a DSO's congestion management, Birk et al. 2017 §3; a
    flexibility market's award). Copies go to the TSO and the DSOs whose grid holds the assets."""

    type_name: ClassVar[str] = "flex_activation"
    activation_id: PartyId
    buyer_id: PartyId
    buyer_role: Literal["tso", "dso", "bsp"] = Field(description="Role of the buyer (bsp: a commercial party).")
    purpose: Literal["congestion", "balancing", "commercial"] = Field(description="What the buyer needs it for.")
    bid_id: PartyId
    bsp_id: PartyId
    direction: Direction = Field(description="A01 up, A02 down.")
    isp_start: UtcTime = utc("Start of the ISP")
    activated_mw: float = MW("Activated quantity (from the ISP start to its end)", gt=0)
    price_eur_per_mwh: float = EUR_per_MWh("Price paid (pay as bid)")
    assets: list[BidAsset] = Field(min_length=1, description="Assets that move and their share.")


class OfferAcceptance(Body):
    """TSO → BSP: confirmation of accepted offers for an ISP (CS review Fig. 4)."""

    type_name: ClassVar[str] = "offer_acceptance"
    isp_start: UtcTime = utc("Start of the ISP")
    accepted: list[AcceptedOffer] = Field(description="Accepted offers with their activation bounds.")
    rejected_bid_ids: list[PartyId] = Field(default_factory=list, description="Bids not accepted.")


# --- activation and real time (CS review §IV.A-B) ----------------------------------------------


class DeltaSetpoint(Body):
    """TSO → BSP: aFRR delta setpoint relative to the reference value, at least every 4 s
    (CS review §IV.B). Delivery may deviate by [-10 %, +20 %] of the setpoint."""

    type_name: ClassVar[str] = "delta_setpoint"
    bsp_id: PartyId
    process: ProcessType = Field(description="ENTSO-E process type (A51 aFRR).", default=ProcessType.AFRR)
    cycle: int = Field(ge=0, le=MAX_INT, description="Setpoint cycle number since the start of the run.")
    instant: UtcTime = utc("Scenario instant the setpoint applies from")
    resolution: Resolution = Field(default=Resolution.PT4S, description="Setpoint period.")
    reference_mw: float = MW("Reference (scheduled) output of the BSP")
    delta_mw: float = MW("Requested deviation from the reference, up positive")
    bid_deltas_mw: dict[PartyId, float] = MW("Deviation per activated bid id", default_factory=dict, max_length=64)


class Measurement(BaseModel):
    """One telemetered resource or interface."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    resource_id: str = Field(max_length=64, description="Asset, bus or interface measured.")
    p_mw: float = MW("Active power, generation / import positive")
    q_mvar: float | None = Mvar("Reactive power", default=None)
    quality: Quality = Field(description="Quality of the values.", default=Quality.GOOD)


class SwitchState(BaseModel):
    """Status of a breaker or switch (ICCP-style, CS review §III)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    element_id: str = Field(description="Breaker or switch identifier.", max_length=64)
    closed: bool = Field(description="True when closed (conducting).")


class Telemetry(Body):
    """Real-time data every 4 s: BSP → TSO/DSO (delivery) and DSO → TSO (interface P, Q, switches)."""

    type_name: ClassVar[str] = "telemetry"
    source_id: PartyId = Field(description="Actor whose resources are measured.")
    instant: UtcTime = utc("Scenario instant of the measurement")
    cycle: int | None = Field(default=None, ge=0, le=MAX_INT, description="Setpoint cycle the values answer, if any.")
    delivered_delta_mw: float | None = MW("Delivered deviation from the reference, up positive", default=None)
    measurements: list[Measurement] = Field(description="Measured values.", default_factory=list)
    switches: list[SwitchState] = Field(description="Breaker and switch states.", default_factory=list)


class TerminationSignal(Body):
    """DSO → TSO: an activation harms the DSO's grid; terminate it or limit it (CS review Fig. 4)."""

    type_name: ClassVar[str] = "termination_signal"
    dso_id: PartyId
    bid_id: PartyId
    action: Literal["terminate", "limit"] = Field(description="terminate the activation, or limit it to max_mw.")
    max_mw: float = MW("Largest activation the DSO tolerates (0 for terminate)", ge=0)
    limiting_element: str | None = Field(
        description="Grid element that is violated, e.g. line:3.", default=None, max_length=64
    )
    loading_percent: float | None = percent("Loading of the element that triggered the signal", default=None)
    reason: str | None = Field(description="Explanation for the TSO.", default=None, max_length=512)


class ActivationLimit(Body):
    """TSO → BSP: do not activate this bid beyond ``max_mw`` (CS review Fig. 4, 'TSO send limit activation')."""

    type_name: ClassVar[str] = "activation_limit"
    bsp_id: PartyId
    bid_id: PartyId
    direction: Direction = Field(description="Direction the limit applies to: A01 up, A02 down.")
    max_mw: float = MW("Largest activation allowed from now on", ge=0)
    valid_from: UtcTime = utc("Scenario instant the limit applies from")
    requested_by: PartyId | None = Field(default=None, description="DSO that asked for the limit.")
    reason: str | None = Field(description="Why the activation is limited.", default=None, max_length=512)


# --- emergencies (Birk et al. 2017 §3) ----------------------------------------------------------------


class SystemStateNotice(Body):
    """TSO → DSOs (and DSO → TSO): the system state of the network code on emergency and restoration."""

    type_name: ClassVar[str] = "system_state"
    state: SystemState = Field(description="System state: normal, alert, emergency, blackout, restoration.")
    area: str = Field(max_length=64, description="Area the state applies to.")
    since: UtcTime = utc("Scenario instant the state began")
    reason: str | None = Field(description="Why the state changed.", default=None, max_length=512)
    speed: float | None = _f(
        "s/s", "On a run start: scenario seconds per wall second of the run (1 = real time)", default=None, gt=0, le=1e6
    )
    wall_start: UtcTime | None = utc(
        "On a run start: the wall-clock instant at which scenario time is `since`; scenario time = since + speed x "
        "(wall time - wall_start)",
        default=None,
    )


class CurtailmentRequest(Body):
    """TSO → DSO: curtail load or generation in the DSO's area (Birk et al. 2017 §3)."""

    type_name: ClassVar[str] = "curtailment_request"
    dso_id: PartyId
    target: Literal["load", "generation"] = Field(description="Whether load or generation is to be curtailed.")
    amount_mw: float = MW("Reduction requested", gt=0)
    start: UtcTime = utc("Scenario instant the curtailment starts")
    duration_s: float = seconds("How long the curtailment lasts", gt=0)
    state: SystemState = Field(description="System state that motivates the request.")


class CurtailmentResponse(Body):
    """DSO → TSO: what the DSO will curtail."""

    type_name: ClassVar[str] = "curtailment_response"
    dso_id: PartyId
    accepted_mw: float = MW("Reduction the DSO commits to", ge=0)
    status: Literal["accepted", "partial", "refused"] = Field(description="accepted, partial or refused.")
    reason: str | None = Field(description="Why the DSO curtails less than requested.", default=None, max_length=512)


class FaultReport(Body):
    """DSO → TSO: a local grid issue (line fault) (Birk et al. 2017 §3)."""

    type_name: ClassVar[str] = "fault_report"
    dso_id: PartyId
    element_id: str = Field(max_length=64, description="Faulted element, e.g. 'line:5'.")
    fault_type: Literal["line_fault", "trafo_fault", "bus_fault", "protection_trip"] = Field(
        description="Kind of fault."
    )
    occurred_at: UtcTime = utc("Scenario instant of the fault")
    cleared: bool = Field(default=False, description="True when the element is back in service.")
    lost_load_mw: float = MW("Load disconnected by the fault", ge=0, default=0.0)
    lost_generation_mw: float = MW("Generation disconnected by the fault", ge=0, default=0.0)
    description: str | None = Field(
        description="Free-text description for the control room.", default=None, max_length=512
    )


# --- presence, settlement, monitoring, errors -------------------------------------------------


class ActorState(Body):
    """Any → all, retained: presence. 'online' on connect; 'offline' on a clean stop or as the MQTT will."""

    type_name: ClassVar[str] = "actor_state"
    status: Literal["online", "offline"] = Field(description="'online' or 'offline'.")
    since: UtcTime = utc("Wall-clock instant of the change")
    software: str | None = Field(default=None, max_length=128, description="Software and version of the actor.")
    started_at: UtcTime | None = Field(
        default=None,
        description="When the sending process began speaking on the bus (UTC): every state of one process "
        "carries the same instant, its MQTT will included. A receiver keeps the state of the latest start: "
        "a state of an earlier start, such as a previous run's retained 'offline' that a broker cluster "
        "delivers late, is stale; within one start, states count in the order they arrive ('offline' as "
        "the will comes after the 'online' it ends, though built before it).",
    )


class Heartbeat(Body):
    """Any → all: liveness and clock probe."""

    type_name: ClassVar[str] = "heartbeat"
    sent_at: UtcTime = utc("Wall-clock instant at the sender")
    interval_s: float = seconds("Period of the heartbeats", gt=0)


class SettlementLine(BaseModel):
    """Activated energy of one bid in one ISP."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    bid_id: PartyId
    direction: Direction = Field(description="A01 up, A02 down.")
    activated_energy_mwh: float = MWh("Energy activated in the ISP", ge=0)
    price_eur_per_mwh: float = EUR_per_MWh("Balancing energy price")
    amount_eur: float = EUR("Payment to the BSP (negative: BSP pays)")


class SettlementReport(Body):
    """TSO → BSP: settlement per ISP from the activated energy and price (CS review §IV.A)."""

    type_name: ClassVar[str] = "settlement_report"
    bsp_id: PartyId
    isp_start: UtcTime = utc("Start of the ISP")
    lines: list[SettlementLine] = Field(description="One line per activated bid and direction.")
    total_eur: float = EUR("Sum of the lines")


class MonitoringReport(Body):
    """TSO → BSP: requested vs delivered volume, every 5 minutes (CS review §IV.A)."""

    type_name: ClassVar[str] = "monitoring_report"
    bsp_id: PartyId
    period_start: UtcTime = utc("Start of the period")
    period_end: UtcTime = utc("End of the period")
    requested_energy_mwh: float = MWh("Energy requested by the setpoints")
    delivered_energy_mwh: float = MWh("Energy delivered according to telemetry")
    within_tolerance_ratio: float = _f(
        "1", "Share of cycles delivered within [-10 %, +20 %] of the setpoint (CS review §IV.B)", ge=0, le=1
    )
    compliant: bool = Field(description="False when the BSP did not follow the setpoints.")


class Rejection(Body):
    """Receiver → sender: your message was refused, and why."""

    type_name: ClassVar[str] = "rejection"
    rejected_message_id: str | None = Field(
        default=None, max_length=64, description="Id of the refused message, if readable."
    )
    rejected_type: str | None = Field(
        description="Type of the refused message, if readable.", default=None, max_length=64
    )
    rejected_topic: str = Field(description="Topic the refused message arrived on.", max_length=512)
    code: RejectReason = Field(description="Which check failed.")
    reason: str = Field(max_length=2048, description="Human-readable explanation, with the field path.")


MESSAGE_TYPES: dict[str, type[Body]] = {
    cls.type_name: cls
    for cls in (
        PrequalificationRequest,
        PrequalificationForward,
        PrequalificationResult,
        Schedule,
        Forecast,
        EnergyBid,
        MeritOrderList,
        MolValidation,
        FlexibilityNeed,
        MarketResult,
        FlexActivation,
        OfferAcceptance,
        DeltaSetpoint,
        Telemetry,
        TerminationSignal,
        ActivationLimit,
        SystemStateNotice,
        CurtailmentRequest,
        CurtailmentResponse,
        FaultReport,
        ActorState,
        Heartbeat,
        SettlementReport,
        MonitoringReport,
        Rejection,
    )
}
"""Message type name → body model."""


def body_type(type_name: str) -> type[Body]:
    """The body model of a message type; KeyError names the known types."""
    try:
        return MESSAGE_TYPES[type_name]
    except KeyError:
        raise KeyError(f"unknown message type {type_name!r}; known: {', '.join(sorted(MESSAGE_TYPES))}") from None


RESPONSE_TYPES: dict[str, str] = {
    "prequalification_request": "prequalification_result",
    "prequalification_forward": "prequalification_result",
    "merit_order_list": "mol_validation",
    "curtailment_request": "curtailment_response",
    "heartbeat": "heartbeat",
}
"""Request type → the type of its answer (request/response pairs of Figs. 3-4 and Birk et al. 2017 §3)."""
