"""docker-compose.yml describes the multi-process deployment. No Docker engine runs here, so this
test starts each actor service's command as a local OS process against Mosquitto (the project's
configuration) and checks the reference scenario's outcome is the same as in one process."""

import json
import shlex
from pathlib import Path

import pytest
import yaml

from tests.conftest import (
    assert_no_setpoint_lost,
    assert_nothing_refused_but_expired,
    mosquitto_or_skip,
    run_processes,
    short_scenario_file,
)
from tsodso.broker import start_broker
from tsodso.broker.acl import auth_lines

ROOT = Path(__file__).resolve().parents[1]


def test_compose_services_as_processes_on_mosquitto_give_the_same_outcome(tmp_path):
    mosquitto_or_skip()
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    conf = (ROOT / "tsodso" / "broker" / "mosquitto-compose.conf").read_text()
    assert "set_tcp_nodelay true" in conf and "allow_anonymous false" in conf
    assert services["mosquitto"]["image"].startswith("eclipse-mosquitto:2")
    # the secrets service writes one identity per actor; Mosquitto takes its access list and passwords
    init = shlex.split(services["secrets"]["command"])
    assert init[:3] == ["tsodso", "secure", "init"]
    secrets = tmp_path / "secrets"
    init[init.index("--out") + 1] = str(secrets)
    run_processes({"secrets": init[1:]}, ROOT)
    assert {"/mosquitto/secrets/passwd", "/mosquitto/secrets/acl"} <= {
        line.split()[1] for line in conf.splitlines() if line.startswith(("password_file", "acl_file"))
    }
    broker = start_broker("mosquitto", data_dir=tmp_path / "mosquitto", auth=auth_lines(secrets / "mosquitto"))
    actors = {name: svc for name, svc in services.items() if name not in ("mosquitto", "secrets")}
    assert set(actors) == {"tso", "dso1", "bsp1"}
    out = tmp_path / "compose"
    scenario = short_scenario_file(tmp_path, 7)
    commands = {}
    for name, svc in actors.items():
        argv = shlex.split(svc["command"])
        assert argv[:2] == ["tsodso", "actor"]
        argv = argv[1:]
        argv[argv.index("--broker") + 1] = broker.url  # the service name 'mosquitto' -> this broker
        argv[argv.index("--out") + 1] = str(out)
        argv[argv.index("--secrets") + 1] = str(secrets)
        argv[argv.index("--scenario") + 1] = str(scenario)  # the reference case to 10:06 (less wall time)
        commands[name] = argv
    with broker:
        run_processes(commands, ROOT)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dso_limits_mw"]["bsp1-up"] == pytest.approx(15.0, abs=0.1)
    assert summary["congestion_seconds"] == 0 and summary["max_line_loading_percent"] <= 100
    assert summary["max_delta_setpoint_mw"]["bsp1"] <= summary["dso_limits_mw"]["bsp1-up"] + 1e-9
    assert_no_setpoint_lost(summary)
    assert summary["messages"]["delta_setpoint"] == summary["setpoints_sent"] >= 70  # 10:01-10:06
    assert_nothing_refused_but_expired(out / "exchange.sqlite")
    # each process measured its clock against the TSO's over the broker; same host: offset ~ 0
    for actor in ("dso/dso1", "bsp/bsp1"):
        record = summary["clock_offsets_ms"][actor]
        assert abs(record["offset_ms"]) <= record["uncertainty_ms"] + 1.0
    assert summary["latency_by_link_corrected_ms"]["tso->bsp"]["count"] >= summary["setpoints_sent"]
    # three processes wrote one exchange log; every setpoint has both of its rows
    assert {"tso/tso", "dso/dso1", "bsp/bsp1"} <= {r for r in summary_actors(out)}


def summary_actors(out: Path) -> set[str]:
    import sqlite3

    return {r[0] for r in sqlite3.connect(out / "exchange.sqlite").execute("SELECT DISTINCT actor FROM exchange")}
