"""Hardware-in-the-loop fixtures: the shipped broker config, a real gateway, simulated glasses.

Every HIL test starts Mosquitto from deploy/mosquitto (credentials per device, the real ACL),
the real gateway in this process on SQLite, and simulated devices running the real device code
through a link proxy each. The recogniser and the topic model are loaded once per session and
shared by every device, as the simulator does. A wiretap with the gateway's credentials
subscribes (non-shared) to every device topic and keeps each payload the broker delivered.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from earmark.firmware_sim import scenario as sc
from earmark.firmware_sim.services import GATEWAY_USER, Services
from earmark.firmware_sim.world import Observation, World, plan_devices
from tests.support.broker import Broker, deploy_broker

GATEWAY_PASSWORD = "hil-gateway-secret"


@pytest.fixture(scope="session")
def models() -> tuple[Any, Any]:
    from earmark.device.stt import PocketSphinxEngine
    from earmark.device.topics import TopicClassifier

    return PocketSphinxEngine(), TopicClassifier.load()


class Wiretap:
    """Subscribes to every device topic with the gateway's credentials; keeps all payloads."""

    def __init__(self, broker: Broker) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self._lock = threading.Lock()
        self.subscribed = threading.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id="hil-wiretap", protocol=mqtt.MQTTv5
        )
        self.client.username_pw_set(GATEWAY_USER, GATEWAY_PASSWORD)
        self.client.on_connect = lambda c, *a: c.subscribe(
            [(f"earmark/v1/+/{k}", 1) for k in ("signals", "deletion", "status")]
        )
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        assert self.subscribed.wait(10), "wiretap could not subscribe"

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append((msg.topic, bytes(msg.payload)))

    def payloads(self, kind: str) -> list[bytes]:
        with self._lock:
            return [p for t, p in self.messages if t.endswith("/" + kind)]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@dataclass
class Hil:
    world: World
    wiretap: Wiretap
    broker: Broker
    observations: list[Observation] = field(default_factory=list)

    def said_and_decided(self) -> list[tuple[str, str, dict[str, Any]]]:
        """(device, script line, decision detail) for each utterance, in order."""
        out, last = [], {}
        for o in self.observations:
            if o.kind == "said":
                last[o.device] = o.detail["text"]
            elif o.kind == "decided" and o.device in last:
                out.append((o.device, last.pop(o.device), o.detail))
        return out

    def wire_bytes(self) -> bytes:
        """Every byte the devices sent through their links, and every payload the broker carried."""
        up = b"".join(bytes(d.proxy.upstream) for d in self.world.devices)
        return up + b"".join(p for _, p in self.wiretap.messages)

    def tier1(self, tag: str) -> str:
        return self.world.taxonomy.node(tag).tier1 or self.world.taxonomy.node(tag).name


@pytest.fixture
def hil(tmp_path: Path, models: tuple[Any, Any]) -> Iterator[Callable[..., Hil]]:
    started: list[Any] = []

    def start(name: str, devices: int | None = None, **kw: Any) -> Hil:
        scenario = sc.load(name)
        plans = plan_devices(scenario, devices)
        passwords = {p.device_id: secrets.token_hex(8) for p in plans}
        broker = deploy_broker(tmp_path / "broker", {**passwords, GATEWAY_USER: GATEWAY_PASSWORD})
        started.append(broker.stop)
        services = Services.start(
            tmp_path, broker_url=broker.url, gateway_password=GATEWAY_PASSWORD, passwords=passwords
        )
        started.append(services.stop)
        tap = Wiretap(broker)
        started.append(tap.close)
        observations: list[Observation] = []
        stt, classifier = models
        world = World(
            scenario,
            services,
            tmp_path,
            devices=devices,
            stt=stt,
            classifier=classifier,
            observer=observations.append,
            **kw,
        )
        started.append(world.close)
        return Hil(world, tap, broker, observations)

    yield start
    for stop in reversed(started):
        stop()
