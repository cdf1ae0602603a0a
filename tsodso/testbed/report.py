"""``tsodso report RUN_DIR [RUN_DIR_B]``: ``report.html`` (self-contained, plots embedded) and
PNGs, from run directories alone (``summary.json``, ``timeseries.json``, ``exchange.sqlite``).

Plots: setpoint vs delivered power per BSP with the [-10 %, +20 %] band (CS review §IV.B); loading
of the DSO's most loaded elements against 100 % (both runs when two are given); a sequence chart
of one ISP's messages between the actors (the Fig. 4 view); one-way latency per message type and
per link; messages and bytes per link; the summary table.
"""

import base64
import html
import io
import json
import sqlite3
from collections import defaultdict
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.dates as mdates
import matplotlib.pyplot as plt

from tsodso.actors import rules
from tsodso.testbed.results import RunSummary, load_summary
from tsodso.testbed.stats import summary as percentiles
from tsodso.testbed.summary import delivered_latencies, link_of, setpoints_text

PLOTS = ("delivery", "loading", "sequence", "latency_by_type", "latency_by_link", "traffic_by_link")


def _load(run: Path) -> dict[str, Any]:
    return {
        "dir": run,
        "summary": load_summary(run),
        "series": json.loads((run / "timeseries.json").read_text()),
        "db": sqlite3.connect(run / "exchange.sqlite"),
    }


def _label(r: dict) -> str:
    return f"coordination {r['summary'].coordination}"


def _bid_owners(run: dict) -> dict[str, str]:
    """Bid id -> its BSP, from the scenario the run wrote (so each limit is drawn in its BSP's panel)."""
    import yaml

    try:
        scenario = yaml.safe_load((run["dir"] / "scenario.yaml").read_text())
    except OSError:
        return {}
    return {bid["bid_id"]: bsp["id"] for bsp in scenario.get("bsps", []) for bid in bsp.get("bids", [])}


def _time_axis(ax) -> None:
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M", tz=mdates.UTC))
    ax.set_xlabel("scenario time (UTC)")


def delivery_bsps(runs: list[dict]) -> list[str]:
    """The BSPs with setpoints in any of the runs, in a stable order (one row of panels each)."""
    return sorted({b for r in runs for b in r["series"]["setpoints"]})


def plot_delivery(runs: list[dict], axes) -> None:
    """One panel per BSP (rows) and run (columns): its delta setpoints with the tolerance band, what it
    delivered, and the limits on its bids; a row shares its scale across the runs."""
    bsps = delivery_bsps(runs) or ["(none)"]
    low, high = (100 * x for x in rules.DELIVERY_BAND)
    for col, r in enumerate(runs):
        s = r["series"]
        start = datetime.fromisoformat(s["start"])
        period = s["setpoint_period_s"]
        owners = _bid_owners(r)
        for row, bsp in enumerate(bsps):
            ax = axes[row][col]
            points = s["setpoints"].get(bsp, {})
            cycles = sorted(int(k) for k in points)
            t = [start + timedelta(seconds=period * k) for k in cycles]
            sp = [points[str(k)] for k in cycles]
            if sp:
                ax.step(t, sp, where="post", label="delta setpoint")
                ax.fill_between(
                    t,
                    [rules.band_mw(v)[0] for v in sp],
                    [rules.band_mw(v)[1] for v in sp],
                    step="post",
                    alpha=0.15,
                    label=f"tolerance [{low:+.0f} %, {high:+.0f} %]",
                )
            got = s["delivered"].get(bsp, {})
            dk = sorted(int(k) for k in got)
            ax.plot(
                [start + timedelta(seconds=period * k) for k in dk],
                [got[str(k)] for k in dk],
                ".",
                ms=2,
                label="delivered (telemetry)",
            )
            for bid, mw in s.get("limits_mw", {}).items():
                if owners.get(bid, bsp) == bsp:
                    ax.axhline(mw, color="red", lw=0.8, ls="--", label=f"limit on {bid}: {mw:.2f} MW")
            ax.set_title(f"{bsp} ({_label(r)})" + ("" if sp else ": nothing activated"), fontsize=9)
            ax.set_ylabel("delta [MW]")
            lo, hi = ax.get_ylim()
            if hi - lo < 1.0:  # nothing activated: a readable scale around 0, not 1e-16
                ax.set_ylim(min(lo, -1.0), max(hi, 1.0))
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=6, loc="best")
            _time_axis(ax)
            if row < len(bsps) - 1:
                ax.set_xlabel("")
    axes[0][0].figure.tight_layout()


