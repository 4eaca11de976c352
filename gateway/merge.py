"""Merge validated messages into profiles: one DB transaction per batch, idempotent.

Scores decay exponentially: a window that ended at ``t`` with weight ``w`` is worth
``w * 2^-((now - t) / half_life)`` now. A profile row keeps ``(score, ref_t)``, the sum of
all contributions valued at ``ref_t``; adding a contribution at ``t`` rescales whichever side
is older, so the sum does not depend on arrival order, and the update is one atomic
``INSERT .. ON CONFLICT DO UPDATE`` expression (PostgreSQL locks the row, SQLite holds the
database write lock), so two instances never lose an update. The cap is applied there too.

Idempotence: the ``(device_id, seq)`` row in ``em_seen`` is inserted in the same transaction
as the merge, ``ON CONFLICT DO NOTHING RETURNING``: only the transaction whose insert
returned the row merges, even when two instances race on a redelivered message.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from sqlalchemy import Connection, and_, bindparam, case, func, select, tuple_

from earmark.gateway.store import (
    contributions,
    devices,
    floors,
    insert_many,
    profiles,
    seen,
    upsert,
)
from earmark.wire import DeletionRequest, SignalBatch

DEFAULT_HALF_LIFE_S = 14 * 86400.0
DEFAULT_CAP = 50.0
DEFAULT_MAX_BATCHES_PER_WINDOW = 4  # a window closes once; a flush may add one more


@dataclass(frozen=True)
class MergeConfig:
    half_life_s: float = DEFAULT_HALF_LIFE_S
    cap: float = DEFAULT_CAP
    max_batches_per_window: int = DEFAULT_MAX_BATCHES_PER_WINDOW


@dataclass(frozen=True)
class Item:
    """One validated message and the hash of its exact payload."""

    message: SignalBatch | DeletionRequest
    payload_sha256: str


@dataclass
class Outcome:
    merged: int = 0  # signal batches that counted (for the first time)
    parked: int = 0  # ... of which from unregistered devices (kept, folded in on registration)
    deletions: int = 0
    duplicates: int = 0  # the same payload again: a redelivery, acked and ignored
    rejected: list[tuple[Item, str, str]] = field(default_factory=list)  # item, reason, detail
    merged_keys: list[tuple[str, int]] = field(default_factory=list)


def decay(score: float, ref_t: float, now: float, half_life_s: float) -> float:
    return score * 2.0 ** (min(0.0, ref_t - now) / half_life_s)


def merge_items(conn: Connection, items: Sequence[Item], cfg: MergeConfig, now: float) -> Outcome:
    """Apply messages in order inside the caller's transaction."""
    out = Outcome()
    segment: list[Item] = []
    for item in items:
        if isinstance(item.message, DeletionRequest):
            _merge_signals(conn, segment, cfg, now, out)
            segment = []
            _deletion(conn, item, now, out)
        else:
            segment.append(item)
    _merge_signals(conn, segment, cfg, now, out)
    return out


