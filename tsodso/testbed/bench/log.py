"""`tsodso bench log`: exchange-log rows per second, sustained, with nothing lost.

N rows are recorded through :meth:`ExchangeLog.record` (what the gateway does per message) while
its writer thread flushes them in batches; the clock stops when ``close()`` has written the last
row, and the rows in the file are counted. Baseline, same run: one ``executemany`` of the same rows
into a fresh file in a single transaction (the most SQLite can take in one go from Python).
"""

import platform
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any

from tsodso.gateway.exchange_log import _INSERT, ExchangeLog, LogRow, connect


def rows(n: int) -> list[LogRow]:
    return [
        LogRow(
            "bench",
            "tso/tso",
            "out",
            "sent",
            None,
            f"00000000-0000-4000-8000-{i:012d}",
            "delta_setpoint",
            f"tsodso/v1/tso/tso/delta_setpoint/bsp/bsp{i % 1000}",
            "tso/tso",
            f"bsp/bsp{i % 1000}",
            None,
            None,
            i,
            450,
            1,
            1_700_000_000_000_000 + i,
            1_700_000_000_000_010 + i,
            None,
        )
        for i in range(n)
    ]


def run_log(n: int = 500_000) -> dict[str, Any]:
    data = rows(n)
    with tempfile.TemporaryDirectory() as tmp:
        log = ExchangeLog(Path(tmp) / "log.sqlite", run_id="bench")
        t0 = time.perf_counter()
        for row in data:
            log.record(row)
        recorded = time.perf_counter() - t0
        log.close()
        total = time.perf_counter() - t0
        written = sqlite3.connect(Path(tmp) / "log.sqlite").execute("SELECT COUNT(*) FROM exchange").fetchone()[0]
        db = connect(Path(tmp) / "base.sqlite")
        t0 = time.perf_counter()
        with db:
            db.executemany(_INSERT, data)
        baseline = time.perf_counter() - t0
        db.close()
    value = n / total
    return {
        "benchmark": "log",
        "metric": "rows_per_second",
        "value": round(value),
        "unit": "rows/s",
        "goal": ">= 50000 rows/s with nothing lost",
        "baseline": "one executemany of the same rows in one transaction",
        "baseline_value": round(n / baseline),
        "ratio": round(value / (n / baseline), 3),
        "rows": n,
        "rows_written": written,
        "lost": n - written,
        "record_us_per_row": round(recorded / n * 1e6, 3),
        "machine": f"{platform.machine()}, {platform.python_implementation()} {platform.python_version()}",
    }
