"""The exchange log: one SQLite row per message sent, received, rejected or dropped.

The gateway calls :meth:`ExchangeLog.record` on its per-message path; that only appends a tuple to
a thread-safe deque, with ids and parties as the objects they are (the writer turns them into text,
off the message's path). A writer thread drains the deque in batches (``executemany`` in one
transaction, WAL journal) every ``flush_interval_s``. :meth:`close` drains what is left, so nothing
is lost on a clean stop. Several actors, in one process or several, may share one file: SQLite's
WAL and a busy timeout serialise the writers. A write that fails (the disk full, the file locked
by another program past the busy timeout) leaves its rows queued, in order, and is tried again at the
next interval; the failure is logged (the first, then at most every ``REPORT_EVERY_S``), and so is the
write that succeeds after it. At most ``max_waiting_rows`` wait: beyond, the oldest are dropped and
counted (``lost``). :meth:`close` raises :class:`ExchangeLogError` naming what it could not write.

Times are integers in microseconds since the Unix epoch, UTC (``*_us`` columns).
One-way latency of a delivered message = ``received_us - created_us`` of its "in" row.

The payloads of the messages an ENTSO-E document carries (``KEPT_TYPES``: bids, merit order
lists and their validations, acceptances, delta setpoints) are kept as sent, once each, in the
``kept`` table: ``tsodso esmp export`` turns a run's market into documents from them.
"""

import sqlite3
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any, NamedTuple

import structlog

log = structlog.get_logger("exchange-log")

REPORT_EVERY_S = 10.0  # a failing log says so at most this often

SCHEMA = """
CREATE TABLE IF NOT EXISTS exchange (
    id            INTEGER PRIMARY KEY,
    run_id        TEXT NOT NULL,
    actor         TEXT NOT NULL,      -- role/id of the gateway that wrote the row
    direction     TEXT NOT NULL,      -- 'out' (sent by actor) or 'in' (arrived at actor)
    outcome       TEXT NOT NULL,      -- sent | delivered | rejected | refused (by the actor) | dropped | ignored
    reason        TEXT,               -- why rejected / dropped / ignored, or a note (sequence gap)
    message_id    TEXT,
    type          TEXT,
    topic         TEXT NOT NULL,
    sender        TEXT,               -- role/id
    receiver      TEXT,               -- role/id (comma-separated for several)
    correlation_id TEXT,
    causation_id  TEXT,
    sequence      INTEGER,
    bytes         INTEGER NOT NULL,
    qos           INTEGER,
    created_us    INTEGER,            -- envelope created_at (sender's clock)
    sent_us       INTEGER,            -- handed to the MQTT client (sender's clock), 'out' rows
    received_us   INTEGER             -- arrival at the receiving gateway (receiver's clock), 'in' rows
);
CREATE INDEX IF NOT EXISTS exchange_message ON exchange (message_id);
CREATE INDEX IF NOT EXISTS exchange_type ON exchange (type, direction);
CREATE TABLE IF NOT EXISTS kept (
    message_id    TEXT PRIMARY KEY,
    type          TEXT NOT NULL,
    sent_us       INTEGER NOT NULL,   -- handed to the MQTT client (sender's clock)
    payload       BLOB NOT NULL       -- the bytes sent (signed where the sender signs)
);
"""

KEPT_TYPES = frozenset({"energy_bid", "merit_order_list", "mol_validation", "offer_acceptance", "delta_setpoint"})
"""The message types whose payloads the log keeps: what ENTSO-E documents carry (docs/esmp.md)."""

COLUMNS = (
    "run_id",
    "actor",
    "direction",
    "outcome",
    "reason",
    "message_id",
    "type",
    "topic",
    "sender",
    "receiver",
    "correlation_id",
    "causation_id",
    "sequence",
    "bytes",
    "qos",
    "created_us",
    "sent_us",
    "received_us",
)
_INSERT = f"INSERT INTO exchange ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
_KEEP = "INSERT OR IGNORE INTO kept (message_id, type, sent_us, payload) VALUES (?, ?, ?, ?)"


