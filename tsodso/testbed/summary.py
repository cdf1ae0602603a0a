"""``summary.json``: what a run did, from the actors' results and the exchange log."""

import sqlite3
from collections import defaultdict
from datetime import datetime
from pathlib import Path
from typing import Any

from tsodso.actors.rules import ISP, isp_of
from tsodso.testbed.results import RunSummary
from tsodso.testbed.stats import summary as percentiles


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
    row = db.execute(
        "SELECT correlation_id, created_us FROM exchange WHERE direction='out' AND type='merit_order_list'"
        " ORDER BY created_us LIMIT 1"
    ).fetchone()
    if row is None:
        return None
    conv, t_mol = row

    def first(sql: str) -> int | None:
        r = db.execute(sql, (conv,)).fetchone()
        return r[0] if r and r[0] is not None else None

    t_val = first(
        "SELECT MAX(received_us) FROM exchange WHERE direction='in' AND type='mol_validation' AND correlation_id=?"
    )
    t_acc = first(
        "SELECT MIN(created_us) FROM exchange WHERE direction='out' AND type='offer_acceptance' AND correlation_id=?"
    )
    t_sp = first(
        "SELECT MIN(created_us) FROM exchange WHERE direction='out' AND type='delta_setpoint' AND correlation_id=?"
    )
    t_tel = first(
        "SELECT MIN(received_us) FROM exchange WHERE direction='in' AND type='telemetry' AND "
        "correlation_id=? AND actor LIKE 'tso/%'"
    )
    points = [
        ("mol_to_last_validation", t_mol, t_val),
        ("validation_to_acceptance", t_val, t_acc),
        ("acceptance_to_first_setpoint", t_acc, t_sp),
        ("setpoint_to_telemetry", t_sp, t_tel),
    ]
    steps = {name: round((b - a) / 1000, 3) for name, a, b in points if a is not None and b is not None}
    total = sum(steps.values())
    return {
        "steps": steps,
        "total_ms": round(total, 3),
        "share": {k: round(v / total, 4) if total else 0.0 for k, v in steps.items()},
    }


def _hours_in_run(scenario, isp: datetime) -> float:
    """Hours of an ISP inside the run (a block activation lasts its ISP)."""
    start, end = max(isp, scenario.start), min(isp + ISP, scenario.end)
    return max(0.0, (end - start).total_seconds() / 3600)


def _share_dn(assets: list[dict]) -> float:
    total = sum(a["share_mw"] for a in assets)
    return sum(a["share_mw"] for a in assets if a["connection"] == "DN") / total if total else 0.0


