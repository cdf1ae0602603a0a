"""The exchange log keeps every row, from many threads, and flushes on close."""

import sqlite3
import threading
import time
import uuid
from enum import Enum

import pytest

from tsodso.gateway.exchange_log import COLUMNS, ExchangeLog, ExchangeLogError, LogRow, connect
from tsodso.schemas.envelope import Party


def row(i: int, actor: str = "tso/tso") -> LogRow:
    return LogRow(
        "run",
        actor,
        "out",
        "sent",
        None,
        f"id-{i}",
        "delta_setpoint",
        "t/x",
        actor,
        "bsp/bsp1",
        None,
        None,
        i,
        400,
        1,
        i,
        i + 1,
        None,
    )


def test_every_row_from_many_threads_is_written_by_close(tmp_path):
    path = tmp_path / "exchange.sqlite"
    log = ExchangeLog(path, run_id="run", flush_interval_s=0.05)

    def writer(k: int) -> None:
        for i in range(5000):
            log.record(row(k * 5000 + i, actor=f"bsp/bsp{k}"))

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    log.close()  # no explicit flush: close must write what is still queued
    db = sqlite3.connect(path)
    assert db.execute("SELECT COUNT(*), COUNT(DISTINCT message_id) FROM exchange").fetchone() == (20000, 20000)
    assert db.execute("SELECT COUNT(DISTINCT actor) FROM exchange").fetchone()[0] == 4
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_two_writers_share_one_file(tmp_path):
    path = tmp_path / "exchange.sqlite"
    with ExchangeLog(path, run_id="a") as a, ExchangeLog(path, run_id="b") as b:
        for i in range(1000):
            a.record(row(i))
            b.record(row(i, actor="dso/dso1"))
    counts = dict(connect(path).execute("SELECT actor, COUNT(*) FROM exchange GROUP BY actor").fetchall())
    assert counts == {"tso/tso": 1000, "dso/dso1": 1000}


def test_schema_has_the_columns_the_reports_read(tmp_path):
    with ExchangeLog(tmp_path / "x.sqlite") as log:
        pass
    cols = [r[1] for r in sqlite3.connect(log.path).execute("PRAGMA table_info(exchange)")]
    assert cols[1:] == list(COLUMNS)


def test_log_benchmark_writes_every_row():
    from tsodso.testbed.bench.log import run_log

    result = run_log(20_000)
    assert result["rows_written"] == 20_000 and result["lost"] == 0
    assert result["ratio"] == pytest.approx(result["value"] / result["baseline_value"], abs=0.002)


class Outcome(Enum):
    SENT = "sent"


def test_ids_and_parties_given_as_objects_are_stored_as_text_in_any_column(tmp_path):
    """The writer turns a UUID or a Party into its text where the gateway puts them; an object in any
    other column (a caller's mistake) still lands as its text, the rows around it too."""
    path = tmp_path / "exchange.sqlite"
    mid, bsp = uuid.uuid4(), Party(role="bsp", id="bsp1")
    with ExchangeLog(path, run_id="run") as log:
        log.record(row(1)._replace(message_id=mid, receiver=bsp, correlation_id=mid))
        log.record(row(2)._replace(actor=Party(role="tso", id="tso"), outcome=Outcome.SENT))  # type: ignore[arg-type]
        log.record(row(3))
    db = sqlite3.connect(path)
    rows = db.execute(
        "SELECT sequence, actor, outcome, message_id, receiver, correlation_id FROM exchange ORDER BY sequence"
    )
    assert rows.fetchall() == [
        (1, "tso/tso", "sent", str(mid), "bsp/bsp1", str(mid)),
        (2, "tso/tso", "Outcome.SENT", "id-2", "bsp/bsp1", None),
        (3, "tso/tso", "sent", "id-3", "bsp/bsp1", None),
    ]


def _until(predicate, timeout_s: float = 20.0) -> None:
    """Wait for ``predicate`` (the writer thread's doing), with a deadline."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_rows_wait_while_the_file_is_locked_and_are_written_in_order_when_it_is_free(tmp_path):
    """Another program holding the file (or a full disk) fails a write: the rows stay queued, the
    writer keeps trying, and every row lands once the file is free, in the order recorded."""
    path = tmp_path / "exchange.sqlite"
    log = ExchangeLog(path, run_id="run", flush_interval_s=0.02, busy_timeout_s=0.05)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    for i in range(1, 501):
        log.record(row(i))
    _until(lambda: log.failures >= 2)  # tried, failed, tried again
    assert log.written == 0
    log.record(row(501))  # recorded while the earlier ones wait: it lands after them
    other.execute("COMMIT")
    _until(lambda: log.written == 501)
    log.close()
    ids = [r[0] for r in sqlite3.connect(path).execute("SELECT sequence FROM exchange ORDER BY id")]
    assert ids == list(range(1, 502)) and log.lost == 0


def test_a_log_that_cannot_be_written_says_so_in_one_line_at_close(tmp_path):
    path = tmp_path / "exchange.sqlite"
    log = ExchangeLog(path, run_id="run", flush_interval_s=0.02, busy_timeout_s=0.05, max_waiting_rows=10)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    for i in range(25):
        log.record(row(i))
    _until(lambda: log.failures >= 1)
    assert log.lost == 15  # at most 10 wait: the 15 oldest are dropped, and counted
    with pytest.raises(
        ExchangeLogError, match=r"could not be written: database is locked \(10 rows not written, 15 dropped"
    ):
        log.close()
    other.execute("COMMIT")


def test_an_exchange_log_where_none_can_be_made_is_one_clear_error(tmp_path):
    with pytest.raises(ExchangeLogError, match="cannot open the exchange log .*no-such-dir"):
        ExchangeLog(tmp_path / "no-such-dir" / "exchange.sqlite")


def test_a_run_that_fails_keeps_its_own_error_when_the_log_cannot_be_written_either(tmp_path):
    """The log's failure at close must not hide why the run ended (it is logged beside it)."""
    path = tmp_path / "exchange.sqlite"
    other = sqlite3.connect(path, isolation_level=None)
    with (
        pytest.raises(RuntimeError, match="the run's own failure"),
        ExchangeLog(path, run_id="run", busy_timeout_s=0.05) as log,
    ):
        other.execute("BEGIN EXCLUSIVE")
        log.record(row(1))
        raise RuntimeError("the run's own failure")
    other.execute("COMMIT")
    with (  # without an error of its own, the block ends in the log's
        pytest.raises(ExchangeLogError, match="could not be written"),
        ExchangeLog(path, run_id="run", busy_timeout_s=0.05) as log,
    ):
        other.execute("BEGIN EXCLUSIVE")
        log.record(row(2))
    other.execute("COMMIT")