def plot_loading(runs: list[dict], ax) -> None:
    for r in runs:
        for dso, rows in r["series"]["loading"].items():
            if not rows:
                continue
            t = [datetime.fromisoformat(x[0]) for x in rows]
            peak = max(rows, key=lambda x: x[2])
            ax.plot(
                t,
                [x[2] for x in rows],
                label=f"{dso}: most loaded element, peak {peak[1]} {peak[2]:.0f} % ({_label(r)})",
            )
    ax.axhline(100, color="red", lw=1, ls="--", label="100 %")
    ax.set_title("Loading of each DSO's most loaded line or transformer")
    ax.set_ylabel("loading [%]")
    _time_axis(ax)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(0, -0.22), ncol=2, frameon=False)  # below: no data hidden


def plot_sequence(run: dict, ax, limit: int = 40) -> None:
    """The first ``limit`` messages of the run between actors, as a sequence chart (Fig. 4 view)."""
    rows = (
        run["db"]
        .execute(
            "SELECT created_us, received_us, sender, receiver, type FROM exchange WHERE direction='in' "
            "AND outcome='delivered' AND type NOT IN ('actor_state','heartbeat') ORDER BY created_us LIMIT ?",
            (limit,),
        )
        .fetchall()
    )
    actors = sorted(
        {a for r in rows for a in (r[2], r[3])},
        key=lambda a: (
            ("bsp", "tso", "dso", "mo").index(a.split("/")[0]) if a.split("/")[0] in ("bsp", "tso", "dso", "mo") else 9
        ),
    )
    x = {a: i for i, a in enumerate(actors)}
    for a, i in x.items():
        ax.axvline(i, color="grey", lw=0.8)
        ax.text(i, -0.8, a, ha="center", fontsize=8, fontweight="bold")
    for n, (_, _, sender, receiver, type_name) in enumerate(rows):
        ax.annotate("", xy=(x[receiver], n), xytext=(x[sender], n), arrowprops=dict(arrowstyle="->", lw=0.8))
        ax.text((x[sender] + x[receiver]) / 2, n - 0.15, type_name, ha="center", fontsize=6)
    ax.set_ylim(len(rows), -1.5)
    ax.set_xlim(-0.6, len(actors) - 0.4)
    ax.axis("off")
    ax.set_title(f"Sequence of the first {len(rows)} messages ({_label(run)})")


def _latencies(run: dict) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    by_type: dict[str, list[float]] = defaultdict(list)
    by_link: dict[str, list[float]] = defaultdict(list)
    for type_name, sender, receiver, lat_us in delivered_latencies(run["db"]):
        by_type[type_name].append(lat_us / 1000)
        if link := link_of(type_name, sender, receiver):  # the summary's links: presence is not a latency
            by_link[link.upper().replace("->", "→")].append(lat_us / 1000)
    return by_type, by_link


