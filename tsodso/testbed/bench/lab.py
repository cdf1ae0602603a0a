"""`tsodso bench lab`: the reference scenario in the network lab (``testbed.lab``), every actor on
its own host, real TCP between them (``tsodso up --lab``: Mosquitto with per-actor passwords, signed
messages).

- **partition**: the DSO's host cut off for ``partition_s`` of wall time from 10:14:30 (25x: from
  10:14:30 to 10:27:00 for 30 s), so that the TSO's validation of ISP 10:15 misses its window; the
  run goes on to 10:31 so that ISP 10:30 is validated again once the link is back. Reported: the MOL
  fallbacks, the DSO's losses and reconnections, QoS 1 messages that never arrived, setpoints lost,
  the DSO's limit and congestion.
- **rate**: the BSP's link limited to ``rate_kbit`` in each direction (at 5x, where the BSP's
  traffic fits in 64 kbit/s), the reference scenario from 09:59 to 10:05; reported: each link's
  latency, the BSP's beside the others'.
"""

import platform
import tempfile
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from tsodso.testbed.bench.failover import connection_events, qos1_not_arrived
from tsodso.testbed.deploy import up
from tsodso.testbed.lab import kernel_has_netem

SCENARIO = Path(__file__).resolve().parents[3] / "scenarios" / "nl-afrr-congestion.yaml"


def _variant(path: Path, lab: dict[str, Any], end: str, **tso: Any) -> Path:
    data = yaml.safe_load(SCENARIO.read_text())
    data["end"] = datetime.fromisoformat(end)
    data["lab"] = lab
    data["tso"].update(tso)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def run_lab_bench(partition_s: float = 30.0, rate_kbit: float = 64.0, data_dir: Path | None = None) -> dict[str, Any]:
    base = Path(data_dir or tempfile.mkdtemp(prefix="tsodso-lab-bench-"))
    base.mkdir(parents=True, exist_ok=True)
    speed = 25.0
    cut = datetime.fromisoformat("2026-11-23T10:14:30+00:00")
    heal = cut + timedelta(seconds=partition_s * speed)
    partitioned = _variant(
        base / "partition.yaml",
        {"hosts": {"dso/dso1": {"partitions": [[cut.isoformat(), heal.isoformat()]]}}},
        "2026-11-23T10:31:00+00:00",
    )
    out = base / "partition"
    summary = up(partitioned, out, speed=speed, lab=True)
    partition = {
        "speed": speed,
        "dso_cut_off": f"{cut:%H:%M:%S} to {heal:%H:%M:%S} (scenario), {partition_s:g} s of wall time",
        "mol_fallbacks": summary["mol_fallbacks"],
        "dso_connection": connection_events(out / "run" / "events-dso-dso1.jsonl"),
        "qos1_not_arrived": qos1_not_arrived(out / "run" / "exchange.sqlite"),
        "setpoints_sent_lost_expired": [
            summary["setpoints_sent"],
            summary["setpoints_lost"],
            summary["setpoints_expired"],
        ],
        "dso_limit_mw": summary["dso_limits_mw"].get("bsp1-up"),
        "congestion_s": summary["congestion_seconds"],
        "tso_dso_latency_ms": summary["latency_by_link_ms"].get("tso->dso"),
    }
    slow = _variant(base / "rate.yaml", {"hosts": {"bsp/bsp1": {"rate_kbit": rate_kbit}}}, "2026-11-23T10:05:00+00:00")
    out = base / "rate"
    summary = up(slow, out, speed=5.0, lab=True)
    links = summary["latency_by_link_ms"]
    rate = {
        "speed": 5.0,
        "bsp_link_kbit": rate_kbit,
        "latency_ms": {k: {q: links[k][q] for q in ("count", "p50", "p99")} for k in sorted(links) if "->" in k},
        "setpoints_sent_lost_expired": [
            summary["setpoints_sent"],
            summary["setpoints_lost"],
            summary["setpoints_expired"],
        ],
        "queues": (out / "run" / "lab-queues.txt").read_text(),
    }
    tso_bsp = links.get("tso->bsp", {}).get("p50")
    return {
        "benchmark": "lab",
        "metric": f"tso->bsp latency p50 over a {rate_kbit:g} kbit/s BSP link",
        "value": tso_bsp,
        "unit": "ms",
        "goal": "partition: fallback, then validated again, 0 QoS 1 lost; rate: the queueing shows in the link",
        "netem": kernel_has_netem(),
        "partition": partition,
        "rate": rate,
        "machine": f"{platform.node()} ({platform.machine()}, Python {platform.python_version()})",
    }
