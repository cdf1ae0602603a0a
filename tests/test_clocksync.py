"""Clock offsets between actors: a known skew is recovered, and correcting one-way latencies with
it gives what an unskewed pair measures."""

import asyncio
import sqlite3
from datetime import UTC, datetime

import pytest

from tests.test_gateway import parties
from tsodso.gateway import ExchangeLog, Gateway, RequestTimeout
from tsodso.gateway.clocksync import measure_offset
from tsodso.schemas.messages import Heartbeat
from tsodso.testbed.stats import summary


@pytest.mark.parametrize("skew_s", [0.25, -1.5])
async def test_a_known_clock_skew_is_recovered(broker, uid, tmp_path, skew_s):
    p = parties(uid)
    with ExchangeLog(tmp_path / "x.sqlite", run_id=uid) as log:
        async with (
            Gateway(p["tso"], broker.url, log=log) as tso,
            Gateway(p["dso"], broker.url, log=log, clock_offset_s=skew_s) as dso,
        ):
            offset = await measure_offset(tso, p["dso"], probes=20, timeout_s=60)  # a deadline only
            assert abs(offset.offset_ms - skew_s * 1000) <= offset.uncertainty_ms + 0.5
            assert offset.uncertainty_ms > 0  # half the best round trip: how long the path takes, not asserted
            got = []
            dso.on(Heartbeat, lambda m: asyncio.sleep(0, got.append(m)))
            for _ in range(20):
                await tso.publish(Heartbeat(sent_at=datetime.now(UTC), interval_s=1), p["dso"])
            while len(got) < 20:
                await asyncio.sleep(0.01)
    raw = [m.latency_ms for m in got]  # DSO's clock minus TSO's: carries the skew
    corrected = [offset.correct(x, peer_sent=False) for x in raw]
    # the correction takes off the skew (as measured, within its uncertainty) and leaves what the path
    # takes, which is never negative: both hold however slow the host is
    assert summary(raw)["p50"] - summary(corrected)["p50"] == pytest.approx(
        skew_s * 1000, abs=offset.uncertainty_ms + 0.5
    )
    assert summary(corrected)["p50"] >= -(offset.uncertainty_ms + 0.5)
    rows = sqlite3.connect(log.path).execute("SELECT COUNT(*) FROM exchange WHERE type='heartbeat'").fetchone()[0]
    assert rows >= 80  # probes and answers are logged like every message


async def test_the_run_start_says_how_wall_time_maps_to_scenario_time(uid):
    """A device learns from the run start alone how to turn wall time into scenario time: the
    scenario instant (since), the run's speed and the wall instant that instant begins."""
    from datetime import timedelta

    from tsodso.broker import start_broker
    from tsodso.schemas.messages import SystemStateNotice
    from tsodso.testbed.clock import Clock
    from tsodso.testbed.scenario import load_scenario
    from tsodso.testbed.standalone import announce_run_start, run_wall_start

    scenario = load_scenario("scenarios/nl-afrr-congestion.yaml", grids=False)
    clock = Clock(scenario.start, 25.0)
    p = parties(uid)
    got: list = []
    with start_broker("memory") as bus:
        async with Gateway(p["tso"], bus.url) as tso, Gateway(p["bsp"], bus.url) as bsp:

            @bsp.on(SystemStateNotice)
            async def take(msg) -> None:
                got.append(msg)

            await announce_run_start(
                tso, scenario.model_copy(update={"tso": scenario.tso.model_copy(update={"id": p["tso"].id})}), clock
            )
            for _ in range(200):
                if got:
                    break
                await asyncio.sleep(0.01)
    (start,) = got
    assert start.body.speed == 25.0 and start.body.since == scenario.start
    assert run_wall_start(start) == pytest.approx(clock.wall_origin, abs=1e-6)
    # the device's conversion gives the testbed's clock: scenario = since + speed x (wall - wall_start)
    wall = clock.wall_origin + 10.0
    mapped = start.body.since + timedelta(seconds=start.body.speed * (wall - start.body.wall_start.timestamp()))
    assert mapped == scenario.start + timedelta(seconds=250)


async def test_a_peer_that_does_not_answer_clock_probes_is_named_not_waited_for(broker, uid):
    """A silent peer: the measurement gives up within its budget and says so; the caller goes on."""
    from tsodso.schemas import Party

    p = parties(uid)
    async with Gateway(p["tso"], broker.url) as tso:
        with pytest.raises(RequestTimeout, match=f"no answer from dso/silent-{uid} to a clock probe"):
            await measure_offset(tso, Party(role="dso", id=f"silent-{uid}"), probes=5, timeout_s=0.5)
