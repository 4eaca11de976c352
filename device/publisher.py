"""Drain the outbox to the broker: MQTT v5, QoS 1, in order, removed only on PUBACK.

One thread owns the paho client (``CallbackAPIVersion.VERSION2``) and runs its network loop
itself, so connecting, publishing and acknowledging never race each other and the reconnect
policy is ours: exponential backoff with jitter, capped, and no attempt while the hardware
says there is no link. The outbox is the single source of truth: after every (re)connect the
publisher drops paho's in-memory copies and resends whatever the outbox still holds, oldest
first, so ordering after an outage does not depend on client memory (which a power cut wipes
anyway). A lost PUBACK therefore means a resend with the same sequence number, which the
gateway deduplicates.

Session: ``clean_start=False`` with a session expiry, so the broker keeps the device's
session (and QoS 1 state) across short drops. Presence: a retained ``online`` status on
connect, and a retained ``offline`` will that the broker publishes if the device vanishes.

A broker may refuse a PUBLISH by closing the connection instead of answering with a PUBACK
reason code (MQTT-3.3.5-2; MQTT 3.1.1 brokers must, several v5 brokers do, and Mosquitto 2.0.11
does after a denied publish when ``max_queued_messages`` is 0). Resending such a message forever
would hold up everything queued behind it. So when a connection is lost while messages are in
flight, the oldest of them becomes a *suspect*: on the next connections it is sent alone, and
only after the broker has answered the ``online`` status there (so the connection itself
works). If the broker closes ``set_aside_after`` such connections in a row with the suspect
alone in flight, the suspect is set aside: dropped from the outbox and counted in the ledger
as ``refused:connection_closed``, like any other refusal. A flaky link would have to cut
exactly those connections, each after the status round trip and before the suspect's PUBACK,
that many times in a row; any answer to the suspect (ack, refusal, hold), or to the batch sent
alone in its place once it has left the outbox, clears it.
"""

from __future__ import annotations

import json
import logging
import random
import ssl
import threading
import time
from dataclasses import dataclass

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from earmark.device.outbox import Outbox, OutboxLedger
from earmark.endpoint import BrokerConfig
from earmark.wire import topic_for

log = logging.getLogger(__name__)

TRANSIENT_REFUSALS = {0x97}  # Quota exceeded: try again later; any other failure is final
# PUBACK "No matching subscribers": the broker took the message but no session will ever
# receive it (the gateway has not (re)subscribed yet; Mosquitto 2.0 does not restore shared
# subscriptions after a restart). Removing it from the outbox would lose it silently, so it
# stays and is resent after a pause: custody passes only to a broker that has a reader.
NO_SUBSCRIBERS = 0x10


def status_payload(online: bool) -> bytes:
    """The retained presence message: nothing but the state."""
    return json.dumps({"v": 1, "type": "status", "online": online}, separators=(",", ":")).encode()


@dataclass
class PublisherStats:
    sent: int = 0  # acknowledged by the broker and removed from the outbox
    refused: int = 0  # refused for good by the broker (counted in the ledger)
    set_aside: int = 0  # of those, refused by closing the connection on them, again and again
    held: int = 0  # PUBACKs saying "not delivered yet" (no subscriber, quota): resent later
    connects: int = 0
    connection_losses: int = 0
    last_error: str | None = None
    cpu_s: float = 0.0  # CPU seconds of the publisher's thread (network + outbox + ledger)


