"""A BSP's site on IEC 60870-5-104, over real sockets on both sides: the reference scenario with bsp1
behind the bridge and an emulated site gives the reference outcome; the BSP conformance suite passes
through the bridge (each its own OS process) and each site fault fails exactly its rules; a site that
is not there, or a mapping that cannot work, is one line naming it."""

import asyncio
import socket
from datetime import timedelta

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from tests.test_conformance import SPEED, device, on_the_bus, output, own_peers
from tests.test_virtual_time import _without_wall_fields
from tsodso.actors.bsp_core import BspCore
from tsodso.actors.bsp_iec104 import site_link
from tsodso.actors.config import BspConfig, Iec104Site
from tsodso.broker import start_broker
from tsodso.testbed.cli import app
from tsodso.testbed.conformance import run_suite
from tsodso.testbed.iec104_site import SITE_FAULTS, SiteEmulator
from tsodso.testbed.runner import run_scenario
from tsodso.testbed.scenario import load_scenario

REFERENCE = load_scenario("scenarios/nl-afrr-congestion.yaml")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bridged(port: int, time_tag: bool = True):
    """The reference scenario with bsp1's fleet behind an IEC 104 site on ``port``."""
    data = REFERENCE.model_dump(mode="json")
    data["bsps"][0]["iec104"] = {"port": port, "common_address": 7, "time_tag": time_tag, "scale_mw": 0.5}
    return type(REFERENCE).model_validate(data)


def test_the_reference_scenario_with_bsp1_behind_the_bridge_gives_the_reference_outcome(tmp_path):
    """Virtual time, the embedded broker: the site's fleet follows in scenario time (the commands' time
    tags), so the run's summary is the plain run's but for the bridge's own figures."""
    port = free_port()
    scenario = bridged(port)
    bsp1 = scenario.bsps[0]
    # a broker each: the second run must not see the first one's retained states (signed with other keys)
    with start_broker("embedded", data_dir=tmp_path / "broker-plain") as running:
        plain = asyncio.run(run_scenario(REFERENCE, running.url, tmp_path / "plain", virtual=True))
    with (
        start_broker("embedded", data_dir=tmp_path / "broker") as running,
        SiteEmulator(bsp1, port=port, setpoint_period_s=scenario.setpoint_period_s) as site,
    ):
        run = asyncio.run(run_scenario(scenario, running.url, tmp_path / "bridged", virtual=True))
    assert run["dso_limits_mw"]["bsp1-up"] == pytest.approx(15.0, abs=0.1)
    assert run["congestion_seconds"] == 0
    assert run["setpoints_sent"] == 225 and run["setpoints_missed"] == 0
    bridge = run["bridges"]["bsp1"]
    assert bridge["site"] == f"127.0.0.1:{port} (common address 7)"
    assert bridge["not_taken"] == 0 and bridge["stale"] == 0 and bridge["setpoints"] == site.cycles > 0
    assert bridge["measured"]["count"] == bridge["setpoints"]
    assert site.commands == site.cycles * len(bsp1.assets)  # one command per asset and setpoint
    same = {k: v for k, v in _without_wall_fields(run).items() if k != "bridges"}
    assert same == {k: v for k, v in _without_wall_fields(plain).items() if k != "bridges"}


async def test_without_time_tags_a_command_is_answered_by_the_value_measured_after_it():
    """C_SE_NC_1 and M_ME_NC_1: the site follows in its own (wall) time; the bridge takes the value that
    came after its command as fresh, and a site that answers nothing new leaves the value not fresh."""
    port = free_port()
    bsp1 = bridged(port, time_tag=False).bsps[0]
    assets = [a.asset_id for a in bsp1.assets]
    with SiteEmulator(bsp1, port=port, speed=600.0) as site:  # 10 scenario minutes per wall second
        async with site_link(bsp1, 10.0) as link:  # 6 s to confirm: a deadline only, for a busy host
            assert await link.wait_connected(30)  # a busy host: the library retries every second
            first = await link.command(REFERENCE.start, {assets[0]: 4.0, assets[1]: 0.0}, within_s=2.0)
            await asyncio.sleep(0.2)  # two scenario minutes: the plant ramps toward 4 MW
            second = await link.command(REFERENCE.start, {assets[0]: 4.0, assets[1]: 0.0}, within_s=2.0)
    assert all(first.fresh.values()) and all(second.fresh.values())
    # the site answers a command with what it measured before taking it (a command is sent once, even when the
    # library missed its confirmation): nothing yet, then what the plant reached in two minutes
    assert first.values_mw[assets[0]] == 0.0 and 0.0 < second.values_mw[assets[0]] <= 4.0
    assert site.targets[assets[0]] == pytest.approx(4.0) and site.fleet_at[assets[0]] is not None


