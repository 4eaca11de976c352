"""Consent state, revoke with the real outbox, and the ledger fed by a real publish."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from earmark.cli import main
from earmark.device.consent import ConsentStore
from earmark.device.outbox import Outbox
from earmark.device.privacy import PrivacyParts
from earmark.device.publisher import Publisher
from earmark.endpoint import BrokerConfig
from earmark.wire import DeletionRequest, SignalBatch, Tag, decode
from tests.support.broker import Broker

from .conftest import DEVICE, HOUR, NEW_YORK, T0

TRAVEL = "book a flight to paris next week"


def batch(window: int = T0 - T0 % HOUR) -> SignalBatch:
    return SignalBatch(DEVICE, 0, "t", "m", window, HOUR, "US", (Tag("653", 1.0),))


def test_no_consent_until_granted_and_it_persists(tmp_path: Path) -> None:
    store = ConsentStore(tmp_path)
    assert not store.granted() and store.state().note == "never granted"
    store.grant(T0, DEVICE)
    assert ConsentStore(tmp_path).granted()  # another process sees it
    assert [p.name for p in tmp_path.iterdir()] == ["consent.json"]  # no temp file left
    store.revoke(T0 + 1, outbox=None)
    assert not ConsentStore(tmp_path).granted()
    assert ConsentStore(tmp_path).state().device_id == DEVICE


@pytest.mark.parametrize("body", ["", "{", '{"granted": "yes"}', "[]", '{"x": 1}'])
def test_a_malformed_consent_file_reads_as_no_consent(tmp_path: Path, body: str) -> None:
    (tmp_path / "consent.json").write_text(body, encoding="utf-8")
    state = ConsentStore(tmp_path).state()
    assert not state.granted and "malformed" in state.note


def test_revoke_discards_the_queue_and_queues_a_deletion_request(
    parts: PrivacyParts, tmp_path: Path
) -> None:
    box = Outbox(tmp_path, ledger=parts.ledger)
    for h in range(3):
        box.put(batch(T0 - T0 % HOUR - h * HOUR))
    res = parts.consent.revoke(T0 + 30, box)
    assert res.discarded == 3
    pending = box.pending()
    assert [e.kind for e in pending] == ["deletion"] and pending[0].seq == res.deletion_seq
    msg = pending[0].message()
    assert isinstance(msg, DeletionRequest) and msg.device_id == DEVICE
    assert msg.requested_window % 3600 == 0
    assert [r[3] for r in parts.ledger.dropped()] == ["consent_revoked"] * 3
    box.close()


def test_consent_cli(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    state = str(tmp_path)
    assert main(["consent", "status", "--state", state, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["granted"] is False
    assert main(["consent", "grant", "--state", state, "--device-id", DEVICE]) == 0
    assert "granted" in capsys.readouterr().out
    assert main(["consent", "revoke", "--state", state, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["granted"] is False and out["deletion_seq"] == 1
    assert main(["consent", "grant", "--state", state, "--device-id", "bad id!"]) == 2
    assert "device id" in capsys.readouterr().err


class Subscriber:
    def __init__(self, broker: Broker) -> None:
        self.got: list[bytes] = []
        self.ready = threading.Event()
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.c.on_connect = lambda c, *_: c.subscribe("earmark/v1/#", qos=1)
        self.c.on_subscribe = lambda *_: self.ready.set()
        self.c.on_message = lambda _c, _u, m: (
            self.got.append(m.payload) if m.topic.endswith("/signals") else None
        )
        self.c.connect(broker.host, broker.port)
        self.c.loop_start()
        assert self.ready.wait(10)

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


@pytest.mark.slow
def test_what_leaves_is_recorded_on_puback_with_why_each_tag_was_inferred(
    parts: PrivacyParts, classifier, broker: Broker, tmp_path: Path, taxonomy,
    capsys: pytest.CaptureFixture,
) -> None:  # fmt: skip
    sub = Subscriber(broker)
    box = Outbox(tmp_path, ledger=parts.ledger)
    pub = Publisher(box, DEVICE, BrokerConfig.from_url(broker.url), ledger=parts.ledger).start()
    try:
        for text in (TRAVEL, "find a hotel near the cancer center", TRAVEL):
            d = parts.gate.decide(text, classifier.classify(text), NEW_YORK, T0)
            parts.batcher.add(d, T0)
        for b in parts.batcher.flush(T0 + HOUR):
            box.put(b)
        pub.notify()
        assert pub.wait_drained(20)
        deadline = time.monotonic() + 10
        while not sub.got and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        pub.stop()
        sub.close()
        box.close()
    sent = parts.ledger.sent()
    assert len(sent) == 1 and sent[0].message["tags"][0]["id"] == "653"
    assert [json.loads(p) for p in sub.got] == [sent[0].message]  # the ledger holds what left
    assert sent[0].why["653"] == ["Travel (2 utterances)"]
    (reason,) = parts.ledger.suppressions()  # the model or the rules, whichever fires first
    assert reason.startswith("sensitive:health:")
    wire = decode(sub.got[0], taxonomy.status)
    assert isinstance(wire, SignalBatch)
    assert main(["ledger", "--state", str(tmp_path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["sent"][0]["why"] == {"653": ["Travel (2 utterances)"]}
    assert main(["ledger", "--state", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "Travel" in text and "why: Travel (2 utterances)" in text and "cancer" not in text


def test_suppression_counts_reach_the_file_within_a_second_of_device_time(tmp_path: Path) -> None:
    from earmark.device.ledger import Ledger

    writer = Ledger(tmp_path)
    writer.record_suppression("no_consent", T0)  # first one is written at once
    for i in range(5):
        writer.record_suppression("no_consent", T0 + 0.1 * (i + 1))
    assert Ledger(tmp_path).suppressions() == {"no_consent": 1}  # another process, mid-second
    writer.record_suppression("region_blocked:FR", T0 + 1.5)
    assert Ledger(tmp_path).suppressions() == {"no_consent": 6, "region_blocked:FR": 1}
    writer.record_suppression("no_consent", T0 + 1.6)
    writer.close()  # close writes what is pending
    assert Ledger(tmp_path).suppressions() == {"no_consent": 7, "region_blocked:FR": 1}
