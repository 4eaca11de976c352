"""Merge semantics on real SQLite and PostgreSQL: decay, cap, dedup, deletion, registration."""

from __future__ import annotations

import hashlib
import math
import threading

import pytest
from sqlalchemy import Engine, func, select

from earmark.gateway import profiles as p
from earmark.gateway.merge import Item, MergeConfig, merge_items
from earmark.gateway.store import contributions, floors, migrate, open_engine, seen
from earmark.wire import DeletionRequest, SignalBatch
from tests.gateway.conftest import BASE_WINDOW, make_batch, seen_count

DAY = 86400.0
CFG = MergeConfig(half_life_s=DAY, cap=3.0)


def item(m: SignalBatch | DeletionRequest) -> Item:
    return Item(m, hashlib.sha256(m.to_bytes()).hexdigest())


def merge(engine: Engine, msgs: list[SignalBatch | DeletionRequest], cfg: MergeConfig = CFG):  # type: ignore[no-untyped-def]
    with engine.begin() as conn:
        return merge_items(conn, [item(m) for m in msgs], cfg, now=BASE_WINDOW + 10**6)


def score(engine: Engine, user: str, tag: str, now: float, cfg: MergeConfig = CFG) -> float:
    prof = p.read_profile(engine, user, cfg, limit=100, now=now)
    return next((i["score"] for i in prof["interests"] if i["tag"] == tag), 0.0)


def test_decay_is_exact_and_order_free(engine: Engine) -> None:
    p.register_device(engine, "dev-a001", "alice", CFG)
    # two windows one day apart, merged newest first: order must not matter
    merge(engine, [make_batch("dev-a001", 25, w=1.0)])
    merge(engine, [make_batch("dev-a001", 1, w=0.5)])
    t1 = BASE_WINDOW + 3600 * 2  # end of window 1
    t25 = BASE_WINDOW + 3600 * 26
    now = t25 + 2 * DAY
    expected = 1.0 * 2 ** (-(now - t25) / DAY) + 0.5 * 2 ** (-(now - t1) / DAY)
    assert math.isclose(score(engine, "alice", "100", now), expected, rel_tol=1e-5)


def test_cap_and_idempotence(engine: Engine) -> None:
    p.register_device(engine, "dev-a001", "alice", CFG)
    batches = [make_batch("dev-a001", s, tags=("100", "101"), w=1.0, window=0) for s in range(1, 4)]
    out = merge(engine, batches, MergeConfig(half_life_s=DAY, cap=2.5, max_batches_per_window=10))
    assert out.merged == 3
    again = merge(engine, batches + batches[:1])  # redelivered, even twice in one batch
    assert again.merged == 0 and again.duplicates == 4 and again.rejected == []
    now = BASE_WINDOW + 3600
    assert score(engine, "alice", "100", now) == pytest.approx(2.5)
    assert seen_count(engine) == 3


def test_replay_with_other_payload_is_rejected(engine: Engine) -> None:
    merge(engine, [make_batch("dev-a001", 7)])
    out = merge(engine, [make_batch("dev-a001", 7, tags=("105",))])
    assert [(r[1]) for r in out.rejected] == ["replayed"]


def test_flood_for_one_window_is_capped(engine: Engine) -> None:
    cfg = MergeConfig(half_life_s=DAY, max_batches_per_window=2)
    out = merge(engine, [make_batch("dev-f001", s, window=5) for s in range(1, 6)], cfg)
    assert out.merged == 2 and [r[1] for r in out.rejected] == ["flood"] * 3
    out = merge(
        engine, [make_batch("dev-f001", 6, window=5), make_batch("dev-f001", 7, window=6)], cfg
    )
    assert out.merged == 1 and [r[1] for r in out.rejected] == ["flood"]


def test_late_registration_folds_in_what_was_sent(engine: Engine) -> None:
    out = merge(engine, [make_batch("dev-b001", 1, w=0.75)])
    assert out.merged == 1 and out.parked == 1
    now = BASE_WINDOW + 7200
    assert score(engine, "bob", "100", now) == 0.0
    result = p.register_device(engine, "dev-b001", "bob", CFG)
    assert result["folded"] == 1
    assert score(engine, "bob", "100", now) == pytest.approx(0.75)
    with pytest.raises(p.RegistryError):
        p.register_device(engine, "dev-b001", "carol", CFG)