def plot_latency(data: dict[str, list[float]], ax, title: str) -> None:
    names = sorted(data)
    ax.boxplot([data[n] for n in names], orientation="horizontal", showfliers=True, flierprops={"markersize": 2})
    ax.set_yticks(range(1, len(names) + 1), [f"{n} (n={len(data[n])})" for n in names], fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("one-way latency, created → received [ms]")
    ax.set_title(title)


def plot_traffic(run: dict, ax) -> None:
    rows = (
        run["db"]
        .execute(
            "SELECT sender, receiver, COUNT(*), SUM(bytes) FROM exchange WHERE direction='out' AND outcome='sent' "
            "GROUP BY sender, receiver"
        )
        .fetchall()
    )
    links: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for sender, receiver, count, size in rows:
        key = f"{sender.split('/')[0].upper()}→{receiver.split('/')[0].upper()}"
        links[key][0] += count
        links[key][1] += size or 0
    names = sorted(links)
    ax.barh(names, [links[n][0] for n in names])
    for i, n in enumerate(names):
        ax.text(links[n][0], i, f" {links[n][0]} msgs, {links[n][1] / 1024:.1f} KiB", va="center", fontsize=7)
    ax.set_title(f"Messages and bytes per link ({_label(run)})")
    ax.set_xlabel("messages")


SUMMARY_ROWS: list[tuple[str, Callable[[RunSummary], str]]] = [
    ("DSO limits [MW]", lambda s: ", ".join(f"{k}: {v:.2f}" for k, v in s.dso_limits_mw.items()) or "none"),
    ("max delta setpoint [MW]", lambda s: ", ".join(f"{k}: {v:.2f}" for k, v in s.max_delta_setpoint_mw.items())),
    ("max line loading [%]", lambda s: f"{s.max_line_loading_percent:.2f} ({s.max_loading_element})"),
    ("congestion [s]", lambda s: f"{s.congestion_seconds:.0f}"),
    ("activated energy [MWh]", lambda s: f"{s.activated_energy_mwh:.3f}"),
    ("setpoints sent / missed", setpoints_text),
    ("delivery within tolerance", lambda s: str(s.delivery_within_tolerance_ratio)),
    ("non-compliant BSPs", lambda s: ", ".join(s.non_compliant_bsps) or "none"),
    (
        "MOL → validation p50 / p99 [ms]",
        lambda s: f"{s.mol_validation_round_trip_ms.p50 or '-'} / {s.mol_validation_round_trip_ms.p99 or '-'}",
    ),
    ("real-time limits", lambda s: str(len(s.real_time_limits))),
    ("total activation cost [EUR]", lambda s: f"{s.schemes.total_cost_eur:.2f}"),
    (
        "balancing need covered [%]",
        lambda s: f"{s.schemes.balancing_covered_percent:.1f}",
    ),
    ("messages sent", lambda s: str(sum(s.messages.values()))),
    ("rejected messages", lambda s: str(s.rejected_messages)),
]


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def build_report(run_dirs: list[Path], out: Path | None = None) -> Path:
    """Write PNGs and ``report.html`` into ``out`` (the first run directory by default)."""
    runs = [_load(Path(d)) for d in run_dirs]
    out = Path(out or run_dirs[0])
    out.mkdir(parents=True, exist_ok=True)
    images: dict[str, bytes] = {}

    rows = max(1, len(delivery_bsps(runs)))
    fig, axes = plt.subplots(
        rows, len(runs), figsize=(6 * len(runs) + 4, 2.8 * rows + 0.8), squeeze=False, sharex=True, sharey="row"
    )
    plot_delivery(runs, axes)
    images["delivery"] = _png(fig)

    fig, ax = plt.subplots(figsize=(10, 3.6))
    plot_loading(runs, ax)
    images["loading"] = _png(fig)

    fig, ax = plt.subplots(figsize=(10, 9))
    plot_sequence(runs[0], ax)
    images["sequence"] = _png(fig)

    by_type, by_link = _latencies(runs[0])
    fig, ax = plt.subplots(figsize=(10, 0.35 * len(by_type) + 1.5))
    plot_latency(by_type, ax, f"One-way latency per message type ({_label(runs[0])})")
    images["latency_by_type"] = _png(fig)
    fig, ax = plt.subplots(figsize=(10, 0.4 * len(by_link) + 1.5))
    plot_latency(by_link, ax, f"One-way latency per link ({_label(runs[0])})")
    images["latency_by_link"] = _png(fig)

    fig, ax = plt.subplots(figsize=(10, 0.4 * 6 + 1.5))
    plot_traffic(runs[0], ax)
    images["traffic_by_link"] = _png(fig)

    for name, data in images.items():
        (out / f"{name}.png").write_bytes(data)

    head = "".join(f"<th>{html.escape(_label(r))}</th>" for r in runs)
    body = "".join(
        "<tr><td>"
        + html.escape(label)
        + "</td>"
        + "".join(f"<td>{html.escape(fn(r['summary']))}</td>" for r in runs)
        + "</tr>"
        for label, fn in SUMMARY_ROWS
    )
    lat_rows = "".join(
        f"<tr><td>{html.escape(t)}</td><td>{s['count']}</td><td>{s['p50']:.2f}</td><td>{s['p90']:.2f}</td>"
        f"<td>{s['p99']:.2f}</td><td>{s['max']:.2f}</td></tr>"
        for t, s in ((t, percentiles(v)) for t, v in sorted({**by_type, **by_link}.items()))
    )
    figures = "".join(
        f'<figure><img alt="{name}" src="data:image/png;base64,{base64.b64encode(data).decode()}"/></figure>'
        for name, data in images.items()
    )
    notes = "".join(f"<li>{html.escape(_label(r))}: {html.escape(n)}</li>" for r in runs for n in r["summary"].notes)
    notes = f"<h2>What the run did not do, and why</h2><ul>{notes}</ul>" if notes else ""
    title = html.escape(runs[0]["summary"].scenario)
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}td:first-child{{text-align:left}}img{{max-width:100%}}</style>
</head><body><h1>{title}</h1>
<p>Runs: {", ".join(html.escape(str(r["dir"])) for r in runs)}</p>
<h2>Summary</h2><table><tr><th></th>{head}</tr>{body}</table>{notes}
<h2>Latency [ms] ({html.escape(_label(runs[0]))})</h2>
<table><tr><th>type / link</th><th>n</th><th>p50</th><th>p90</th><th>p99</th><th>max</th></tr>{lat_rows}</table>
<h2>Plots</h2>{figures}</body></html>"""
    path = out / "report.html"
    path.write_text(page)
    for r in runs:
        r["db"].close()
    return path
