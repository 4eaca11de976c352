"""The device's ledger: what left, what was held back and why, readable by the user.

SQLite in the state dir (``ledger.sqlite3``). It records

* every message the broker acknowledged (``record_sent``, called by the publisher on PUBACK,
  keyed by sequence number so a resend after a power cut is recorded once), byte for byte;
* every message dropped unsent (``record_dropped``: expired, outbox full, consent revoked);
* every suppressed utterance, as a count per reason and day (``record_suppression``,
  buffered for up to a second); the reasons are codes such as ``sensitive:health:rules``,
  never text;
* for each tag of each window, why it was inferred: the topic's category and how many
  utterances supported it (``record_inference``), never the utterances;
* the local-differential-privacy budget spent so far (``spend``), so the device can refuse to
  exceed its lifetime budget across restarts.
"""

from __future__ import annotations

import atexit
import json
import sqlite3
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from earmark.errors import EarmarkError
from earmark.wire import DeletionRequest, Message, SignalBatch

SCHEMA = """
CREATE TABLE IF NOT EXISTS sent (seq INTEGER PRIMARY KEY, kind TEXT NOT NULL,
  window_start INTEGER, window_s INTEGER, payload TEXT NOT NULL, sent_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS dropped (seq INTEGER PRIMARY KEY, kind TEXT NOT NULL,
  window_start INTEGER, reason TEXT NOT NULL, at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS suppressed (day INTEGER NOT NULL, reason TEXT NOT NULL,
  count INTEGER NOT NULL, PRIMARY KEY (day, reason));
CREATE TABLE IF NOT EXISTS inferred (window_start INTEGER NOT NULL, tag TEXT NOT NULL,
  why TEXT NOT NULL, utterances INTEGER NOT NULL, PRIMARY KEY (window_start, tag, why));
CREATE TABLE IF NOT EXISTS budget (id INTEGER PRIMARY KEY CHECK (id = 1), spent REAL NOT NULL);
INSERT OR IGNORE INTO budget VALUES (1, 0.0);
"""


class LedgerError(EarmarkError):
    """The ledger file cannot be opened or written."""


@dataclass(frozen=True)
class SentRecord:
    seq: int
    kind: str
    sent_at: float
    message: dict  # exactly the JSON that left
    why: dict[str, list[str]]  # tag → categories it was inferred from


