"""The merge worker process: one transaction per batch, and a dead worker loses nothing."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable

import pytest
from sqlalchemy import Engine, bindparam, select

from earmark.endpoint import BrokerConfig
from earmark.gateway import profiles as p
from earmark.gateway.merge import MergeConfig
from earmark.gateway.service import Gateway, GatewayConfig
from earmark.gateway.store import contributions, insert_many, upsert
from earmark.gateway.validate import Checks
from earmark.gateway.worker import commit_batch
from tests.gateway.conftest import Pub, make_batch, seen_count, wait_for
from tests.support.broker import Broker

CFG = MergeConfig(half_life_s=30 * 86400.0, max_batches_per_window=3)


def test_commit_batch_merges_dedups_and_dead_letters(
    engine: Engine, tag_check: Callable[[str], str]
) -> None:
    p.register_device(engine, "dev-0001", "alice", CFG)
    good = [make_batch("dev-0001", s) for s in range(1, 11)]
    raw = [(b.topic, b.to_bytes()) for b in good] + [("earmark/v1/dev-0001/signals", b"{x")]
    res = commit_batch(engine, Checks(tag_check), CFG, raw)
    assert (res.merged, res.duplicates) == (10, 0)
    assert res.rejected == [("malformed_json", "earmark/v1/dev-0001/signals")]
    assert sorted(res.merged_keys) == [("dev-0001", s) for s in range(1, 11)]
    assert res.newest_window_end == max(b.window_start + b.window_s for b in good)
    again = commit_batch(engine, Checks(tag_check), CFG, raw[:10])  # a redelivery
    assert (again.merged, again.duplicates, again.rejected) == (0, 10, [])
    assert seen_count(engine) == 10


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_killed_worker_is_restarted_and_nothing_is_lost(
    broker: Broker, engine: Engine, tag_check: Callable[[str], str]
) -> None:
    p.register_device(engine, "dev-0001", "alice", CFG)
    cfg = GatewayConfig(
        BrokerConfig.from_url(broker.url), client_id="gw-w", batch_size=20, merge=CFG
    )
    g = Gateway(cfg, engine, Checks(tag_check)).start()
    pub = Pub(broker.url)
    try:
        assert g.wait_subscribed()
        batches = [make_batch("dev-0001", s) for s in range(1, 401)]
        pub.send_batches(batches[:200])
        wait_for(lambda: g.metrics.get("earmark_gateway_merged_total") > 0, what="first merge")
        assert g._proc is not None and g._proc.pid is not None
        os.kill(g._proc.pid, signal.SIGKILL)
        pub.send_batches(batches[200:])
        wait_for(lambda: seen_count(engine) == 400, what="all 400 merged")
        wait_for(
            lambda: g.metrics.get("earmark_gateway_worker_restarts_total") == 1, what="restart"
        )
        # a commit is visible to seen_count a moment before the collector counts its answer
        wait_for(
            lambda: (
                g.metrics.get("earmark_gateway_merged_total")
                + g.metrics.get("earmark_gateway_duplicates_total")
                >= 400
            ),
            10,
            "every merge counted",
        )
        wait_for(lambda: not g._inflight and not g._inbox, what="everything answered")
    finally:
        pub.close()
        g.stop()
    assert g._proc is not None and not g._proc.is_alive()


def test_insert_many_on_both_dialects(engine: Engine) -> None:
    """The driver-level executemany: right columns on SQLite and PostgreSQL, conflicts skipped."""
    rows = [
        {"device_id": "dev-0001", "seq": s, "tag": t, "w": 0.5, "window_start": 3600 * s,
         "window_s": 3600, "model": "m1"}
        for s in (1, 2) for t in ("100", "101")
    ]  # fmt: skip
    with engine.begin() as conn:
        stmt = upsert(conn, contributions).values({c: bindparam(c) for c in rows[0]})
        insert_many(conn, stmt.on_conflict_do_nothing(), "test-contributions", rows)
        insert_many(conn, stmt.on_conflict_do_nothing(), "test-contributions", rows[:1])
    with engine.connect() as conn:
        got = conn.execute(select(contributions).order_by(*contributions.primary_key)).all()
    assert [tuple(r) for r in got] == [tuple(r.values()) for r in rows]
