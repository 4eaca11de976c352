"""The consumer: a shared MQTT subscription feeding batched, acknowledged-after-commit merges.

paho's network thread only queues what arrives (``manual_ack=True``: nothing is PUBACKed on
receipt). A dispatcher thread sends the raw messages in batches of up to ``batch_size`` to the
merge worker process (:mod:`earmark.gateway.worker`: paho and the merge then use both cores
instead of sharing the GIL), which validates, merges and writes dead letters in one DB
transaction and commits; a collector thread takes its answer and only then PUBACKs each
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
import multiprocessing
import os
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection as Pipe
from multiprocessing.process import BaseProcess
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from sqlalchemy import Engine

from earmark.endpoint import BrokerConfig
from earmark.gateway.merge import MergeConfig
from earmark.gateway.metrics import Metrics
from earmark.gateway.validate import Checks
from earmark.gateway.worker import BatchResult, Raw, serve

log = logging.getLogger(__name__)

SHARE_GROUP = "earmark-gateway"
TOPICS = (
    f"$share/{SHARE_GROUP}/earmark/v1/+/signals",
    f"$share/{SHARE_GROUP}/earmark/v1/+/deletion",
)
SESSION_EXPIRY_S = 7 * 24 * 3600


MAX_BATCHES_IN_FLIGHT = 2  # one being merged, one waiting: the worker never idles
# per message while in the gateway: topic, payload, packet id, qos, connection, receipt time
Received = tuple[str, bytes, int, int, int, float]
Meta = tuple[int, int, int, float]  # packet id, qos, connection generation, receipt time


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
        self._inbox: deque[Received] = deque()  # appends/pops are atomic: no lock per message
        self._wake = threading.Event()
        self._generation = 0
        self._ack_lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        # batches sent to the worker and not yet answered, oldest first (it answers in order)
        self._inflight: deque[tuple[list[Raw], list[Meta]]] = deque()
        self._slots = threading.Semaphore(MAX_BATCHES_IN_FLIGHT)
        self._pipe_lock = threading.Lock()  # the pipes and the worker, swapped on a respawn
        self._proc: BaseProcess | None = None
        self._restarts = 0  # consecutive worker deaths without an answer in between
        self._to_worker: Pipe | None = None
        self._from_worker: Pipe | None = None
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self._client = self._make_client()

    def _make_client(self) -> mqtt.Client:
        client = self.cfg.broker.new_client(self.cfg.client_id, manual_ack=True)
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
        self._spawn_worker()  # fork before our own threads start
        for target, name in ((self._dispatch, "dispatch"), (self._collect, "collect")):
            t = threading.Thread(target=target, name=f"earmark-gateway-{name}", daemon=True)
            t.start()
            self._threads.append(t)
        self._client.connect_async(
            b.host, b.port, keepalive=b.keepalive, clean_start=False, properties=props
        )
        self._client.loop_start()
        return self

    def stop(self, drain_timeout: float = 5.0) -> None:
        """Stop taking messages, commit what is queued, disconnect."""
        deadline = time.monotonic() + drain_timeout
        while (self._inbox or self._inflight) and time.monotonic() < deadline:
            time.sleep(0.05)
        self._stop.set()
        self._wake.set()
        with self._pipe_lock:
            try:
                if self._to_worker is not None:
                    self._to_worker.send(None)
            except OSError:
                pass
            proc = self._proc
        if proc is not None:
            proc.join(max(0.5, deadline - time.monotonic()))
            if proc.is_alive():  # stuck retrying a dead DB: nothing it holds was acked
                proc.terminate()
                proc.join(2)
        for t in self._threads:
            t.join(2)
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
        now = time.time()
        if self.first_received_at is None:
            self.first_received_at = now
        self._inbox.append((msg.topic, bytes(msg.payload), msg.mid, msg.qos, self._generation, now))
        if not self._wake.is_set():
            self._wake.set()

    # --- the merge worker process ---------------------------------------------------------

    def _spawn_worker(self) -> None:
        """Fork the worker (caller holds ``_pipe_lock`` or no other thread runs yet)."""
        ctx = multiprocessing.get_context("fork")
        worker_in, to_worker = ctx.Pipe(duplex=False)
        from_worker, worker_out = ctx.Pipe(duplex=False)
        proc = ctx.Process(
            target=serve,
            args=(self.engine, self.checks, self.cfg.merge, worker_in, worker_out),
            kwargs={"close": [to_worker, from_worker]},
            name=f"earmark-gateway-merge-{os.getpid()}",
            daemon=True,
        )
        proc.start()
        worker_in.close()
        worker_out.close()
        self._proc, self._to_worker, self._from_worker = proc, to_worker, from_worker

    def _respawn(self) -> None:
        """The worker died: start another and resend what it had not answered (dedup-safe)."""
        # a batch that crashes every worker must not become a busy loop of forks
        if self._stop.wait(min(5.0, 0.1 * 2**self._restarts)):
            return
        self._restarts += 1
        with self._pipe_lock:
            if self._proc is not None:
                self._proc.join(1)
            log.error(
                "merge worker exited (code %s), restarting it",
                getattr(self._proc, "exitcode", None),
            )
            self.metrics.inc("earmark_gateway_worker_restarts_total")
            self._spawn_worker()
            assert self._to_worker is not None
            for raw, _meta in self._inflight:
                self._to_worker.send(raw)

    def _dispatch(self) -> None:
        """Hand batches of raw messages to the worker; bigger batches while it is busy."""
        while not self._stop.is_set():
            if not self._inbox:
                self.metrics.set("earmark_gateway_queue_depth", 0)
                self._wake.wait(0.2)
                self._wake.clear()
                continue
            if not self._slots.acquire(timeout=0.2):
                continue
            n = min(len(self._inbox), self.cfg.batch_size)
            taken = [self._inbox.popleft() for _ in range(n)]
            raw = [(r[0], r[1]) for r in taken]
            meta = [(r[2], r[3], r[4], r[5]) for r in taken]
            with self._pipe_lock:
                self._inflight.append((raw, meta))
                try:
                    assert self._to_worker is not None
                    self._to_worker.send(raw)
                except OSError:  # the worker died: the collector respawns it and resends
                    pass
            self.metrics.inc("earmark_gateway_messages_in_total", n)
            self.metrics.set("earmark_gateway_queue_depth", len(self._inbox))

    def _collect(self) -> None:
        """Take the worker's answers in order; ack a batch only once it is committed."""
        while True:
            assert self._from_worker is not None
            try:
                res: BatchResult = self._from_worker.recv()
            except (EOFError, OSError):
                if self._stop.is_set():
                    return
                self._respawn()
                continue
            self._restarts = 0
            with self._pipe_lock:
                _raw, meta = self._inflight.popleft()
            self._slots.release()
            self._ack(meta)
            self._count(res, meta)
            if self.on_commit is not None:
                self.on_commit(res.merged_keys, res.committed_at)

    def _count(self, res: BatchResult, meta: list[Meta]) -> None:
        m = self.metrics
        m.inc("earmark_gateway_batches_total")
        m.inc("earmark_gateway_merged_total", res.merged)
        m.inc("earmark_gateway_parked_total", res.parked)
        m.inc("earmark_gateway_deletions_total", res.deletions)
        m.inc("earmark_gateway_duplicates_total", res.duplicates)
        if res.db_errors:
            m.inc("earmark_gateway_db_errors_total", res.db_errors)
        for reason, topic in res.rejected:
            m.reject(reason)
            log.info("rejected a message on %s: %s", topic, reason)
        m.set("earmark_gateway_commit_lag_seconds", res.committed_at - min(x[3] for x in meta))
        if res.newest_window_end is not None:
            m.set(
                "earmark_gateway_window_lag_seconds",
                max(0.0, res.committed_at - res.newest_window_end),
            )

    def _ack(self, meta: list[Meta]) -> None:
        with self._ack_lock:
            for mid, qos, generation, _at in meta:
                if generation == self._generation and qos > 0:
                    self._client.ack(mid, qos)
