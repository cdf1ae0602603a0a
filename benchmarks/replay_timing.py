"""How faithfully does `tsodso replay` reproduce a capture's timing? Capture N setpoints sent with random
gaps (10-300 ms), replay the capture at --speed, capture again, and compare each inter-arrival gap.

    python benchmarks/replay_timing.py --broker mosquitto --n 200 [--speed 1]

Prints the gap error (replayed gap - original gap / speed) p50 / p99 / max in ms, and whether the
sequence (topic, payload, QoS) is identical. The stated tolerance is 50 ms per gap.
"""

import argparse
import asyncio
import random
import statistics
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from tsodso.broker import start_broker
from tsodso.gateway import Gateway
from tsodso.schemas.envelope import Party
from tsodso.schemas.messages import DeltaSetpoint
from tsodso.testbed.capture import capture, load_capture, replay


async def measure(url: str, n: int, speed: float, tmp: Path) -> dict:
    tso, bsp = Party(role="tso", id="replay-bench"), Party(role="bsp", id="replay-bench")
    flt = "tsodso/v1/tso/replay-bench/delta_setpoint/#"
    rng = random.Random(1)

    async def record(out: Path) -> asyncio.Task:
        ready = asyncio.Event()
        task = asyncio.create_task(capture(url, out, count=n, duration_s=600, filters=[flt], ready=ready))
        await ready.wait()
        return task

    async with Gateway(tso, url) as gw:
        task = await record(tmp / "first.jsonl")
        for k in range(n):
            await gw.publish(
                DeltaSetpoint(bsp_id=bsp.id, cycle=k, instant=datetime.now(UTC), reference_mw=0, delta_mw=k),
                bsp,
                valid_for_s=600,
            )
            await asyncio.sleep(rng.uniform(0.01, 0.3))
        await task
    task = await record(tmp / "again.jsonl")
    await replay(tmp / "first.jsonl", url, speed=speed)
    await task
    a, b = load_capture(tmp / "first.jsonl"), load_capture(tmp / "again.jsonl")
    errors = sorted(
        abs((y2.t_us - y1.t_us) - (x2.t_us - x1.t_us) / speed) / 1000
        for (x1, x2), (y1, y2) in zip(zip(a, a[1:]), zip(b, b[1:]))
    )
    return {
        "messages": n,
        "speed": speed,
        "same_sequence": [(m.topic, m.payload, m.qos) for m in a] == [(m.topic, m.payload, m.qos) for m in b],
        "gap_error_p50_ms": round(statistics.median(errors), 3),
        "gap_error_p99_ms": round(errors[int(0.99 * (len(errors) - 1))], 3),
        "gap_error_max_ms": round(errors[-1], 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--broker", default="mosquitto", help="embedded | mosquitto | URL")
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--speed", type=float, default=1.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, start_broker(args.broker, data_dir=Path(tmp) / "broker") as running:
        print(asyncio.run(measure(running.url, args.n, args.speed, Path(tmp))))


if __name__ == "__main__":
    main()