async def test_a_confirmation_after_the_librarys_wait_is_taken_and_a_negative_one_refuses_at_once():
    """The library waits 0.25 s for a confirmation (and c104 2.2 can miss one that came); the link reads each
    confirmation off the wire itself: a site that confirms after 0.6 s, within the 3-s deadline, has its
    command taken, sent once; a site that refuses a command (negative ACT_CON) is refused at once, naming
    the point, not after the deadline."""
    import threading
    import time

    from tsodso.gateway.iec104 import AssetPoints, ControlledStation, SiteLink, SiteUnavailable

    port, points = free_port(), {"plant": AssetPoints(setpoint_ioa=10, delivered_ioa=20)}
    got: list[float] = []
    answer = threading.Event()

    def on_command(asset, mw, tag):
        got.append(mw)
        time.sleep(0.6)
        return answer.is_set()

    answer.set()
    station = ControlledStation("127.0.0.1", port, 3, points, on_command, time_tag=False)
    station.start()
    try:
        async with SiteLink("127.0.0.1", port, 3, points, time_tag=False, confirm_timeout_s=3.0) as link:
            assert await link.wait_connected(30)
            took = await link.command(REFERENCE.start, {"plant": 2.5}, within_s=0.1)
            assert took.confirmed_ms >= 600 and got == [2.5] and link.confirmations_missed == 1
            answer.clear()
            began = time.monotonic()
            with pytest.raises(SiteUnavailable, match=r"did not confirm the setpoint of plant \(IOA 10\)"):
                await link.command(REFERENCE.start, {"plant": 1.0}, within_s=0.1)
            assert time.monotonic() - began < 2.9 and got == [2.5, 1.0]
    finally:
        station.stop()


def test_a_run_whose_site_is_not_there_ends_before_it_starts_naming_the_site(tmp_path):
    port = free_port()
    with (
        start_broker("embedded", data_dir=tmp_path / "broker") as running,
        pytest.raises(Exception, match=rf"bsp1's IEC 104 site 127.0.0.1:{port} .* did not accept a connection"),
    ):
        asyncio.run(run_scenario(bridged(port), running.url, tmp_path / "run", virtual=True))


def test_a_mapping_that_cannot_work_is_refused_naming_the_point():
    data = REFERENCE.bsps[0].model_dump(mode="json")
    with pytest.raises(ValidationError, match="iec104 points for der-pv, not one of its assets"):
        BspConfig.model_validate({**data, "iec104": {"points": {"der-pv": {"setpoint_ioa": 1, "delivered_ioa": 2}}}})
    assets = [a["asset_id"] for a in data["assets"]]
    clash = {assets[0]: {"setpoint_ioa": 5, "delivered_ioa": 6}, assets[1]: {"setpoint_ioa": 6, "delivered_ioa": 7}}
    with pytest.raises(
        ValidationError, match=rf"iec104 {assets[1]}.setpoint_ioa 6 is already {assets[0]}.delivered_ioa"
    ):
        BspConfig.model_validate({**data, "iec104": {"points": clash}})
    # the defaults: setpoint 1000+i, delivered 2000+i
    points = Iec104Site().points_of(assets)
    assert [(p.setpoint_ioa, p.delivered_ioa) for p in points.values()] == [(1000, 2000), (1001, 2001)]


