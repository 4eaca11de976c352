"""The merge worker: validation and the DB transaction in their own process.

Why a process: paho's network thread is pure Python, and so are ``earmark.wire.decode`` and
SQLAlchemy. In one process they share the GIL and take turns on one core; the machine has
two. The consumer (:mod:`earmark.gateway.service`) keeps the MQTT connection, sends raw
``(topic, payload)`` pairs through a pipe in batches, and acks only after the worker answers
that the batch's transaction committed. Nothing is trusted across the pipe that was not
already raw: the worker validates every payload itself.

The worker is forked (before the consumer starts its threads, and again if it dies), so it
inherits the engine's configuration; it drops the parent's pooled connections without
closing them (``dispose(close=False)``) and opens its own. When the consumer goes away
(even by SIGKILL) the pipe reaches EOF and the worker exits; a transaction it committed
meanwhile is harmless: unacked messages come back and count zero times more (dedup).
"""

from __future__ import annotations

import gc
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection as Pipe

from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError

from earmark.gateway.merge import Item, MergeConfig, merge_items
from earmark.gateway.store import dead_letters
from earmark.gateway.validate import Checks, Rejection, check, dead_letter_row
from earmark.wire import SignalBatch

log = logging.getLogger(__name__)

Raw = tuple[str, bytes]  # topic, payload: exactly what the broker delivered


@dataclass
class BatchResult:
    """What the consumer needs back: counts for metrics, never payloads."""

    merged: int = 0
    parked: int = 0
    deletions: int = 0
    duplicates: int = 0
    rejected: list[tuple[str, str]] = field(default_factory=list)  # (reason, topic[:100])
    merged_keys: list[tuple[str, int]] = field(default_factory=list)
    newest_window_end: float | None = None
    db_errors: int = 0
    committed_at: float = 0.0


def commit_batch(engine: Engine, checks: Checks, cfg: MergeConfig, batch: list[Raw]) -> BatchResult:
    """Validate, merge and store dead letters for one batch in one transaction."""
    now = time.time()
    items: list[Item] = []
    source: dict[int, Raw] = {}
    rejections: list[Rejection] = []
    for topic, payload in batch:
        result = check(topic, payload, checks, now)
        if isinstance(result, Rejection):
            rejections.append(result)
        else:
            items.append(result)
            source[id(result)] = (topic, payload)
    with engine.begin() as conn:
        out = merge_items(conn, items, cfg, now)
        for item, reason, detail in out.rejected:
            topic, payload = source[id(item)]
            rejections.append(Rejection(topic, payload, reason, detail, item.message.device_id))
        if rejections:
            conn.execute(dead_letters.insert(), [dead_letter_row(x, now) for x in rejections])
    ends = [
        i.message.window_start + i.message.window_s
        for i in items
        if isinstance(i.message, SignalBatch)
    ]
    return BatchResult(
        merged=out.merged,
        parked=out.parked,
        deletions=out.deletions,
        duplicates=out.duplicates,
        rejected=[(x.reason, x.topic[:100]) for x in rejections],
        merged_keys=out.merged_keys,
        newest_window_end=float(max(ends)) if ends else None,
        committed_at=time.time(),
    )


def commit_with_retry(
    engine: Engine,
    checks: Checks,
    cfg: MergeConfig,
    batch: list[Raw],
    give_up: Callable[[], bool] | None = None,
) -> BatchResult | None:
    """Retry a failing transaction (DB down, deadlock) with backoff; None if told to give up."""
    delay, errors = 0.1, 0
    while True:
        try:
            res = commit_batch(engine, checks, cfg, batch)
            res.db_errors = errors
            return res
        except DBAPIError as err:
            errors += 1
            log.warning("DB transaction failed, retrying in %.1fs: %s", delay, str(err.orig)[:200])
            time.sleep(delay)
            if give_up is not None and give_up():
                return None
            delay = min(delay * 2, 5.0)


def serve(
    engine: Engine,
    checks: Checks,
    cfg: MergeConfig,
    inbox: Pipe,
    outbox: Pipe,
    close: list[Pipe],
) -> None:
    """The worker process's main loop: one reply per batch, in order, until EOF or None."""
    for c in close:  # the consumer's ends, inherited by fork: keep only ours, so EOF is seen
        c.close()
    gc.freeze()  # the parent's heap, inherited: never scanned by our collections (no pauses)
    engine.dispose(close=False)
    parent = os.getppid()
    while True:
        try:
            batch = inbox.recv()
        except (EOFError, OSError):
            return
        if batch is None:
            return
        res = commit_with_retry(engine, checks, cfg, batch, lambda: os.getppid() != parent)
        if res is None:
            return
        try:
            outbox.send(res)
        except (BrokenPipeError, OSError):
            return