class Ledger:
    FILENAME = "ledger.sqlite3"
    FLUSH_S = 1.0  # suppression counts reach the file within this much device time

    def __init__(self, state_dir: Path | str, clock: object | None = None) -> None:
        from earmark.clock import SystemClock

        self.path = Path(state_dir) / self.FILENAME
        self.clock = clock or SystemClock()
        self._lock = threading.RLock()
        self._pending: dict[tuple[int, str], int] = {}  # (day, reason) → count not yet written
        self._flushed_at = float("-inf")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA busy_timeout=5000")
            # Counts may lose their last moments to a power cut (NORMAL: no fsync per
            # commit, which would cost milliseconds per utterance); what was sent may not,
            # so record_sent commits with FULL.
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(SCHEMA)
        except sqlite3.Error as err:
            raise LedgerError(f"cannot open ledger {self.path}: {err}") from None
        ref = weakref.ref(self)
        atexit.register(lambda: _flush_at_exit(ref))  # counts held in memory reach the file

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _now(self) -> float:
        return float(self.clock.now())  # type: ignore[attr-defined]

    # --- writers ------------------------------------------------------------------------

    def record_sent(self, message: Message) -> None:
        ws, wlen = _window(message)
        with self._lock:
            self._db.execute("PRAGMA synchronous=FULL")
            try:
                with self._tx() as db:
                    db.execute(
                        "INSERT OR IGNORE INTO sent VALUES (?, ?, ?, ?, ?, ?)",
                        (message.seq, message.type, ws, wlen, message.to_bytes().decode(),
                         self._now()),
                    )  # fmt: skip
            finally:
                self._db.execute("PRAGMA synchronous=NORMAL")

    def record_dropped(self, message: Message, reason: str) -> None:
        ws, _ = _window(message)
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO dropped VALUES (?, ?, ?, ?, ?)",
                (message.seq, message.type, ws, reason, self._now()),
            )

    def record_suppression(self, reason: str, now: float, count: int = 1) -> None:
        """Count a refusal. Counts are held in memory and written at most once per
        ``FLUSH_S`` of device time (and on every read and on close): a commit per utterance
        would cost more than the rest of the gate."""
        with self._lock:
            key = (int(now // 86400), reason)
            self._pending[key] = self._pending.get(key, 0) + count
            if now - self._flushed_at >= self.FLUSH_S or now < self._flushed_at:
                self.flush(now)

    def flush(self, now: float | None = None) -> None:
        with self._lock:
            if self._pending:
                with self._tx() as db:
                    db.executemany(
                        "INSERT INTO suppressed VALUES (?, ?, ?) ON CONFLICT (day, reason)"
                        " DO UPDATE SET count = count + excluded.count",
                        [(day, reason, n) for (day, reason), n in self._pending.items()],
                    )
                self._pending.clear()
            self._flushed_at = self._now() if now is None else now

    def record_inference(self, window_start: int, tag: str, why: str, utterances: int) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO inferred VALUES (?, ?, ?, ?) ON CONFLICT (window_start, tag, why)"
                " DO UPDATE SET utterances = excluded.utterances",
                (window_start, tag, why, utterances),
            )

    def spend(self, epsilon: float, lifetime_budget: float) -> bool:
        """Spend ``epsilon`` if the lifetime budget allows it (atomically); False otherwise."""
        with self._tx() as db:
            (spent,) = db.execute("SELECT spent FROM budget WHERE id = 1").fetchone()
            if spent + epsilon > lifetime_budget + 1e-9:
                return False
            db.execute("UPDATE budget SET spent = ? WHERE id = 1", (spent + epsilon,))
        return True

    # --- readers ------------------------------------------------------------------------

    def budget_spent(self) -> float:
        with self._lock:
            return float(self._db.execute("SELECT spent FROM budget").fetchone()[0])

    def sent(self) -> list[SentRecord]:
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, kind, window_start, payload, sent_at FROM sent ORDER BY seq"
            ).fetchall()
            inferred = self._db.execute(
                "SELECT window_start, tag, why, utterances FROM inferred ORDER BY why"
            ).fetchall()
        why: dict[tuple[int, str], list[str]] = {}
        for ws, tag, reason, n in inferred:
            why.setdefault((ws, tag), []).append(f"{reason} ({n} utterance{'s' * (n != 1)})")
        out = []
        for seq, kind, ws, payload, at in rows:
            msg = json.loads(payload)
            tags = [t["id"] for t in msg.get("tags", [])]
            out.append(SentRecord(seq, kind, at, msg, {t: why.get((ws, t), []) for t in tags}))
        return out

    def dropped(self) -> list[tuple[int, str, int | None, str, float]]:
        with self._lock:
            return self._db.execute(
                "SELECT seq, kind, window_start, reason, at FROM dropped ORDER BY seq"
            ).fetchall()

    def suppressions(self) -> dict[str, int]:
        with self._lock:
            self.flush()
            rows = self._db.execute(
                "SELECT reason, SUM(count) FROM suppressed GROUP BY reason ORDER BY reason"
            ).fetchall()
        return {r: int(n) for r, n in rows}

    def close(self) -> None:
        with self._lock:
            try:
                self.flush()
            finally:
                self._db.close()


def _flush_at_exit(ref: weakref.ReferenceType[Ledger]) -> None:
    ledger = ref()
    if ledger is not None:
        try:
            ledger.flush()
        except sqlite3.Error:  # already closed: nothing was pending
            pass


def _window(message: Message) -> tuple[int | None, int | None]:
    if isinstance(message, SignalBatch):
        return message.window_start, message.window_s
    if isinstance(message, DeletionRequest):
        return message.requested_window, 3600
    return None, None
