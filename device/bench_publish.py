"""``earmark bench publish``: what the outbox costs on top of a bare paho publisher.

Same broker, same payloads, same run, same in-flight window, one reader subscribed (so the
broker really has a reader for every message, as in production). Each round runs:

* **bare**: paho ``publish(qos=1)`` of N payloads, timed from the first publish to the last
  PUBACK: the ceiling for one Python client on this broker.
* **earmark**: ``Outbox.put`` of N batches (each its own durable SQLite transaction, since a
  batch must survive a power cut the moment it exists), then the Publisher draining them,
  timed from the first put to the outbox being empty; the put and drain phases are also
  reported alone.

Rates are medians over the rounds; the ratio is earmark's end-to-end rate over bare's.
"""

from __future__ import annotations

import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from earmark.device.outbox import Outbox
from earmark.device.publisher import Publisher
from earmark.endpoint import BrokerConfig
from earmark.errors import EarmarkError
from earmark.wire import SignalBatch, Tag

DEVICE_ID = "bench-device"


@dataclass(frozen=True)
class Round:
    bare_s: float
    put_s: float
    drain_s: float


@contextmanager
def local_broker() -> Iterator[BrokerConfig]:
    """A throwaway Mosquitto (the gateway's launcher: queues unlimited, loopback only)."""
    from earmark.gateway.broker import LocalBroker

    with LocalBroker() as broker:
        yield BrokerConfig.from_url(broker.url)


def sample_batch(i: int) -> SignalBatch:
    tags = (Tag("483", 0.5), Tag("596", 0.25), Tag("42", 1.0))
    return SignalBatch(
        DEVICE_ID, i + 1, "iab-content-3.1", "bench", 3600 * (490_000 + i), 3600, "US", tags
    )


class Reader:
    """One subscriber on every device's signals, so every publish has a reader."""

    def __init__(self, cfg: BrokerConfig) -> None:
        self.count = 0
        ready = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        if cfg.username:
            self.client.username_pw_set(cfg.username, cfg.password)
        self.client.on_connect = lambda c, *a: c.subscribe("earmark/v1/+/signals", 1)
        self.client.on_subscribe = lambda *a: ready.set()
        self.client.on_message = self._on_message
        self.client.connect(cfg.host, cfg.port)
        self.client.loop_start()
        if not ready.wait(10):
            raise EarmarkError("bench reader could not subscribe")

    def _on_message(self, *args: object) -> None:
        self.count += 1

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def bare_publish(cfg: BrokerConfig, payloads: list[tuple[str, bytes]], inflight: int) -> float:
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=f"{DEVICE_ID}-bare", protocol=mqtt.MQTTv5
    )
    if cfg.username:
        client.username_pw_set(cfg.username, cfg.password)
    client.max_inflight_messages_set(inflight)
    client.max_queued_messages_set(0)
    client.connect(cfg.host, cfg.port)
    client.loop_start()
    try:
        while not client.is_connected():
            time.sleep(0.005)
        t0 = time.perf_counter()
        infos = [client.publish(topic, payload, qos=1) for topic, payload in payloads]
        infos[-1].wait_for_publish(60)
        for info in infos:
            info.wait_for_publish(60)
        return time.perf_counter() - t0
    finally:
        client.disconnect()
        client.loop_stop()


def earmark_publish(cfg: BrokerConfig, batches: list[SignalBatch], inflight: int) -> Round:
    with tempfile.TemporaryDirectory(prefix="earmark-bench-outbox-") as tmp:
        box = Outbox(tmp, max_messages=len(batches) + 1)
        pub = Publisher(box, DEVICE_ID, cfg, max_inflight=inflight)
        t0 = time.perf_counter()
        for b in batches:
            box.put(b)
        t1 = time.perf_counter()
        pub.start()
        while not pub.connected:
            time.sleep(0.002)
        t2 = time.perf_counter()
        if not pub.wait_drained(120):
            raise EarmarkError("the publisher did not drain the outbox within 120 s")
        t3 = time.perf_counter()
        pub.stop()
        box.close()
    return Round(bare_s=0.0, put_s=t1 - t0, drain_s=t3 - t2)


def run_bench(cfg: BrokerConfig, n: int, rounds: int, inflight: int) -> list[Round]:
    from tqdm import tqdm

    batches = [sample_batch(i) for i in range(n)]
    payloads = [(b.topic, b.to_bytes()) for b in batches]
    reader = Reader(cfg)
    results = []
    try:
        for _ in tqdm(range(rounds), desc="bench publish", unit="round"):
            bare = bare_publish(cfg, payloads, inflight)
            ours = earmark_publish(cfg, batches, inflight)
            results.append(Round(bare, ours.put_s, ours.drain_s))
    finally:
        reader.close()
    return results


def report(results: list[Round], n: int) -> list[str]:
    med = statistics.median
    bare = med(n / r.bare_s for r in results)
    put = med(n / r.put_s for r in results)
    drain = med(n / r.drain_s for r in results)
    total = med(n / (r.put_s + r.drain_s) for r in results)
    return [
        f"messages per round: {n}, rounds: {len(results)} (medians below)",
        f"bare paho publish QoS 1:          {bare:9.0f} msg/s",
        f"earmark outbox.put (durable):     {put:9.0f} msg/s",
        f"earmark publisher drain:          {drain:9.0f} msg/s   ratio to bare {drain / bare:.2f}",
        f"earmark put + drain (end to end): {total:9.0f} msg/s   ratio to bare {total / bare:.2f}",
    ]
