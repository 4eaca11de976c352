"""The embedded MQTT v5 broker (earmark.gateway.embedded_broker), as earmark's clients use it.

Each test starts it in a subprocess on a free port (``LocalBroker(kind="embedded")``) and talks
to it with real paho-mqtt 2.x MQTT v5 clients, raw sockets for what paho will not send, and
finally the real device Publisher, the real gateway and the real ``earmark demo``.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from earmark.endpoint import BrokerConfig
from earmark.errors import EarmarkError
from earmark.gateway.broker import LocalBroker
from earmark.gateway.merge import MergeConfig
from earmark.gateway.service import Gateway, GatewayConfig
from earmark.gateway.store import open_engine
from earmark.gateway.validate import Checks
from tests.gateway.conftest import tag_check, taxonomy_file, wait_for  # noqa: F401 (fixtures)
from tests.gateway.test_device_to_gateway import (
    ALICE,
    Device,
    contribution_rows,
    ledger_contributions,
    ledger_keys,
    seen_keys,
    varied_batch,
)
from tests.support.broker import GATEWAY_USER
from tests.support.demo import check_demo_output
from tests.transport.conftest import GATEWAY_PASSWORD

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def broker() -> Iterator[LocalBroker]:
    with LocalBroker(kind="embedded") as b:
        assert b.kind == "embedded"
        yield b


@dataclass(frozen=True)
class Got:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    dup: bool
    mid: int
    user: tuple[tuple[str, str], ...]


class Client:
    """A paho MQTT v5 client on its own network thread that records what it receives."""

    def __init__(
        self,
        broker: LocalBroker,
        client_id: str,
        *subscribe: str,
        clean: bool = True,
        expiry: int = 0,
        manual_ack: bool = False,
        will: tuple[str, bytes] | None = None,
        will_props: Properties | None = None,
    ) -> None:
        self.got: list[Got] = []
        self.acks: dict[int, ReasonCode] = {}
        self.session_present: bool | None = None
        self.disconnected = threading.Event()
        self._lock = threading.Lock()
        c = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv5,
            manual_ack=manual_ack,
        )
        c.on_message = self._on_message
        c.on_publish = lambda _c, _u, mid, rc, _p: self.acks.__setitem__(mid, rc)
        c.on_disconnect = lambda *a: self.disconnected.set()
        if will is not None:
            c.will_set(will[0], will[1], qos=1, properties=will_props)
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = expiry
        connected, subscribed = threading.Event(), threading.Event()

        def on_connect(_c: object, _u: object, flags: mqtt.ConnectFlags, *_a: object) -> None:
            self.session_present = flags.session_present
            connected.set()

        c.on_connect = on_connect
        c.on_subscribe = lambda *a: subscribed.set()
        c.connect("127.0.0.1", broker.port, clean_start=clean, properties=props)
        c.loop_start()
        self.client = c
        assert connected.wait(5), f"{client_id} did not connect"
        if subscribe:
            c.subscribe([(t, 1) for t in subscribe])
            assert subscribed.wait(5), f"{client_id} did not subscribe"

    def _on_message(self, _c: object, _u: object, m: mqtt.MQTTMessage) -> None:
        user = tuple(getattr(m.properties, "UserProperty", None) or ())
        with self._lock:
            self.got.append(Got(m.topic, bytes(m.payload), m.qos, m.retain, m.dup, m.mid, user))

    def wait(self, n: int, timeout: float = 10.0) -> list[Got]:
        wait_for(lambda: len(self.got) >= n, timeout, f"{n} messages")
        with self._lock:
            return list(self.got)

    def publish(self, topic: str, payload: bytes, **kw: object) -> ReasonCode:
        """QoS 1 by default; returns the PUBACK reason code."""
        info = self.client.publish(topic, payload, qos=kw.pop("qos", 1), **kw)  # type: ignore[arg-type]
        info.wait_for_publish(5)
        wait_for(lambda: info.mid in self.acks, 5, "the PUBACK callback")
        return self.acks[info.mid]

    def kill(self) -> None:
        """Vanish without DISCONNECT, as a device whose power or radio dies."""
        self.client.loop_stop()
        self.client.socket().close()  # type: ignore[union-attr]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def read_packet(s: socket.socket) -> tuple[int, bytes]:
    """First byte and body of the next packet on a raw socket (remaining length < 128)."""
    head = s.recv(2, socket.MSG_WAITALL)
    assert len(head) == 2 and head[1] < 128, head
    return head[0], s.recv(head[1], socket.MSG_WAITALL)


def payloads(got: list[Got]) -> list[bytes]:
    return [g.payload for g in got]


def test_qos1_round_trip_and_puback_reason_codes(broker: LocalBroker) -> None:
    sub = Client(broker, "sub", "earmark/v1/+/signals")
    pub = Client(broker, "pub")
    props = Properties(PacketTypes.PUBLISH)
    props.UserProperty = ("k", "v")
    props.MessageExpiryInterval = 60
    assert pub.publish("earmark/v1/dev-1/signals", b"one", properties=props).value == 0
    (got,) = sub.wait(1)
    assert (got.topic, got.payload, got.qos, got.retain, got.dup) == (
        "earmark/v1/dev-1/signals", b"one", 1, False, False,
    )  # fmt: skip
    assert got.user == (("k", "v"),)
    # nobody subscribed: accepted, but 0x10 as Mosquitto says (the device publisher holds it)
    assert pub.publish("earmark/v1/dev-1/status", b"x").value == 0x10
    assert pub.publish("earmark/v1/dev-1/signals", b"zero", qos=0).value == 0
    assert payloads(sub.wait(2)) == [b"one", b"zero"]
    pub.close()
    sub.close()


def test_shared_subscription_gives_each_message_to_one_member(broker: LocalBroker) -> None:
    share = "$share/earmark-gateway/earmark/v1/+/signals"
    a, b = Client(broker, "gw-a", share), Client(broker, "gw-b", share)
    tap = Client(broker, "tap", "earmark/v1/#")  # an ordinary subscription gets them all
    pub = Client(broker, "pub")
    sent = [f"m{i}".encode() for i in range(20)]
    for p in sent:
        assert pub.publish("earmark/v1/dev-1/signals", p).value == 0
    assert payloads(tap.wait(20)) == sent
    wait_for(lambda: len(a.got) + len(b.got) >= 20, 5, "the shared deliveries")
    time.sleep(0.2)  # any extra (duplicate) delivery would have arrived by now
    got_a, got_b = payloads(a.got), payloads(b.got)
    assert sorted(got_a + got_b) == sorted(sent)  # each message exactly once
    assert len(got_a) == len(got_b) == 10  # round robin
    for c in (a, b, tap, pub):
        c.close()


def test_retained_message_reaches_a_late_subscriber_until_cleared(broker: LocalBroker) -> None:
    pub = Client(broker, "pub")
    pub.publish("earmark/v1/dev-1/status", b"online", retain=True)
    late = Client(broker, "late", "earmark/v1/+/status")
    (got,) = late.wait(1)
    assert (got.payload, got.retain) == (b"online", True)
    pub.publish("earmark/v1/dev-1/status", b"", retain=True)  # clears it
    assert late.wait(2)[1].payload == b""  # and is delivered as a normal message
    later = Client(broker, "later", "earmark/v1/+/status")
    pub.publish("earmark/v1/dev-1/other", b"marker")  # after the SUBACK: any retained is sent
    time.sleep(0.3)
    assert later.got == []
    for c in (pub, late, later):
        c.close()


@pytest.mark.parametrize("how", ["socket closed", "DISCONNECT 0x04"])
def test_will_is_sent_when_a_client_vanishes(broker: LocalBroker, how: str) -> None:
    watcher = Client(broker, "watcher", "earmark/v1/+/status")
    props = Properties(PacketTypes.WILLMESSAGE)
    props.UserProperty = ("why", "will")
    dev = Client(broker, "dev", will=("earmark/v1/dev/status", b"offline"), will_props=props)
    if how == "socket closed":
        dev.kill()
    else:
        dev.client.disconnect(
            reasoncode=ReasonCode(PacketTypes.DISCONNECT, "Disconnect with will message")
        )
        dev.client.loop_stop()
    (got,) = watcher.wait(1)
    assert (got.topic, got.payload, got.user) == (
        "earmark/v1/dev/status",
        b"offline",
        (("why", "will"),),
    )
    watcher.close()


def test_no_will_after_a_clean_disconnect(broker: LocalBroker) -> None:
    watcher = Client(broker, "watcher", "earmark/v1/+/status")
    dev = Client(broker, "dev", will=("earmark/v1/dev/status", b"offline"))
    dev.close()
    assert dev.disconnected.wait(5)
    time.sleep(0.2)
    watcher.publish("earmark/v1/marker/status", b"marker")
    time.sleep(0.2)
    assert payloads(watcher.wait(1)) == [b"marker"]
    watcher.close()


def test_will_when_keepalive_expires(broker: LocalBroker) -> None:
    """A client silent for 1.5 × its keepalive (1 s) is dropped and its will published."""
    watcher = Client(broker, "watcher", "w")
    s = socket.create_connection(("127.0.0.1", broker.port))
    will = b"\x00" + b"\x00\x01w" + b"\x00\x04gone"  # no will properties, topic "w", payload
    body = b"\x00\x04MQTT\x05" + bytes([0x02 | 0x04]) + b"\x00\x01\x00" + b"\x00\x04mute" + will
    s.sendall(bytes([0x10, len(body)]) + body)
    assert read_packet(s)[0] == 0x20  # CONNACK
    t0 = time.monotonic()
    (got,) = watcher.wait(1, timeout=5)
    assert got.payload == b"gone" and 1.4 < time.monotonic() - t0 < 3.0
    s.close()
    watcher.close()


def test_persistent_session_gets_what_was_published_while_offline(broker: LocalBroker) -> None:
    gw = Client(broker, "gw", "earmark/v1/+/signals", clean=False, expiry=3600)
    assert gw.session_present is False
    gw.close()
    pub = Client(broker, "pub")
    sent = [f"offline-{i}".encode() for i in range(5)]
    for p in sent:  # the offline session is a subscriber: 0x00, not 0x10
        assert pub.publish("earmark/v1/dev-1/signals", p).value == 0
    pub.publish("earmark/v1/dev-1/signals", b"qos0 is not queued", qos=0)
    back = Client(broker, "gw", clean=False, expiry=3600)  # no SUBSCRIBE: the session has it
    assert back.session_present is True
    assert payloads(back.wait(5)) == sent
    time.sleep(0.2)
    assert len(back.got) == 5
    back.close()
    fresh = Client(broker, "gw", clean=True)  # clean start discards the session
    assert fresh.session_present is False
    fresh.close()
    pub.close()


def test_unacked_messages_come_back_with_dup_on_reconnect(broker: LocalBroker) -> None:
    """The gateway acks only after its DB commit: what it never acked must come back."""
    opts = {"clean": False, "expiry": 3600, "manual_ack": True}
    gw = Client(broker, "gw", "earmark/v1/+/signals", **opts)  # type: ignore[arg-type]
    pub = Client(broker, "pub")
    sent = [f"batch-{i}".encode() for i in range(5)]
    for p in sent:
        pub.publish("earmark/v1/dev-1/signals", p)
    first = gw.wait(5)
    gw.client.ack(first[0].mid, 1)  # commits the first only, then dies
    time.sleep(0.2)
    gw.kill()
    again = Client(broker, "gw", **opts)  # type: ignore[arg-type]
    redelivered = again.wait(4)
    assert payloads(redelivered) == sent[1:]
    assert all(g.dup and g.qos == 1 for g in redelivered)
    for g in redelivered:
        again.client.ack(g.mid, 1)
    pub.publish("earmark/v1/dev-1/signals", b"fresh")
    assert again.wait(5)[4] == Got("earmark/v1/dev-1/signals", b"fresh", 1, False, False,
                                   again.got[4].mid, ())  # fmt: skip
    again.client.ack(again.got[4].mid, 1)
    time.sleep(0.2)
    again.close()
    third = Client(broker, "gw", **opts)  # type: ignore[arg-type]
    time.sleep(0.3)
    assert third.got == []  # all acked: nothing comes back
    third.close()
    pub.close()


def test_same_client_id_takes_the_session_over(broker: LocalBroker) -> None:
    watcher = Client(broker, "watcher", "earmark/v1/+/status")
    old = Client(broker, "dev", "earmark/v1/dev/cmd", clean=False, expiry=60,
                 will=("earmark/v1/dev/status", b"offline"))  # fmt: skip
    old.client.reconnect_delay_set(30, 60)  # so it does not take the session back
    new = Client(broker, "dev", clean=False, expiry=60)
    assert new.session_present is True
    assert old.disconnected.wait(5)
    Client(broker, "pub").publish("earmark/v1/dev/cmd", b"to the new one")
    assert payloads(new.wait(1)) == [b"to the new one"]
    time.sleep(0.2)
    assert old.got == [] and watcher.got == []  # the old connection's will is discarded
    old.client.loop_stop()
    new.close()
    watcher.close()


def test_queued_message_expiry_unsubscribe_and_will_delay(broker: LocalBroker) -> None:
    away = Client(broker, "away", "e/#", clean=False, expiry=60)
    away.close()
    pub = Client(broker, "pub")
    short = Properties(PacketTypes.PUBLISH)
    short.MessageExpiryInterval = 1
    pub.publish("e/1", b"expires while queued", properties=short)
    pub.publish("e/2", b"stays")
    watcher = Client(broker, "watcher", "w/#")
    delay = Properties(PacketTypes.WILLMESSAGE)
    delay.WillDelayInterval = 1
    dev = Client(broker, "dev", clean=False, expiry=60, will=("w/dev", b"late"), will_props=delay)
    back = Client(broker, "dev2", clean=False, expiry=60, will=("w/dev2", b"never"),
                  will_props=delay)  # fmt: skip
    dev.kill()
    back.kill()
    Client(broker, "dev2", clean=False, expiry=60)  # back within the will delay: no will
    time.sleep(1.3)
    assert payloads(watcher.wait(1)) == [b"late"]
    away = Client(broker, "away", clean=False, expiry=60)
    assert payloads(away.wait(1)) == [b"stays"]
    away.client.unsubscribe("e/#")
    wait_for(lambda: pub.publish("e/3", b"x").value == 0x10, 5, "the unsubscribe")
    for c in (away, pub, watcher):
        c.close()


def test_what_the_broker_refuses(broker: LocalBroker) -> None:
    """QoS 2 and topic aliases end the connection; an MQTT 3.1.1 client is told no."""
    for kw in ({"qos": 2}, {"properties": Properties(PacketTypes.PUBLISH)}):
        c = Client(broker, "refused")
        if "properties" in kw:
            kw["properties"].TopicAlias = 1  # type: ignore[union-attr]
        c.client.publish("t", b"x", **kw)  # type: ignore[arg-type]
        assert c.disconnected.wait(5)
        c.client.loop_stop()
    with socket.create_connection(("127.0.0.1", broker.port), timeout=5) as s:
        body = b"\x00\x04MQTT\x04\x02\x00\x3c" + b"\x00\x03old"
        s.sendall(bytes([0x10, len(body)]) + body)
        assert read_packet(s) == (0x20, b"\x00\x01")  # 3.1.1: unacceptable protocol version
        assert s.recv(1) == b""
    assert Client(broker, "after").session_present is False  # still serving


def test_malformed_packet_closes_only_that_connection(broker: LocalBroker) -> None:
    sub = Client(broker, "sub", "t")
    # garbage before any CONNECT: closed, nothing sent back
    with socket.create_connection(("127.0.0.1", broker.port), timeout=5) as s:
        s.sendall(b"\xff\xff\xff\xff\xff\xffgarbage")
        assert s.recv(16) == b""
    # a good CONNECT, then a PUBLISH whose topic runs past the packet: DISCONNECT 0x81
    with socket.create_connection(("127.0.0.1", broker.port), timeout=5) as s:
        body = b"\x00\x04MQTT\x05\x02\x00\x3c\x00" + b"\x00\x03raw"
        s.sendall(bytes([0x10, len(body)]) + body)
        first, body = read_packet(s)
        assert (first, body[:2]) == (0x20, b"\x00\x00")  # CONNACK: no session, success
        s.sendall(b"\x30\x03\x00\x10a")
        data = b""
        while chunk := s.recv(16):
            data += chunk
        assert data == b"\xe0\x01\x81"
    pub = Client(broker, "pub")
    assert pub.publish("t", b"still serving").value == 0
    assert payloads(sub.wait(1)) == [b"still serving"]
    pub.close()
    sub.close()


def test_device_publisher_to_gateway_through_the_embedded_broker(
    broker: LocalBroker,
    tmp_path: Path,
    tag_check: object,  # noqa: F811
) -> None:
    """Three devices' outboxes drain into the real gateway; a gateway restart in the middle.

    The broker keeps the gateway's shared subscription while it is away and queues the second
    half for it. Exact totals from the devices' ledgers: nothing lost, nothing counted twice.
    """
    engine = open_engine(f"sqlite:///{tmp_path / 'gateway.db'}")
    cfg = GatewayConfig(
        # credentials as in production; the embedded broker accepts and ignores them
        BrokerConfig.from_url(broker.url, username=GATEWAY_USER, password=GATEWAY_PASSWORD),
        client_id="gw-embedded",
        batch_size=20,
        merge=MergeConfig(half_life_s=86400.0),
    )
    checks = Checks(tag_check)  # type: ignore[arg-type]
    gateway = Gateway(cfg, engine, checks).start()
    assert gateway.wait_subscribed()
    devices = [Device.start(tmp_path / "devices", broker, d) for d in ALICE]  # type: ignore[arg-type]
    try:
        for i in range(15):
            for d in devices:
                d.send(varied_batch(d.device_id, i))
        for d in devices:
            assert d.publisher.wait_drained(30)
        gateway.stop()  # goes away cleanly; its session stays
        for i in range(15, 30):
            for d in devices:
                d.send(varied_batch(d.device_id, i))
        for d in devices:  # PUBACKed by the broker while no gateway is connected
            assert d.publisher.wait_drained(30)
        gateway = Gateway(cfg, engine, checks).start()
        expected = ledger_keys(devices)
        assert len(expected) == 90
        wait_for(lambda: seen_keys(engine) == expected, 30, "the gateway to merge every batch")
        assert contribution_rows(engine) == ledger_contributions(devices)
        assert gateway.metrics.snapshot().get("earmark_gateway_duplicates_total", 0) == 0
    finally:
        gateway.stop()
        for d in devices:
            d.close()
        engine.dispose()


def test_local_broker_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EARMARK_BROKER", "embedded")
    with LocalBroker() as b:
        assert b.kind == "embedded"
    with pytest.raises(EarmarkError, match="Mosquitto configuration"):
        LocalBroker("max_connections 5\n")
    monkeypatch.setenv("EARMARK_BROKER", "rabbitmq")
    with pytest.raises(EarmarkError, match="EARMARK_BROKER"):
        LocalBroker()
    monkeypatch.setenv("EARMARK_BROKER", "mosquitto")
    with LocalBroker("max_connections 5\n") as b:
        assert b.kind == "mosquitto"


def test_broker_command_reports_a_busy_port_on_one_line() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        out = subprocess.run(
            [sys.executable, "-m", "earmark.gateway.embedded_broker", "--port", str(port)],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
    assert out.returncode == 1 and out.stdout == ""
    assert out.stderr.count("\n") == 1 and "address already in use" in out.stderr


@pytest.mark.slow
def test_demo_runs_on_the_embedded_broker(tmp_path: Path) -> None:
    """`earmark demo` as on a machine without Mosquitto: same profile, same suppressions."""
    env = {**os.environ, "EARMARK_BROKER": "embedded", "TMPDIR": str(tmp_path)}
    out = subprocess.run(
        [sys.executable, "-m", "earmark", "demo"],
        capture_output=True, text=True, timeout=120, env=env, cwd=REPO,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    text = out.stdout
    assert "embedded broker, started here" in text
    check_demo_output(text)
    assert list(tmp_path.glob("earmark-*")) == []  # broker and sim dirs cleaned up


def test_bench_broker_command(capsys: pytest.CaptureFixture[str]) -> None:
    from earmark.cli import main

    assert main(["bench", "broker", "--messages", "200", "--rounds", "2"]) == 0
    out = capsys.readouterr().out
    assert "Mosquitto" in out and "embedded (earmark)" in out
    assert "ratio embedded/Mosquitto:" in out and out.count("msg/s") == 2
