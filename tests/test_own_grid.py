"""A scenario on a user's own grid, written from the documentation alone (docs/scenario.md,
`tsodso grid show`): the shipped SimBench example runs with several BSPs and DSO-connected assets,
and the DSO validates the DER bids on that grid by AC power flow."""

import asyncio
import json
from pathlib import Path

from typer.testing import CliRunner

from tsodso.broker import start_broker
from tsodso.testbed.cli import app
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


def test_a_run_that_does_less_than_asked_says_why(tmp_path):
    """A DER beyond the hosting capacity at its bus (the first own portfolio a user tries) is refused at
    prequalification by the DSO's power flow; the run ends normally and its summary, terminal and
    report say why nothing was activated."""
    reference = Path(__file__).resolve().parents[1] / "scenarios" / "nl-afrr-congestion.yaml"
    text = reference.read_text().replace(
        "connection_bus: der-park, capacity_up_mw: 10,", "connection_bus: der-park, capacity_up_mw: 80,"
    )
    (tmp_path / "big-der.yaml").write_text(text)
    result = CliRunner().invoke(
        app,
        ["run", str(tmp_path / "big-der.yaml"), "--virtual", "--broker", "memory", "--out", str(tmp_path / "run")],
    )
    assert result.exit_code == 0, result.output  # nothing sent is an outcome, not a crash
    assert "note (hybrid): asset der-park of bsp1 not prequalified by dso" in " ".join(result.output.split())
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["setpoints_sent"] == 0
    refused, why_none = summary["notes"]
    assert refused.startswith("asset der-park of bsp1 not prequalified by dso: hosting capacity at der-park: +12.")
    assert "asked +80.0" in refused
    assert why_none.startswith("no delta setpoint was sent")
    from tsodso.testbed.report import build_report

    report = build_report([tmp_path / "run"], None).read_text()
    assert "What the run did not do, and why" in report and "hosting capacity at der-park" in report
