"""``summary.json``: what a run did, from the actors' records and the exchange log."""

import sqlite3
from collections import defaultdict
from pathlib import Path
from typing import Any

from testbed.stats import summary as percentiles


def _p(values: list[float]) -> dict[str, float | int]:
    s = percentiles(values)
    return {"count": s["count"], "p50": round(s["p50"], 3), "p99": round(s["p99"], 3)} if values else {"count": 0}


def summarize(scenario, db_path: Path, tso, dsos, bsps) -> dict[str, Any]:  # noqa: ANN001
    db = sqlite3.connect(db_path)
    messages = dict(db.execute("SELECT type, COUNT(*) FROM exchange WHERE direction='out' AND outcome='sent' GROUP BY type"))
    latency: dict[str, list[float]] = defaultdict(list)
    for type_name, lat_us in db.execute(
        "SELECT type, received_us - created_us FROM exchange WHERE direction='in' AND outcome='delivered'"
    ):
        latency[type_name].append(lat_us / 1000)
    sent_ids = {r[0] for r in db.execute("SELECT message_id FROM exchange WHERE direction='out' AND type='delta_setpoint'")}
    got_ids = {r[0] for r in db.execute(
        "SELECT message_id FROM exchange WHERE direction='in' AND type='delta_setpoint' AND outcome='delivered'")}  # fmt: skip
    rejected = db.execute("SELECT COUNT(*) FROM exchange WHERE outcome='rejected'").fetchone()[0]
    loading = [(t, e, v) for d in dsos for (t, e, v) in d.loading]
    worst = max(loading, key=lambda x: x[2]) if loading else (None, None, 0.0)
    ratios = [m.within_tolerance_ratio for m in tso.monitoring]
    flagged = sorted({m.bsp_id for m in tso.monitoring if not m.compliant})
    activated = sum(a.energy_mwh for a in tso.active.values())
    setpoint_peak = {bsp: max((abs(v) for v in rec.setpoints.values()), default=0.0) for bsp, rec in tso.records.items()}
    return {
        "scenario": scenario.name,
        "coordination": "on" if scenario.coordination else "off",
        "dso_limits_mw": tso.dso_limits_mw,
        "validations": tso.validations,
        "mol_iterations": tso.mol_iterations,
        "mol_fallbacks": tso.fallbacks,
        "congestion_seconds": sum(d.congestion_s for d in dsos),
        "max_line_loading_percent": round(worst[2], 3),
        "max_loading_element": worst[1],
        "max_loading_at": worst[0].isoformat() if worst[0] else None,
        "activated_energy_mwh": round(activated, 6),
        "max_delta_setpoint_mw": setpoint_peak,
        "setpoints_sent": len(sent_ids),
        "setpoints_missed": len(sent_ids - got_ids),
        "late_cycles": tso.late_cycles,
        "delivery_within_tolerance_ratio": round(min(ratios), 4) if ratios else None,
        "non_compliant_bsps": flagged,
        "real_time_limits": [t.model_dump(mode="json") for t in tso.terminations],
        "faults_reported": [f.model_dump(mode="json") for f in tso.faults],
        "curtailments": [c.model_dump(mode="json") for c in tso.curtailments],
        "settlement": [s.model_dump(mode="json") for s in tso.settlements],
        "messages": messages,
        "rejected_messages": rejected,
        "latency_ms": {t: _p(v) for t, v in sorted(latency.items())},
        "mol_validation_round_trip_ms": _p(tso.mol_round_trip_ms),
        "dso_validation_compute_ms": _p([ms for d in dsos for ms in d.validation_ms]),
    }
