"""The §IV.B reference scenario end to end over a real broker, with and without coordination,
and the variations the actors must handle (tolerance, prequalification, DSO timeout, emergencies)."""

import asyncio
import json
import sqlite3
from datetime import datetime, timedelta

import pandapower as pp
import pytest

from tests.conftest import assert_no_setpoint_lost, mosquitto_or_skip
from tsodso.broker import start_broker
from tsodso.testbed.runner import run_scenario
from tsodso.testbed.scenario import load_scenario

SCENARIO = "scenarios/nl-afrr-congestion.yaml"
SPEED = 50.0


def run(tmp_path_factory, name: str, broker: str = "embedded", speed: float | None = None, **changes):
    """The reference scenario (edited) on a fresh broker: in virtual time (the outcome does not depend
    on how busy the host is), or paced at ``speed`` where the test is about wall-clock behaviour."""
    scenario = load_scenario(SCENARIO, coordination=changes.pop("coordination", None))
    if changes:
        scenario = changes.pop("edit")(scenario)
    out = tmp_path_factory.mktemp(name)
    with start_broker(broker, data_dir=out / "broker") as running:
        summary = asyncio.run(
            run_scenario(scenario, running.url, out / "run", speed=speed or SPEED, virtual=speed is None)
        )
    return summary, out / "run"


@pytest.fixture(scope="module")
def coordinated(tmp_path_factory):
    return run(tmp_path_factory, "on", coordination=True)


@pytest.fixture(scope="module")
def uncoordinated(tmp_path_factory):
    return run(tmp_path_factory, "off", coordination=False)


def test_with_coordination_the_dso_limits_the_bid_to_15_mw_and_nothing_congests(coordinated):
    summary, run_dir = coordinated
    assert summary["coordination"] == "hybrid"
    assert summary["dso_limits_mw"]["bsp1-up"] == pytest.approx(15.0, abs=0.1)
    assert summary["validations"]["bsp1-up"]["limiting_element"] == "line:behind-coupling"
    assert summary["congestion_seconds"] == 0
    assert summary["max_line_loading_percent"] <= 100.0
    assert summary["max_delta_setpoint_mw"]["bsp1"] <= summary["dso_limits_mw"]["bsp1-up"] + 1e-9
    assert_no_setpoint_lost(summary)
    assert summary["rejected_messages"] <= summary["setpoints_expired"]  # no other message refused
    assert summary["mol_validation_round_trip_ms"]["count"] >= 1


def test_without_coordination_the_full_activation_congests_the_line(uncoordinated):
    summary, _ = uncoordinated
    assert summary["coordination"] == "tso_managed"
    assert summary["dso_limits_mw"] == {} and summary["mol_validation_round_trip_ms"]["count"] == 0
    assert summary["max_delta_setpoint_mw"]["bsp1"] == pytest.approx(20.0)
    assert summary["congestion_seconds"] > 0
    assert summary["max_line_loading_percent"] > 100.0
    assert summary["max_loading_element"] == "line:behind-coupling"
    assert "merit_order_list" not in summary["messages"]  # today, the DSO never sees the MOL


def test_the_bsp_never_delivers_beyond_the_dso_limit(coordinated):
    _, run_dir = coordinated
    db = sqlite3.connect(run_dir / "exchange.sqlite")
    assert db.execute("SELECT COUNT(*) FROM exchange WHERE type='telemetry' AND direction='in'").fetchone()[0] > 200
    summary = json.loads((run_dir / "summary.json").read_text())
    limit = summary["dso_limits_mw"]["bsp1-up"]
    settled = summary["settlement"][0]["lines"]
    up = next(x for x in settled if x["bid_id"] == "bsp1-up")
    assert up["amount_eur"] == pytest.approx(up["activated_energy_mwh"] * 85, abs=0.01)
    assert summary["activated_energy_mwh"] < limit * 0.25  # never more than the limit for the 15-min ISP


