"""The DSO's, the BSP's and the market operator's decisions on their cores alone (actors.*_core): no
broker, no clock, no await. The DSO's run real AC power flows on the reference grid."""

from datetime import datetime, timedelta

import pytest

from tests.test_tso_core import BEFORE, ISP, _bid
from tsodso.actors.bsp_core import BspCore
from tsodso.actors.dso_core import DsoCore
from tsodso.actors.mo_core import MoCore
from tsodso.actors.rules import MARKET_GATE
from tsodso.actors.tso_core import TsoCore
from tsodso.schemas import Party
from tsodso.schemas.codes import BidStatus, Connection, Direction, ProcessType, SystemState
from tsodso.schemas.messages import (
    AcceptedOffer,
    AssetData,
    BidAsset,
    CurtailmentRequest,
    DeltaSetpoint,
    EnergyBid,
    FlexibilityNeed,
    OfferAcceptance,
    PrequalificationForward,
    TerminationSignal,
)
from tsodso.testbed.scenario import load_scenario

SCENARIO = "scenarios/nl-afrr-congestion.yaml"
TSO, BSP = Party(role="tso", id="tso"), Party(role="bsp", id="bsp1")


@pytest.fixture(scope="module")
def scenario():
    return load_scenario(SCENARIO)


# --- DSO -----------------------------------------------------------------------------------------


def _dso(scenario) -> DsoCore:
    return DsoCore(scenario, scenario.dsos[0], "dso1")


def _asset(bus: str, up: float) -> AssetData:
    return AssetData(
        asset_id=f"a-{bus}",
        connection=Connection.DN,
        dso_id="dso1",
        connection_bus=bus,
        product=ProcessType.AFRR,
        capacity_up_mw=up,
        capacity_down_mw=1,
        ramp_rate_mw_per_min=10,
    )


def test_the_dso_qualifies_an_asset_within_the_hosting_capacity_of_an_existing_bus(scenario):
    dso = _dso(scenario)
    asked = [_asset("der-park", 10), _asset("der-park", 500), _asset("der-prk", 1)]
    verdicts = {v.asset_id + str(i): v for i, v in enumerate(dso.prequalify(PrequalificationForward(
        bsp_id="bsp1", dso_id="dso1", assets=asked)).verdicts)}  # fmt: skip
    ok, too_big, typo = verdicts.values()
    assert ok.qualified and not too_big.qualified and not typo.qualified
    assert too_big.reason.startswith("hosting capacity at der-park: +") and "asked +500" in too_big.reason
    assert typo.reason == "connection bus 'der-prk' is not in the grid of dso1"


def test_the_dso_limits_the_reference_bid_to_what_its_power_flow_allows(scenario):
    tso = TsoCore(scenario, scenario.tso, "tso")
    tso.qualified["bsp1"] = {"plant", "der-park"}
    for b in ("bsp1-up", "bsp1-down"):
        tso.take_bid(_bid(tso, b), BSP, BEFORE)
    entries = tso.open_isp(ISP)
    mol = tso.mol_for("dso1", ISP, 1, entries)
    assert mol is not None
    answer = _dso(scenario).validate(mol)
    up = next(r for r in answer.results if r.bid_id == "bsp1-up")
    assert up.status == BidStatus.LIMITED and up.limiting_element == "line:behind-coupling"
    assert up.upper_bound_mw == pytest.approx(15.0, abs=0.1)  # computed by AC power flow, not written anywhere


def test_the_dso_terminates_a_bid_its_grid_cannot_take_in_real_time_and_tells_the_tso(scenario):
    dso = _dso(scenario)
    dso.note_bid(_bid(TsoCore(scenario, scenario.tso, "tso")))
    dso.validated["bsp1-up"] = 15.0
    t = ISP + timedelta(minutes=8)
    dso.measured["der-park"] = 14.0  # the DER park far above what its share of 15 MW allows (7.5 MW)
    _, sent = dso.watch(t)
    (signal,) = [m.body for m in sent if isinstance(m.body, TerminationSignal)]
    assert signal.bid_id == "bsp1-up" and signal.action == "limit" and signal.max_mw <= 15.0 + 1e-6
    assert "bsp1-up measured at 28.00 MW" in (signal.reason or "") and sent[0].to == TSO
    assert dso.congestion_s == scenario.setpoint_period_s  # the overload is counted, cycle by cycle
    _, sent = dso.watch(t + timedelta(seconds=4))
    assert sent == []  # told the TSO a moment ago: the BSP is given time to come down
    _, sent = dso.watch(t + timedelta(seconds=16))
    (again,) = [m.body for m in sent]
    assert again.action == "terminate" and again.max_mw == 0.0  # not coming down: the activation ends


def test_the_dso_curtails_what_it_can_and_says_how_much(scenario):
    dso = _dso(scenario)
    request = CurtailmentRequest(
        dso_id="dso1", target="load", amount_mw=8, start=ISP, duration_s=900, state=SystemState.EMERGENCY
    )
    answer = dso.curtail(request)
    assert answer.status == "partial" and answer.accepted_mw == 5.0 and answer.reason


# --- BSP -----------------------------------------------------------------------------------------


def _bsp(scenario) -> BspCore:
    core = BspCore(scenario, scenario.bsps[0], "bsp1")
    core.take_acceptance(
        OfferAcceptance(
            isp_start=ISP, accepted=[AcceptedOffer(bid_id="bsp1-up", direction=Direction.UP, upper_bound_mw=15.0)]
        ),
        TSO,
    )
    return core


