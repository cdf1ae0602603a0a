"""The six coordination schemes of CS review Table I: the clearing rules, and every scheme run on the
shipped comparison scenario over a real broker, each asserting the property that defines it."""

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from tests.conftest import assert_nothing_refused_but_expired, run_processes, short_scenario_file
from tsodso.actors.config import SCHEMES
from tsodso.actors.market import (
    UNSERVED_EUR_PER_UNIT,
    Need,
    Offer,
    clear_by_willingness,
    clear_in_order,
    joint_dispatch,
    unserved,
)
from tsodso.schemas.codes import Direction
from tsodso.testbed.cli import app
from tsodso.testbed.scenario import ScenarioError, load_scenario

SCENARIO = "scenarios/schemes-comparison.yaml"
UP, DOWN = Direction.UP, Direction.DOWN


# --- clearing rules (actors.market) ------------------------------------------------------------

OFFERS = [
    Offer("home-up", "agg-home", UP, 60, 6),
    Offer("ev-up", "agg-ev", UP, 110, 4),
    Offer("tn-up", "bsp-tn", UP, 95, 30),
]
TSO_NEED = Need("tso-bal", "tso/tso", "balancing", 10, max_price_eur_per_mwh=150, direction=UP)
DSO_NEED = Need(
    "dso2-village",
    "dso/dso2",
    "congestion",
    20,
    max_price_eur_per_mwh=200,
    effectiveness={"home-up": 9.0, "ev-up": 9.0},
)


def _by(awards, buyer):
    return {a.bid_id: a.mw for a in awards if a.buyer == buyer}


def test_in_order_the_first_need_gets_the_contested_cheap_bid():
    dso_first = clear_in_order([DSO_NEED, TSO_NEED], OFFERS)
    tso_first = clear_in_order([TSO_NEED, DSO_NEED], OFFERS)
    assert _by(dso_first, "dso/dso2") == {"home-up": pytest.approx(20 / 9, abs=1e-3)}
    assert _by(tso_first, "tso/tso") == {"home-up": 6, "tn-up": 4}
    assert _by(tso_first, "dso/dso2") == {"ev-up": pytest.approx(20 / 9, abs=1e-3)}  # the DSO is left the dear one


def test_by_willingness_the_highest_payer_goes_first_and_never_pays_above_its_price():
    cheap_tso = Need("tso-bal", "tso/tso", "balancing", 10, max_price_eur_per_mwh=90, direction=UP)
    awards = clear_by_willingness([cheap_tso, DSO_NEED], OFFERS)
    assert _by(awards, "dso/dso2") == {"home-up": pytest.approx(20 / 9, abs=1e-3)}  # 200 EUR/MWh goes first
    # the TSO (90 EUR/MWh) gets the rest of home-up (60), not tn-up (95) nor ev-up (110): short by the rest
    assert _by(awards, "tso/tso") == {"home-up": pytest.approx(6 - 20 / 9, abs=1e-3)}
    assert unserved([cheap_tso], OFFERS, [a for a in awards if a.buyer == "tso/tso"])["tso-bal"] == pytest.approx(
        10 - (6 - 20 / 9), abs=1e-3
    )


def _system_cost(needs, offers, awards) -> float:
    left = unserved(needs, offers, awards)
    return sum(a.mw * a.price_eur_per_mwh for a in awards) + UNSERVED_EUR_PER_UNIT * sum(left.values())