def test_the_setpoint_ramps_1_mw_every_30_s_from_10_01(coordinated):
    _, run_dir = coordinated
    scenario = load_scenario(run_dir / "scenario.yaml")
    db = sqlite3.connect(run_dir / "exchange.sqlite")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["setpoints_sent"] == 225  # 15 min of 4 s cycles
    delivered = "SELECT COUNT(*) FROM exchange WHERE type='delta_setpoint' AND outcome='delivered'"
    assert db.execute(delivered).fetchone()[0] == 225 - summary["setpoints_expired"]
    trace = json.loads((run_dir / "timeseries.json").read_text())["setpoints"]["bsp1"]
    t0 = scenario.start
    changes = []
    previous = 0.0
    for cycle, delta in sorted((int(k), v) for k, v in trace.items()):
        if delta != previous:
            changes.append((t0 + timedelta(seconds=4 * cycle), delta - previous, delta))
            previous = delta
    first_time, first_step, _ = changes[0]
    assert first_time == datetime.fromisoformat("2026-11-23T10:01:00+00:00") and first_step == pytest.approx(1.0)
    assert all(step <= 1.0 + 1e-9 for _, step, _ in changes)
    gaps = [(b[0] - a[0]).total_seconds() for a, b in zip(changes, changes[1:])]
    assert min(gaps) >= 28
    ten = next(t for t, _, level in changes if level >= 10.0 - 1e-9)
    assert ten == datetime.fromisoformat("2026-11-23T10:05:32+00:00")  # the 10th step, first cycle after 10:05:30


def test_the_dso_keeps_the_nets_it_validated_on(coordinated):
    _, run_dir = coordinated
    nets = sorted((run_dir / "nets").glob("*-up.json"))
    assert nets
    net = pp.from_json(str(nets[-1]))
    table = net["bid_validation"]
    assert list(table.bid_id) == ["bsp1-up"] and table.bus.iloc[0] == "der-park"
    pp.runpp(net, numba=False)  # anyone can re-check the decision
    assert net.res_line.loading_percent.max() <= 100.0


def test_emergency_path_round_trips(coordinated):
    summary, run_dir = coordinated
    assert summary["faults_reported"][0]["element_id"] == "line:south-pv"
    assert summary["curtailments"] == [{"dso_id": "dso1", "accepted_mw": 3.0, "status": "accepted", "reason": None}]
    db = sqlite3.connect(run_dir / "exchange.sqlite")
    delivered = dict(
        db.execute(
            "SELECT type, COUNT(*) FROM exchange WHERE direction='in' AND outcome='delivered' "
            "AND type IN ('system_state','curtailment_request','curtailment_response','fault_report') "
            "GROUP BY type"
        )
    )
    assert delivered == {"system_state": 1, "curtailment_request": 1, "curtailment_response": 1, "fault_report": 1}


def short(scenario, minutes: int = 4):
    scenario.end = scenario.start + timedelta(minutes=minutes)
    scenario.tso.emergencies = []
    scenario.dsos[0].faults = []
    return scenario


def test_a_bsp_outside_the_tolerance_band_is_flagged(tmp_path_factory):
    def sluggish(s):
        s = short(s, 6)
        s.bsps[0].follow_factor = 0.7
        s.tso.monitoring_period_s = 120
        return s

    summary, _ = run(tmp_path_factory, "sluggish", edit=sluggish)
    assert summary["non_compliant_bsps"] == ["bsp1"]
    assert summary["delivery_within_tolerance_ratio"] < 0.5


def test_a_compliant_bsp_is_not_flagged(coordinated):
    summary, _ = coordinated
    assert summary["non_compliant_bsps"] == [] and summary["delivery_within_tolerance_ratio"] >= 0.9


def test_a_failed_prequalification_keeps_the_asset_out_of_the_mol(tmp_path_factory):
    def misplaced(s):
        s = short(s)
        s.bsps[0].assets[1].connection_bus = "nowhere"
        s.bsps[0].bids.append(
            s.bsps[0].bids[0].model_copy(update={"bid_id": "bsp1-plant", "quantity_mw": 10, "assets": {"plant": 10}})
        )
        return s

    summary, run_dir = run(tmp_path_factory, "prequal", edit=misplaced)
    db = sqlite3.connect(run_dir / "exchange.sqlite")
    bids = {r[0] for r in db.execute("SELECT DISTINCT type FROM exchange WHERE type='energy_bid'")}
    assert bids == {"energy_bid"}
    # the DER park failed at the DSO; only the plant's bid was offered and activated
    assert list(summary["max_delta_setpoint_mw"]) == ["bsp1"]
    assert summary["validations"] == {}  # no bid touched the DSO's grid, so nothing was sent to validate
    assert "merit_order_list" not in summary["messages"]
    events = (run_dir / "events.jsonl").read_text()
    assert "not in the grid of dso1" in events


