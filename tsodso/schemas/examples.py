"""One valid example of every message type, with a sender and recipient role the bilateral table
allows: what ``tsodso schemas export`` writes to ``contract/examples/`` (a device's developer starts
from them) and what the contract, gateway and fuzz tests send."""

from datetime import UTC, datetime

from tsodso.schemas.codes import (
    BidStatus,
    Connection,
    Direction,
    ProcessType,
    Quality,
    RejectReason,
    SystemState,
)
from tsodso.schemas.messages import (
    AcceptedOffer,
    ActivationLimit,
    ActorState,
    AssetData,
    AssetVerdict,
    Award,
    BidAsset,
    BidValidation,
    Body,
    CurtailmentRequest,
    CurtailmentResponse,
    DeltaSetpoint,
    EnergyBid,
    FaultReport,
    FlexActivation,
    FlexibilityNeed,
    Forecast,
    Heartbeat,
    MarketResult,
    Measurement,
    MeritOrderList,
    MolEntry,
    MolValidation,
    MonitoringReport,
    OfferAcceptance,
    PrequalificationForward,
    PrequalificationRequest,
    PrequalificationResult,
    Rejection,
    Schedule,
    ScheduleSeries,
    SettlementLine,
    SettlementReport,
    SwitchState,
    SystemStateNotice,
    Telemetry,
    TerminationSignal,
)

T0 = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
DER = AssetData(
    asset_id="der1",
    connection=Connection.DN,
    dso_id="dso1",
    connection_bus="bus7",
    product=ProcessType.AFRR,
    capacity_up_mw=10,
    capacity_down_mw=10,
    ramp_rate_mw_per_min=2,
    time_constant_s=8,
)
BID_ASSETS = [
    BidAsset(asset_id="der1", connection=Connection.DN, dso_id="dso1", connection_bus="bus7", share_mw=10),
    BidAsset(asset_id="plant", connection=Connection.TN, share_mw=10),
]