class Publisher:
    """Publishes what the outbox holds, in sequence order, and acks it on PUBACK."""

    def __init__(
        self,
        outbox: Outbox,
        device_id: str,
        broker: BrokerConfig,
        *,
        ledger: OutboxLedger | None = None,
        max_inflight: int = 64,
        backoff: tuple[float, float] = (0.5, 30.0),
        set_aside_after: int = 5,
    ) -> None:
        self.outbox = outbox
        self.device_id = device_id
        self.broker = broker
        self.ledger = ledger if ledger is not None else outbox.ledger
        self.max_inflight = max_inflight
        self.backoff_min, self.backoff_max = backoff
        self.set_aside_after = set_aside_after
        self.stats = PublisherStats()
        self.status_topic = topic_for(device_id, "status")
        self._client = self._make_client()
        self._inflight: dict[int, int] = {}  # mid -> seq (seq 0: the status message)
        self._acked: list[int] = []  # PUBACKed seqs not yet removed from the outbox
        self._hold_until = 0.0  # no publishing before this (monotonic): a delivery pause
        self._hold_delay = self.backoff_min
        self._cursor = 0  # highest seq handed to paho on this connection
        self._connected = False
        self._refused = False  # the last CONNACK was a refusal (bad credentials, banned)
        self._link = True
        self._paused = False
        self._stopping = threading.Event()
        self._killed = False
        self._wake = threading.Event()
        self._idle = threading.Condition()
        self._thread: threading.Thread | None = None
        self._delay = self.backoff_min
        self._next_attempt = 0.0
        self._next_fill = 0.0  # monotonic time of the next periodic outbox read
        self._more = True  # the last read filled the window: more may be pending
        self._suspect: int | None = None  # seq the broker may be closing connections on
        self._suspect_closes = 0  # closes while the suspect alone was in flight
        self._answered = False  # the broker answered the status on this connection

    # --- client setup -------------------------------------------------------------------

    def _make_client(self) -> mqtt.Client:
        client = self.broker.new_client(self.device_id)
        client.will_set(self.status_topic, status_payload(False), qos=1, retain=True)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        return client

    # --- controls (any thread) ----------------------------------------------------------

    def start(self) -> Publisher:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="earmark-publisher", daemon=True)
            self._thread.start()
        return self

    def notify(self) -> None:
        """New message in the outbox: publish it without waiting for the next poll."""
        self._wake.set()

    def set_link(self, up: bool) -> None:
        """The hardware's link state: while down, stay disconnected and make no attempts."""
        if up != self._link:
            log.info("link %s", "up" if up else "down")
            self._link = up
            if up:
                self._next_attempt = 0.0
            self._wake.set()

    def set_paused(self, paused: bool) -> None:
        """Throttle: keep the radio quiet (no publishes) while paused; the outbox keeps all."""
        self._paused = paused
        self._wake.set()

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def suspect(self) -> int | None:
        """The seq sent alone because the broker closed the connection on it, if any."""
        return self._suspect

    def wait_drained(self, timeout: float) -> bool:
        """Block until the outbox is empty and nothing is in flight (or the timeout passes)."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while self.outbox.count() or self._inflight:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._idle.wait(min(remaining, 0.1))
        return True

    def stop(self, timeout: float = 5.0) -> None:
        """Say ``offline`` (retained), disconnect cleanly and stop the thread."""
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout + 1.0)
            self._thread = None

    def kill(self) -> None:
        """Power cut: stop at once, no DISCONNECT, no status, unrecorded acks lost.

        The broker sees the TCP connection drop and publishes the will; whatever was
        PUBACKed but not yet committed stays in the outbox and is resent after the reboot.
        For simulators and fault tests.
        """
        self._killed = True
        self.stop()

    # --- the thread ---------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._loop()
        finally:
            self._shutdown()
            self.stats.cpu_s = time.thread_time()

    def _loop(self) -> None:
        while not self._stopping.is_set():
            if not self._link:
                if self._client.is_connected() or self._connected:
                    self._drop_connection(will=True)
                self._wake.wait(0.1)
                self._wake.clear()
                continue
            if self._client._sock is None:  # noqa: SLF001 - paho exposes no public check
                self._try_connect()
                continue
            # short waits while acks are due, longer when idle: many simulated devices
            # share one process, and a new batch may wait 0.1 s for its first send
            rc = self._client.loop(timeout=0.01 if self._inflight else 0.1)
            self.stats.cpu_s = time.thread_time()
            if self._killed:
                break
            self._commit_acks()
            if rc != mqtt.MQTT_ERR_SUCCESS:
                if self._refused:  # CONNACK said no; the retry is already scheduled
                    self._refused = False
                else:
                    self._lost(f"network loop: {mqtt.error_string(rc)}")
                continue
            if self._connected and not self._paused and self._fill_due():
                self._fill()

    def _try_connect(self) -> None:
        now = time.monotonic()
        if now < self._next_attempt:
            self._wake.wait(min(self._next_attempt - now, 0.1))
            self._wake.clear()
            return
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self.broker.session_expiry_s
        try:
            self._client.connect(
                self.broker.host,
                self.broker.port,
                keepalive=self.broker.keepalive,
                clean_start=False,
                properties=props,
            )
        except (OSError, ssl.SSLError) as err:
            self._schedule_retry(f"connect to {self.broker.host}:{self.broker.port}: {err}")

    def _schedule_retry(self, why: str) -> None:
        self.stats.last_error = why
        delay = self._delay * random.uniform(0.8, 1.2)
        log.warning("broker unreachable (%s); retrying in %.1fs", why, delay)
        self._next_attempt = time.monotonic() + delay
        self._delay = min(self._delay * 2, self.backoff_max)
        try:
            self._client._sock_close()  # noqa: SLF001 - leave the client ready to reconnect
        except Exception:  # noqa: BLE001
            pass

    def _lost(self, why: str) -> None:
        if self._connected:  # on_disconnect has not seen it (e.g. a failed publish)
            self._closed_under_us()
        self._connected = False
        self._schedule_retry(why)

    def _closed_under_us(self) -> None:
        """The connection was lost while the link was up: count it, and watch the suspect."""
        self.stats.connection_losses += 1
        waiting = sorted(seq for seq in self._inflight.values() if seq)
        if not waiting:
            return
        head = waiting[0]
        if head != self._suspect:
            self._suspect, self._suspect_closes = head, 0  # next connection: send it alone
            return
        if len(waiting) == 1 and self._answered:
            self._suspect_closes += 1
        if self._suspect_closes >= self.set_aside_after:
            log.error(
                "broker closed the connection %d times on seq=%d alone; setting it aside",
                self._suspect_closes,
                head,
            )
            self._suspect = None
            self.stats.refused += 1
            self.stats.set_aside += 1
            self.outbox.drop(head, "refused:connection_closed")

    def _drop_connection(self, will: bool) -> None:
        """Link gone: close without a clean DISCONNECT, as a dead radio would; the will fires."""
        if will:
            reason = ReasonCode(PacketTypes.DISCONNECT, "Disconnect with will message")
            self._client.disconnect(reasoncode=reason)
            self._client.loop(timeout=0.05)
        self._client._sock_close()  # noqa: SLF001
        self._connected = False

    def _fill_due(self) -> bool:
        """Read the outbox only when something may have changed, or once a second.

        Something changed: a notify() (new message), acks that freed room, a full window
        last time (more may wait). The once-a-second read catches expiry and holds.
        """
        now = time.monotonic()
        if self._wake.is_set() or self._more or self._inflight or now >= self._next_fill:
            self._wake.clear()
            self._next_fill = now + 1.0
            return True
        return False

    def _fill(self) -> None:
        room = self.max_inflight - len(self._inflight)
        if self._suspect is not None:  # the suspect travels alone, once the link has proved
            room = 1 if self._answered and not any(self._inflight.values()) else 0
        if room <= 0 or time.monotonic() < self._hold_until:
            return
        entries = self.outbox.pending(after=self._cursor, limit=room)
        self._more = len(entries) == room
        now = self.outbox.clock.now()
        in_flight = set(self._inflight.values())  # after a rewind, do not send twice
        for entry in entries:
            if entry.seq in in_flight:
                self._cursor = entry.seq
                continue
            props = None
            if entry.expires is not None:
                props = Properties(PacketTypes.PUBLISH)
                props.MessageExpiryInterval = max(1, int(entry.expires - now))
            info = self._client.publish(entry.topic, entry.payload, qos=1, properties=props)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                self._lost(f"publish: {mqtt.error_string(info.rc)}")
                return
            self._inflight[info.mid] = entry.seq
            self._cursor = entry.seq

    def _shutdown(self) -> None:
        if self._killed:
            self._acked.clear()
        elif self._connected and self._link:
            info = self._client.publish(
                self.status_topic, status_payload(False), qos=1, retain=True
            )
            deadline = time.monotonic() + 2.0
            while not info.is_published() and time.monotonic() < deadline:
                if self._client.loop(timeout=0.05) != mqtt.MQTT_ERR_SUCCESS:
                    break
            self._commit_acks()
            self._client.disconnect()
            self._client.loop(timeout=0.05)
        try:
            self._client._sock_close()  # noqa: SLF001
        except Exception:  # noqa: BLE001
            pass
        self._connected = False
        with self._idle:
            self._idle.notify_all()

    # --- paho callbacks (called on this thread, from loop()) ------------------------------

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            self._connected = False
            self._refused = True
            self._schedule_retry(f"broker refused the connection: {reason_code}")
            return
        # The outbox, not paho's memory, decides what is resent and in which order.
        client.drop_out_messages()
        self._inflight.clear()
        self._cursor = 0
        self._more = True
        self._connected = True
        self._answered = False
        self.stats.connects += 1
        self.stats.last_error = None
        log.info(
            "connected to %s:%d (session present: %s)",
            self.broker.host,
            self.broker.port,
            flags.session_present,
        )
        info = client.publish(self.status_topic, status_payload(True), qos=1, retain=True)
        self._inflight[info.mid] = 0

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if self._connected and not self._stopping.is_set() and self._link:
            log.warning("connection lost: %s", reason_code)
            self._closed_under_us()
        self._connected = False  # loop() now fails and _lost() schedules the reconnect

    def _on_publish(
        self,
        client: mqtt.Client,
        userdata: object,
        mid: int,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        seq = self._inflight.pop(mid, None)
        if seq is None:
            return
        if not reason_code.is_failure and reason_code.value != NO_SUBSCRIBERS:
            self._hold_delay = self.backoff_min
            # Only a connection that carries a message counts as healthy: a broker that
            # accepts CONNECT and then drops us on every publish must not be hammered.
            self._delay = self.backoff_min
        if seq == 0:
            self._answered = True  # a round trip: the connection itself works
            return
        if self._suspect is not None and seq >= self._suspect:
            # the broker answered the suspect, whatever it said, or the one sent alone in its
            # place because it left the outbox meanwhile (expired, revoked): not a suspect now
            self._suspect, self._suspect_closes = None, 0
        if reason_code.value == NO_SUBSCRIBERS:
            self._hold(seq, "no subscriber has the message yet")
        elif not reason_code.is_failure:
            self._acked.append(seq)  # committed after this loop() pass, in one transaction
        elif reason_code.value in TRANSIENT_REFUSALS:
            self._hold(seq, str(reason_code))
        else:
            log.error("broker refused seq=%d: %s", seq, reason_code)
            self.stats.refused += 1
            self.outbox.drop(seq, f"refused:{reason_code.getName().lower().replace(' ', '_')}")

    def _hold(self, seq: int, why: str) -> None:
        """Keep ``seq`` (and what follows) in the outbox and resend from it after a pause."""
        self.stats.held += 1
        if self._cursor >= seq:
            self._cursor = seq - 1
            pause = self._hold_delay * random.uniform(0.8, 1.2)
            log.warning("seq=%d not delivered (%s); resending in %.1fs", seq, why, pause)
            self._hold_until = time.monotonic() + pause
            self._hold_delay = min(self._hold_delay * 2, self.backoff_max)

    def _commit_acks(self) -> None:
        """Remove every message PUBACKed in the last loop pass from the outbox, then ledger."""
        if not self._acked:
            return
        acked, self._acked = self._acked, []
        ledger = self.ledger
        done = self.outbox.ack_many(acked, ledger.record_sent if ledger is not None else None)
        self.stats.sent += len(done)
        if not self._inflight:
            with self._idle:
                self._idle.notify_all()
