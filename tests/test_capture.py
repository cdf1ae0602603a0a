"""Capture -> replay -> capture: the same messages in the same order, bad ones marked in both captures,
replayed on the original spacing (or scaled by --speed). The schedule is checked exactly; the wall
clock only as a bound that holds on a busy host (a replay never sends early)."""

import asyncio
import json
import time
from datetime import UTC, datetime

import pytest
from typer.testing import CliRunner

from tsodso.gateway import Gateway
from tsodso.schemas.envelope import Party
from tsodso.schemas.messages import DeltaSetpoint
from tsodso.schemas.topics import topic_for
from tsodso.testbed.capture import capture, load_capture, replay_schedule
from tsodso.testbed.cli import app

GAPS_S = [0.05, 0.2, 0.1, 0.3, 0.05, 0.15, 0.25, 0.1, 0.05, 0.2]


async def _record(url: str, out, flt: str, n: int):
    ready = asyncio.Event()
    task = asyncio.create_task(capture(url, out, count=n, duration_s=30, filters=[flt], ready=ready))
    await ready.wait()
    return task


def _gaps(rows) -> list[float]:
    return [(b.t_us - a.t_us) / 1e6 for a, b in zip(rows, rows[1:])]


async def test_capture_replay_capture_reproduces_sequence_and_timing(broker, uid, tmp_path):
    tso, bsp = Party(role="tso", id=f"cap-{uid}"), Party(role="bsp", id=f"cap-{uid}")
    flt = f"tsodso/v1/tso/cap-{uid}/delta_setpoint/#"
    n = len(GAPS_S) + 2
    first = tmp_path / "first.jsonl"
    async with Gateway(tso, broker.url) as gw:
        task = await _record(broker.url, first, flt, n)
        for k, gap in enumerate(GAPS_S + [0.1]):
            await gw.publish(
                DeltaSetpoint(bsp_id=bsp.id, cycle=k, instant=datetime.now(UTC), reference_mw=200, delta_mw=k / 10), bsp
            )
            await asyncio.sleep(gap)
        await gw.publish_bytes(topic_for(tso, "delta_setpoint", bsp), b'{"envelope": {}, "body": {}}')
        assert await task == n

    original = load_capture(first)
    assert [m.valid for m in original] == [True] * (n - 1) + [False]
    assert original[-1].error.startswith("envelope:")
    assert json.loads(first.read_text().splitlines()[0])["type"] == "delta_setpoint"

    for speed in (1.0, 2.0):
        plan = replay_schedule(original, speed=speed)
        assert [offset for offset, _ in plan] == pytest.approx([sum(_gaps(original)[:k]) / speed for k in range(n)])
        again = tmp_path / f"again-{speed:g}.jsonl"
        task = await _record(broker.url, again, flt, n)
        t0 = time.monotonic()
        result = await asyncio.to_thread(
            CliRunner().invoke, app, ["replay", str(first), "--broker", broker.url, "--speed", str(speed)]
        )
        assert time.monotonic() - t0 >= plan[-1][0]  # never early: the last message left at its due time or later
        assert result.exit_code == 0, result.output
        assert f"replayed {n} messages" in result.output
        assert await task == n
        replayed = load_capture(again)
        assert [(m.topic, m.payload, m.qos) for m in replayed] == [(m.topic, m.payload, m.qos) for m in original]
        assert [m.error for m in replayed] == [m.error for m in original]
