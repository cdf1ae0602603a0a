"""The command line as a user runs it: the demo over the embedded broker, the rtt benchmark."""

import asyncio
import json
import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tsodso.broker import start_broker
from tsodso.testbed.bench.rtt import run_rtt
from tsodso.testbed.cli import app


def test_exchange_prints_what_crossed_the_bus(tmp_path):
    result = CliRunner().invoke(app, ["exchange", "--out", str(tmp_path / "demo")])
    assert result.exit_code == 0, result.output
    for type_name in (
        "prequalification_request",
        "prequalification_forward",
        "merit_order_list",
        "mol_validation",
        "offer_acceptance",
        "delta_setpoint",
        "telemetry",
    ):
        assert type_name in result.output
    assert "rejected messages: 0" in result.output
    db = sqlite3.connect(tmp_path / "demo" / "exchange.sqlite")
    delivered = dict(
        db.execute("SELECT type, COUNT(*) FROM exchange WHERE direction='in' AND outcome='delivered' GROUP BY type")
    )
    assert delivered["delta_setpoint"] == 5 and delivered["telemetry"] == 5
    # every message sent was received: the log has both ends of each
    out_ids = {
        r[0] for r in db.execute("SELECT message_id FROM exchange WHERE direction='out' AND type!='actor_state'")
    }
    in_ids = {r[0] for r in db.execute("SELECT message_id FROM exchange WHERE direction='in' AND type!='actor_state'")}
    assert out_ids == in_ids
    events = (tmp_path / "demo" / "events.jsonl").read_text().splitlines()
    assert any(json.loads(e)["event"] == "connected" for e in events)


def test_rtt_benchmark_reports_both_paths_from_one_run():
    with start_broker("embedded") as running:
        result = asyncio.run(run_rtt(running.url, n=60, block=20, warmup=10))
    for key in (
        "gateway_p50_ms",
        "gateway_p99_ms",
        "raw_p50_ms",
        "raw_p99_ms",
        "ratio_p50",
        "benchmark",
        "metric",
        "value",
        "unit",
        "goal",
        "baseline",
        "baseline_value",
        "ratio",
    ):
        assert key in result
    assert result["ratio_p50"] == pytest.approx(result["gateway_p50_ms"] / result["raw_p50_ms"], abs=0.002)
    assert result["protocol"] == "3.1.1" and result["request_bytes"] > 500
    # the C floor: measured where gcc and libmosquitto are installed, else the reason it is not
    assert (result["c_p50_ms"] is not None) != (result["c_missing"] is not None)


def test_throughput_benchmark_takes_every_message_through_the_gateway_each_way():
    from tsodso.testbed.bench.throughput import run_throughput

    with start_broker("embedded") as running:
        result = run_throughput(running.url, n=300)
    rows = result["rows"]
    assert set(rows) == {
        f"{d}_{path}_qos{q}" for d in ("send", "receive") for path in ("gateway", "raw") for q in (0, 1)
    }
    for name, row in rows.items():
        assert row["arrived"] > 0 and row["msg_per_s"] > 0, name
    assert rows["send_gateway_qos1"]["lost"] == rows["receive_gateway_qos1"]["lost"] == 0  # QoS 1 loses nothing
    assert set(result["steps_us"]) >= {"build_us", "log_out_us", "check_us", "dispatch_us"}


def test_day_benchmark_runs_the_reference_scenario_and_reports_against_the_paced_floor():
    from tsodso.testbed.bench.day import run_day

    with start_broker("embedded") as running:
        result = run_day(running.url, speed=100, hours=0.1)
    assert result["cycles"] == 90 and result["setpoints_sent"] > 60
    assert result["value"] >= result["baseline_value"] > 0
    assert result["ratio"] == pytest.approx(result["value"] / result["baseline_value"], abs=0.05)


@pytest.mark.parametrize(
    "argv, line",
    [
        (
            [
                "actor",
                "bsp",
                "--id",
                "bsp9",
                "--scenario",
                "scenarios/nl-afrr-congestion.yaml",
                "--broker",
                "mqtt://127.0.0.1:1",
                "--insecure",
            ],
            "tsodso: scenario scenarios/nl-afrr-congestion.yaml has no bsp 'bsp9'; its bsps: bsp1",
        ),
        (
            [
                "actor",
                "bsp",
                "--id",
                "bsp1",
                "--scenario",
                "scenarios/nl-afrr-congestion.yaml",
                "--broker",
                "mqtt://127.0.0.1:1",
                "--secrets",
                "no-such-dir",
            ],
            "no secret for bsp/bsp1 in no-such-dir",
        ),
        (
            [
                "actor",
                "bsp",
                "--id",
                "bsp1",
                "--scenario",
                "scenarios/nl-afrr-congestion.yaml",
                "--broker",
                "mqtt://127.0.0.1:1",
            ],
            "give --secrets DIR",
        ),
        (["run", "no-such-scenario.yaml"], "tsodso: scenario no-such-scenario.yaml: no such file"),
        (["grid", "show", "nl_afrr_congstion"], "tsodso: unknown grid 'nl_afrr_congstion'; use a builder"),
        (
            ["run", "scenarios/nl-afrr-congestion.yaml", "--virtual", "--broker", "memry"],
            "tsodso: unknown broker 'memry': use embedded, mosquitto, nats, memory or an mqtt[s]://host:port URL",
        ),
        (
            ["run", "scenarios/nl-afrr-congestion.yaml", "--virtual", "--link", "tso/*->dso/*:delay_ms=50"],
            "link conditions (delay, jitter, drop, outages) are wall-clock impairments: run them paced",
        ),
        # a benchmark pointed at a broker that is not there says so at once (it used to hang, then trace back)
        (
            ["bench", "throughput", "--broker", "mqtt://127.0.0.1:1"],
            "tsodso: mqtt://127.0.0.1:1: no broker answers at 127.0.0.1:1 (Connection refused)",
        ),
        (
            ["bench", "fanout", "--broker", "mqtt://127.0.0.1:1,127.0.0.1:2", "--endpoints", "10"],
            "no broker answers at 127.0.0.1:1 (Connection refused), 127.0.0.1:2 (Connection refused)",
        ),
    ],
)
def test_a_users_mistake_is_one_line_naming_it_not_a_traceback(argv, line):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "tsodso", *argv], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert line in proc.stderr.replace("\n", " ") and "Traceback" not in proc.stderr, proc.stderr[-2000:]