class LogRow(NamedTuple):
    """One row; ids and parties may be given as objects (stored as their text)."""

    run_id: str
    actor: str
    direction: str
    outcome: str
    reason: str | None
    message_id: Any
    type: str | None
    topic: str
    sender: Any
    receiver: Any
    correlation_id: Any
    causation_id: Any
    sequence: int | None
    bytes: int
    qos: int | None
    created_us: int | None
    sent_us: int | None
    received_us: int | None


# the columns a caller may give as objects (a UUID, a Party)
_OBJECT_COLUMNS = tuple(
    COLUMNS.index(c) for c in ("message_id", "sender", "receiver", "correlation_id", "causation_id")
)


def _as_stored(row: LogRow | tuple[Any, ...]) -> tuple[Any, ...]:
    """The row as SQLite stores it: ids and parties given as objects (a UUID, a Party) as their text.
    Only the columns that may hold an object are looked at (the writer's cost per row, off the
    message's path but under the same interpreter lock)."""
    out = list(row)
    for i in _OBJECT_COLUMNS:
        v = out[i]
        if v is not None and type(v) is not str:
            out[i] = str(v)
    return tuple(out)


def _as_text(row: LogRow | tuple[Any, ...]) -> tuple[Any, ...]:
    """The row with every value SQLite does not store as it is turned into its text (any column)."""
    return tuple(v if v is None or type(v) in (str, int, float, bytes) else str(v) for v in row)


def _drain(queue: deque) -> list:
    batch = []
    pop = queue.popleft
    try:
        while True:
            batch.append(pop())
    except IndexError:
        pass
    return batch


def kept_payloads(path: str | Path) -> list[tuple[str, int, bytes]]:
    """(type, sent_us, payload) of every kept message of an exchange log, in the order they were sent."""
    db = sqlite3.connect(f"file:{Path(path)}?mode=ro", uri=True)
    try:
        if not db.execute("SELECT 1 FROM sqlite_master WHERE name = 'kept'").fetchone():
            return []
        return db.execute("SELECT type, sent_us, payload FROM kept ORDER BY sent_us, rowid").fetchall()
    finally:
        db.close()


def now_us() -> int:
    """Wall-clock time in microseconds since the epoch (UTC)."""
    return time.time_ns() // 1000