def congestion_by_dso(scenario, dsos: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per DSO: the scenario seconds its most loaded element was above 100 %, its peak loading, its
    congestion needs. Counted from the first whole ISP on: before it no scheme has a market, so every
    run, scheme and view (summary, terminal, report, compare) counts the same period."""
    first = isp_of(scenario.start)
    if first < scenario.start:
        first += ISP
    cleared = {d["dso_id"]: [x for x in d["loading"] if datetime.fromisoformat(x[0]) >= first] for d in dsos}
    return {
        d["dso_id"]: {
            "seconds_above_100": scenario.setpoint_period_s
            * sum(1 for x in cleared[d["dso_id"]] if x[2] > 100.0 + 1e-6),
            "peak_loading_percent": round(max((x[2] for x in cleared[d["dso_id"]]), default=0.0), 2),
            "needs": d.get("congestion_needs", []),
        }
        for d in dsos
    }


def scheme_metrics(
    scenario,
    db: sqlite3.Connection,
    tso: dict[str, Any],
    dsos: list[dict[str, Any]],
    market: dict[str, Any] | None,
    congestion: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    """What the comparison of coordination schemes reports for one run (testbed.compare): cost,
    system balance, DSO congestion, DER energy by buyer, TSO-DSO activations in opposite
    directions, traffic per link, coordination latency and the operators' computation time."""
    flex_cost = 0.0
    der_by: dict[str, float] = defaultdict(float)  # buyer role -> DER energy [MWh]
    bought: dict[str, float] = defaultdict(float)  # buyer role -> block energy [MWh]
    flex_by_isp_dso: dict[tuple[str, str], float] = defaultdict(float)  # (ISP, DSO) -> net MWh (up +)
    for f in tso.get("flex_activations", []):
        isp = datetime.fromisoformat(f["isp_start"])
        mwh = f["activated_mw"] * _hours_in_run(scenario, isp)
        flex_cost += mwh * f["price_eur_per_mwh"]
        der_by[f["buyer_role"]] += mwh * _share_dn(f["assets"])
        bought[f["buyer_role"]] += mwh
        if f["buyer_role"] == "dso":
            flex_by_isp_dso[(isp.isoformat(), f["buyer_id"])] += mwh * (1 if f["direction"] == "A01" else -1)
    opposite = []
    for (isp_key, dso), dso_mwh in sorted(flex_by_isp_dso.items()):
        tso_mwh = tso.get("afrr_energy_by_isp_mwh", {}).get(isp_key, 0.0)
        if abs(tso_mwh) > 1e-6 and abs(dso_mwh) > 1e-6 and (tso_mwh > 0) != (dso_mwh > 0):
            opposite.append(
                {
                    "isp": isp_key,
                    "dso": dso,
                    "tso_mwh": round(tso_mwh, 4),
                    "dso_mwh": round(dso_mwh, 4),
                    "opposed_mwh": round(min(abs(tso_mwh), abs(dso_mwh)), 4),
                }
            )
    balance = tso.get("balance_mwh", {"need_mwh": 0.0, "residual_mwh": 0.0})
    covered = max(0.0, balance["need_mwh"] - balance["residual_mwh"])
    links: dict[str, dict[str, int]] = {}
    for sender, receiver, n, size in db.execute(
        "SELECT sender, receiver, COUNT(*), SUM(bytes) FROM exchange WHERE direction='out' AND outcome='sent' "
        "AND type NOT IN ('actor_state', 'heartbeat') GROUP BY sender, receiver"
    ):
        link = f"{sender.split('/')[0]}->{(receiver or 'all').split('/')[0]}"
        row = links.setdefault(link, {"messages": 0, "bytes": 0})
        row["messages"] += n
        row["bytes"] += size
    mol_to_accepted = [
        (acc - mol) / 1000
        for mol, acc in db.execute(
            "SELECT MIN(m.created_us), MAX(a.created_us) FROM exchange m JOIN exchange a ON a.correlation_id = m.correlation_id "
            "WHERE m.direction='out' AND m.type='merit_order_list' AND a.direction='out' AND a.type='offer_acceptance' "
            "GROUP BY m.correlation_id"
        )
    ]
    compute = {"tso": tso.get("clearing_ms", []), **{f"dso/{d['dso_id']}": d.get("compute_ms", []) for d in dsos}}
    if market is not None:
        compute["mo"] = market["clearing_ms"]
    return {
        "scheme": scenario.coordination,
        "total_cost_eur": round(tso.get("afrr_cost_eur", 0.0) + flex_cost, 2),
        "afrr_cost_eur": tso.get("afrr_cost_eur", 0.0),
        "flex_cost_eur": round(flex_cost, 2),
        "balancing_need_mwh": round(balance["need_mwh"], 4),
        "balancing_covered_mwh": round(covered, 4),
        "balancing_covered_percent": round(100 * covered / balance["need_mwh"], 2) if balance["need_mwh"] else 100.0,
        "congestion": congestion,
        "congestion_seconds": sum(c["seconds_above_100"] for c in congestion.values()),
        "peak_loading_percent": max((c["peak_loading_percent"] for c in congestion.values()), default=0.0),
        "der_mwh_tso": round(tso.get("afrr_der_energy_mwh", 0.0), 4),
        "der_mwh_dso": round(der_by["dso"], 4),
        "der_mwh_commercial": round(der_by["bsp"], 4),
        "commercial_mwh": round(bought["bsp"], 4),
        "opposite_activations": opposite,
        "opposite_mwh": round(sum(o["opposed_mwh"] for o in opposite), 4),
        "traffic_by_link": dict(sorted(links.items())),
        "messages": sum(v["messages"] for v in links.values()),
        "bytes": sum(v["bytes"] for v in links.values()),
        "mol_to_accepted_ms": _full(mol_to_accepted) if mol_to_accepted else None,
        "compute_ms": {
            k: {"count": len(v), "total": round(sum(v), 3), "max": round(max(v), 3)} if v else {"count": 0}
            for k, v in compute.items()
        },
        "flex_activations": [
            {
                "buyer": f"{f['buyer_role']}/{f['buyer_id']}",
                "purpose": f["purpose"],
                "bid_id": f["bid_id"],
                "direction": "up" if f["direction"] == "A01" else "down",
                "isp": f["isp_start"],
                "mw": f["activated_mw"],
                "price_eur_per_mwh": f["price_eur_per_mwh"],
            }
            for f in tso.get("flex_activations", [])
        ],
        "market_results": market["market_results"] if market else None,
    }


def delivered_latencies(db: sqlite3.Connection) -> list[tuple[str, str, str, int]]:
    """(type, sender, receiver, µs from created to received) of every delivered message: the one
    source of every latency figure (summary, terminal, report)."""
    return db.execute(
        "SELECT type, sender, receiver, received_us - created_us FROM exchange WHERE direction='in' AND outcome='delivered'"
    ).fetchall()


def link_of(type_name: str, sender: str, receiver: str) -> str | None:
    """The link ('tso->dso') whose latency a delivery counts in, or None for presence: a retained
    'online' reaches an actor that joins later when it joins, which is not the link's latency."""
    if type_name == "actor_state":
        return None
    return f"{sender.split('/')[0]}->{receiver.split('/')[0]}"


def run_notes(scenario, tso: dict[str, Any], setpoints_sent: int) -> list[str]:
    """Why the run did less than its scenario asks, in plain sentences: what the TSO refused of the
    BSPs' offers (assets not prequalified, bids it cannot take), the validations that fell back, and
    why no setpoint was sent when none was."""
    notes = list(tso.get("refusals", []))
    notes += [f"MOL validation missed its window: {f}" for f in tso.get("mol_fallbacks", [])]
    if setpoints_sent == 0:
        if not any(v for _, v in scenario.tso.imbalance):
            notes.append("no delta setpoint was sent: the scenario's imbalance is 0 MW throughout")
        elif not tso.get("validations") and not tso.get("max_delta_setpoint_mw"):
            notes.append("no delta setpoint was sent: no bid reached a merit order list (see the refusals above)")
        else:
            notes.append("no delta setpoint was sent: no bid could be activated (every bound was 0 MW)")
    return notes


def summarize(
    scenario,
    db_path: Path,
    tso: dict[str, Any],
    dsos: list[dict[str, Any]],
    clock_offsets: dict[str, dict] | None = None,
    market: dict[str, Any] | None = None,
    rejoins: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Merge the TSO's and DSOs' results (``results()``) with what the exchange log shows.

    ``clock_offsets``: actor -> {offset_ms (its clock minus the TSO's), uncertainty_ms}, measured
    over the broker (gateway.clocksync) when actors ran on their own clocks; one-way latencies are
    then also given corrected by (receiver offset - sender offset), with the summed uncertainty.

    ``rejoins``: actors restarted mid-run (``testbed.standalone``), each with its absence (wall µs);
    a setpoint lost on its way to a BSP created while that BSP was away is counted apart
    (``setpoints_lost_while_away``): the BSP was down, not the transport."""
    db = sqlite3.connect(db_path)
    messages = dict(
        db.execute("SELECT type, COUNT(*) FROM exchange WHERE direction='out' AND outcome='sent' GROUP BY type")
    )
    latency: dict[str, list[float]] = defaultdict(list)
    by_link: dict[str, list[float]] = defaultdict(list)
    corrected: dict[str, list[float]] = defaultdict(list)
    uncertainty: dict[str, float] = {}
    offsets = clock_offsets or {}
    for type_name, sender, receiver, lat_us in delivered_latencies(db):
        latency[type_name].append(lat_us / 1000)
        if link := link_of(type_name, sender, receiver):
            by_link[link].append(lat_us / 1000)
            if sender in offsets and receiver in offsets:
                o_s, o_r = offsets[sender], offsets[receiver]
                corrected[link].append(lat_us / 1000 - (o_r["offset_ms"] - o_s["offset_ms"]))
                uncertainty[link] = max(uncertainty.get(link, 0.0), o_r["uncertainty_ms"] + o_s["uncertainty_ms"])
    sent_ids = {
        r[0]
        for r in db.execute(
            "SELECT message_id FROM exchange WHERE direction='out' AND type='delta_setpoint' AND actor LIKE 'tso/%'"
        )
    }
    got_ids = {
        r[0]
        for r in db.execute(
            "SELECT message_id FROM exchange WHERE direction='in' AND type='delta_setpoint' AND outcome='delivered'"
        )
    }
    expired = dict(
        db.execute(  # message id -> its age (ms) when it was refused or dropped as expired
            "SELECT message_id, (COALESCE(received_us, sent_us) - created_us) / 1000.0 FROM exchange WHERE type='delta_setpoint'"
            " AND ((direction='in' AND outcome='rejected' AND reason LIKE 'expired:%')"
            " OR (direction='out' AND outcome='dropped' AND reason LIKE 'expired%'))"
        )
    )
    # only setpoints the TSO really sent count (a forged one refused as expired is not the TSO's); a
    # setpoint its sender dropped unsent has no age
    expired = {k: v for k, v in expired.items() if k in sent_ids and k not in got_ids}
    ages = [v for v in expired.values() if v is not None]
    lost = sent_ids - got_ids - set(expired)
    # from its last snapshot (less the exchange log's flush interval, which a kill loses) to its return
    away = [
        (r["actor"], r["away_from_us"] - 500_000, r["back_us"]) for r in rejoins or [] if r["actor"].startswith("bsp/")
    ]
    lost_while_away = sum(
        1
        for mid, receiver, created in db.execute(
            "SELECT message_id, receiver, created_us FROM exchange WHERE direction='out' AND type='delta_setpoint'"
        )
        if mid in lost and any(receiver == a and t0 <= created <= t1 for a, t0, t1 in away)
    )
    rejected = db.execute("SELECT COUNT(*) FROM exchange WHERE outcome='rejected'").fetchone()[0]
    refused = db.execute("SELECT COUNT(*) FROM exchange WHERE outcome='refused'").fetchone()[0]
    congestion = congestion_by_dso(scenario, dsos)  # once: the summary and the scheme metrics show the same figure
    loading = [row for d in dsos for row in d["loading"]]
    worst = max(loading, key=lambda x: x[2]) if loading else (None, None, 0.0)
    monitoring = tso["monitoring"]
    ratios = [m["within_tolerance_ratio"] for m in monitoring]
    return {
        "scenario": scenario.name,
        "coordination": scenario.coordination,
        "dso_limits_mw": tso["dso_limits_mw"],
        "validations": tso["validations"],
        "mol_iterations": tso["mol_iterations"],
        "mol_fallbacks": tso["mol_fallbacks"],
        "congestion_seconds": sum(c["seconds_above_100"] for c in congestion.values()),
        "max_line_loading_percent": round(worst[2], 3),
        "max_loading_element": worst[1],
        "max_loading_at": worst[0],
        "activated_energy_mwh": tso["activated_energy_mwh"],
        "max_delta_setpoint_mw": tso["max_delta_setpoint_mw"],
        "setpoints_sent": len(sent_ids),
        "setpoints_missed": len(sent_ids - got_ids),
        # a missed setpoint either expired (arrived or would have been sent after its validity, one
        # setpoint period: the host or the link was too slow) or was lost (no trace at the receiver)
        "setpoints_expired": len(expired),
        "setpoints_expired_max_age_ms": round(max(ages), 1) if ages else None,
        "setpoints_lost": len(lost),
        "setpoints_lost_while_away": lost_while_away,
        "rejoins": rejoins or [],
        "late_cycles": tso["late_cycles"],
        "delivery_within_tolerance_ratio": round(min(ratios), 4) if ratios else None,
        "non_compliant_bsps": sorted({m["bsp_id"] for m in monitoring if not m["compliant"]}),
        "notes": run_notes(scenario, tso, len(sent_ids)),
        "real_time_limits": tso["real_time_limits"],
        "dso_schedule_changes": tso.get("schedule_changes", []),
        "faults_reported": tso["faults_reported"],
        "curtailments": tso["curtailments"],
        "settlement": tso["settlement"],
        "messages": messages,
        "rejected_messages": rejected,
        "refused_messages": refused,  # valid, but refused by an actor as implausible (the log row says why)
        "latency_ms": {t: _p(v) for t, v in sorted(latency.items())},
        "latency_by_link_ms": {k: _full(v) for k, v in sorted(by_link.items())},
        "clock_offsets_ms": offsets,
        "latency_by_link_corrected_ms": {
            k: {**_full(v), "uncertainty_ms": round(uncertainty[k], 3)} for k, v in sorted(corrected.items())
        },
        "coordination_chain_ms": chain(db),
        "mol_validation_round_trip_ms": _p(tso["mol_round_trip_ms"]),
        "dso_validation_compute_ms": _p([ms for d in dsos for ms in d["validation_ms"]]),
        "schemes": scheme_metrics(scenario, db, tso, dsos, market, congestion),
    }


def timeseries(scenario, tso: dict[str, Any], dsos: list[dict[str, Any]]) -> dict[str, Any]:
    """Setpoints, telemetered delivery, limits and grid loading over time (for reports)."""
    return {
        "setpoint_period_s": scenario.setpoint_period_s,
        "start": scenario.start.isoformat(),
        "setpoints": tso["setpoints"],
        "delivered": tso["delivered"],
        "limits_mw": tso["limits_mw"],
        "loading": {d["dso_id"]: d["loading"] for d in dsos},
    }


def setpoints_text(summary: RunSummary | dict[str, Any]) -> str:
    """'sent / missed', and why any were missed: expired (how old; the longest loop stall) or lost."""
    s = summary if isinstance(summary, RunSummary) else RunSummary.model_validate(summary)
    text = f"{s.setpoints_sent} / {s.setpoints_missed}"
    if not s.setpoints_missed:
        return text
    why = []
    if s.setpoints_expired:
        age = s.setpoints_expired_max_age_ms
        why.append(f"{s.setpoints_expired} expired" + (f", up to {age} ms old" if age is not None else ""))
        stall = max((x["max_ms"] for x in (s.loop_stalls or {}).values()), default=None)
        if stall:
            why.append(f"loop stalled up to {stall} ms")
    if s.setpoints_lost:
        why.append(f"{s.setpoints_lost} lost")
    return f"{text} ({'; '.join(why)})"