# (body, sender role, recipient role)
SAMPLES: list[tuple[Body, str, str]] = [
    (PrequalificationRequest(bsp_id="bsp1", assets=[DER]), "bsp", "tso"),
    (PrequalificationForward(bsp_id="bsp1", dso_id="dso1", assets=[DER]), "tso", "dso"),
    (
        PrequalificationResult(
            bsp_id="bsp1",
            verdicts=[
                AssetVerdict(
                    asset_id="der1",
                    qualified=False,
                    validated_capacity_up_mw=0,
                    validated_capacity_down_mw=0,
                    checked_by="dso",
                    reason="bus7 hosting capacity 8 MW < 10 MW",
                )
            ],
        ),
        "dso",
        "tso",
    ),
    (Schedule(kind="day_ahead", start=T0, series=[ScheduleSeries(asset_id="plant", p_mw=[200.0] * 4)]), "bsp", "tso"),
    (
        Forecast(
            dso_id="dso1",
            interface_id="trafo:0",
            kind="interface_flow",
            start=T0,
            p_mw=[30.5, 31.0],
            q_mvar=[5.0, 5.1],
            hosting_capacity_mw=12.0,
        ),
        "dso",
        "tso",
    ),
    (
        EnergyBid(
            bid_id="bid1",
            bsp_id="bsp1",
            process=ProcessType.AFRR,
            direction=Direction.UP,
            isp_start=T0,
            quantity_mw=20,
            price_eur_per_mwh=85.5,
            reference_mw=200,
            ramp_rate_mw_per_min=2,
            assets=BID_ASSETS,
        ),
        "bsp",
        "tso",
    ),
    (
        MeritOrderList(
            mol_id="mol1",
            process=ProcessType.AFRR,
            isp_start=T0,
            bids=[
                MolEntry(
                    rank=1,
                    bid_id="bid1",
                    bsp_id="bsp1",
                    direction=Direction.UP,
                    price_eur_per_mwh=85.5,
                    quantity_mw=20,
                    upper_bound_mw=20,
                    assets=BID_ASSETS,
                )
            ],
        ),
        "tso",
        "dso",
    ),
    (
        MolValidation(
            mol_id="mol1",
            iteration=1,
            dso_id="dso1",
            computation_time_s=0.004,
            results=[
                BidValidation(
                    bid_id="bid1",
                    status=BidStatus.LIMITED,
                    upper_bound_mw=15.0,
                    limiting_element="line:3",
                    loading_percent=104.2,
                )
            ],
        ),
        "dso",
        "tso",
    ),
    (
        FlexibilityNeed(
            need_id="dso1-congestion",
            buyer_id="dso1",
            kind="congestion",
            isp_start=T0,
            quantity=26.5,
            unit="%",
            max_price_eur_per_mwh=200,
            element="line:south-pv",
            loading_percent=124.6,
            effectiveness={"pv-down": 7.6},
        ),
        "dso",
        "mo",
    ),
    (
        MarketResult(
            isp_start=T0,
            scheme="integrated_market",
            computation_time_s=0.0002,
            awards=[
                Award(
                    rank=1,
                    bid_id="bid1",
                    bsp_id="bsp1",
                    direction=Direction.UP,
                    price_eur_per_mwh=85.5,
                    quantity_mw=20,
                    upper_bound_mw=20,
                    assets=BID_ASSETS,
                    buyer_id="tso",
                    buyer_role="tso",
                    need_id="tso-balancing",
                    awarded_mw=12.5,
                    ramp_rate_mw_per_min=2,
                    reference_mw=200,
                )
            ],
        ),
        "mo",
        "tso",
    ),
    (
        FlexActivation(
            activation_id="dso1-1000-bid1",
            buyer_id="dso1",
            buyer_role="dso",
            purpose="congestion",
            bid_id="bid1",
            bsp_id="bsp1",
            direction=Direction.DOWN,
            isp_start=T0,
            activated_mw=3.5,
            price_eur_per_mwh=20,
            assets=BID_ASSETS,
        ),
        "dso",
        "bsp",
    ),
    (
        OfferAcceptance(
            isp_start=T0, accepted=[AcceptedOffer(bid_id="bid1", direction=Direction.UP, upper_bound_mw=15)]
        ),
        "tso",
        "bsp",
    ),
    (
        DeltaSetpoint(bsp_id="bsp1", cycle=15, instant=T0, reference_mw=200, delta_mw=1.0, bid_deltas_mw={"bid1": 1.0}),
        "tso",
        "bsp",
    ),
    (
        Telemetry(
            source_id="bsp1",
            instant=T0,
            cycle=15,
            delivered_delta_mw=0.98,
            measurements=[Measurement(resource_id="plant", p_mw=200.98, q_mvar=3.0, quality=Quality.GOOD)],
            switches=[SwitchState(element_id="cb-plant", closed=True)],
        ),
        "bsp",
        "tso",
    ),
    (
        TerminationSignal(
            dso_id="dso1", bid_id="bid1", action="limit", max_mw=15, limiting_element="line:3", loading_percent=101.0
        ),
        "dso",
        "tso",
    ),
    (
        ActivationLimit(
            bsp_id="bsp1", bid_id="bid1", direction=Direction.UP, max_mw=15, valid_from=T0, requested_by="dso1"
        ),
        "tso",
        "bsp",
    ),
    (SystemStateNotice(state=SystemState.ALERT, area="NL", since=T0), "tso", "dso"),
    (
        CurtailmentRequest(
            dso_id="dso1", target="load", amount_mw=5, start=T0, duration_s=900, state=SystemState.EMERGENCY
        ),
        "tso",
        "dso",
    ),
    (CurtailmentResponse(dso_id="dso1", accepted_mw=4, status="partial", reason="feeder 2 protected"), "dso", "tso"),
    (
        FaultReport(dso_id="dso1", element_id="line:5", fault_type="line_fault", occurred_at=T0, lost_load_mw=2.5),
        "dso",
        "tso",
    ),
    (ActorState(status="online", since=T0, software="test"), "bsp", "all"),
    (Heartbeat(sent_at=T0, interval_s=4), "dso", "tso"),
    (
        SettlementReport(
            bsp_id="bsp1",
            isp_start=T0,
            lines=[
                SettlementLine(
                    bid_id="bid1",
                    direction=Direction.UP,
                    activated_energy_mwh=2.5,
                    price_eur_per_mwh=85.5,
                    amount_eur=213.75,
                )
            ],
            total_eur=213.75,
        ),
        "tso",
        "bsp",
    ),
    (
        MonitoringReport(
            bsp_id="bsp1",
            period_start=T0,
            period_end=T0,
            requested_energy_mwh=0.8,
            delivered_energy_mwh=0.79,
            within_tolerance_ratio=0.97,
            compliant=True,
        ),
        "tso",
        "bsp",
    ),
    (
        Rejection(
            rejected_message_id=None,
            rejected_type="energy_bid",
            rejected_topic="tsodso/v1/bsp/x/energy_bid/tso/t",
            code=RejectReason.SCHEMA,
            reason="body.quantity_mw: Input should be greater than 0",
        ),
        "tso",
        "bsp",
    ),
]


IDS = {"tso": "tso", "dso": "dso1", "bsp": "bsp1", "mo": "mo", "all": "all"}


def example_messages() -> dict[str, dict]:
    """Type -> a whole message (envelope + body) as JSON, one per type, with fixed ids and times."""
    import uuid

    from tsodso.schemas.envelope import SCHEMA_VERSION

    out: dict[str, dict] = {}
    for body, sender, recipient in SAMPLES:
        if body.type_name in out:
            continue
        envelope = {
            "message_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"tsodso:example:{body.type_name}")),
            "type": body.type_name,
            "schema_version": SCHEMA_VERSION,
            "sender": {"role": sender, "id": IDS[sender]},
            "recipients": [{"role": recipient, "id": IDS[recipient]}],
            "sequence": 1,
            "created_at": "2026-11-23T10:00:00.000000Z",
        }
        out[body.type_name] = {"envelope": envelope, "body": body.model_dump(mode="json", exclude_none=True)}
    return out
