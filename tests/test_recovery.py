"""Crashes recover: an actor killed mid-run (SIGKILL, no goodbye) and started again with the same
command rejoins the running scenario; a broker killed and restarted mid-run; both end in a complete
summary that says what was lost."""

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from tests.conftest import assert_no_setpoint_lost, assert_nothing_refused_but_expired, short_scenario_file
from tsodso.broker import start_broker
from tsodso.testbed.runner import run_scenario
from tsodso.testbed.scenario import load_scenario

ROOT = Path(__file__).resolve().parents[1]
SCENARIO = "scenarios/nl-afrr-congestion.yaml"
SPEED = 25.0


def actor_command(
    role: str, ident: str, url: str, out: Path, secrets: Path, scenario: Path | str = SCENARIO
) -> list[str]:
    return [
        sys.executable,
        "-m",
        "tsodso",
        "actor",
        role,
        "--id",
        ident,
        "--scenario",
        str(scenario),
        "--broker",
        url,
        "--speed",
        str(SPEED),
        "--out",
        str(out),
        "--secrets",
        str(secrets),
    ]


def wait_for(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout_s} s")
        time.sleep(0.05)


def scenario_now(out: Path, scenario: Path) -> datetime | None:
    """The run's scenario time now, from the TSO's stored run clock and the start of the ``scenario``
    it runs (None before the run starts)."""
    try:
        run = json.loads((out / "run-tso-tso.json").read_text())
    except (FileNotFoundError, ValueError):
        return None
    start = load_scenario(scenario).start
    return start + timedelta(seconds=(time.time() - run["wall_origin"]) * SPEED)


@pytest.mark.parametrize("victim", ["bsp", "tso", "dso"])
def test_an_actor_killed_mid_run_rejoins_with_the_same_command_and_the_summary_counts_the_absence(
    secured_mosquitto, tmp_path, victim
):
    broker, secrets = secured_mosquitto
    out = tmp_path / "run"
    # to 10:11: the kill at 10:02, and nine minutes of scenario (22 s at 25x) for the victim's process to
    # start again and rejoin even on a busy host
    scenario = short_scenario_file(tmp_path, 12)
    ids = {"tso": "tso", "dso": "dso1", "bsp": "bsp1"}
    logs = {role: open(tmp_path / f"{role}.log", "ab") for role in ids}  # noqa: SIM115 (the actor processes hold them)
    procs = {
        role: subprocess.Popen(
            actor_command(role, ident, broker.url, out, secrets, scenario),
            cwd=ROOT,
            stdout=logs[role],
            stderr=subprocess.STDOUT,
        )
        for role, ident in ids.items()
    }
    try:
        kill_at = datetime.fromisoformat("2026-11-23T10:02:00+00:00")  # mid-ramp, the DER bid activated
        # the short scenario starts two minutes before the reference: its own start counts (the reference's
        # made this kill fall at 10:00, racing the DSO's validation of the list)
        wait_for(
            lambda: (now := scenario_now(out, scenario)) is not None and now >= kill_at, 60, "the run reaching 10:02"
        )
        procs[victim].send_signal(signal.SIGKILL)
        procs[victim].wait(10)
        time.sleep(2.0)  # 50 s of scenario time away
        procs[victim] = subprocess.Popen(
            actor_command(victim, ids[victim], broker.url, out, secrets, scenario),
            cwd=ROOT,
            stdout=logs[victim],
            stderr=subprocess.STDOUT,
        )
        for role, proc in procs.items():
            assert proc.wait(120) == 0, (tmp_path / f"{role}.log").read_text()[-3000:]
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
    summary = json.loads((out / "summary.json").read_text())
    (rejoined,) = summary["rejoins"]
    assert rejoined["actor"] == f"{victim}/{ids[victim]}" and rejoined["away_s"] >= 40, (
        rejoined
    )  # 2 s at 25x, and its start
    # what the victim did before the kill and after its return is one run: the DSO's limit holds,
    # nothing congests, and setpoints were lost only where the BSP was away
    assert summary["dso_limits_mw"]["bsp1-up"] == pytest.approx(15.01, abs=0.01)
    assert summary["congestion_seconds"] == 0
    assert summary["max_delta_setpoint_mw"]["bsp1"] <= 15.01 + 1e-9
    assert summary["setpoints_lost"] == summary["setpoints_lost_while_away"]
    if victim != "bsp":
        assert summary["setpoints_lost"] == 0
    # the BSP reports (and the TSO hears it) after the return, every cycle to the end
    back = datetime.fromisoformat(rejoined["back_at"])
    run = load_scenario(scenario)
    since = [k for k in range(10_000) if back + timedelta(seconds=8) < run.start + timedelta(seconds=4 * k) < run.end]
    delivered = {int(c) for c in json.loads((out / "timeseries.json").read_text())["delivered"]["bsp1"]}
    assert since, f"the {victim} came back at {back}, after the run's end"
    assert len(delivered & set(since)) >= 0.9 * len(since), (len(delivered & set(since)), len(since))


@pytest.mark.parametrize("kind", ["embedded", "mosquitto"])
def test_a_broker_killed_and_restarted_mid_run_ends_in_a_complete_summary(tmp_path, kind):
    """SIGKILL to the broker at 10:01:30, restarted 2 s (wall) later on the same port with its
    persistence: every actor reconnects, QoS 1 messages whose acknowledgement was lost are sent
    again, and the run ends with its summary: nothing lost, the gap visible as late cycles (and as
    setpoints that expired on the way)."""
    if kind == "mosquitto":
        from tests.conftest import mosquitto_or_skip

        mosquitto_or_skip()
    scenario = load_scenario(SCENARIO, coordination=True)
    scenario.end = scenario.start + timedelta(minutes=6)
    killed_at = datetime.fromisoformat("2026-11-23T10:01:30+00:00")
    with start_broker(kind, data_dir=tmp_path / "broker") as running:

        async def kill(clock, _scenario):
            await clock.sleep_until(killed_at)
            os.kill(running.proc.pid, signal.SIGKILL)
            await asyncio.sleep(2.0)
            await asyncio.to_thread(running.start)

        summary = asyncio.run(run_scenario(scenario, running.url, tmp_path / "run", speed=SPEED, progress=kill))
    written = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert written["setpoints_sent"] == summary["setpoints_sent"] == 75  # 10:00 to 10:05, every 4 s
    assert written["setpoints_lost"] == 0, written
    assert written["setpoints_missed"] == written["setpoints_expired"]  # missed ones expired on the way, none lost
    assert written["late_cycles"] >= 5  # the outage shows: the TSO's cycles waited for the broker
    assert written["dso_limits_mw"]["bsp1-up"] == pytest.approx(15.01, abs=0.01)


def test_the_secured_deployment_starts_in_one_command_and_gives_the_reference_outcome(tmp_path):
    """`tsodso up --tls`: identities, Mosquitto with mutual TLS and the access list, every actor in its
    own process signing and checking; the outcome is the reference one, nothing refused."""
    from tests.conftest import mosquitto_or_skip
    from tsodso.testbed.deploy import up

    mosquitto_or_skip()
    summary = up(short_scenario_file(tmp_path, 7), tmp_path / "secure", speed=50, tls=True)
    assert summary["dso_limits_mw"]["bsp1-up"] == pytest.approx(15.01, abs=0.01)
    assert summary["congestion_seconds"] == 0
    assert_no_setpoint_lost(summary)
    assert_nothing_refused_but_expired(tmp_path / "secure" / "run" / "exchange.sqlite")
    assert (tmp_path / "secure" / "secrets" / "tls" / "bsp-bsp1.crt").exists()