def test_the_bridge_without_its_site_says_so_in_one_line(broker, uid):
    port = free_port()
    result = CliRunner().invoke(
        app, ["bridge", "iec104", "--device-id", f"bsp-{uid}", "--site", f"127.0.0.1:{port}", "--broker", broker.url]
    )
    assert result.exit_code != 0
    assert isinstance(result.exception, Exception) and f"127.0.0.1:{port}" in str(result.exception)
    assert "did not accept a connection" in str(result.exception)
    bad = CliRunner().invoke(app, ["bridge", "iec104", "--site", "nohost", "--broker", broker.url])
    assert bad.exit_code == 2 and "give host:port" in bad.output


def site(port: int, fault: str | None = None, speed: float = SPEED):
    return device(
        "-m", "tsodso", "emulate", "iec104-site", "--port", str(port), "--speed", str(speed),
        *(["--fault", fault] if fault else []),
    )  # fmt: skip


def bridge(device_id: str, port: int, url: str, path, speed: float = SPEED):
    return device(
        "-m", "tsodso", "bridge", "iec104", "--device-id", device_id, "--site", f"127.0.0.1:{port}",
        "--broker", url, "--speed", str(speed), "--scenario", str(path),
    )  # fmt: skip


async def test_the_bsp_suite_passes_through_the_bridge_and_an_emulated_site(broker, uid, tmp_path):
    device_id, port = f"bsp-{uid}", free_port()
    scenario, path = own_peers(tmp_path, uid)
    speed = SPEED / 2  # the site has 60 % of a setpoint period to confirm: 480 ms at this speed
    with site(port, speed=speed) as site_proc, bridge(device_id, port, broker.url, path, speed) as proc:
        await on_the_bus(proc)
        report = await run_suite("bsp", device_id, broker.url, scenario, speed=speed, timeout_s=90)
        assert site_proc.poll() is None, output(site_proc)
        assert report.aborted is None
        failed = {r.id: r.evidence for r in report.results if r.status == "fail"}
        assert failed == {}, (failed, output(proc), output(site_proc))
    skipped = {r.id for r in report.results if r.status == "skip"}
    assert skipped == {"BSP-PR-020"}  # the bridge stayed connected


@pytest.mark.parametrize("fault", SITE_FAULTS)
async def test_each_site_fault_fails_exactly_its_rules(fault, own_mosquitto, uid, tmp_path):
    """One fault per test, so that xdist spreads them, at a quarter of the suites' speed: a site has 60 % of
    a setpoint period to confirm (960 ms here), and a busy two-core host delayed confirmations past 240 ms."""
    device_id, port, speed, url = f"bsp-{fault}-{uid}", free_port(), SPEED / 4, own_mosquitto.url
    scenario, path = own_peers(tmp_path, uid)
    with site(port, fault, speed) as site_proc, bridge(device_id, port, url, path, speed) as proc:
        await on_the_bus(proc)
        report = await run_suite("bsp", device_id, url, scenario, speed=speed, timeout_s=120)
        said = output(proc) + output(site_proc)
    got, expected = report.failed_ids(), SITE_FAULTS[fault][1]
    assert got == expected, (
        f"iec104-site --fault {fault}: failed {sorted(got)}, expected {sorted(expected)}: "
        f"{[(r.id, r.evidence) for r in report.results if r.status == 'fail']}; printed:\n{said}"
    )


def test_emulate_lists_the_site_faults_with_the_rules_they_break():
    result = CliRunner().invoke(app, ["emulate", "--list-faults"])
    for fault, (_, breaks) in SITE_FAULTS.items():
        assert f"iec104-site --fault {fault}: " in result.output and ", ".join(sorted(breaks)) in result.output


def test_run_names_a_wrong_iec104_option_in_one_line():
    scenario = "scenarios/nl-afrr-congestion.yaml"
    unknown = CliRunner().invoke(app, ["run", scenario, "--virtual", "--iec104", "bsp9"])
    assert unknown.exit_code == 2 and "'bsp9' is not a BSP of the scenario (bsp1)" in unknown.output
    address = CliRunner().invoke(app, ["run", scenario, "--virtual", "--iec104", "bsp1=nohost"])
    assert address.exit_code == 2 and "--iec104 'bsp1=nohost': give host:port" in address.output


