"""The consumer: a shared MQTT subscription feeding batched, acknowledged-after-commit merges.

paho's network thread only queues what arrives (``manual_ack=True``: nothing is PUBACKed on
receipt). One worker thread drains the queue in batches of up to ``batch_size``, validates,
merges and writes dead letters in one DB transaction, commits, and only then PUBACKs each
message. A SIGKILL at any point therefore loses nothing the broker considers delivered: what
was not acknowledged is redelivered to the persistent session (or, for a shared
subscription, to another member), and the ``(device_id, seq)`` dedup makes the redelivery
count once.

PUBACKs name a packet id that is only meaningful on the connection it arrived on, so each
queued message carries the connection generation and a stale one is never acked on a new
connection (the broker redelivers it instead). Subscriptions are renewed on every connect:
Mosquitto 2.0 does not restore shared subscriptions from its persistence after a restart.
"""

from __future__ import annotations

import logging
import os
import queue
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError

from earmark.device.publisher import BrokerConfig
from earmark.gateway.merge import Item, MergeConfig, merge_items
from earmark.gateway.metrics import Metrics
from earmark.gateway.store import dead_letters
from earmark.gateway.validate import Checks, Rejection, check, dead_letter_row
from earmark.wire import SignalBatch

log = logging.getLogger(__name__)

SHARE_GROUP = "earmark-gateway"
TOPICS = (
    f"$share/{SHARE_GROUP}/earmark/v1/+/signals",
    f"$share/{SHARE_GROUP}/earmark/v1/+/deletion",
)
SESSION_EXPIRY_S = 7 * 24 * 3600


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes
    mid: int
    qos: int
    generation: int
    at: float  # time.time() on receipt


@dataclass
class GatewayConfig:
    broker: BrokerConfig
    client_id: str = field(
        default_factory=lambda: f"earmark-gateway-{socket.gethostname()}-{os.getpid()}"
    )
    batch_size: int = 500
    receive_maximum: int = 2000
    merge: MergeConfig = field(default_factory=MergeConfig)


CommitHook = Callable[[list[tuple[str, int]], float], None]