def test_joint_dispatch_never_costs_more_than_serving_the_needs_one_after_the_other():
    """The common market's rule is the optimum of the cost every scheme pays (activations plus
    unserved need): on 300 random markets with a balancing need and congestion needs whose relief
    has a balancing side effect, it is never beaten by either priority order."""
    rng = np.random.default_rng(7)
    for _ in range(300):
        offers = [
            Offer(
                f"b{i}",
                "bsp",
                UP if rng.random() < 0.5 else DOWN,
                float(rng.uniform(10, 120)),
                float(rng.uniform(1, 10)),
            )
            for i in range(8)
        ]
        needs = [
            Need("tso", "tso/tso", "balancing", float(rng.uniform(1, 25)), direction=UP if rng.random() < 0.5 else DOWN)
        ]
        for d in range(2):
            eff = {o.bid_id: float(rng.uniform(1, 10)) for o in offers if rng.random() < 0.3}
            if eff:
                needs.append(Need(f"dso{d}", f"dso/dso{d}", "congestion", float(rng.uniform(1, 30)), effectiveness=eff))
        joint = _system_cost(needs, offers, joint_dispatch(needs, offers))
        for order in (needs, needs[::-1]):
            assert joint <= _system_cost(needs, offers, clear_in_order(order, offers)) + 1e-6


def test_the_scheme_is_one_setting_and_on_off_still_work():
    assert load_scenario(SCENARIO, coordination=True).coordination == "hybrid"
    assert load_scenario(SCENARIO, coordination="off").coordination == "tso_managed"
    assert load_scenario(SCENARIO, coordination="integrated_market").coordination == "integrated_market"
    with pytest.raises(ScenarioError, match="coordination: .*common_market"):  # one line: the key and what is valid
        load_scenario(SCENARIO, coordination="central")
    result = CliRunner().invoke(app, ["run", SCENARIO, "--coordination", "central"])
    assert result.exit_code != 0 and "one of tso_managed" in result.output


# --- the comparison on the shipped scenario ----------------------------------------------------


