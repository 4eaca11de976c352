"""The publisher against a real Mosquitto started from deploy/mosquitto (credentials + ACL)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from earmark.device.outbox import Outbox
from earmark.device.publisher import Publisher, status_payload
from earmark.endpoint import BrokerConfig, BrokerUrlError
from earmark.firmware_sim.proxy import LinkProxy
from earmark.wire import DeletionRequest
from tests.support.broker import GATEWAY_USER, Broker, deploy_broker, make_test_ca
from tests.transport.conftest import (
    DEVICES,
    GATEWAY_PASSWORD,
    Collector,
    RecordingLedger,
    batch,
    device_config,
)

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def start(box: Outbox, broker: Broker, device_id: str = "dev-0001", **kw: object) -> Publisher:
    return Publisher(
        box, device_id, device_config(broker, device_id), backoff=(0.1, 0.5), **kw
    ).start()  # type: ignore[arg-type]


def spawn_device(state: Path, broker: Broker, device_id: str, put: int) -> subprocess.Popen[str]:
    """tests/transport/device_proc.py in its own process, so a test can cut its power."""
    return subprocess.Popen(
        [sys.executable, "-m", "tests.transport.device_proc", str(state), broker.url,
         device_id, DEVICES[device_id], str(put)],
        cwd=REPO, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip


def test_drains_in_order_and_acks_each_exactly_once(
    tmp_path: Path, secure_broker: Broker, collector: Collector
) -> None:
    ledger = RecordingLedger()
    box = Outbox(tmp_path, ledger=ledger)
    pub = start(box, secure_broker)
    for _ in range(300):
        box.put(batch())
        pub.notify()
    box.put(DeletionRequest("dev-0001", 0, requested_window=3600))
    assert pub.wait_drained(30)
    pub.stop()
    assert collector.wait_for(300) == list(range(1, 301))
    assert collector.wait_for(1, kind="deletion") == [301]
    assert ledger.sent == list(range(1, 302))
    assert box.count() == 0


def test_broker_restart_mid_stream_loses_nothing(
    tmp_path: Path, secure_broker: Broker, collector: Collector
) -> None:
    ledger = RecordingLedger()
    box = Outbox(tmp_path, ledger=ledger)
    for _ in range(600):
        box.put(batch())
    pub = start(box, secure_broker, max_inflight=4)
    while len(ledger.sent) < 100:
        time.sleep(0.005)
    secure_broker.restart()  # SIGTERM: Mosquitto saves its queue; same port, same files
    assert pub.wait_drained(60), pub.stats
    seqs = collector.wait_for(600, timeout=60)
    pub.stop()
    assert set(seqs) == set(range(1, 601))  # nothing lost (QoS 1 may repeat; the seq dedups)
    assert sorted(ledger.sent) == list(range(1, 601))  # each counted sent exactly once
    assert pub.stats.connects >= 2


def test_long_offline_backlog_drains_in_order_when_the_link_returns(
    tmp_path: Path, secure_broker: Broker, collector: Collector
) -> None:
    box = Outbox(tmp_path, ledger=RecordingLedger())
    pub = start(box, secure_broker)
    assert _wait(lambda: pub.connected)
    pub.set_link(False)  # the hardware says: no network
    assert _wait(lambda: not pub.connected)
    for _ in range(2000):
        box.put(batch())
        pub.notify()
    time.sleep(0.3)
    assert collector.seqs() == [] and box.count() == 2000
    pub.set_link(True)
    assert pub.wait_drained(60)
    pub.stop()
    assert collector.wait_for(2000) == list(range(1, 2001))  # in order, once each


def test_acl_refuses_publishing_to_another_devices_topic(
    tmp_path: Path, secure_broker: Broker, collector: Collector
) -> None:
    ledger = RecordingLedger()
    box = Outbox(tmp_path, ledger=ledger)
    for device in ("dev-0001", "dev-0002", "dev-0001", "dev-0002"):
        box.put(batch(device))
    # device dev-0002 (its own credentials) with forged batches for dev-0001's topic, pipelined
    # with its own: the broker answers each forged one with PUBACK 0x87 and keeps the connection
    pub = start(box, secure_broker, "dev-0002")
    assert pub.wait_drained(20), pub.stats
    pub.stop()
    assert ledger.dropped == [(s, "refused:not_authorized") for s in (1, 3)]  # counted
    assert ledger.sent == [2, 4]
    assert collector.wait_for(2) == [2, 4]
    # Mosquitto 2.0.11 with max_queued_messages 0 closed the connection after every denial,
    # often before its PUBACK got out (deploy/mosquitto/mosquitto.conf has the story)
    assert pub.stats.connects == 1 and pub.stats.connection_losses == 0


def through(proxy: LinkProxy, device_id: str) -> BrokerConfig:
    return BrokerConfig.from_url(proxy.url, username=device_id, password=DEVICES[device_id])


def forged_then_honest(box: Outbox, broker: Broker) -> LinkProxy:
    """dev-0002's outbox: a batch forged for dev-0001's topic, then three of its own; and a
    proxy playing a broker that refuses the forged one by closing the connection."""
    box.put(batch("dev-0001"))
    for _ in range(3):
        box.put(batch("dev-0002"))
    return LinkProxy((broker.host, broker.port), cut_publish_to="earmark/v1/dev-0001/")


def test_a_batch_the_broker_keeps_closing_the_connection_on_is_set_aside(
    tmp_path: Path, secure_broker: Broker, collector: Collector
) -> None:
    """A broker may refuse a publish by closing the connection (MQTT-3.3.5-2); here the proxy
    plays such a broker for the forged topic. The forged batch must not hold up the rest."""
    ledger = RecordingLedger()
    box = Outbox(tmp_path, ledger=ledger)
    strict = forged_then_honest(box, secure_broker)
    try:
        pub = Publisher(
            box, "dev-0002", through(strict, "dev-0002"), backoff=(0.05, 0.2), set_aside_after=3
        ).start()
        assert pub.wait_drained(30), pub.stats
        pub.stop()
    finally:
        strict.close()
    assert ledger.dropped == [(1, "refused:connection_closed")]  # counted, not silently lost
    assert ledger.sent == [2, 3, 4]
    assert collector.wait_for(3) == [2, 3, 4]
    # closed once among the others, then three times alone on a connection that worked
    assert strict.cuts == 4 and pub.stats.set_aside == 1 and pub.stats.connection_losses == 4


def test_a_suspect_that_leaves_the_outbox_meanwhile_ends_the_one_at_a_time_sending(
    tmp_path: Path, secure_broker: Broker, collector: Collector
) -> None:
    """While a suspect travels alone it may expire or be revoked; the batch sent alone in its
    place, once answered, must end the one-at-a-time sending."""
    box = Outbox(tmp_path, ledger=RecordingLedger())
    strict = forged_then_honest(box, secure_broker)
    try:
        pub = Publisher(
            box, "dev-0002", through(strict, "dev-0002"), backoff=(0.05, 0.2), set_aside_after=99
        ).start()
        assert _wait(lambda: strict.cuts >= 2)  # the second cut: seq 1 was sent alone
        assert pub.suspect == 1
        box.drop(1, "expired")
        assert pub.wait_drained(30), pub.stats
        assert pub.suspect is None
        pub.stop()
    finally:
        strict.close()
    assert collector.wait_for(3) == [2, 3, 4]


def test_a_flaky_link_sets_nothing_aside_and_keeps_the_order(
    tmp_path: Path, secure_broker: Broker, collector: Collector
) -> None:
    """Resets at random (each forwarded chunk resets with p=0.05): every reset makes the oldest
    batch in flight a suspect, sent alone next time; none may be mistaken for a refusal."""
    ledger = RecordingLedger()
    box = Outbox(tmp_path, ledger=ledger)
    for _ in range(300):
        box.put(batch("dev-0002"))
    lossy = LinkProxy((secure_broker.host, secure_broker.port), loss=0.05, seed=7)
    try:
        pub = Publisher(
            box, "dev-0002", through(lossy, "dev-0002"), backoff=(0.02, 0.1), max_inflight=8
        ).start()
        assert pub.wait_drained(90), pub.stats
        pub.stop()
    finally:
        lossy.close()
    assert lossy.resets >= 5, lossy.resets  # the link really was flaky
    assert ledger.dropped == [] and pub.stats.set_aside == 0
    assert sorted(set(ledger.sent)) == ledger.sent == list(range(1, 301))
    seqs = collector.wait_for(300)
    assert set(seqs) == set(range(1, 301))
    firsts = list(dict.fromkeys(seqs))  # QoS 1 may repeat; the first arrivals keep the order
    assert firsts == list(range(1, 301))


def test_a_device_cannot_read_anything(
    tmp_path: Path, secure_broker: Broker, collector: Collector
) -> None:
    """Mosquitto grants the SUBSCRIBE but the ACL withholds every message from a device."""
    seen: list[str] = []
    subscribed = threading.Event()
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="dev-0003", protocol=mqtt.MQTTv5)
    c.username_pw_set("dev-0003", DEVICES["dev-0003"])
    c.on_connect = lambda cl, *a: cl.subscribe([("earmark/v1/#", 1), ("#", 1)])
    c.on_subscribe = lambda *a: subscribed.set()
    c.on_message = lambda cl, u, m: seen.append(m.topic)
    c.connect(secure_broker.host, secure_broker.port)
    c.loop_start()
    try:
        assert subscribed.wait(10)
        box = Outbox(tmp_path)
        box.put(batch("dev-0001"))
        pub = start(box, secure_broker)
        assert pub.wait_drained(10)
        pub.stop()
        # the broker routes one message to all matching sessions in the same pass: once
        # the gateway has it, a device allowed to read would have it too
        assert collector.wait_for(1) == [1]
        assert _wait(lambda: c.is_connected())
    finally:
        c.disconnect()
        c.loop_stop()
    assert seen == []


def test_wrong_password_keeps_everything_in_the_outbox(
    tmp_path: Path, secure_broker: Broker
) -> None:
    box = Outbox(tmp_path)
    box.put(batch())
    cfg = BrokerConfig.from_url(secure_broker.url, username="dev-0001", password="wrong")
    pub = Publisher(box, "dev-0001", cfg, backoff=(0.1, 0.5)).start()
    assert _wait(lambda: pub.stats.last_error and "refused" in pub.stats.last_error)
    pub.stop()
    assert not pub.stats.connects and box.count() == 1


def _status_seen_by_a_fresh_subscriber(broker: Broker, device_id: str) -> tuple[bytes, bool]:
    got: list[tuple[bytes, bool]] = []
    c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    c.username_pw_set(GATEWAY_USER, GATEWAY_PASSWORD)
    c.on_connect = lambda cl, *a: cl.subscribe(f"earmark/v1/{device_id}/status", 1)
    c.on_message = lambda cl, u, m: got.append((bytes(m.payload), bool(m.retain)))
    c.connect(broker.host, broker.port)
    c.loop_start()
    try:
        assert _wait(lambda: got)
    finally:
        c.disconnect()
        c.loop_stop()
    return got[0]


def test_status_is_retained_and_the_will_says_offline_after_power_loss(
    tmp_path: Path, secure_broker: Broker
) -> None:
    proc = spawn_device(tmp_path, secure_broker, "dev-0002", 0)
    assert proc.stdout is not None
    try:
        assert proc.stdout.readline().strip() == "connected"
        assert _wait(
            lambda: (
                _status_seen_by_a_fresh_subscriber(secure_broker, "dev-0002")
                == (status_payload(True), True)
            )
        )
    finally:
        proc.kill()  # no DISCONNECT: the broker publishes the will
        proc.wait()
    assert _wait(
        lambda: (
            _status_seen_by_a_fresh_subscriber(secure_broker, "dev-0002")
            == (status_payload(False), True)
        )
    )
    assert json.loads(status_payload(False)) == {"v": 1, "type": "status", "online": False}


def test_power_loss_mid_publish_nothing_lost_nothing_counted_twice(
    tmp_path: Path, secure_broker: Broker, collector: Collector
) -> None:
    state = tmp_path / "state"
    proc = spawn_device(state, secure_broker, "dev-0001", 400)
    assert proc.stdout is not None
    sent_before: list[int] = []
    for line in proc.stdout:
        if line.startswith("sent "):
            sent_before.append(int(line.split()[1]))
            if len(sent_before) == 150:
                break
    proc.kill()
    proc.wait()
    # what the ledger recorded before the cut but this test had not read yet
    sent_before += [int(ln.split()[1]) for ln in proc.stdout if ln.startswith("sent ")]
    ledger = RecordingLedger()
    box = Outbox(state, ledger=ledger)  # the reboot
    pending = [e.seq for e in box.pending()]
    # acks commit in order: what is left is one contiguous tail, and it overlaps what the
    # ledger saw only by the last ack batch (recorded, then cut before the delete committed)
    assert pending == list(range(pending[0], 401))
    recorded_but_pending = set(sent_before) & set(pending)
    assert len(recorded_but_pending) <= 8  # at most one in-flight window
    pub = start(box, secure_broker)
    assert pub.wait_drained(30)
    pub.stop()
    assert set(collector.wait_for(400)) == set(range(1, 401))  # nothing lost
    # every message recorded as sent; a seq recorded twice is only one of those cut between
    # ledger and delete, which the ledger dedups by (device, seq)
    assert set(ledger.sent) | set(sent_before) == set(range(1, 401))
    assert set(ledger.sent) & set(sent_before) == recorded_but_pending
    assert len(ledger.sent) == len(set(ledger.sent))


def test_tls_with_a_test_ca(tmp_path: Path) -> None:
    tls = make_test_ca(tmp_path / "ca")
    broker = deploy_broker(
        tmp_path / "broker", {**DEVICES, GATEWAY_USER: GATEWAY_PASSWORD}, tls=tls
    )
    try:
        collector = Collector(broker, ("earmark/v1/+/signals",), ca_certs=str(tls.ca))
        box = Outbox(tmp_path / "state", ledger=RecordingLedger())
        for _ in range(5):
            box.put(batch())
        url = f"mqtts://{broker.host}:{broker.port}"
        cfg = BrokerConfig.from_url(url, username="dev-0001", password="pw-one", ca=str(tls.ca))
        pub = Publisher(box, "dev-0001", cfg, backoff=(0.1, 0.5)).start()
        assert pub.wait_drained(20), pub.stats
        pub.stop()
        assert collector.wait_for(5) == [1, 2, 3, 4, 5]
        collector.close()
        # a device that does not trust the server's CA sends nothing
        other = make_test_ca(tmp_path / "other-ca")
        box2 = Outbox(tmp_path / "state2")
        box2.put(batch())
        bad = BrokerConfig.from_url(url, username="dev-0001", password="pw-one", ca=str(other.ca))
        pub2 = Publisher(box2, "dev-0001", bad, backoff=(0.1, 0.5)).start()
        assert _wait(lambda: pub2.stats.last_error and "certificate" in pub2.stats.last_error)
        pub2.stop()
        assert box2.count() == 1 and not pub2.stats.connects
    finally:
        broker.stop()


@pytest.mark.parametrize(
    "url, message",
    [
        ("http://host:1883", "must look like mqtt://HOST:PORT"),
        ("mqtt://:1883", "must look like"),
        ("mqtt://host:notaport", "invalid port"),
    ],
)
def test_bad_broker_urls_are_clear_errors(url: str, message: str) -> None:
    with pytest.raises(BrokerUrlError, match=message):
        BrokerConfig.from_url(url)


def test_tls_options_need_mqtts() -> None:
    with pytest.raises(BrokerUrlError, match="need an mqtts://"):
        BrokerConfig.from_url("mqtt://h:1", ca="/x")
    cfg = BrokerConfig.from_url("mqtts://u:p%40ss@broker.example:8884")
    assert (cfg.host, cfg.port, cfg.tls, cfg.username, cfg.password) == (
        "broker.example", 8884, True, "u", "p@ss",
    )  # fmt: skip


def _wait(cond, timeout: float = 15.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return False


def test_no_subscriber_means_not_delivered_and_the_batch_stays(
    tmp_path: Path, secure_broker: Broker
) -> None:
    """Mosquitto PUBACKs 0x10 'No matching subscribers' and discards: the outbox keeps it."""
    box = Outbox(tmp_path, ledger=RecordingLedger())
    for _ in range(3):
        box.put(batch())
    pub = start(box, secure_broker)
    assert _wait(lambda: pub.stats.held >= 1)
    assert box.count() == 3  # nothing removed while nobody can receive it
    collector = Collector(secure_broker, ("$share/earmark-gateway/earmark/v1/+/signals",))
    try:
        assert pub.wait_drained(20)
        assert collector.wait_for(3) == [1, 2, 3]
    finally:
        pub.stop()
        collector.close()


def test_kill_is_a_power_cut_the_will_fires_and_the_outbox_keeps_the_rest(
    tmp_path: Path, secure_broker: Broker, collector: Collector
) -> None:
    box = Outbox(tmp_path, ledger=RecordingLedger())
    for _ in range(1000):
        box.put(batch())
    pub = start(box, secure_broker, max_inflight=2)
    assert _wait(lambda: box.count() < 1000)
    pub.kill()
    left = box.count()
    assert _wait(
        lambda: (
            _status_seen_by_a_fresh_subscriber(secure_broker, "dev-0001")
            == (status_payload(False), True)
        )
    )
    pub2 = start(Outbox(tmp_path, ledger=RecordingLedger()), secure_broker)  # the reboot
    assert pub2.wait_drained(20)
    pub2.stop()
    assert set(collector.wait_for(1000)) == set(range(1, 1001))
    assert left > 0


def test_broker_crash_keeps_what_the_last_autosave_holds(
    tmp_path: Path, secure_broker: Broker
) -> None:
    """SIGKILL, not a clean stop: deploy's autosave_interval bounds what a crash can lose.

    The gateway is offline with a persistent session, so acked batches wait in the broker.
    Once Mosquitto's periodic snapshot (every 10 s) has been written after the last PUBACK,
    a crash loses none of them.
    """
    gw = Collector(secure_broker, ("$share/earmark-gateway/earmark/v1/+/signals",))
    gw.client.disconnect()  # offline; its session (and queue) stays at the broker
    gw.client.loop_stop()
    box = Outbox(tmp_path, ledger=RecordingLedger())
    for _ in range(50):
        box.put(batch())
    pub = start(box, secure_broker)
    assert pub.wait_drained(20)
    pub.stop()
    acked_at = time.time()
    db = secure_broker.workdir / "mosquitto.db"
    assert _wait(lambda: db.exists() and db.stat().st_mtime > acked_at + 0.01, timeout=30)
    secure_broker.kill()  # SIGKILL: no save on exit
    secure_broker.start()
    gw = Collector(secure_broker, ("$share/earmark-gateway/earmark/v1/+/signals",))
    try:
        assert sorted(set(gw.wait_for(50))) == list(range(1, 51))
    finally:
        gw.close()
