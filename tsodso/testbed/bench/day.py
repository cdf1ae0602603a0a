"""`tsodso bench day`: 24 h of the reference scenario (21 600 setpoint cycles of 4 s), in virtual time
(``testbed.clock.VirtualClock``: as fast as the actors compute) or paced at a speed.

The reference scenario with its end moved to 24 h after its start (the system stays short, so the
bid is activated at its limit all day; the emergency and fault events are left out). Every actor
runs in this process on the broker given. Reported: wall-clock time, setpoints sent and missed,
cycles the TSO started late. Paced runs also report their floor: the same number of cycles paced by
the same clock with no actors (set by the speed alone).
"""

import os
import platform
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from tsodso.gateway.loop import run as run_batched
from tsodso.testbed.clock import Clock
from tsodso.testbed.runner import run_scenario
from tsodso.testbed.scenario import load_scenario


async def _paced(cycles: int, period_s: float, speed: float) -> float:
    from datetime import UTC, datetime

    start = datetime(2026, 1, 1, tzinfo=UTC)
    clock = Clock(start, speed)
    t0 = time.perf_counter()
    for k in range(cycles):
        await clock.sleep_until(start + timedelta(seconds=k * period_s))
    return time.perf_counter() - t0


def run_day(
    broker_url: str,
    *,
    speed: float | None = None,
    hours: float = 24.0,
    scenario_file: str = "scenarios/nl-afrr-congestion.yaml",
) -> dict[str, Any]:
    """``speed`` None: virtual time (as fast as the actors compute); else paced at ``speed``."""
    scenario = load_scenario(scenario_file, coordination=True)
    scenario.end = scenario.start + timedelta(hours=hours)
    scenario.tso.emergencies = []
    scenario.dsos[0].faults = []
    cycles = int((scenario.end - scenario.start).total_seconds() / scenario.setpoint_period_s)
    virtual = speed is None
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        summary = run_batched(
            run_scenario(scenario, broker_url, Path(tmp) / "day", speed=speed or 1.0, virtual=virtual)
        )
        wall = time.perf_counter() - t0
    result: dict[str, Any] = {
        "benchmark": "day",
        "metric": "wall_clock",
        "value": round(wall, 1),
        "unit": "s",
        "time": "virtual" if virtual else f"paced at {speed:g}x",
        "hours": hours,
        "cycles": cycles,
        "cycles_per_s": round(cycles / wall, 1),
        "setpoints_sent": summary["setpoints_sent"],
        "setpoints_missed": summary["setpoints_missed"],
        "late_cycles": summary["late_cycles"],
        "delta_setpoint_latency_ms": summary["latency_ms"].get("delta_setpoint"),
        "congestion_seconds": summary["congestion_seconds"],
        "dso_limits_mw": summary["dso_limits_mw"],
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
        f"{platform.python_implementation()} {platform.python_version()}",
    }
    if virtual and broker_url.startswith("memory://"):
        result["goal"] = f"<= 5 s for 24 h on the in-memory bus (here {hours:g} h)"
    elif virtual:
        result["goal"] = f"<= 30 s for 24 h over a real broker (here {hours:g} h)"
    else:
        result["goal"] = f"<= 60 s for 24 h (here {hours:g} h)"
        result["baseline"] = "the same cycles paced by the same clock, no actors"
        floor = run_batched(_paced(cycles, scenario.setpoint_period_s, speed or 1.0))
        result["baseline_value"] = round(floor, 1)
        result["ratio"] = round(wall / floor, 3)
    return result