class Gateway:
    """Subscribe, validate, merge, ack. ``start()`` / ``stop()``; thread-safe metrics."""

    def __init__(
        self,
        cfg: GatewayConfig,
        engine: Engine,
        checks: Checks,
        on_commit: CommitHook | None = None,
    ) -> None:
        self.cfg = cfg
        self.engine = engine
        self.checks = checks
        self.metrics = Metrics()
        self.on_commit = on_commit
        self.first_received_at: float | None = None  # for benchmarks
        self._queue: queue.Queue[Received] = queue.Queue()
        self._generation = 0
        self._ack_lock = threading.Lock()
        self._stop = threading.Event()
        self._worker: threading.Thread | None = None
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self._client = self._make_client()

    def _make_client(self) -> mqtt.Client:
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.cfg.client_id,
            protocol=mqtt.MQTTv5,
            manual_ack=True,
        )
        b = self.cfg.broker
        if b.username is not None:
            client.username_pw_set(b.username, b.password)
        if b.tls:
            client.tls_set(
                ca_certs=b.ca, certfile=b.cert, keyfile=b.key, tls_version=ssl.PROTOCOL_TLS_CLIENT
            )
        client.reconnect_delay_set(1, 10)
        client.max_inflight_messages_set(100)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        return client

    # --- lifecycle ------------------------------------------------------------------------

    def start(self) -> Gateway:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = SESSION_EXPIRY_S
        props.ReceiveMaximum = self.cfg.receive_maximum
        b = self.cfg.broker
        self._worker = threading.Thread(
            target=self._work, name="earmark-gateway-merge", daemon=True
        )
        self._worker.start()
        self._client.connect_async(
            b.host, b.port, keepalive=b.keepalive, clean_start=False, properties=props
        )
        self._client.loop_start()
        return self

    def stop(self, drain_timeout: float = 5.0) -> None:
        """Stop taking messages, commit what is queued, disconnect."""
        deadline = time.monotonic() + drain_timeout
        while not self._queue.empty() and time.monotonic() < deadline:
            time.sleep(0.05)
        self._stop.set()
        if self._worker is not None:
            self._worker.join(drain_timeout)
        self._client.disconnect()
        self._client.loop_stop()

    def wait_subscribed(self, timeout: float = 10.0) -> bool:
        return self.subscribed.wait(timeout)

    # --- paho callbacks (network thread) --------------------------------------------------

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any = None) -> None:
        if rc.is_failure:
            log.warning("broker refused the gateway: %s", rc)
            return
        with self._ack_lock:
            self._generation += 1
        self.metrics.set("earmark_gateway_broker_connected", 1)
        self.connected.set()
        client.subscribe([(t, mqtt.SubscribeOptions(qos=1)) for t in TOPICS])
        log.info("connected to the broker, subscribing %s", ", ".join(TOPICS))

    def _on_subscribe(self, _c: Any, _u: Any, _mid: int, codes: list[Any], _p: Any) -> None:
        bad = [c for c in codes if c.is_failure]
        if bad:
            log.error("subscription refused: %s", bad)
        else:
            self.subscribed.set()

    def _on_disconnect(self, _c: Any, _u: Any, _f: Any, rc: Any, _p: Any = None) -> None:
        self.connected.clear()
        self.subscribed.clear()
        self.metrics.set("earmark_gateway_broker_connected", 0)
        log.info("disconnected from the broker: %s", rc)

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        self.metrics.inc("earmark_gateway_messages_in_total")
        if self.first_received_at is None:
            self.first_received_at = time.time()
        self._queue.put(
            Received(msg.topic, bytes(msg.payload), msg.mid, msg.qos, self._generation, time.time())
        )

    # --- worker ---------------------------------------------------------------------------

    def _work(self) -> None:
        while not self._stop.is_set():
            try:
                first = self._queue.get(timeout=0.2)
            except queue.Empty:
                self.metrics.set("earmark_gateway_queue_depth", 0)
                continue
            batch = [first]
            while len(batch) < self.cfg.batch_size:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            self._commit_with_retry(batch)
            self.metrics.set("earmark_gateway_queue_depth", self._queue.qsize())

    def _commit_with_retry(self, batch: list[Received]) -> None:
        delay = 0.1
        while True:
            try:
                self._commit(batch)
                return
            except DBAPIError as err:  # deadlock, serialisation, DB restart: retry, never ack
                self.metrics.inc("earmark_gateway_db_errors_total")
                log.warning(
                    "DB transaction failed, retrying in %.1fs: %s", delay, str(err.orig)[:200]
                )
                if self._stop.wait(delay):
                    return
                delay = min(delay * 2, 5.0)

    def _commit(self, batch: list[Received]) -> None:
        now = time.time()
        items: list[Item] = []
        source: dict[int, Received] = {}
        rejections: list[Rejection] = []
        for r in batch:
            result = check(r.topic, r.payload, self.checks, now)
            if isinstance(result, Rejection):
                rejections.append(result)
            else:
                items.append(result)
                source[id(result)] = r
        with self.engine.begin() as conn:
            out = merge_items(conn, items, self.cfg.merge, now)
            for item, reason, detail in out.rejected:
                r = source[id(item)]
                rejections.append(
                    Rejection(r.topic, r.payload, reason, detail, item.message.device_id)
                )
            if rejections:
                conn.execute(dead_letters.insert(), [dead_letter_row(x, now) for x in rejections])
        done = time.time()
        self._ack(batch)
        m = self.metrics
        m.inc("earmark_gateway_batches_total")
        m.inc("earmark_gateway_merged_total", out.merged)
        m.inc("earmark_gateway_parked_total", out.parked)
        m.inc("earmark_gateway_deletions_total", out.deletions)
        m.inc("earmark_gateway_duplicates_total", out.duplicates)
        for x in rejections:
            m.reject(x.reason)
            log.info("rejected a message on %s: %s", x.topic[:100], x.reason)
        m.set("earmark_gateway_commit_lag_seconds", done - min(r.at for r in batch))
        ends = [
            i.message.window_start + i.message.window_s
            for i in items
            if isinstance(i.message, SignalBatch)
        ]
        if ends:
            m.set("earmark_gateway_window_lag_seconds", max(0.0, done - max(ends)))
        if self.on_commit is not None:
            self.on_commit(out.merged_keys, done)

    def _ack(self, batch: list[Received]) -> None:
        with self._ack_lock:
            for r in batch:
                if r.generation == self._generation and r.qos > 0:
                    self._client.ack(r.mid, r.qos)
