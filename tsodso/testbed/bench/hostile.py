"""`tsodso bench hostile`: how many hostile messages per second the actors refuse while the reference
scenario still meets its deadlines.

For each rate, the §IV.B reference scenario runs (every actor in this process, signing and checking,
on the broker given) while a hostile peer in its own process (``testbed.hostile``) sends that many
messages per second, every hostile kind round robin at the TSO, the DSO and the BSP. Reported per
rate: what the peer sent and the actors refused, whether the outcome is the clean run's (DSO limit,
no congestion, no setpoint lost), setpoints expired, the setpoint latency p99 and the longest stall
of the event loop. Rate 0 is the clean baseline of the same run.
"""

import json
import platform
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from tsodso.gateway.loop import run as run_batched
from tsodso.testbed.runner import run_scenario
from tsodso.testbed.scenario import load_scenario

ROOT = Path(__file__).resolve().parents[3]


def run_hostile(
    broker_url: str,
    rates: list[float],
    *,
    speed: float = 50.0,
    scenario_file: str = "scenarios/nl-afrr-congestion.yaml",
) -> dict[str, Any]:
    rows = []
    for rate in rates:
        scenario = load_scenario(scenario_file, coordination=True)
        with tempfile.TemporaryDirectory() as tmp:
            flood = None
            duration = (scenario.end - scenario.start).total_seconds() / speed + 5  # the whole run, and then some
            if rate > 0:
                flood = subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "tsodso.testbed.hostile",
                        "--broker",
                        broker_url,
                        "--rate",
                        str(rate),
                        "--duration",
                        str(duration),
                    ],
                    cwd=ROOT,
                    stdout=subprocess.PIPE,
                )
            try:
                summary = run_batched(run_scenario(scenario, broker_url, Path(tmp) / "run", speed=speed))
            finally:
                sent = json.loads(flood.communicate(timeout=120)[0])["sent"] if flood else 0
        limit = summary["dso_limits_mw"].get("bsp1-up")
        clean = (
            limit is not None
            and abs(limit - 15.01) < 0.02
            and summary["congestion_seconds"] == 0
            and summary["setpoints_lost"] == 0
        )
        stall = max((s["max_ms"] for s in summary.get("loop_stalls", {}).values()), default=0.0)
        wall = summary["wall_clock_s"]
        rows.append(
            {
                "rate_per_s": rate,
                "sent": sent,
                "sent_per_s": round(sent / duration, 1),
                "refused": summary["rejected_messages"],
                "outcome_as_clean_run": clean,
                "dso_limit_mw": limit,
                "congestion_s": summary["congestion_seconds"],
                "setpoints_sent": summary["setpoints_sent"],
                "setpoints_lost": summary["setpoints_lost"],
                "setpoints_expired": summary["setpoints_expired"],
                "setpoint_latency_p99_ms": summary["latency_ms"].get("delta_setpoint", {}).get("p99"),
                "loop_stall_max_ms": stall,
                "wall_clock_s": wall,
            }
        )
    return {
        "benchmark": "hostile",
        "metric": "hostile messages/s refused with the reference outcome unchanged",
        "value": max(
            (r["sent_per_s"] or 0 for r in rows if r["outcome_as_clean_run"] and r["setpoints_expired"] == 0), default=0
        ),
        "unit": "messages/s",
        "goal": "1 000 messages/s from one peer change nothing",
        "speed": speed,
        "rows": rows,
        "broker": broker_url,
        "machine": f"{platform.machine()}, {platform.python_implementation()} {platform.python_version()}, "
        f"{platform.system()} {platform.release()}",
    }
