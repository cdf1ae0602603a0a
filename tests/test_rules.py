"""The papers' rules (tsodso/actors/rules.py) and the schemes' registry (tsodso/actors/coordination.py): each rule's
predicate at its edges, each scheme's defining property, and gate closure enforced by the TSO and the
market operator over a real broker."""

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.test_gateway import wait_until
from tsodso.actors import rules
from tsodso.actors.coordination import SCHEMES, scheme
from tsodso.actors.mo import MarketOperator
from tsodso.actors.schemes import bid_destination
from tsodso.actors.tso import TSO
from tsodso.gateway import ExchangeLog, Gateway
from tsodso.schemas import Party
from tsodso.schemas.codes import Connection, Direction, ProcessType
from tsodso.schemas.messages import BidAsset, EnergyBid, Rejection
from tsodso.testbed.clock import Clock
from tsodso.testbed.scenario import ScenarioError, load_scenario

SCENARIO = "scenarios/nl-afrr-congestion.yaml"
ISP0 = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("setpoint", "delivered", "inside"),
    [
        (10, 9.0, True),
        (10, 12.0, True),
        (10, 8.99, False),
        (10, 12.01, False),
        (-10, -9.0, True),
        (-10, -12.0, True),
        (-10, -8.9, False),
        (-10, -12.1, False),
        (10, -10, False),
    ],
)
def test_the_delivery_band_is_minus_10_to_plus_20_percent_of_the_setpoint_for_either_sign(setpoint, delivered, inside):
    assert rules.within_band(setpoint, delivered) is inside


def test_a_cycle_is_judged_only_when_its_setpoint_is_large_enough_and_held():
    assert rules.is_steady(5.0, 5.0)
    assert not rules.is_steady(5.0, 4.0)  # a step is given one period to be followed
    assert not rules.is_steady(0.4, 0.4)  # below the steady threshold
    assert rules.is_steady(-0.5, -0.5)
    assert not rules.is_steady(None, None)


def test_a_monitoring_period_is_compliant_by_energy_and_by_the_share_of_steady_cycles():
    assert rules.compliant(1.0, 1.1, 0.95)
    assert not rules.compliant(1.0, 1.25, 1.0)  # energy above +20 %
    assert not rules.compliant(1.0, 1.0, rules.COMPLIANT_SHARE - 0.01)
    assert rules.compliant(0.0, 0.0, 1.0)  # nothing requested, nothing owed


def test_the_setpoint_moves_one_ramp_step_per_step_instant():
    assert rules.ramp_step_mw(2.0) == pytest.approx(1.0)  # the worked example: 1 MW per 30 s at 2 MW/min
    assert rules.ramp_step_mw(2.0, 60) == pytest.approx(2.0)


def test_gate_closure_takes_bids_until_the_isp_starts_and_the_markets_close_earlier():
    assert rules.bid_in_time(ISP0, ISP0 - timedelta(seconds=1))
    assert not rules.bid_in_time(ISP0, ISP0)
    assert not rules.bid_in_time(ISP0, ISP0 - timedelta(seconds=10), rules.MARKET_GATE)
    assert rules.bid_in_time(ISP0, ISP0 - timedelta(seconds=61), rules.LOCAL_GATE)
    assert "after its gate closure at 10:00:00Z" in rules.late_bid_reason(ISP0, ISP0 + timedelta(minutes=1))


def test_a_scenario_cannot_ask_for_setpoints_faster_than_the_4_s_resolution(tmp_path):
    text = Path(SCENARIO).read_text().replace("setpoint_period_s: 4", "setpoint_period_s: 2")
    (tmp_path / "fast.yaml").write_text(text)
    with pytest.raises(ScenarioError, match="setpoint_period_s: Input should be greater than or equal to 4"):
        load_scenario(tmp_path / "fast.yaml")


# --- the schemes' registry ---------------------------------------------------------------------


