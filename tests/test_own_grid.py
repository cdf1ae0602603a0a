"""A scenario on a user's own grid, written from the documentation alone (docs/scenario.md,
`tsodso grid show`): the shipped SimBench example runs with several BSPs and DSO-connected assets,
and the DSO validates the DER bids on that grid by AC power flow."""

import asyncio
from pathlib import Path

from tsodso.broker import start_broker
from tsodso.testbed.runner import run_scenario
from tsodso.testbed.scenario import load_scenario

SIMBENCH = Path(__file__).resolve().parents[1] / "scenarios" / "simbench-mv-rural.yaml"


def test_the_simbench_example_runs_and_the_dso_validates_the_der_bids_on_its_grid(tmp_path):
    scenario = load_scenario(SIMBENCH)
    with start_broker("memory") as bus:
        summary = asyncio.run(run_scenario(scenario, bus.url, tmp_path / "run", virtual=True))
    # the DSO validated every bid with assets in its SimBench grid, and none of them needed a limit
    assert {b: (v["status"], v["upper_bound_mw"]) for b, v in summary["validations"].items()} == {
        "der-up": ("accepted", 4.0),
        "ev-up": ("accepted", 1.5),
    }
    # the cheaper DER bids are activated before the TN plant, each BSP follows its setpoints
    assert summary["max_delta_setpoint_mw"]["bsp-der"] == 4.0 and summary["max_delta_setpoint_mw"]["bsp-ev"] == 1.5
    assert 0 < summary["max_delta_setpoint_mw"]["bsp-tn"] < 20
    assert summary["setpoints_missed"] == 0 and summary["delivery_within_tolerance_ratio"] == 1.0
    assert summary["congestion_seconds"] == 0 and summary["max_loading_element"].startswith("line:MV1.101")