def connect(path: str | Path, *, busy_timeout_s: float = 30.0) -> sqlite3.Connection:
    """Open (and create) an exchange-log database for reading or writing."""
    db = sqlite3.connect(str(path), timeout=busy_timeout_s, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.executescript(SCHEMA)
    return db


class ExchangeLogError(OSError):
    """The exchange log could not be opened, or rows could not be written by its close."""


class ExchangeLog:
    """Batched, thread-backed writer of exchange rows. Use as a context manager or call close()."""

    def __init__(
        self,
        path: str | Path,
        *,
        run_id: str = "run",
        flush_interval_s: float = 0.1,
        busy_timeout_s: float = 30.0,
        max_waiting_rows: int = 2_000_000,
    ):
        self.path = Path(path)
        self.run_id = run_id
        self.flush_interval_s = flush_interval_s
        self.max_waiting_rows = max_waiting_rows
        self._pending: deque[tuple[Any, ...]] = deque()
        self._kept: deque[tuple[Any, str, int, bytes]] = deque()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        try:
            self._db = connect(self.path, busy_timeout_s=busy_timeout_s)
        except sqlite3.Error as exc:
            raise ExchangeLogError(f"cannot open the exchange log {self.path}: {exc}") from None
        self.written = 0
        self.failures = 0  # writes that failed (their rows waited and were tried again)
        self.lost = 0  # rows dropped because more than max_waiting_rows waited
        self._failing_since: float | None = None  # monotonic s of the first failure of the current spell
        self._reported_at = 0.0
        self._thread = threading.Thread(target=self._run, name=f"exchange-log:{self.path.name}", daemon=True)
        self._thread.start()

    def record(self, row: LogRow | tuple[Any, ...]) -> None:
        """Queue one row; cheap enough for the per-message path."""
        self._pending.append(row)

    def keep(self, message_id: Any, type_name: str, sent_us: int, payload: bytes) -> None:
        """Queue the payload of a sent message of one of ``KEPT_TYPES`` (the id as text or as its object:
        the writer turns it into text)."""
        self._kept.append((message_id, type_name, sent_us, payload))

    def flush(self) -> int:
        """Write everything queued so far; returns the number of rows written. Thread-safe. On a
        ``sqlite3.Error`` the rows stay queued, in order, and the error is raised."""
        batch = _drain(self._pending)
        kept = _drain(self._kept)
        if not (batch or kept):
            return 0
        kept_rows = [(m if type(m) is str else str(m), t, us, p) for m, t, us, p in kept]
        try:
            try:
                self._write([_as_stored(row) for row in batch], kept_rows)
            except (sqlite3.InterfaceError, sqlite3.ProgrammingError):
                # an object in a column the fast path does not look at (the transaction was rolled
                # back): the batch again, every column looked at, rather than a writer that dies
                self._write([_as_text(row) for row in batch], kept_rows)
        except sqlite3.Error:
            self._pending.extendleft(reversed(batch))  # before anything queued meanwhile
            self._kept.extendleft(reversed(kept))
            self._bound()
            raise
        return len(batch)

    def _bound(self) -> None:
        """Drop the oldest waiting rows beyond ``max_waiting_rows`` (and as many kept payloads)."""
        over = len(self._pending) - self.max_waiting_rows
        if over > 0:
            for _ in range(over):
                self._pending.popleft()
            self.lost += over
        while len(self._kept) > self.max_waiting_rows:
            self._kept.popleft()

    def _write(self, rows: list[tuple[Any, ...]], kept: list[tuple[str, str, int, bytes]]) -> None:
        with self._lock:
            with self._db:  # one transaction: all of it, or (an error) none of it
                self._db.executemany(_INSERT, rows)
                self._db.executemany(_KEEP, kept)
            self.written += len(rows)

    def deliveries(self, actor: str, since_us: int) -> list[tuple[str, str, int, int]]:
        """(message id, type, created_us, received_us) of what ``actor`` took since ``since_us``: the
        replay window a restarted actor starts with."""
        with self._lock:
            return self._db.execute(
                "SELECT message_id, type, created_us, received_us FROM exchange WHERE actor = ? AND direction = 'in' "
                "AND outcome = 'delivered' AND message_id IS NOT NULL AND created_us >= ?",
                (actor, since_us),
            ).fetchall()

    def _run(self) -> None:
        while not self._stop.wait(self.flush_interval_s):
            self._flush_or_report()

    def _flush_or_report(self) -> None:
        now = time.monotonic()
        try:
            self.flush()
        except sqlite3.Error as exc:
            self.failures += 1
            if self._failing_since is None:
                self._failing_since = now
            if self.failures == 1 or now - self._reported_at >= REPORT_EVERY_S:
                self._reported_at = now
                log.error(
                    "exchange log not written; its rows wait and are tried again",
                    path=str(self.path),
                    error=str(exc),
                    waiting=len(self._pending),
                    lost=self.lost,
                )
            return
        if self._failing_since is not None:
            log.warning(
                "exchange log written again",
                path=str(self.path),
                after_s=round(now - self._failing_since, 1),
                lost=self.lost,
            )
            self._failing_since = None

    def close(self) -> None:
        """Stop the writer and write every queued row; :class:`ExchangeLogError` says what could not be."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._thread.join()
        try:
            self.flush()
        except sqlite3.Error as exc:
            raise ExchangeLogError(
                f"the exchange log {self.path} could not be written: {exc} ({len(self._pending)} rows not written"
                f"{f', {self.lost} dropped before' if self.lost else ''})"
            ) from None
        finally:
            self._db.close()
        if self.lost:
            raise ExchangeLogError(
                f"the exchange log {self.path} lost {self.lost} rows: more than {self.max_waiting_rows} waited "
                "while it could not be written"
            )

    def __enter__(self) -> "ExchangeLog":
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        try:
            self.close()
        except ExchangeLogError as failed:
            if exc_type is None:
                raise
            # the block ends with an error of its own: that one goes on, this one is said beside it
            log.error("exchange log not written", path=str(self.path), error=str(failed))