@pytest.fixture(scope="module")
def comparison(tmp_path_factory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("compare")
    result = CliRunner().invoke(
        app, ["compare", SCENARIO, "--schemes", "all", "--out", str(out), "--broker", "embedded", "--virtual"]
    )
    assert result.exit_code == 0, result.output
    # progress: a line as each scheme starts and one with its outcome as it ends
    assert "[1/6] schemes-comparison as tso_managed on the embedded broker" in result.output
    assert "[6/6] integrated_market: done in" in result.output
    return json.loads((out / "comparison.json").read_text()), out


def _log(out: Path, scheme: str, sql: str) -> list[tuple]:
    db = sqlite3.connect(out / scheme / "exchange.sqlite")
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


@pytest.mark.xdist_group("comparison")  # one computation of the comparison, on one worker
def test_compare_writes_one_row_per_scheme_a_table_and_plots(comparison):
    result, out = comparison
    assert list(result["schemes"]) == list(SCHEMES)
    table = (out / "comparison.md").read_text()
    for label in (
        "TSO-managed",
        "DSO-managed",
        "fragmented",
        "hybrid",
        "common market",
        "integrated market",
        "total activation cost",
        "balancing need covered",
        "DSO congestion",
        "opposite directions",
        "MOL -> accepted",
        "operators' computation",
        "| tso->dso |",
    ):
        assert label in table, label
    assert (out / "comparison.png").read_bytes().startswith(b"\x89PNG")
    assert "data:image/png;base64," in (out / "comparison.html").read_text()
    for scheme, row in result["schemes"].items():
        assert row["scheme"] == scheme and row["setpoints_lost"] == 0, scheme
        assert row["setpoints_missed"] == row["setpoints_expired"] <= 0.01 * row["setpoints_sent"], scheme
        assert row["balancing_need_mwh"] > 0 and row["messages"] > 0


@pytest.mark.xdist_group("comparison")  # one computation of the comparison, on one worker
def test_tso_managed_congests_the_dsos_where_hybrid_validation_prevents_it(comparison):
    rows = comparison[0]["schemes"]
    tso, hybrid = rows["tso_managed"], rows["hybrid"]
    # TSO-managed: the DSOs' own congestion stays all run and DER activations add to it
    assert tso["congestion_seconds"] >= 0.9 * 30 * 60 and tso["der_mwh_dso"] == 0
    assert tso["congestion"]["dso2"]["peak_loading_percent"] > hybrid["congestion"]["dso2"]["peak_loading_percent"] + 10
    # hybrid: validated activations and the DSOs' relief after the TSO's gate: seconds, not the run
    assert hybrid["congestion_seconds"] <= 0.05 * tso["congestion_seconds"]


@pytest.mark.xdist_group("comparison")  # one computation of the comparison, on one worker
def test_fragmented_never_activates_a_der_for_the_tso(comparison):
    result, out = comparison
    assert result["schemes"]["fragmented"]["der_mwh_tso"] == 0
    bids = _log(
        out,
        "fragmented",
        "SELECT receiver, COUNT(*) FROM exchange WHERE direction='out' AND type='energy_bid' "
        "AND sender IN ('bsp/agg-pv', 'bsp/agg-home', 'bsp/agg-ev') GROUP BY receiver",
    )
    assert bids and all(receiver.startswith("dso/") for receiver, _ in bids)  # DER bids go to their DSO only
    setpoints = _log(
        out, "fragmented", "SELECT DISTINCT receiver FROM exchange WHERE direction='out' AND type='delta_setpoint'"
    )
    assert {r for (r,) in setpoints} <= {"bsp/bsp-tn", "bsp/bsp1"}
    # the DSOs balanced their own areas with DER blocks instead
    assert result["schemes"]["fragmented"]["der_mwh_dso"] > 0


@pytest.mark.xdist_group("comparison")  # one computation of the comparison, on one worker
def test_common_market_costs_no_more_than_any_other_scheme_that_respects_the_grid(comparison):
    rows = comparison[0]["schemes"]
    common = rows["common_market"]
    run_s = 30 * 60  # the two cleared ISPs
    respecting = {s: r for s, r in rows.items() if r["congestion_seconds"] <= 0.05 * run_s and s != "common_market"}
    assert {"dso_managed", "fragmented", "hybrid", "integrated_market"} <= set(respecting)
    for scheme, row in respecting.items():
        # realised cost: aFRR energy as delivered in real time plus blocks; 1 % for that real-time noise
        assert common["total_cost_eur"] <= row["total_cost_eur"] * 1.01, scheme
    assert common["congestion_seconds"] <= 0.05 * run_s
    assert rows["tso_managed"]["total_cost_eur"] < common["total_cost_eur"]  # cheaper only by ignoring the grid


@pytest.mark.xdist_group("comparison")  # one computation of the comparison, on one worker
def test_dso_managed_serves_the_dso_first(comparison):
    result, out = comparison
    rows = result["schemes"]
    assert rows["dso_managed"]["congestion_seconds"] == 0  # bought before the ISP starts
    # the DSO's blocks of each ISP are sent before the TSO accepts that ISP's offers
    order = _log(
        out,
        "dso_managed",
        "SELECT type, MIN(created_us) FROM exchange WHERE direction='out' AND "
        "type IN ('flex_activation', 'offer_acceptance') GROUP BY type",
    )
    first = dict(order)
    assert first["flex_activation"] < first["offer_acceptance"]

    def home_up_for_dso2(scheme: str, isp: str) -> float:
        return sum(
            f["mw"]
            for f in rows[scheme]["flex_activations"]
            if f["bid_id"] == "home-up" and f["buyer"] == "dso/dso2" and f["isp"].startswith(isp)
        )

    # the cheap village batteries both want while the system is short: the DSO gets them when it
    # comes first, the TSO when it does (hybrid)
    assert home_up_for_dso2("dso_managed", "2026-11-23T10:00") > 1.0
    assert home_up_for_dso2("hybrid", "2026-11-23T10:00") == 0
    assert rows["dso_managed"]["der_mwh_dso"] > rows["hybrid"]["der_mwh_dso"]


@pytest.mark.xdist_group("comparison")  # one computation of the comparison, on one worker
def test_integrated_market_clears_through_the_market_operator_on_the_bus(comparison):
    result, out = comparison
    links = result["schemes"]["integrated_market"]["traffic_by_link"]
    flows = dict(
        _log(
            out,
            "integrated_market",
            "SELECT sender || '>' || receiver || ':' || type, COUNT(*) FROM exchange WHERE direction='out' "
            "AND outcome='sent' GROUP BY sender, receiver, type",
        )
    )
    assert flows.get("tso/tso>mo/mo:flexibility_need") == 2  # one balancing need per ISP
    assert flows.get("bsp/bsp-tn>mo/mo:flexibility_need") == 1  # the commercial party's need
    assert all(k.endswith("mo/mo:energy_bid") for k in flows if k.endswith(":energy_bid"))  # every bid to the operator
    for dso in ("dso1", "dso2"):
        assert flows.get(f"mo/mo>dso/{dso}:merit_order_list", 0) >= 2  # the DSOs validate the operator's list
        assert flows.get(f"mo/mo>dso/{dso}:market_result", 0) >= 1
    assert flows.get("mo/mo>tso/tso:market_result") == 2
    assert not any(k.startswith("tso/tso>") and k.endswith((":merit_order_list", ":offer_acceptance")) for k in flows)
    assert "mo->bsp" in links and "mo->tso" in links
    # the commercial party got its need from the market; the operator activates it for it
    commercial = [f for f in result["schemes"]["integrated_market"]["flex_activations"] if f["buyer"] == "bsp/bsp-tn"]
    assert commercial and sum(f["mw"] for f in commercial) == pytest.approx(4, abs=0.01)
    assert all(f["price_eur_per_mwh"] <= 100 for f in commercial)  # never above its willingness to pay
    assert any(k.startswith("mo/mo>bsp/") and k.endswith(":flex_activation") for k in flows)


@pytest.mark.xdist_group("comparison")  # one computation of the comparison, on one worker
def test_the_conflict_the_papers_warn_about_is_measured(comparison):
    rows = comparison[0]["schemes"]
    assert rows["tso_managed"]["opposite_mwh"] == 0  # a passive DSO activates nothing
    conflict = rows["dso_managed"]["opposite_activations"]
    # the DSO curtails PV (down) for its line while the system is short and the TSO activates up
    assert any(c["dso"] == "dso1" and c["tso_mwh"] > 0 > c["dso_mwh"] for c in conflict)


def test_the_market_operator_runs_as_its_own_process_like_every_actor(secured_mosquitto, tmp_path):
    """`tsodso actor mo`: the integrated market with TSO, DSO, BSP and market operator each in its
    own OS process on Mosquitto: the TSO waits for the operator, the operator clears, the DSO's
    validation limits the DER bid as in one process. (The scenario to 10:06 and two minutes earlier:
    the BSP bids between the run start and the market's gate, 30 s before the ISP, which at 50x is
    0.6 s of wall time in the reference case and was missed beside two CPU hogs.)"""
    out = tmp_path / "procs"
    scenario = short_scenario_file(tmp_path, 7)
    run_processes(
        {
            role: [
                "actor",
                role,
                "--id",
                ident,
                "--scenario",
                str(scenario),
                "--coordination",
                "integrated_market",
                "--broker",
                secured_mosquitto[0].url,
                "--speed",
                "50",
                "--out",
                str(out),
                "--secrets",
                str(secured_mosquitto[1]),
            ]
            for role, ident in (("tso", "tso"), ("dso", "dso1"), ("bsp", "bsp1"), ("mo", "mo"))
        },
        Path(__file__).resolve().parents[1],
    )
    summary = json.loads((out / "summary.json").read_text())
    assert summary["coordination"] == "integrated_market"
    assert_nothing_refused_but_expired(out / "exchange.sqlite")
    results = summary["schemes"]["market_results"]
    assert [r["isp_start"][11:16] for r in results] == ["10:00"]  # the one ISP whose gate is in the run
    tso_awards = {a["bid_id"]: a["awarded_mw"] for a in results[0]["awards"] if a["buyer_role"] == "tso"}
    assert tso_awards["bsp1-up"] == pytest.approx(15.0, abs=0.1)  # the DSO's validation, through the operator
    assert summary["congestion_seconds"] == 0
    assert summary["max_delta_setpoint_mw"]["bsp1"] <= tso_awards["bsp1-up"] + 1e-6  # never above the award
