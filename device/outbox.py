"""The device's outbox: every message is on flash before it is on the radio.

A message is written here (SQLite, WAL, ``synchronous=FULL``) and gets its per-device
sequence number in the same transaction, before the publisher ever sees it; it is removed
only when the broker acknowledges it (PUBACK). A power cut at any instant leaves either the
whole message or none of it, and a sequence number is never handed out twice, so after a
reboot the publisher resends exactly what was not acknowledged. The gateway deduplicates on
``(device_id, seq)``, so a resend after a lost PUBACK is harmless.

Bounds and what happens when they are hit (the policy; every drop is counted in the ledger
with its reason, never silent):

* **Time to live** (default 7 days): a signal batch older than that describes interests too
  stale to matter and is dropped as ``expired``. Deletion requests never expire.
* **Size** (``max_messages`` and ``max_bytes``, the latter from the hardware's storage
  limit): when a new batch would not fit, the *oldest* pending signal batches are dropped as
  ``outbox_full`` until it does. Old windows are worth least to a decaying profile, and
  keeping the newest keeps the profile current when the link comes back. Deletion requests
  are never dropped and do not count against the cap: erasure is an obligation, and there are
  at most a handful of them.
* **Consent revoked**: :meth:`Outbox.discard_pending` drops every pending signal batch as
  ``consent_revoked`` (the deletion request queued afterwards is kept).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from earmark.clock import Clock, SystemClock
from earmark.errors import EarmarkError
from earmark.wire import DeletionRequest, Message, SignalBatch, from_dict

log = logging.getLogger(__name__)

DEFAULT_TTL_S = 7 * 24 * 3600
DEFAULT_MAX_MESSAGES = 10_000
DEFAULT_MAX_BYTES = 16 * 1024 * 1024
ROW_OVERHEAD_BYTES = 64  # rough per-row cost in SQLite (key, columns, page slack)
SCHEMA_VERSION = 1


class OutboxError(EarmarkError):
    """The outbox file cannot be opened or is not an earmark outbox."""


class OutboxLedger(Protocol):
    """What the outbox and publisher tell the ledger (earmark.device.ledger implements it)."""

    def record_sent(self, message: Message) -> None: ...

    def record_dropped(self, message: Message, reason: str) -> None: ...


@dataclass(frozen=True)
class OutboxEntry:
    """One pending message as stored: the payload is exactly what goes on the wire."""

    seq: int
    kind: str  # "signals" | "deletion"
    topic: str
    payload: bytes
    created: float  # clock.now() when written
    expires: float | None  # clock.now() deadline; None for deletion requests

    def message(self) -> Message:
        return message_from_payload(self.payload)


def message_from_payload(payload: bytes) -> Message:
    """Rebuild a message this device wrote (already validated when it was built)."""
    return from_dict(json.loads(payload), tag_check=lambda _tag: "targetable")


def default_state_dir() -> Path:
    """``$EARMARK_HOME`` or ``~/.local/share/earmark``: where device state lives."""
    env = os.environ.get("EARMARK_HOME")
    return Path(env) if env else Path.home() / ".local" / "share" / "earmark"


class Outbox:
    """Durable, ordered, bounded queue of outgoing messages with per-device sequence numbers.

    Thread-safe: the runtime puts from its thread while the publisher acks from paho's.
    """

    FILENAME = "outbox.sqlite3"

    def __init__(
        self,
        path: Path | str,
        *,
        clock: Clock | None = None,
        ledger: OutboxLedger | None = None,
        ttl_s: float = DEFAULT_TTL_S,
        max_messages: int = DEFAULT_MAX_MESSAGES,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        path = Path(path)
        if path.is_dir() or path.suffix == "":
            path = path / self.FILENAME
        self.path = path
        self.clock = clock or SystemClock()
        self.ledger = ledger
        self.ttl_s = ttl_s
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self._lock = threading.RLock()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")  # a committed put survives power loss
            self._db.execute("PRAGMA busy_timeout=5000")
            self._migrate()
        except (sqlite3.Error, OSError) as err:
            raise OutboxError(f"cannot open outbox {path}: {err}") from None

    # --- schema -------------------------------------------------------------------------

    def _migrate(self) -> None:
        with self._tx():
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)"
            )
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS messages ("
                " seq INTEGER PRIMARY KEY, kind TEXT NOT NULL, topic TEXT NOT NULL,"
                " payload BLOB NOT NULL, created REAL NOT NULL, expires REAL)"
            )
            self._db.execute(
                "INSERT OR IGNORE INTO meta VALUES ('schema', ?), ('next_seq', 1)",
                (SCHEMA_VERSION,),
            )
            (schema,) = self._db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
        if schema != SCHEMA_VERSION:
            raise OutboxError(f"outbox {self.path} has schema {schema}, expected {SCHEMA_VERSION}")

    def _tx(self) -> _Transaction:
        return _Transaction(self._db, self._lock)

    # --- writing ------------------------------------------------------------------------

    def put(self, message: Message) -> int:
        """Give ``message`` the next sequence number and store it durably; returns the seq.

        The message's own ``seq`` is ignored: the outbox is the one place numbers come from.
        """
        now = self.clock.now()
        dropped: list[tuple[Message, str]] = []
        with self._tx():
            (seq,) = self._db.execute("SELECT value FROM meta WHERE key='next_seq'").fetchone()
            sequenced = dataclasses.replace(message, seq=seq)
            payload = sequenced.to_bytes()
            if isinstance(sequenced, SignalBatch):
                kind, expires = "signals", now + self.ttl_s
                dropped += self._purge_expired(now)
                dropped += self._make_room(len(payload))
            elif isinstance(sequenced, DeletionRequest):
                kind, expires = "deletion", None
            else:  # pragma: no cover - Message is a closed union
                raise TypeError(f"not a wire message: {type(message).__name__}")
            self._db.execute(
                "INSERT INTO messages VALUES (?, ?, ?, ?, ?, ?)",
                (seq, kind, sequenced.topic, payload, now, expires),
            )
            self._db.execute("UPDATE meta SET value=? WHERE key='next_seq'", (seq + 1,))
        self._report_dropped(dropped)
        log.debug("outbox put seq=%d kind=%s bytes=%d", seq, kind, len(payload))
        return int(seq)

    def _purge_expired(self, now: float) -> list[tuple[Message, str]]:
        rows = self._db.execute(
            "SELECT seq, payload FROM messages WHERE expires IS NOT NULL AND expires <= ?",
            (now,),
        ).fetchall()
        if rows:
            self._db.execute(
                "DELETE FROM messages WHERE expires IS NOT NULL AND expires <= ?", (now,)
            )
        return [(message_from_payload(p), "expired") for _, p in rows]

    def _make_room(self, new_bytes: int) -> list[tuple[Message, str]]:
        count, size = self._db.execute(
            "SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) + ? * COUNT(*)"
            " FROM messages WHERE kind='signals'",
            (ROW_OVERHEAD_BYTES,),
        ).fetchone()
        need_count = count + 1 - self.max_messages
        need_bytes = size + new_bytes + ROW_OVERHEAD_BYTES - self.max_bytes
        if need_count <= 0 and need_bytes <= 0:
            return []
        victims: list[tuple[int, bytes]] = []
        for seq, payload in self._db.execute(
            "SELECT seq, payload FROM messages WHERE kind='signals' ORDER BY seq"
        ):
            if need_count <= 0 and need_bytes <= 0:
                break
            victims.append((seq, payload))
            need_count -= 1
            need_bytes -= len(payload) + ROW_OVERHEAD_BYTES
        self._db.executemany("DELETE FROM messages WHERE seq=?", [(s,) for s, _ in victims])
        return [(message_from_payload(p), "outbox_full") for _, p in victims]

    def _report_dropped(self, dropped: list[tuple[Message, str]]) -> None:
        for message, reason in dropped:
            log.warning("outbox dropped seq=%d: %s", message.seq, reason)
            if self.ledger is not None:
                self.ledger.record_dropped(message, reason)

    # --- reading and acknowledging ------------------------------------------------------

    def pending(self, after: int = 0, limit: int | None = None) -> list[OutboxEntry]:
        """Unacknowledged messages with ``seq > after``, oldest first; expired ones are purged."""
        with self._tx():
            dropped = self._purge_expired(self.clock.now())
            rows = self._db.execute(
                "SELECT seq, kind, topic, payload, created, expires FROM messages"
                " WHERE seq > ? ORDER BY seq LIMIT ?",
                (after, -1 if limit is None else limit),
            ).fetchall()
        self._report_dropped(dropped)
        return [OutboxEntry(s, k, t, bytes(p), c, e) for s, k, t, p, c, e in rows]

    def ack(self, seq: int) -> Message | None:
        """The broker has the message: forget it. Returns it, or None if it was already gone."""
        with self._tx():
            row = self._db.execute("SELECT payload FROM messages WHERE seq=?", (seq,)).fetchone()
            if row is None:
                return None
            self._db.execute("DELETE FROM messages WHERE seq=?", (seq,))
        return message_from_payload(row[0])

    def ack_many(
        self, seqs: list[int], on_acked: Callable[[Message], None] | None = None
    ) -> list[Message]:
        """Acknowledge several in one transaction (one fsync); returns those still present.

        ``on_acked`` (the ledger's ``record_sent``) runs for each message *before* the delete
        commits: a power cut in between means the message is resent and recorded again,
        never sent and unrecorded. The ledger therefore keys its records by sequence number.
        """
        if not seqs:
            return []
        with self._tx():
            messages = []
            for seq in seqs:
                row = self._db.execute(
                    "SELECT payload FROM messages WHERE seq=?", (seq,)
                ).fetchone()
                if row is not None:
                    messages.append(message_from_payload(row[0]))
            for message in messages:
                if on_acked is not None:
                    on_acked(message)
            self._db.executemany("DELETE FROM messages WHERE seq=?", [(m.seq,) for m in messages])
        return messages

    def drop(self, seq: int, reason: str) -> Message | None:
        """Remove a message the broker refused for good, counting it in the ledger."""
        message = self.ack(seq)
        if message is not None:
            self._report_dropped([(message, reason)])
        return message

    def discard_pending(self) -> int:
        """Consent revoked: drop every pending signal batch at once; returns how many."""
        with self._tx():
            rows = self._db.execute(
                "SELECT payload FROM messages WHERE kind='signals' ORDER BY seq"
            ).fetchall()
            self._db.execute("DELETE FROM messages WHERE kind='signals'")
        self._report_dropped([(message_from_payload(p), "consent_revoked") for (p,) in rows])
        return len(rows)

    def count(self) -> int:
        with self._lock:
            (n,) = self._db.execute("SELECT COUNT(*) FROM messages").fetchone()
        return int(n)

    def next_seq(self) -> int:
        with self._lock:
            (n,) = self._db.execute("SELECT value FROM meta WHERE key='next_seq'").fetchone()
        return int(n)

    def close(self) -> None:
        with self._lock:
            self._db.close()


class _Transaction:
    """``BEGIN IMMEDIATE`` … ``COMMIT`` under the outbox lock; rolls back on error."""

    def __init__(self, db: sqlite3.Connection, lock: threading.RLock) -> None:
        self._db = db
        self._lock = lock

    def __enter__(self) -> None:
        self._lock.acquire()
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except BaseException:
            self._lock.release()
            raise

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        try:
            self._db.execute("ROLLBACK" if exc_type else "COMMIT")
        finally:
            self._lock.release()
