"""``summary.json``: what a run did, from the actors' results and the exchange log."""

import sqlite3
from collections import defaultdict
from pathlib import Path
from typing import Any

from testbed.stats import summary as percentiles


def _p(values: list[float]) -> dict[str, float | int]:
    s = percentiles(values)
    return {"count": s["count"], "p50": round(s["p50"], 3), "p99": round(s["p99"], 3)} if values else {"count": 0}


def _full(values: list[float]) -> dict[str, float | int]:
    s = percentiles(values)
    return {k: (round(v, 3) if k != "count" else v) for k, v in s.items()}


def chain(db: sqlite3.Connection) -> dict[str, Any] | None:
    """The first ISP's coordination chain, followed by its correlation id through the log: MOL sent
    -> last validation back -> acceptance sent -> first setpoint sent -> first telemetry back (wall
    clock of the TSO, ms), with each step's share of the whole."""
    row = db.execute("SELECT correlation_id, created_us FROM exchange WHERE direction='out' AND type='merit_order_list'"
                     " ORDER BY created_us LIMIT 1").fetchone()  # fmt: skip
    if row is None:
        return None
    conv, t_mol = row

    def first(sql: str) -> int | None:
        r = db.execute(sql, (conv,)).fetchone()
        return r[0] if r and r[0] is not None else None

    t_val = first("SELECT MAX(received_us) FROM exchange WHERE direction='in' AND type='mol_validation' AND correlation_id=?")
    t_acc = first("SELECT MIN(created_us) FROM exchange WHERE direction='out' AND type='offer_acceptance' AND correlation_id=?")
    t_sp = first("SELECT MIN(created_us) FROM exchange WHERE direction='out' AND type='delta_setpoint' AND correlation_id=?")
    t_tel = first("SELECT MIN(received_us) FROM exchange WHERE direction='in' AND type='telemetry' AND "
                  "correlation_id=? AND actor LIKE 'tso/%'")  # fmt: skip
    points = [("mol_to_last_validation", t_mol, t_val), ("validation_to_acceptance", t_val, t_acc),
              ("acceptance_to_first_setpoint", t_acc, t_sp), ("setpoint_to_telemetry", t_sp, t_tel)]  # fmt: skip
    steps = {name: round((b - a) / 1000, 3) for name, a, b in points if a is not None and b is not None}
    total = sum(steps.values())
    return {"steps": steps, "total_ms": round(total, 3),
            "share": {k: round(v / total, 4) if total else 0.0 for k, v in steps.items()}}  # fmt: skip


def summarize(scenario, db_path: Path, tso: dict[str, Any], dsos: list[dict[str, Any]],  # noqa: ANN001
              clock_offsets: dict[str, dict] | None = None) -> dict[str, Any]:  # fmt: skip
    """Merge the TSO's and DSOs' results (``results()``) with what the exchange log shows.

    ``clock_offsets``: actor -> {offset_ms (its clock minus the TSO's), uncertainty_ms}, measured
    over the broker (gateway.clocksync) when actors ran on their own clocks; one-way latencies are
    then also given corrected by (receiver offset - sender offset), with the summed uncertainty."""
    db = sqlite3.connect(db_path)
    messages = dict(db.execute("SELECT type, COUNT(*) FROM exchange WHERE direction='out' AND outcome='sent' GROUP BY type"))
    latency: dict[str, list[float]] = defaultdict(list)
    by_link: dict[str, list[float]] = defaultdict(list)
    corrected: dict[str, list[float]] = defaultdict(list)
    uncertainty: dict[str, float] = {}
    offsets = clock_offsets or {}
    for type_name, sender, receiver, lat_us in db.execute(
        "SELECT type, sender, receiver, received_us - created_us FROM exchange WHERE direction='in' AND outcome='delivered'"
    ):
        latency[type_name].append(lat_us / 1000)
        if type_name != "actor_state":  # retained presence reaches late joiners late: not a link latency
            link = f"{sender.split('/')[0]}->{receiver.split('/')[0]}"
            by_link[link].append(lat_us / 1000)
            if sender in offsets and receiver in offsets:
                o_s, o_r = offsets[sender], offsets[receiver]
                corrected[link].append(lat_us / 1000 - (o_r["offset_ms"] - o_s["offset_ms"]))
                uncertainty[link] = max(uncertainty.get(link, 0.0), o_r["uncertainty_ms"] + o_s["uncertainty_ms"])
    sent_ids = {r[0] for r in db.execute("SELECT message_id FROM exchange WHERE direction='out' AND type='delta_setpoint'")}
    got_ids = {r[0] for r in db.execute(
        "SELECT message_id FROM exchange WHERE direction='in' AND type='delta_setpoint' AND outcome='delivered'")}  # fmt: skip
    rejected = db.execute("SELECT COUNT(*) FROM exchange WHERE outcome='rejected'").fetchone()[0]
    loading = [row for d in dsos for row in d["loading"]]
    worst = max(loading, key=lambda x: x[2]) if loading else (None, None, 0.0)
    monitoring = tso["monitoring"]
    ratios = [m["within_tolerance_ratio"] for m in monitoring]
    return {
        "scenario": scenario.name,
        "coordination": "on" if scenario.coordination else "off",
        "dso_limits_mw": tso["dso_limits_mw"],
        "validations": tso["validations"],
        "mol_iterations": tso["mol_iterations"],
        "mol_fallbacks": tso["mol_fallbacks"],
        "congestion_seconds": sum(d["congestion_seconds"] for d in dsos),
        "max_line_loading_percent": round(worst[2], 3),
        "max_loading_element": worst[1],
        "max_loading_at": worst[0],
        "activated_energy_mwh": tso["activated_energy_mwh"],
        "max_delta_setpoint_mw": tso["max_delta_setpoint_mw"],
        "setpoints_sent": len(sent_ids),
        "setpoints_missed": len(sent_ids - got_ids),
        "late_cycles": tso["late_cycles"],
        "delivery_within_tolerance_ratio": round(min(ratios), 4) if ratios else None,
        "non_compliant_bsps": sorted({m["bsp_id"] for m in monitoring if not m["compliant"]}),
        "real_time_limits": tso["real_time_limits"],
        "dso_schedule_changes": tso.get("schedule_changes", []),
        "faults_reported": tso["faults_reported"],
        "curtailments": tso["curtailments"],
        "settlement": tso["settlement"],
        "messages": messages,
        "rejected_messages": rejected,
        "latency_ms": {t: _p(v) for t, v in sorted(latency.items())},
        "latency_by_link_ms": {k: _full(v) for k, v in sorted(by_link.items())},
        "clock_offsets_ms": offsets,
        "latency_by_link_corrected_ms": {k: {**_full(v), "uncertainty_ms": round(uncertainty[k], 3)}
                                         for k, v in sorted(corrected.items())},  # fmt: skip
        "coordination_chain_ms": chain(db),
        "mol_validation_round_trip_ms": _p(tso["mol_round_trip_ms"]),
        "dso_validation_compute_ms": _p([ms for d in dsos for ms in d["validation_ms"]]),
    }


def timeseries(scenario, tso: dict[str, Any], dsos: list[dict[str, Any]]) -> dict[str, Any]:  # noqa: ANN001
    """Setpoints, telemetered delivery, limits and grid loading over time (for reports)."""
    return {
        "setpoint_period_s": scenario.setpoint_period_s,
        "start": scenario.start.isoformat(),
        "setpoints": tso["setpoints"],
        "delivered": tso["delivered"],
        "limits_mw": tso["limits_mw"],
        "loading": {d["dso_id"]: d["loading"] for d in dsos},
    }