def _claim(
    conn: Connection, items: list[Item], now: float, cfg: MergeConfig, out: Outcome
) -> list[Item]:
    """Keep the items that count for the first time; classify the rest."""
    keys = sorted({(i.message.device_id, i.message.seq) for i in items})
    known: dict[tuple[str, int], str] = {}
    for chunk in _chunks(keys, 1000):
        rows = conn.execute(
            select(seen.c.device_id, seen.c.seq, seen.c.payload_sha256).where(
                tuple_(seen.c.device_id, seen.c.seq).in_(chunk)
            )
        )
        known.update({(r[0], r[1]): r[2] for r in rows})
    devs = sorted({k[0] for k in keys})
    floor: dict[str, int] = dict(
        conn.execute(
            select(floors.c.device_id, floors.c.seq).where(floors.c.device_id.in_(devs))
        ).all()
    )
    windows = sorted(
        {
            (i.message.device_id, _window(i.message))
            for i in items
            if isinstance(i.message, SignalBatch)
        }
    )
    per_window: Counter[tuple[str, int | None]] = Counter()
    for chunk in _chunks(windows, 1000):
        rows = conn.execute(
            select(seen.c.device_id, seen.c.window_start, func.count())
            .where(tuple_(seen.c.device_id, seen.c.window_start).in_(chunk))
            .group_by(seen.c.device_id, seen.c.window_start)
        )
        per_window.update({(r[0], r[1]): r[2] for r in rows})
    fresh: list[Item] = []
    for item in items:
        m = item.message
        key = (m.device_id, m.seq)
        if m.seq <= floor.get(m.device_id, 0):
            out.rejected.append((item, "erased_seq", f"seq {m.seq} is at or below a deletion"))
        elif key in known:
            if known[key] == item.payload_sha256:
                out.duplicates += 1
            else:
                out.rejected.append(
                    (item, "replayed", f"seq {m.seq} was seen with another payload")
                )
        elif (
            isinstance(m, SignalBatch)
            and per_window[(m.device_id, _window(m))] >= cfg.max_batches_per_window
        ):
            out.rejected.append(
                (item, "flood", f"more than {cfg.max_batches_per_window} batches for one window")
            )
        else:
            known[key] = item.payload_sha256
            if isinstance(m, SignalBatch):
                per_window[(m.device_id, _window(m))] += 1
            fresh.append(item)
    if not fresh:
        return []
    seen_rows = [
        {
            "device_id": i.message.device_id,
            "seq": i.message.seq,
            "payload_sha256": i.payload_sha256,
            "window_start": _window(i.message),
            "merged_at": now,
        }
        for i in sorted(fresh, key=lambda i: (i.message.device_id, i.message.seq))
    ]
    # executemany of one cached statement (SQLAlchemy's insertmanyvalues batches it into
    # multi-row INSERTs); RETURNING gives back only the rows this transaction inserted
    stmt = upsert(conn, seen).on_conflict_do_nothing().returning(seen.c.device_id, seen.c.seq)
    won = {(r[0], r[1]) for r in conn.execute(stmt, seen_rows)}
    counted = []
    for item in fresh:
        if (item.message.device_id, item.message.seq) in won:
            counted.append(item)
        else:  # another instance committed it between our look-up and our insert
            out.duplicates += 1
    return counted


def _window(m: SignalBatch | DeletionRequest) -> int | None:
    return m.window_start if isinstance(m, SignalBatch) else None


def _merge_signals(
    conn: Connection, items: list[Item], cfg: MergeConfig, now: float, out: Outcome
) -> None:
    if not items:
        return
    counted = _claim(conn, items, now, cfg, out)
    if not counted:
        return
    batches = [i.message for i in counted if isinstance(i.message, SignalBatch)]
    rows = [
        {
            "device_id": b.device_id,
            "seq": b.seq,
            "tag": t.id,
            "w": t.w,
            "window_start": b.window_start,
            "window_s": b.window_s,
            "model": b.model,
        }
        for b in batches
        for t in b.tags
    ]
    if rows:
        stmt = upsert(conn, contributions).values({c: bindparam(c) for c in rows[0]})
        insert_many(conn, stmt.on_conflict_do_nothing(), "contributions", rows)
    owners = owners_of(conn, {b.device_id for b in batches})
    points = [
        (owners[b.device_id], t.id, t.w, float(b.window_start + b.window_s))
        for b in batches
        if b.device_id in owners
        for t in b.tags
    ]
    add_points(conn, points, cfg)
    out.merged += len(batches)
    out.parked += sum(1 for b in batches if b.device_id not in owners)
    out.merged_keys.extend((b.device_id, b.seq) for b in batches)


def owners_of(conn: Connection, device_ids: Iterable[str]) -> dict[str, str]:
    ids = sorted(set(device_ids))
    if not ids:
        return {}
    return dict(
        conn.execute(
            select(devices.c.device_id, devices.c.user_id).where(devices.c.device_id.in_(ids))
        ).all()
    )


