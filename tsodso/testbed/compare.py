"""``tsodso compare``: every coordination scheme of CS review Table I on the same scenario, one
table (the review lists advantages and disadvantages in words; this puts numbers on them).

Each scheme is a full run of the same actors (actors.schemes) on a fresh broker, into
``OUT/<scheme>/``; ``OUT/comparison.json`` holds one row per scheme (``summary.json``'s
``schemes`` section), ``OUT/comparison.md`` the table and ``OUT/comparison.html`` the table with
the plots side by side.
"""

import base64
import html
import json
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from tsodso.actors.config import SCHEMES, Scenario
from tsodso.actors.coordination import SCHEMES as REGISTRY
from tsodso.broker import start_broker
from tsodso.testbed.results import RunSummary
from tsodso.testbed.runner import run_scenario

LABELS = {name: s.label for name, s in REGISTRY.items()}


def _p(row: dict, key: str) -> str:
    s = row["mol_to_accepted_ms"]
    return f"{s[key]:.1f}" if s else "-"


def _compute(row: dict) -> str:
    return ", ".join(f"{k} {v['total']:.1f}" for k, v in row["compute_ms"].items() if v["count"]) or "-"


ROWS: list[tuple[str, Callable[[dict], str]]] = [
    ("total activation cost [EUR]", lambda r: f"{r['total_cost_eur']:.0f}"),
    ("  of which aFRR / blocks [EUR]", lambda r: f"{r['afrr_cost_eur']:.0f} / {r['flex_cost_eur']:.0f}"),
    ("balancing need covered [MWh]", lambda r: f"{r['balancing_covered_mwh']:.2f} of {r['balancing_need_mwh']:.2f}"),
    ("balancing need covered [%]", lambda r: f"{r['balancing_covered_percent']:.1f}"),
    (
        "DSO congestion [s above 100 %]",
        lambda r: ", ".join(f"{d} {c['seconds_above_100']:.0f}" for d, c in r["congestion"].items()),
    ),
    (
        "peak loading [%]",
        lambda r: ", ".join(f"{d} {c['peak_loading_percent']:.1f}" for d, c in r["congestion"].items()),
    ),
    ("DER energy for the TSO [MWh]", lambda r: f"{r['der_mwh_tso']:.2f}"),
    ("DER energy for DSOs [MWh]", lambda r: f"{r['der_mwh_dso']:.2f}"),
    (
        "energy for commercial parties [MWh] (DER)",
        lambda r: f"{r['commercial_mwh']:.2f} ({r['der_mwh_commercial']:.2f})",
    ),
    (
        "TSO vs DSO in opposite directions [MWh]",
        lambda r: f"{r['opposite_mwh']:.2f} ({len(r['opposite_activations'])} ISP-DSO pairs)",
    ),
    ("messages / kB", lambda r: f"{r['messages']} / {r['bytes'] / 1000:.0f}"),
    ("MOL -> accepted p50 / p99 [ms]", lambda r: f"{_p(r, 'p50')} / {_p(r, 'p99')}"),
    ("operators' computation [ms]", _compute),
]


def table_markdown(rows: dict[str, dict]) -> str:
    """The comparison as a Markdown table, one column per scheme."""
    schemes = list(rows)
    lines = ["| | " + " | ".join(LABELS.get(s, s) for s in schemes) + " |", "|---" * (len(schemes) + 1) + "|"]
    for label, fn in ROWS:
        lines.append(f"| {label.strip()} | " + " | ".join(fn(rows[s]) for s in schemes) + " |")
    return "\n".join(lines) + "\n"