def test_a_dso_that_misses_the_validation_window_triggers_the_fallback(tmp_path_factory):
    def slow_dso(s):
        s = short(s)
        s.dsos[0].validation_delay_s = 1.5
        s.tso.mol_timeout_s = 0.3
        s.tso.mol_retries = 0
        return s

    summary, _ = run(tmp_path_factory, "timeout", edit=slow_dso)
    assert summary["mol_fallbacks"] == ["dso1:mol-202611231000:exclude_dn"]
    assert summary["max_delta_setpoint_mw"] == {}  # the only bids had DN assets: excluded, nothing activated


def test_same_outcome_on_mosquitto(tmp_path_factory):
    mosquitto_or_skip()
    summary, _ = run(tmp_path_factory, "mosquitto", broker="mosquitto", speed=SPEED, coordination=True)
    assert summary["dso_limits_mw"]["bsp1-up"] == pytest.approx(15.0, abs=0.1)
    assert summary["congestion_seconds"] == 0
    assert_no_setpoint_lost(summary)


def test_an_unforecast_change_makes_the_dso_limit_the_activation_in_real_time(tmp_path_factory):
    """The DSO validated on its forecast; in real time the north load drops by 2 MW (nobody
    forecast it), so the validated 15 MW no longer fits. The DSO's real-time power flow sees the
    violation, sends the TSO a limit, the TSO sends the BSP an activation limit, and the setpoints
    stay below it from then on."""
    from tsodso.actors.config import GridChange

    def load_drop(s):
        s = short(s, 12)
        s.dsos[0].unforecast = [
            GridChange(at=datetime.fromisoformat("2026-11-23T10:02:00+00:00"), element="load:north-load", delta_mw=-2.0)
        ]
        return s

    summary, run_dir = run(tmp_path_factory, "unforecast", edit=load_drop)
    limits = summary["real_time_limits"]
    assert limits and limits[0]["action"] == "limit" and limits[0]["limiting_element"] == "line:behind-coupling"
    real_time_limit = limits[0]["max_mw"]
    assert 5.0 < real_time_limit < summary["dso_limits_mw"]["bsp1-up"]
    db = sqlite3.connect(run_dir / "exchange.sqlite")
    delivered = dict(
        db.execute(
            "SELECT type, COUNT(*) FROM exchange WHERE direction='in' AND outcome='delivered' "
            "AND type IN ('termination_signal', 'activation_limit') GROUP BY type"
        )
    )
    assert delivered == {"termination_signal": 1, "activation_limit": 1}
    trace = [
        v
        for _, v in sorted(
            (int(k), v) for k, v in json.loads((run_dir / "timeseries.json").read_text())["setpoints"]["bsp1"].items()
        )
    ]
    assert trace[-1] == pytest.approx(real_time_limit)  # held at the limit to the end
    # the reaction takes a few 4-s cycles (BSP follows, telemetry, DSO power flow, limit to TSO, setpoint)
    above = [v for v in trace if v > real_time_limit + 1e-9]
    assert len(above) <= 4
    assert summary["congestion_seconds"] <= 4 * 4 and summary["max_line_loading_percent"] < 101