def _setpoint(cycle: int, t: datetime, mw: float, bid: str = "bsp1-up") -> DeltaSetpoint:
    return DeltaSetpoint(bsp_id="bsp1", cycle=cycle, instant=t, reference_mw=200, delta_mw=mw, bid_deltas_mw={bid: mw})


def test_the_bsp_takes_setpoints_from_its_tso_only_once_per_cycle_and_never_ahead_of_time(scenario):
    core = _bsp(scenario)
    assert "from tso/tso only" in (core.setpoint_refusal(_setpoint(0, ISP, 1), Party(role="tso", id="x"), ISP) or "")
    assert core.setpoint_refusal(_setpoint(0, ISP, 1), TSO, ISP) is None
    core.follow(_setpoint(0, ISP, 1))
    assert "at most one setpoint per cycle" in (core.setpoint_refusal(_setpoint(0, ISP, 1), TSO, ISP) or "")
    future = ISP + timedelta(minutes=1)
    assert "ahead of the scenario clock" in (core.setpoint_refusal(_setpoint(1, future, 1), TSO, ISP) or "")


def test_the_bsp_follows_only_what_its_contract_admits_and_reports_what_its_fleet_delivered(scenario):
    core = _bsp(scenario)
    telemetry, to_dsos, cut = core.follow(_setpoint(0, ISP, 20.0))
    assert cut == ["bsp1-up: 20 MW above its bound of 15 MW"]
    assert sum(core.targets.values()) == pytest.approx(15.0)  # split over the assets by their shares
    assert telemetry.delivered_delta_mw == 0.0  # the answer to the previous setpoint: nothing yet
    assert [m.to for m in to_dsos] == [Party(role="dso", id="dso1")]  # its DN asset's measurements
    later, _, _ = core.follow(_setpoint(1, ISP + timedelta(seconds=4), 15.0))
    assert 0 < later.delivered_delta_mw < 15.0  # ramping: the fleet moves by its ramp rates, not at once
    _, _, cut = core.follow(_setpoint(2, ISP + timedelta(seconds=8), 5.0, bid="bsp1-down"))
    assert cut == ["bsp1-down: not accepted for the ISP from 10:00"]


def test_the_bsp_takes_acceptances_and_limits_from_its_contracted_parties_only(scenario):
    core = _bsp(scenario)
    stranger = Party(role="dso", id="dso1")
    assert "taken from tso/tso and the market operator only" in (
        core.take_acceptance(OfferAcceptance(isp_start=ISP, accepted=[]), stranger) or ""
    )
    assert ISP in core.accepted and "bsp1-up" in core.accepted[ISP]


# --- market operator ------------------------------------------------------------------------------


def _market_bid(bsp: str, name: str, mw: float, price: float) -> EnergyBid:
    return EnergyBid(
        bid_id=f"{bsp}-{name}",
        bsp_id=bsp,
        process=ProcessType.AFRR,
        direction=Direction.UP,
        isp_start=ISP,
        quantity_mw=mw,
        price_eur_per_mwh=price,
        ramp_rate_mw_per_min=2,
        assets=[BidAsset(asset_id=f"{bsp}-plant", connection=Connection.TN, share_mw=mw)],
    )


def _need(buyer: str, mw: float, price: float) -> FlexibilityNeed:
    return FlexibilityNeed(
        need_id=f"{buyer}-need",
        buyer_id=buyer,
        kind="commercial" if buyer != "tso" else "balancing",
        isp_start=ISP,
        direction=Direction.UP,
        quantity=mw,
        max_price_eur_per_mwh=price,
    )


def test_the_market_operator_takes_bids_until_its_gate_and_needs_only_from_their_owner():
    core = MoCore(load_scenario(SCENARIO, coordination="integrated_market"), "mo")
    b1 = Party(role="bsp", id="b1")
    assert core.take_bid(_market_bid("b1", "cheap", 3, 40), b1, ISP - MARKET_GATE - timedelta(seconds=1)) is None
    assert "after its gate closure at 09:59:30Z" in (core.take_bid(_market_bid("b1", "late", 3, 40), b1, ISP) or "")
    assert "a party states its own needs" in (core.take_need(_need("c1", 1, 60), b1) or "")


def test_the_market_operator_serves_the_highest_willingness_to_pay_first_and_tells_each_buyer_its_own():
    import uuid

    core = MoCore(load_scenario(SCENARIO, coordination="integrated_market"), "mo")
    at = ISP - timedelta(minutes=5)
    for bid in (_market_bid("b1", "cheap", 3, 40), _market_bid("b2", "dear", 10, 80)):
        core.take_bid(bid, Party(role="bsp", id=bid.bsp_id), at)
    core.take_need(_need("tso", 8, 200), TSO)
    core.take_need(_need("c1", 2, 60), Party(role="bsp", id="c1"))
    entries, dsos = core.open(ISP)
    assert dsos == []  # TN bids only: no DSO validates
    cleared = core.clear(ISP, entries, [], uuid.uuid4())
    got = {(a.buyer_id, a.bid_id): a.awarded_mw for a in cleared.result.awards}
    assert got == {("tso", "b1-cheap"): 3.0, ("tso", "b2-dear"): 5.0}  # the TSO pays more: served first
    per_buyer = {m.to: m.body.awards for m in core.results_for(cleared.result, cleared.buyers, uuid.uuid4())}
    assert len(per_buyer[TSO]) == 2 and per_buyer[Party(role="bsp", id="c1")] == []