def test_each_scheme_says_where_a_der_bid_goes():
    where = {name: bid_destination(s, {"dso1"}, "mo", "tso")[0] for name, s in SCHEMES.items()}
    assert where == {
        "tso_managed": "tso",
        "dso_managed": "dso",
        "fragmented": "dso",
        "hybrid": "tso",
        "common_market": "tso",
        "integrated_market": "mo",
    }
    # a bid with DERs in two grids (or none) cannot go to one DSO's local market
    assert bid_destination(scheme("dso_managed"), {"dso1", "dso2"}, "mo", "tso") == ("tso", "tso")
    assert bid_destination(scheme("fragmented"), set(), "mo", "tso") == ("tso", "tso")


def test_each_scheme_has_its_defining_property():
    assert not scheme("tso_managed").dso_validates and not scheme("tso_managed").tso_asks_dsos
    assert scheme("dso_managed").dso_local_market and scheme("dso_managed").dso_forwards_rest
    fragmented = scheme("fragmented")
    assert not fragmented.tso_reaches_der and not fragmented.tso_balances_areas and fragmented.dso_balances_area
    assert scheme("hybrid").tso_asks_dsos and scheme("hybrid").dso_relieves_rest
    assert scheme("common_market").clearing == "joint_dispatch" and scheme("common_market").dso_states_needs
    integrated = scheme("integrated_market")
    assert integrated.market_operator and integrated.clearing == "willingness_to_pay"
    assert [s for s in SCHEMES.values() if s.market_operator] == [integrated]


def test_only_the_integrated_market_runs_a_market_operator():
    for name in SCHEMES:
        roles = [r for r, _ in load_scenario(SCENARIO, coordination=name).actors()]
        assert roles.count("mo") == (1 if name == "integrated_market" else 0), name
        assert roles[:3] == ["tso", "dso", "bsp"]


def test_an_unknown_scheme_is_one_line_naming_the_known_ones():
    with pytest.raises(ScenarioError) as err:
        load_scenario(SCENARIO, coordination="hybird")
    assert "unknown coordination scheme 'hybird'; known: tso_managed, dso_managed" in str(err.value)
    assert "\n" not in str(err.value)


# --- gate closure on a real broker -------------------------------------------------------------


def _bid(bsp: str, isp: datetime) -> EnergyBid:
    return EnergyBid(
        bid_id=f"{bsp}-up",
        bsp_id=bsp,
        process=ProcessType.AFRR,
        direction=Direction.UP,
        isp_start=isp,
        quantity_mw=5,
        price_eur_per_mwh=50,
        ramp_rate_mw_per_min=2,
        assets=[BidAsset(asset_id="plant", connection=Connection.TN, share_mw=5)],
    )


@pytest.mark.parametrize("role", ["tso", "mo"])
async def test_a_late_bid_is_refused_with_its_gate_closure_and_an_early_one_is_kept(broker, uid, tmp_path, role):
    """Scenario time 10:05: a bid for the 10:00 ISP is refused (the sender is told why), one for
    10:15 is taken."""
    scenario = load_scenario(SCENARIO, coordination="integrated_market" if role == "mo" else "hybrid")
    me, bsp = Party(role=role, id=f"{role}-{uid}"), Party(role="bsp", id=f"bsp-{uid}")
    clock = Clock(ISP0 + timedelta(minutes=5), 1.0)
    with ExchangeLog(tmp_path / "x.sqlite", run_id=uid) as log:
        async with Gateway(me, broker.url, log=log) as gw, Gateway(bsp, broker.url, log=log) as sender:
            actor = TSO(gw, clock, scenario, scenario.tso) if role == "tso" else MarketOperator(gw, clock, scenario)
            if role == "tso":
                actor.core.qualified[bsp.id] = {"plant"}
            notices: list[Rejection] = []

            @sender.on(Rejection)
            async def told(msg):
                notices.append(msg.body)

            await sender.publish(_bid(bsp.id, ISP0), me)
            await sender.publish(_bid(bsp.id, ISP0 + rules.ISP), me)
            await wait_until(lambda: notices and actor.core.bids.get(ISP0 + rules.ISP), timeout=10)
    assert ISP0 not in actor.core.bids
    assert notices[0].code == "refused" and "late: bid for the ISP of 2026-11-23 10:00Z" in notices[0].reason
    db = sqlite3.connect(log.path)
    rows = db.execute("SELECT reason FROM exchange WHERE actor=? AND outcome='refused'", (str(me),)).fetchall()
    assert len(rows) == 1 and "after its gate closure" in rows[0][0]