async def test_an_activation_limit_reaches_the_sites_limit_points_and_bounds_its_fleet():
    """A limit of bsp1-up to 15.01 MW is 7.505 MW up for each of its two assets (10 MW each of 20 MW);
    the site holds the targets of the commands that follow within it, after a termination (a limit of
    0) to no upward deviation at all, while the unlimited down bid leaves 10 MW down."""
    port = free_port()
    bsp1 = bridged(port).bsps[0]
    plant, der = (a.asset_id for a in bsp1.assets)
    core = BspCore(REFERENCE, bsp1, "bsp1")
    core.limits["bsp1-up"] = 15.01
    limits = core.asset_limits()
    assert limits == {"up": pytest.approx({plant: 7.505, der: 7.505}), "down": {plant: 10.0, der: 10.0}}
    with SiteEmulator(bsp1, port=port, speed=600.0) as site:
        async with site_link(bsp1, 10.0) as link:  # 6 s to confirm: a deadline only, for a busy host
            assert await link.wait_connected(30)  # a busy host: the library retries every second
            sent = await link.limit(REFERENCE.start, limits)
            assert sorted(sent) == sorted(f"{a} {d}" for a in (plant, der) for d in ("up", "down"))
            assert site.limits_mw["up"] == pytest.approx({plant: 7.505, der: 7.505}, rel=1e-6)
            await link.command(REFERENCE.start, {plant: 10.0, der: -10.0}, within_s=2.0)
            assert site.targets[plant] == pytest.approx(7.505, rel=1e-6) and site.targets[der] == pytest.approx(-10.0)
            core.limits["bsp1-up"] = 0.0  # the DSO's termination, as the TSO's limit of 0
            again = await link.limit(REFERENCE.start + timedelta(seconds=4), core.asset_limits())
            assert sorted(again) == [f"{der} up", f"{plant} up"]  # only what changed goes to the site
            assert site.limits_mw["up"] == {plant: 0.0, der: 0.0}
            await link.command(REFERENCE.start + timedelta(seconds=8), {plant: 5.0, der: -5.0}, within_s=2.0)
            assert site.targets == {plant: 0.0, der: pytest.approx(-5.0)}  # up held at 0, down still free


async def test_the_sites_connection_is_the_bsps_presence(broker, uid, tmp_path):
    """The bridge in its own process; the site stops: the BSP says 'offline' (retained) though the bridge
    stays on the bus; the site is back: 'online' again. Watched by an independent client (paho)."""
    import json
    import queue

    import paho.mqtt.client as paho

    device_id, port = f"bsp-{uid}", free_port()
    _, path = own_peers(tmp_path, uid)
    states: queue.Queue[str] = queue.Queue()
    watcher = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv311)  # what every broker here speaks
    watcher.on_message = lambda c, u, m: states.put(
        json.loads(m.payload.decode()[: m.payload.rfind(b',"signature"')] + "}")["body"]["status"]
    )
    host, mqtt_port = broker.url.removeprefix("mqtt://").split("?")[0].split(":")

    def next_state(timeout_s: float = 60.0) -> str:  # a deadline only: a busy host reconnects slowly
        return states.get(timeout=timeout_s)

    with SiteEmulator(REFERENCE.bsps[0], port=port) as first, bridge(device_id, port, broker.url, path) as proc:
        await on_the_bus(proc)
        watcher.connect(host, int(mqtt_port))
        watcher.subscribe(f"tsodso/v1/bsp/{device_id}/actor_state/#", qos=1)
        watcher.loop_start()
        try:
            assert await asyncio.to_thread(next_state) == "online"  # the retained birth
            first.stop()
            assert await asyncio.to_thread(next_state) == "offline", output(proc)
            assert proc.poll() is None  # the bridge stays
            with SiteEmulator(REFERENCE.bsps[0], port=port):
                assert await asyncio.to_thread(next_state) == "online", output(proc)
        finally:
            watcher.loop_stop()
            watcher.disconnect()