def test_the_report_builds_from_the_run_directories_alone(coordinated, uncoordinated, tmp_path):
    from typer.testing import CliRunner

    from tsodso.testbed.cli import app
    from tsodso.testbed.report import PLOTS

    result = CliRunner().invoke(app, ["report", str(coordinated[1]), str(uncoordinated[1]), "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    page = (tmp_path / "report.html").read_text()
    for name in PLOTS:
        png = (tmp_path / f"{name}.png").read_bytes()
        assert png.startswith(b"\x89PNG") and len(png) > 5000
        assert f'alt="{name}"' in page
    assert page.count("data:image/png;base64,") == len(PLOTS)  # self-contained
    assert "coordination hybrid" in page and "coordination tso_managed" in page and "line:behind-coupling" in page


def test_a_slow_tso_dso_link_makes_the_mol_validation_miss_its_window(tmp_path_factory):
    from tsodso.actors.config import LinkConfig

    def slow_link(s):
        s = short(s)
        s.start -= timedelta(minutes=2)  # time for prequalification and bids over the slow link before 10:00
        s.links = [LinkConfig(between="tso/*->dso/*", delay_ms=1500)]  # wall ms; the TSO waits 2 x 0.5 s
        s.tso.mol_timeout_s = 0.5
        s.tso.mol_retries = 1
        return s

    summary, run_dir = run(tmp_path_factory, "slowlink", speed=SPEED, edit=slow_link)
    assert summary["mol_fallbacks"] == ["dso1:mol-202611231000:exclude_dn"]
    assert summary["max_delta_setpoint_mw"] == {}  # the DN bids were left out: nothing activated
    lat = summary["latency_ms"]["merit_order_list"]
    assert lat["p50"] >= 1500  # the delay shows in the measured one-way latency


def test_the_coordination_chain_and_latency_per_link_are_reported(coordinated):
    summary, _ = coordinated
    chain = summary["coordination_chain_ms"]
    assert list(chain["steps"]) == [
        "mol_to_last_validation",
        "validation_to_acceptance",
        "acceptance_to_first_setpoint",
        "setpoint_to_telemetry",
    ]
    assert all(v >= 0 for v in chain["steps"].values()) and chain["total_ms"] > 0
    assert sum(chain["share"].values()) == pytest.approx(1.0, abs=0.001)
    links = summary["latency_by_link_ms"]
    assert links["tso->bsp"]["count"] >= 225 and links["bsp->tso"]["count"] >= 225
    assert {"p50", "p90", "p99", "max"} <= set(links["tso->dso"])


def test_the_dso_scales_down_der_schedules_that_would_congest_it_and_tells_the_tso(tmp_path_factory):
    def heavy_schedule(s):
        s = short(s, 3)
        s.bsps[0].assets[1].scheduled_mw = 9.0  # the DER park scheduled at 9 MW on top of the redispatch
        return s

    summary, _ = run(tmp_path_factory, "schedule", edit=heavy_schedule)
    changes = summary["dso_schedule_changes"]
    assert len(changes) == 1 and changes[0]["kind"] == "dso_modified"
    assert changes[0]["reason"].startswith("line:behind-coupling")
    modified = changes[0]["series"][0]["p_mw"]
    assert modified[0] == 9.0  # the 09:45 ISP: no redispatch yet, the schedule fits
    assert 0 < modified[1] < 9.0  # the 10:00 ISP: with the redispatch it does not
    # and the MOL was validated on top of the modified schedule: less room for aFRR than at 0 MW
    assert summary["dso_limits_mw"]["bsp1-up"] < 15.0


def test_a_frozen_broker_makes_setpoints_expire_and_the_summary_says_why(tmp_path):
    """The broker process stops for 0.4 s of wall time (20 s of scenario time at 50x), as a host
    stall would stop it. The setpoints published meanwhile reach the BSP older than their 4 s
    validity: refused as expired with the reason, counted as expired (not lost), and the BSP follows
    the next ones."""
    import os
    import signal

    from tsodso.testbed.summary import setpoints_text

    scenario = short(load_scenario(SCENARIO, coordination=True))
    frozen_at = datetime.fromisoformat("2026-11-23T10:01:02+00:00")
    with start_broker("embedded", data_dir=tmp_path / "broker") as running:

        async def freeze(clock, _scenario):
            await clock.sleep_until(frozen_at)
            os.kill(running.proc.pid, signal.SIGSTOP)
            try:
                await asyncio.sleep(0.4)
            finally:
                os.kill(running.proc.pid, signal.SIGCONT)

        summary = asyncio.run(run_scenario(scenario, running.url, tmp_path / "run", progress=freeze))
    assert summary["setpoints_lost"] == 0
    assert summary["setpoints_expired"] >= 1 and summary["setpoints_expired_max_age_ms"] > 80
    assert summary["setpoints_missed"] == summary["setpoints_expired"]
    assert f"{summary['setpoints_expired']} expired" in setpoints_text(summary)
    db = sqlite3.connect(tmp_path / "run" / "exchange.sqlite")
    reasons = [
        r
        for (r,) in db.execute(
            "SELECT reason FROM exchange WHERE type='delta_setpoint' AND outcome IN ('rejected', 'dropped')"
        )
    ]
    assert reasons and all("expired" in r for r in reasons), reasons
    last = db.execute(
        "SELECT message_id FROM exchange WHERE direction='out' AND type='delta_setpoint' "
        "ORDER BY created_us DESC LIMIT 1"
    ).fetchone()[0]
    assert db.execute("SELECT outcome FROM exchange WHERE direction='in' AND message_id=?", (last,)).fetchone() == (
        "delivered",
    )  # the BSP goes on following
