"""The DSO's validation engine on real AC power flows: limits are computed, joint along the merit
order, tight, and agree with pandapower's own power flow."""

import pytest

from tsodso.actors.grid import bus_index, element_index, nl_afrr_congestion
from tsodso.actors.powerflow import FastAC
from tsodso.actors.validation import validate_mol
from tsodso.schemas.codes import BidStatus, Connection, Direction
from tsodso.schemas.messages import BidAsset, MolEntry

DSO = "dso1"


def entry(bid_id: str, rank: int, quantity: float, der_share: float, bus: str = "der-park", direction=Direction.UP):
    assets = [
        BidAsset(asset_id=f"{bid_id}-der", connection=Connection.DN, dso_id=DSO, connection_bus=bus, share_mw=der_share)
    ]
    if quantity > der_share:
        assets.append(BidAsset(asset_id=f"{bid_id}-plant", connection=Connection.TN, share_mw=quantity - der_share))
    return MolEntry(
        rank=rank,
        bid_id=bid_id,
        bsp_id="bsp1",
        direction=direction,
        price_eur_per_mwh=50 + rank,
        quantity_mw=quantity,
        upper_bound_mw=quantity,
        assets=assets,
    )


@pytest.fixture(scope="module")
def grid():
    net = nl_afrr_congestion()
    fast = FastAC(net, net.bus.index)
    # the DSO's own redispatch for the ISP: PV south -5 MW, CHP north +5 MW
    redispatch = {
        int(net.sgen.bus.at[element_index(net, "sgen", "pv-park")]): -5.0,
        int(net.sgen.bus.at[element_index(net, "sgen", "chp")]): 5.0,
    }
    return net, fast, redispatch


def bus_of(net):
    return lambda name: bus_index(net, name)


def test_the_reference_bid_is_limited_to_15_mw_by_the_line_behind_the_coupling_transformer(grid):
    net, fast, redispatch = grid
    mol = [entry("bsp1-up", 1, 20, 10), entry("bsp1-down", 1, 20, 10, direction=Direction.DOWN)]
    result = {r.bid_id: r for r in validate_mol(fast, mol, DSO, bus_of(net), base=redispatch).results}
    up = result["bsp1-up"]
    assert up.status == BidStatus.LIMITED
    assert up.upper_bound_mw == pytest.approx(15.0, abs=0.1)
    assert up.limiting_element == "line:behind-coupling" and up.loading_percent > 100
    assert result["bsp1-down"].status == BidStatus.ACCEPTED and result["bsp1-down"].upper_bound_mw == 20


def test_without_the_dsos_redispatch_the_full_bid_fits(grid):
    net, fast, _ = grid
    result = validate_mol(fast, [entry("bsp1-up", 1, 20, 10)], DSO, bus_of(net)).results
    assert result[0].status == BidStatus.ACCEPTED and result[0].upper_bound_mw == 20


def test_limit_is_tight_and_pandapower_agrees(grid):
    net, fast, redispatch = grid
    validated = validate_mol(fast, [entry("bsp1-up", 1, 20, 10)], DSO, bus_of(net), base=redispatch)
    limit = validated.results[0].upper_bound_mw
    der = bus_index(net, "der-park")

    def audit_loading(bid_mw: float) -> float:
        state = dict(redispatch)
        state[der] = state.get(der, 0.0) + bid_mw * 10 / 20
        return float(fast.audit(state).res_line.loading_percent.max())

    assert audit_loading(limit) <= 100.0  # pp.runpp: the limit holds
    assert audit_loading(limit + 0.01) > 100.0  # and 0.01 MW more would not
    assert audit_loading(20.0) == pytest.approx(validated.results[0].loading_percent, abs=0.01)


def test_limits_hold_jointly_along_the_merit_order(grid):
    net, fast, redispatch = grid
    mol = [entry("cheap", 1, 4, 4), entry("middle", 2, 6, 6), entry("dear", 3, 8, 8)]
    validated = validate_mol(fast, mol, DSO, bus_of(net), base=redispatch)
    r = {x.bid_id: x for x in validated.results}
    assert r["cheap"].status == BidStatus.ACCEPTED  # the cheapest takes the headroom first
    assert r["middle"].status == BidStatus.LIMITED and 0 < r["middle"].upper_bound_mw < 6
    assert r["dear"].status == BidStatus.REJECTED and r["dear"].upper_bound_mw == 0
    # every bid at its limit together: no limit broken in pandapower's power flow
    audited = fast.audit(validated.injections[Direction.UP])
    assert audited.res_line.loading_percent.max() <= 100.0
    # and the last limit is tight given the cheaper bids
    der = bus_index(net, "der-park")
    more = dict(validated.injections[Direction.UP])
    more[der] += 0.01
    assert fast.audit(more).res_line.loading_percent.max() > 100.0


def test_a_bid_at_a_bus_the_dso_does_not_have_is_rejected_with_the_reason(grid):
    net, fast, _ = grid
    result = validate_mol(fast, [entry("lost", 1, 5, 5, bus="atlantis")], DSO, bus_of(net)).results[0]
    assert result.status == BidStatus.REJECTED and "atlantis" in result.reason


def test_real_time_check_is_one_fast_power_flow(grid):
    net, fast, redispatch = grid
    der = bus_index(net, "der-park")
    state = fast.solve({**redispatch, der: 10.0})
    violations = fast.violations(state, fast.solve(redispatch))
    assert violations and violations[0].element == "line:behind-coupling"
    assert violations[0].value == pytest.approx(116.6, abs=0.1)


def test_on_a_simbench_grid_the_engine_agrees_with_pandapower_and_leaves_no_violation():
    from tsodso.testbed.bench.mol import run_mol

    result = run_mol("simbench:1-MV-semiurb--0-sw", n=120, baseline_n=2, repeat=1)
    assert result["buses"] > 100  # a real MV grid, switches applied
    assert result["engine_vs_runpp_max_loading_diff_percent"] < 0.01
    assert result["violations_left_at_limits"] is False
    assert sum(result["verdicts"].values()) == 120 and result["verdicts"]["accepted"] > 0
