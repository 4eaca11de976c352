"""Faults with `earmark gateway` as a real subprocess: SIGKILL and restart, a long backlog,
two instances on one shared subscription. Totals are checked exactly: every message counts
once, and the profile score equals the sum of every distinct contribution."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from sqlalchemy import Engine

from earmark.gateway import profiles as p
from earmark.gateway.merge import MergeConfig
from earmark.gateway.store import open_engine
from tests.gateway.conftest import (
    BASE_WINDOW,
    GatewayProc,
    Pub,
    in_thread,
    make_batch,
    seen_count,
    wait_for,
)
from tests.support.broker import Broker

HALF_LIFE_DAYS = 36500.0  # a century: decay stays visible but the exact sum is easy to state
CFG = MergeConfig(half_life_s=HALF_LIFE_DAYS * 86400, cap=10**9)
ARGS = ("--half-life-days", str(HALF_LIFE_DAYS), "--cap", "1e9")


def batches(n: int, devices: int = 2) -> list:  # type: ignore[type-arg]
    return [
        make_batch(f"dev-{d:04d}", s, tags=("100", "101"))
        for s in range(1, n + 1)
        for d in range(1, devices + 1)
    ]


def expected_score(n: int, devices: int, now: float) -> float:
    h = CFG.half_life_s
    return devices * sum(
        0.5 * 2 ** (-(now - (BASE_WINDOW + 3600 * (s + 1))) / h) for s in range(1, n + 1)
    )


def check_totals(engine: Engine, n: int, devices: int = 2) -> None:
    assert seen_count(engine) == n * devices
    now = BASE_WINDOW + 3600 * (n + 2)
    prof = p.read_profile(engine, "ursula", CFG, now=now)
    for interest in prof["interests"]:
        assert interest["score"] == pytest.approx(expected_score(n, devices, now), rel=1e-6)
    assert len(prof["interests"]) == 2


def setup_users(db_url: str) -> Engine:
    engine = open_engine(db_url)
    for d in (1, 2):
        p.register_device(engine, f"dev-{d:04d}", "ursula", CFG)
    return engine


def publish_in_background(url: str, msgs: list, client_id: str = "pub-bg"):  # type: ignore[no-untyped-def,type-arg]
    def run() -> None:
        pub = Pub(url, client_id)
        for i in range(0, len(msgs), 100):
            pub.send_batches(msgs[i : i + 100])
        pub.close()

    return in_thread(run)


def test_sigkill_and_restart(
    broker: Broker, db_url: str, taxonomy_file: Path, tmp_path: Path
) -> None:
    engine = setup_users(db_url)
    gw = GatewayProc(
        broker.url, db_url, taxonomy_file, "gw-kill", tmp_path / "gw.log", *ARGS
    ).start()
    try:
        msgs = batches(1000)
        half = len(msgs) // 2
        t = publish_in_background(broker.url, msgs[:half])
        wait_for(lambda: seen_count(engine) >= 300, what="some merged")
        gw.kill()  # mid-stream: received-but-uncommitted and committed-but-unacked both exist
        killed_at = seen_count(engine)
        t.join(120)
        # The second half arrives while the gateway is dead (the broker keeps its session), so
        # the kill is mid-stream however fast the gateway drained the first half.
        t = publish_in_background(broker.url, msgs[half:], client_id="pub-bg-2")
        t.join(120)
        gw.start()
        wait_for(lambda: seen_count(engine) == 2000, 120, "all merged after restart")
        assert killed_at <= half < 2000
        check_totals(engine, 1000)
    finally:
        gw.stop()
        engine.dispose()


def test_long_backlog(broker: Broker, sqlite_url: str, taxonomy_file: Path, tmp_path: Path) -> None:
    """The gateway is down while devices publish a long backlog; it drains all on return."""
    engine = setup_users(sqlite_url)
    gw = GatewayProc(
        broker.url, sqlite_url, taxonomy_file, "gw-backlog", tmp_path / "gw.log", *ARGS
    ).start()
    gw.stop()  # its persistent session stays subscribed at the broker
    try:
        publish_in_background(broker.url, batches(2500)).join(180)
        assert seen_count(engine) == 0
        gw.start()
        wait_for(lambda: seen_count(engine) == 5000, 180, "backlog drained")
        check_totals(engine, 2500)
    finally:
        gw.stop()
        engine.dispose()


@pytest.mark.postgres
def test_two_instances_share_the_load(
    broker: Broker, pg_url: str, taxonomy_file: Path, tmp_path: Path
) -> None:
    engine = setup_users(pg_url)
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    gws = [
        GatewayProc(broker.url, pg_url, taxonomy_file, f"gw-{x}", log, *ARGS).start()
        for x, log in zip("ab", logs, strict=True)
    ]
    try:
        msgs = batches(1200)
        t = publish_in_background(broker.url, msgs)
        wait_for(lambda: seen_count(engine) >= 800, what="some merged")
        gws[0].kill()  # one instance dies mid-stream; its unacked messages come back to it
        gws[0].start()
        t.join(120)
        # the devices resend a stretch (lost PUBACKs): the other instance may get these
        publish_in_background(broker.url, msgs[1000:1400], "pub-resend").join(60)
        wait_for(lambda: seen_count(engine) == 2400, 120, "all merged")
        time.sleep(0.5)
    finally:
        for g in gws:
            g.stop()
    check_totals(engine, 1200)
    merged = []
    for log in logs:  # each run prints its metrics as JSON when stopped
        last = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")][
            -1
        ]
        merged.append(last["earmark_gateway_merged_total"])
    assert all(m > 0 for m in merged), merged  # both instances took a share after the restart
    engine.dispose()
