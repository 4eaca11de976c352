"""End to end over a real Mosquitto: publish → broker → gateway → SQLite / PostgreSQL → HTTP."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func, select

from earmark.endpoint import BrokerConfig
from earmark.gateway import profiles as p
from earmark.gateway.http_api import ApiServer
from earmark.gateway.merge import MergeConfig
from earmark.gateway.service import Gateway, GatewayConfig
from earmark.gateway.store import dead_letters
from earmark.gateway.validate import Checks
from earmark.wire import DeletionRequest
from tests.gateway.conftest import BASE_WINDOW, SENSITIVE, Pub, make_batch, seen_count, wait_for
from tests.support.broker import Broker

CFG = MergeConfig(half_life_s=30 * 86400.0, max_batches_per_window=3)


@pytest.fixture
def gateway(broker: Broker, engine: Engine, tag_check: Callable[[str], str]) -> Iterator[Gateway]:
    cfg = GatewayConfig(
        BrokerConfig.from_url(broker.url), client_id="gw-test", batch_size=50, merge=CFG
    )
    g = Gateway(cfg, engine, Checks(tag_check)).start()
    assert g.wait_subscribed()
    yield g
    g.stop()


@pytest.fixture
def pub(broker: Broker) -> Iterator[Pub]:
    client = Pub(broker.url)
    yield client
    client.close()


def reasons(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        q = select(dead_letters.c.reason, func.count()).group_by(dead_letters.c.reason)
        return dict(conn.execute(q).all())  # type: ignore[arg-type]


def test_publish_to_profile(gateway: Gateway, engine: Engine, pub: Pub) -> None:
    p.register_device(engine, "dev-0001", "alice", CFG)
    p.register_device(engine, "dev-0002", "alice", CFG)
    batches = [make_batch(f"dev-000{1 + s % 2}", s, tags=("100", "101")) for s in range(1, 301)]
    pub.send_batches(batches)
    pub.send_batches(batches[:40])  # a device resending after a lost PUBACK
    wait_for(
        lambda: (
            gateway.metrics.get("earmark_gateway_merged_total") == 300
            and gateway.metrics.get("earmark_gateway_duplicates_total") == 40
        ),
        what="merge",
    )
    assert seen_count(engine) == 300
    prof = p.read_profile(engine, "alice", CFG, now=BASE_WINDOW + 301 * 3600)
    assert [i["tag"] for i in prof["interests"]] == ["100", "101"]
    assert prof["devices"] == ["dev-0001", "dev-0002"]
    assert reasons(engine) == {}


def test_bad_input_is_dead_lettered_and_service_keeps_running(
    gateway: Gateway, engine: Engine, pub: Pub
) -> None:
    good = make_batch("dev-0001", 1).to_dict()
    bad: list[tuple[str, bytes]] = [
        ("earmark/v1/dev-0001/signals", b"{not json"),
        ("earmark/v1/dev-0001/signals", json.dumps({**good, "v": 2}).encode()),
        ("earmark/v1/dev-0001/signals", json.dumps({**good, "device_id": "dev-0002"}).encode()),
        ("earmark/v1/dev-0001/signals", b"x" * 60_000),
        (
            "earmark/v1/dev-0001/signals",
            json.dumps({**good, "tags": [{"id": SENSITIVE, "w": 1.0}]}).encode(),
        ),
        ("earmark/v1/dev-0001/signals", json.dumps({**good, "region": "FR"}).encode()),
        ("earmark/v1/dev-0001/deletion", json.dumps(good).encode()),
        ("earmark/v1/dev-0001/signals", json.dumps({**good, "transcript": "hello"}).encode()),
    ]
    for topic, payload in bad:
        pub.send(topic, payload).wait_for_publish(10)
    # a flood: 20 batches for one window from one device, then a good one from another device
    pub.send_batches([make_batch("dev-0003", s, window=9) for s in range(1, 21)])
    pub.send_batches([make_batch("dev-0002", 5)])
    wait_for(lambda: gateway.metrics.get("earmark_gateway_merged_total") == 4, what="flood handled")
    expected = {
        "malformed_json": 1,
        "schema_version": 1,
        "forged_device_id": 1,
        "oversized": 1,
        "sensitive_tag": 1,
        "region_blocked": 1,
        "wrong_topic": 1,
        "unknown_field": 1,
        "flood": 17,
    }
    wait_for(lambda: reasons(engine) == expected, 10, "dead letters")
    assert gateway.metrics.snapshot()["rejected"] == expected
    with engine.connect() as conn:
        huge = conn.execute(select(dead_letters).where(dead_letters.c.reason == "oversized")).one()
    assert huge.payload_len == 60_000 and len(huge.payload_head) == 128
    assert seen_count(engine) == 4  # three from the flood window, one from dev-0002


def test_deletion_over_mqtt_and_http_api(gateway: Gateway, engine: Engine, pub: Pub) -> None:
    admin = p.issue_token(engine, None)
    api = ApiServer("127.0.0.1", 0, engine, CFG, gateway.metrics, gateway.connected).start()
    base = f"http://127.0.0.1:{api.port}"

    def call(method: str, path: str, token: str | None = None, body: Any = None) -> tuple[int, Any]:
        req = urllib.request.Request(
            base + path, method=method, data=None if body is None else json.dumps(body).encode()
        )
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                raw = r.read()
                return r.status, json.loads(raw) if r.headers["Content-Type"].startswith(
                    "application/json"
                ) else raw.decode()
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())

    try:
        assert call("PUT", "/v1/devices/dev-0009", body={"user_id": "zed"})[0] == 401
        assert call("PUT", "/v1/devices/dev-0009", admin, {"user_id": "zed"})[1]["created"] is True
        status, issued = call("POST", "/v1/users/zed/tokens", admin)
        assert status == 201
        zed = issued["token"]
        other = p.issue_token(engine, "yolanda")
        pub.send_batches([make_batch("dev-0009", s, tags=("104",)) for s in range(1, 6)])
        wait_for(lambda: gateway.metrics.get("earmark_gateway_merged_total") == 5, what="merge")
        assert call("GET", "/v1/profiles/zed")[0] == 401
        assert call("GET", "/v1/profiles/zed", "nonsense")[0] == 401
        assert call("GET", "/v1/profiles/zed", other)[0] == 403
        status, prof = call("GET", "/v1/profiles/zed", zed)
        assert status == 200 and [i["tag"] for i in prof["interests"]] == ["104"]
        status, ex = call("GET", "/v1/profiles/zed/explain", zed)
        assert [c["seq"] for c in ex["interests"][0]["contributions"]] == [1, 2, 3, 4, 5]
        assert (
            call("GET", "/v1/profiles/zed/export", admin)[1]["format"] == "earmark-profile-export/1"
        )
        status, health = call("GET", "/healthz")
        assert status == 200 and health == {"status": "ok", "db": "ok", "broker": "connected"}
        metrics = call("GET", "/metrics")[1]
        assert "earmark_gateway_merged_total 5" in metrics
        # the device asks for deletion over MQTT; then HTTP delete of an empty profile is a no-op
        pub.send_batches([DeletionRequest("dev-0009", 6, BASE_WINDOW)])  # type: ignore[list-item]
        wait_for(
            lambda: gateway.metrics.get("earmark_gateway_deletions_total") == 1, what="deletion"
        )
        assert call("GET", "/v1/profiles/zed", zed)[1]["interests"] == []
        pub.send_batches([make_batch("dev-0009", 7, tags=("105",))])
        wait_for(lambda: gateway.metrics.get("earmark_gateway_merged_total") == 6, what="merge")
        status, gone = call("DELETE", "/v1/profiles/zed", zed)
        assert status == 200 and gone["erased"] == {
            "contributions": 1,
            "seen": 1,
            "profile_rows": 1,
        }
        assert call("GET", "/v1/profiles/zed", zed)[1]["interests"] == []
    finally:
        api.stop()


def test_broker_restart_mid_stream(
    tmp_path: Path, engine: Engine, tag_check: Callable[[str], str]
) -> None:
    from tests.support.broker import OPEN_CONFIG

    broker = Broker(tmp_path / "b", OPEN_CONFIG).start()
    cfg = GatewayConfig(
        BrokerConfig.from_url(broker.url), client_id="gw-restart", batch_size=20, merge=CFG
    )
    g = Gateway(cfg, engine, Checks(tag_check)).start()
    try:
        assert g.wait_subscribed()
        pub = Pub(broker.url, "pub-restart")
        pub.send_batches([make_batch("dev-0001", s) for s in range(1, 201)])
        pub.close()
        # Stop the broker mid-stream (the gateway may hold unacked messages) and let the
        # gateway notice before starting it again: its network thread may still be reading
        # the first 200 when the broker goes, and until it reaches the EOF `subscribed` still
        # describes the old connection. The restarted Mosquitto has no shared subscription
        # until the gateway subscribes again, and a publish before that is PUBACKed with
        # 0x10 "No matching subscribers" and dropped (the device outbox resends those, this
        # bare publisher does not).
        broker.stop()
        wait_for(lambda: not g.subscribed.is_set(), 30, "gateway saw the broker go")
        broker.start()
        wait_for(g.subscribed.is_set, 30, "gateway resubscribed")
        pub = Pub(broker.url, "pub-restart")
        pub.send_batches([make_batch("dev-0001", s) for s in range(150, 401)])  # overlap: resends
        pub.close()
        wait_for(lambda: seen_count(engine) == 400, what="all 400 merged")
        wait_for(lambda: g.metrics.get("earmark_gateway_queue_depth") == 0, 10, "drained")
        # the commit is visible to seen_count before the collector thread has the worker's
        # answer and counts it (queue_depth covers the inbox, not the batch in flight)
        wait_for(lambda: g.metrics.get("earmark_gateway_merged_total") >= 400, 10, "merges counted")
        assert g.metrics.get("earmark_gateway_merged_total") == 400
        assert reasons(engine) == {}
    finally:
        g.stop()
        broker.stop()