def test_a_typo_in_the_security_section_names_the_key_and_what_is_valid(tmp_path):
    from tsodso.testbed.scenario import ScenarioError, load_scenario

    text = Path("scenarios/nl-afrr-congestion.yaml").read_text() + "\nsecurity:\n  unsigned: [bsp1]\n"
    (tmp_path / "s.yaml").write_text(text)
    with pytest.raises(ScenarioError, match=r"security.unsigned: .*'bsp1' is not 'role/id' or 'role/\*'"):
        load_scenario(tmp_path / "s.yaml")


def test_help_texts_keep_their_units_and_brackets():
    """Help is plain text: '[s]', '[MW]' and 'mqtt[s]://' are printed as written, not taken for markup."""
    result = CliRunner().invoke(app, ["run", "--help"])
    assert result.exit_code == 0
    assert "mqtt[s]://user:pass@host:port[,host2:port2,...][?protocol=3.1.1]" in "".join(result.output.split())
    result = CliRunner().invoke(app, ["grid", "show", "--help"])
    assert "simbench:<code>" in result.output


def test_grid_show_lists_the_names_a_scenario_can_use():
    result = CliRunner().invoke(app, ["grid", "show", "nl_afrr_congestion"])
    assert result.exit_code == 0, result.output
    for name in ("trafo:coupling", "line:south-pv", "sgen:pv-park", "der-park"):
        assert name in result.output


@pytest.mark.parametrize("kind", ["embedded", "mosquitto"])
def test_a_broker_on_a_busy_port_says_so_and_exits(kind):
    """`tsodso broker KIND --port P` where something already listens: one line, exit 2, no broker left
    running that looks started."""
    import socket
    import subprocess
    import sys

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = subprocess.run(
            [sys.executable, "-m", "tsodso", "broker", kind, "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"cannot listen on 127.0.0.1:{port}: in use" in proc.stderr and "Traceback" not in proc.stderr
    assert "listening" not in proc.stdout


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (["run", "scenarios/nl-afrr-congestion.yaml", "--speed", "-5"], "Invalid value for '--speed': -5 is not > 0"),
        (["report", "scenarios"], "scenarios is not a run directory (no summary.json in it)"),
        (["schemas", "validate", "no-such.json"], "cannot read no-such.json: No such file or directory"),
        # counts a benchmark cannot run with (a negative endpoint count was an IndexError)
        (["bench", "fanout", "--endpoints", "-5"], "Invalid value for '--endpoints': Input should be greater than"),
        (["bench", "fanout", "--period", "0"], "Invalid value for '--period': 0 is not > 0 (the cycle length"),
        (["bench", "rtt", "--n", "0"], "Invalid value for '--n': Input should be greater than or equal to 1"),
        (["bench", "rtt", "--qos", "2"], "Invalid value for '--qos': Input should be less than or equal to 1"),
        (["bench", "day", "--hours", "-1"], "Invalid value for '--hours': -1 is not > 0 (scenario hours)"),
        (["bench", "log", "--rows", "0"], "Invalid value for '--rows': Input should be greater than or equal to 1"),
        # a run directory that cannot be (a FileNotFoundError or NotADirectoryError traceback before)
        (
            ["exchange", "--out", "/dev/null/x"],
            "Invalid value for '--out': cannot make the directory /dev/null/x: Not a",
        ),
        (["run", "scenarios/nl-afrr-congestion.yaml", "--out", "/dev/null"], "/dev/null is a file, not a directory"),
        # the tools that work on a broker now: a broker that is not there, a capture that is not there
        (
            ["capture", "--broker", "mqtt://127.0.0.1:1"],
            "Invalid value for '--broker': mqtt://127.0.0.1:1: no broker answers at 127.0.0.1:1 (Connection refused)",
        ),
        (
            ["conformance", "--role", "bsp", "--device-id", "bsp9", "--broker", "mqtt://127.0.0.1:1"],
            "Invalid value for '--broker': mqtt://127.0.0.1:1: no broker answers at 127.0.0.1:1",
        ),
        (["replay", "no-such-capture.jsonl"], "Invalid value for 'file': file 'no-such-capture.jsonl' does not exist"),
        (["capture", "--out", "/dev/null/capture.jsonl"], "Invalid value for '--out': /dev/null is a file, not a"),
        (["schemas", "export", "/dev/null/contract"], "cannot make the directory /dev/null/contract: Not a directory"),
    ],
)
def test_more_mistakes_are_one_line_naming_them(argv, line):
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 2, result.output
    assert line in " ".join(result.output.split()) and "Traceback" not in result.output
