"""Fixtures for the transport tests: the production broker config, a gateway-side collector.

The collector stands in for the gateway (owned by another part) with the gateway's own
credentials and a persistent shared subscription, exactly as the ACL allows it; it records
every payload so tests can check totals exactly.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from earmark.endpoint import BrokerConfig
from earmark.wire import Message, SignalBatch, Tag
from tests.support.broker import GATEWAY_USER, Broker, deploy_broker

DEVICES = {"dev-0001": "pw-one", "dev-0002": "pw-two", "dev-0003": "pw-three"}
GATEWAY_PASSWORD = "gw-secret"


def batch(device_id: str = "dev-0001", hour: int = 500_000, tag: str = "483") -> SignalBatch:
    """A valid batch (the outbox assigns the real seq)."""
    return SignalBatch(
        device_id=device_id,
        seq=1,
        taxonomy="iab-content-3.1",
        model="test-model",
        window_start=hour * 3600,
        window_s=3600,
        region="US",
        tags=(Tag(tag, 0.5),),
    )


class ManualClock:
    """An earmark.clock.Clock that moves only when the test says so."""

    def __init__(self, t: float = 1_800_000_000.0) -> None:
        self.t = t

    def now(self) -> float:
        return self.t

    def monotonic(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.t += seconds


@dataclass
class RecordingLedger:
    """Implements earmark.device.outbox.OutboxLedger by recording calls."""

    sent: list[int] = field(default_factory=list)
    dropped: list[tuple[int, str]] = field(default_factory=list)

    def record_sent(self, message: Message) -> None:
        self.sent.append(message.seq)

    def record_dropped(self, message: Message, reason: str) -> None:
        self.dropped.append((message.seq, reason))


class Collector:
    """A gateway-credentialed subscriber with a persistent session; records (topic, payload)."""

    def __init__(self, broker: Broker, topics: tuple[str, ...], **tls: str) -> None:
        self.messages: list[tuple[str, bytes, bool]] = []
        self._lock = threading.Lock()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id="collector-gw", protocol=mqtt.MQTTv5
        )
        self.client.username_pw_set(GATEWAY_USER, GATEWAY_PASSWORD)
        if tls:
            self.client.tls_set(**tls)
        self.client.reconnect_delay_set(0.1, 0.5)
        self.topics = topics
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        self.client.connect(broker.host, broker.port, clean_start=False, properties=props)
        self.subscribed = threading.Event()
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        self.client.loop_start()
        assert self.subscribed.wait(10), "collector could not subscribe"

    def _on_connect(self, client, userdata, flags, rc, props):  # type: ignore[no-untyped-def]
        client.subscribe([(t, 1) for t in self.topics])

    def _on_message(self, client, userdata, msg):  # type: ignore[no-untyped-def]
        with self._lock:
            self.messages.append((msg.topic, bytes(msg.payload), bool(msg.retain)))

    def seqs(self, kind: str = "signals") -> list[int]:
        with self._lock:
            return [json.loads(p)["seq"] for t, p, _ in self.messages if t.endswith(kind)]

    def wait_for(self, n_distinct: int, timeout: float = 30.0, kind: str = "signals") -> list[int]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            seqs = self.seqs(kind)
            if len(set(seqs)) >= n_distinct:
                return seqs
            time.sleep(0.05)
        return self.seqs(kind)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def secure_broker(tmp_path: Path) -> Iterator[Broker]:
    """Mosquitto started from deploy/mosquitto with test credentials and the real ACL."""
    b = deploy_broker(tmp_path / "broker", {**DEVICES, GATEWAY_USER: GATEWAY_PASSWORD})
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture
def collector(secure_broker: Broker) -> Iterator[Collector]:
    c = Collector(
        secure_broker,
        ("$share/earmark-gateway/earmark/v1/+/signals", "earmark/v1/+/deletion"),
    )
    try:
        yield c
    finally:
        c.close()


def device_config(broker: Broker, device_id: str = "dev-0001", **kw: object) -> BrokerConfig:
    return BrokerConfig.from_url(broker.url, username=device_id, password=DEVICES[device_id], **kw)