def traffic_markdown(rows: dict[str, dict]) -> str:
    """Messages per link and scheme."""
    links = sorted({link for r in rows.values() for link in r["traffic_by_link"]})
    lines = ["| link | " + " | ".join(LABELS.get(s, s) for s in rows) + " |", "|---" * (len(rows) + 1) + "|"]
    for link in links:
        cells = [f"{r['traffic_by_link'].get(link, {}).get('messages', 0)}" for r in rows.values()]
        lines.append(f"| {link} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(rows: dict[str, dict]) -> bytes:
    """Bars side by side: cost, balance, congestion, DER energy by buyer, conflicts, messages."""
    import io

    names = [LABELS.get(s, s) for s in rows]
    r = list(rows.values())
    fig, axes = plt.subplots(2, 3, figsize=(15, 8))
    x = range(len(names))

    def bars(ax, values: Sequence[float], title: str, color: str = "tab:blue") -> None:
        drawn = ax.bar(x, values, color=color)
        ax.bar_label(drawn, fmt="%.4g", fontsize=8)
        ax.set_ylim(0, max(max(values, default=0) * 1.15, 1e-9))
        ax.set_title(title)
        ax.set_xticks(list(x), names, rotation=30, ha="right")

    bars(axes[0][0], [v["total_cost_eur"] for v in r], "total activation cost [EUR]")
    bars(axes[0][1], [v["balancing_covered_percent"] for v in r], "balancing need covered [%]", "tab:green")
    bars(axes[0][2], [v["congestion_seconds"] for v in r], "DSO congestion [s above 100 %]", "tab:red")
    ax = axes[1][0]
    ax.bar(x, [v["der_mwh_tso"] for v in r], label="TSO")
    ax.bar(x, [v["der_mwh_dso"] for v in r], bottom=[v["der_mwh_tso"] for v in r], label="DSOs")
    ax.bar(
        x,
        [v["der_mwh_commercial"] for v in r],
        bottom=[v["der_mwh_tso"] + v["der_mwh_dso"] for v in r],
        label="commercial",
    )
    ax.set_title("DER energy by buyer [MWh]")
    ax.set_xticks(list(x), names, rotation=30, ha="right")
    ax.set_ylim(0, max(v["der_mwh_tso"] + v["der_mwh_dso"] + v["der_mwh_commercial"] for v in r) * 1.3)
    ax.legend(loc="upper left", ncols=3, fontsize=8)
    bars(axes[1][1], [v["opposite_mwh"] for v in r], "TSO vs DSO in opposite directions [MWh]", "tab:orange")
    bars(axes[1][2], [v["messages"] for v in r], "messages", "tab:gray")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def write_report(comparison: dict[str, Any], out: Path) -> Path:
    rows = comparison["schemes"]
    (out / "comparison.md").write_text(
        f"# {comparison['scenario']}: coordination schemes\n\n"
        + table_markdown(rows)
        + "\n## Messages per link\n\n"
        + traffic_markdown(rows)
    )
    png = plot(rows)
    (out / "comparison.png").write_bytes(png)
    head = "".join(f"<th>{html.escape(LABELS.get(s, s))}</th>" for s in rows)
    body = "".join(
        "<tr><td>"
        + html.escape(label)
        + "</td>"
        + "".join(f"<td>{html.escape(fn(r))}</td>" for r in rows.values())
        + "</tr>"
        for label, fn in ROWS
    )
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(comparison["scenario"])}</title>
<style>body{{font-family:sans-serif;max-width:1300px;margin:2em auto}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}td:first-child{{text-align:left}}img{{max-width:100%}}</style>
</head><body><h1>{html.escape(comparison["scenario"])}: the six coordination schemes (CS review Table I)</h1>
<p>Broker: {html.escape(comparison["broker"])}; speed {comparison["speed"]}{"" if comparison["speed"] == "virtual" else "x"}; run directories under {html.escape(str(out))}.</p>
<table><tr><th></th>{head}</tr>{body}</table>
<img alt="comparison" src="data:image/png;base64,{base64.b64encode(png).decode()}"/></body></html>"""
    path = out / "comparison.html"
    path.write_text(page)
    return path


async def compare(
    scenario: Scenario,
    broker: str,
    out: Path,
    *,
    schemes: Sequence[str] = SCHEMES,
    speed: float = 50.0,
    virtual: bool = False,
    progress: Callable[[str], None] | None = None,
    run_progress: Any = None,
    finished: Callable[[str, dict[str, Any], float], None] | None = None,
) -> dict[str, Any]:
    """Run ``scenario`` once per scheme, each on a fresh broker of kind ``broker`` (or the URL),
    and write ``comparison.json`` and the report into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    rows: dict[str, dict] = {}
    wall = {}
    for scheme in schemes:
        if progress:
            progress(scheme)
        run_dir = out / scheme
        shutil.rmtree(run_dir / "broker", ignore_errors=True)
        t0 = time.time()
        with start_broker(broker, data_dir=run_dir / "broker") as running:
            summary = await run_scenario(
                scenario.model_copy(update={"coordination": scheme}),
                running.url,
                run_dir,
                speed=speed,
                virtual=virtual,
                progress=run_progress,
            )
        wall[scheme] = round(time.time() - t0, 1)
        run = RunSummary.model_validate(summary)  # every view reads the summary through its model
        row = run.schemes.model_dump(mode="json", exclude={"market_results"})
        row.update(
            late_cycles=run.late_cycles,
            setpoints_sent=run.setpoints_sent,
            setpoints_missed=run.setpoints_missed,
            setpoints_expired=run.setpoints_expired,
            setpoints_lost=run.setpoints_lost,
        )
        rows[scheme] = row
        if finished:
            finished(scheme, row, wall[scheme])
    comparison = {
        "scenario": scenario.name,
        "broker": broker,
        "speed": "virtual" if virtual else speed,
        "wall_clock_s": wall,
        "schemes": rows,
    }
    (out / "comparison.json").write_text(json.dumps(comparison, indent=2) + "\n")
    write_report(comparison, out)
    return comparison