def test_deletion_erases_and_old_seqs_never_come_back(engine: Engine) -> None:
    p.register_device(engine, "dev-c001", "carol", CFG)
    p.register_device(engine, "dev-c002", "carol", CFG)
    p.register_device(engine, "dev-d001", "dave", CFG)
    msgs = [make_batch("dev-c001", 1), make_batch("dev-c002", 1), make_batch("dev-d001", 1)]
    merge(engine, msgs + [DeletionRequest("dev-c001", 2, BASE_WINDOW)])
    now = BASE_WINDOW + 10**6
    assert p.read_profile(engine, "carol", CFG, now=now)["interests"] == []
    assert score(engine, "dave", "100", now) > 0
    with engine.connect() as conn:
        devs = set(conn.execute(select(seen.c.device_id)).scalars())
        assert devs == {"dev-d001"}
        assert conn.execute(select(func.count()).select_from(contributions)).scalar() == 1
        assert dict(conn.execute(select(floors.c.device_id, floors.c.seq)).all()) == {
            "dev-c001": 2,
            "dev-c002": 1,
        }
    out = merge(engine, msgs[:2])  # replays of erased windows
    assert [r[1] for r in out.rejected] == ["erased_seq", "erased_seq"]
    out = merge(engine, [make_batch("dev-c001", 3, tags=("110",))])
    assert out.merged == 1
    assert [i["tag"] for i in p.read_profile(engine, "carol", CFG, now=now)["interests"]] == ["110"]


def test_http_style_delete_and_explain(engine: Engine) -> None:
    p.register_device(engine, "dev-e001", "erin", CFG)
    merge(engine, [make_batch("dev-e001", 1, tags=("100", "101")), make_batch("dev-e001", 2)])
    ex = p.explain(engine, "erin", CFG, now=BASE_WINDOW + 4 * 3600)
    top = ex["interests"][0]
    assert top["tag"] == "100" and [c["seq"] for c in top["contributions"]] == [1, 2]
    assert sum(c["worth_now"] for c in top["contributions"]) == pytest.approx(
        top["score"], rel=1e-4
    )
    erased = p.delete_profile(engine, "erin")
    assert erased == {"contributions": 3, "seen": 2, "profile_rows": 2}
    assert p.explain(engine, "erin", CFG)["interests"] == []


def test_migrations_are_recorded_once(db_url: str) -> None:
    e1 = open_engine(db_url)
    e2 = open_engine(db_url)  # a second instance starting on the same database
    assert migrate(e2) == 1
    e1.dispose(), e2.dispose()


@pytest.mark.postgres
def test_two_instances_race_on_postgres(pg_url: str) -> None:
    """Two engines merge overlapping batches at once: every key counts once, no update lost."""
    engines = [open_engine(pg_url), open_engine(pg_url)]
    cfg = MergeConfig(half_life_s=10 * 365 * DAY, cap=10**9)
    p.register_device(engines[0], "dev-r001", "rita", cfg)
    p.register_device(engines[0], "dev-r002", "rita", cfg)
    msgs = [
        make_batch(f"dev-r00{1 + s % 2}", s, tags=("100", "101"), w=0.25) for s in range(1, 201)
    ]
    errors: list[BaseException] = []

    def run(e: Engine, order: list[SignalBatch]) -> None:
        try:
            for i in range(0, len(order), 20):
                with e.begin() as conn:
                    merge_items(
                        conn, [item(m) for m in order[i : i + 20]], cfg, BASE_WINDOW + 10**6
                    )
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [
        threading.Thread(target=run, args=(engines[0], msgs)),
        threading.Thread(target=run, args=(engines[1], msgs[::-1])),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert seen_count(engines[0]) == 200
    now = BASE_WINDOW + 3600 * 202
    # with a ten-year half-life the decay over 200 hours is tiny; compute it exactly
    expected = sum(
        0.25 * 2 ** (-(now - (BASE_WINDOW + 3600 * (s + 1))) / cfg.half_life_s)
        for s in range(1, 201)
    )
    assert score(engines[1], "rita", "100", now, cfg) == pytest.approx(expected, rel=1e-6)
    for e in engines:
        e.dispose()