def add_points(
    conn: Connection, points: list[tuple[str, str, float, float]], cfg: MergeConfig
) -> None:
    """Add (user, tag, weight, time) contributions to profiles: one upsert per (user, tag)."""
    grouped: dict[tuple[str, str], list[tuple[float, float]]] = defaultdict(list)
    for user, tag, w, t in points:
        grouped[(user, tag)].append((w, t))
    h = cfg.half_life_s
    rows = []
    for (user, tag), pts in sorted(grouped.items()):  # sorted: a fixed lock order, no deadlock
        ref = max(t for _, t in pts)
        score = sum(w * math.pow(2.0, (t - ref) / h) for w, t in pts)
        rows.append({"user_id": user, "tag": tag, "score": min(cfg.cap, score), "ref_t": ref})
    if not rows:
        return
    pg = conn.dialect.name == "postgresql"
    least = func.least if pg else func.min
    greatest = func.greatest if pg else func.max
    stmt = upsert(conn, profiles)
    new, old = stmt.excluded, profiles.c
    newer = new.ref_t >= old.ref_t
    total = case(
        (newer, old.score * func.power(2.0, (old.ref_t - new.ref_t) / h) + new.score),
        else_=old.score + new.score * func.power(2.0, (new.ref_t - old.ref_t) / h),
    )
    stmt = stmt.on_conflict_do_update(
        index_elements=[profiles.c.user_id, profiles.c.tag],
        set_={"score": least(cfg.cap, total), "ref_t": greatest(old.ref_t, new.ref_t)},
    )
    conn.execute(stmt, rows)  # executemany in list order: sorted, a fixed lock order


def _deletion(conn: Connection, item: Item, now: float, out: Outcome) -> None:
    if not _claim(conn, [item], now, MergeConfig(), out):
        return
    m = item.message
    user = owners_of(conn, [m.device_id]).get(m.device_id)
    erase(conn, user, [m.device_id], floor_at_least={m.device_id: m.seq})
    out.deletions += 1
    out.merged_keys.append((m.device_id, m.seq))


def erase(
    conn: Connection,
    user: str | None,
    device_ids: Iterable[str] = (),
    floor_at_least: dict[str, int] | None = None,
) -> dict[str, int]:
    """Erase a user's profile and every record that could rebuild it; keep only seq floors."""
    devs = set(device_ids)
    if user is not None:
        devs |= set(
            conn.execute(select(devices.c.device_id).where(devices.c.user_id == user)).scalars()
        )
    devs_sorted = sorted(devs)
    top: dict[str, int] = dict(
        conn.execute(
            select(seen.c.device_id, func.max(seen.c.seq))
            .where(seen.c.device_id.in_(devs_sorted))
            .group_by(seen.c.device_id)
        ).all()
    )
    for d, s in (floor_at_least or {}).items():
        top[d] = max(top.get(d, 0), s)
    for d in sorted(top):
        stmt = upsert(conn, floors).values(device_id=d, seq=top[d])
        conn.execute(
            stmt.on_conflict_do_update(
                index_elements=[floors.c.device_id],
                set_={
                    "seq": case(
                        (stmt.excluded.seq > floors.c.seq, stmt.excluded.seq), else_=floors.c.seq
                    )
                },
            )
        )
    counts = {
        "contributions": conn.execute(
            contributions.delete().where(contributions.c.device_id.in_(devs_sorted))
        ).rowcount,
        "seen": conn.execute(seen.delete().where(seen.c.device_id.in_(devs_sorted))).rowcount,
        "profile_rows": 0,
    }
    if user is not None:
        counts["profile_rows"] = conn.execute(
            profiles.delete().where(profiles.c.user_id == user)
        ).rowcount
    return counts


def fold_device(conn: Connection, device_id: str, user: str, cfg: MergeConfig) -> int:
    """A device just registered: add what it already sent to its owner's profile."""
    rows = conn.execute(
        select(
            contributions.c.tag,
            contributions.c.w,
            contributions.c.window_start + contributions.c.window_s,
        ).where(and_(contributions.c.device_id == device_id))
    ).all()
    add_points(conn, [(user, r[0], r[1], float(r[2])) for r in rows], cfg)
    return len(rows)


def _chunks(seq: Sequence, n: int) -> Iterable[list]:  # type: ignore[type-arg]
    for i in range(0, len(seq), n):
        yield list(seq[i : i + n])
