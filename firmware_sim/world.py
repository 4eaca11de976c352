"""Runs a scenario: simulated glasses executing the real device code, against real services.

Each device is the real :class:`earmark.device.runtime.DeviceRuntime` (real STT, topic model,
privacy gate, window batcher, SQLite outbox and ledger, paho publisher) built on
:class:`~earmark.firmware_sim.glasses.SimGlasses`, one
:class:`~earmark.firmware_sim.simclock.SimClock` shared by the whole world, and a
:class:`~earmark.firmware_sim.proxy.LinkProxy` to the broker.
The heavy models (recogniser, classifier) are loaded once and shared by every device.

Events run in time order. Before each one the clock jumps to its time and every device polls
its hardware (closing due windows into the outbox); after it, devices with a live link are
given a moment to upload, and what they sent and what the gateway made of it is reported to
the ``observer`` (the timeline printer, a test, the benchmark).
"""

from __future__ import annotations

import logging
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from earmark.device.outbox import Outbox
from earmark.device.privacy import PrivacyDecision, PrivacyParts, build_parts
from earmark.device.publisher import Publisher
from earmark.device.runtime import DeviceRuntime
from earmark.endpoint import BrokerConfig
from earmark.firmware_sim.glasses import Battery, SimGlasses
from earmark.firmware_sim.mic import SimMic, silence
from earmark.firmware_sim.proxy import LinkProxy
from earmark.firmware_sim.scenario import Event, Scenario, User, clip_name
from earmark.firmware_sim.services import Services
from earmark.firmware_sim.simclock import SimClock

log = logging.getLogger(__name__)

SETTLE_S = 5.0  # real seconds a device with a live link gets to upload after an event
STEP_S = 300.0  # simulated seconds between hardware polls while nothing happens


@dataclass(frozen=True)
class DevicePlan:
    device_id: str
    user_id: str
    template: User


def plan_devices(scenario: Scenario, devices: int | None = None) -> list[DevicePlan]:
    """One device per scenario user, or ``devices`` clones cycling over the users."""
    users = scenario.users
    n = devices or len(users)
    out = []
    for k in range(n):
        u = users[k % len(users)]
        clone = k // len(users)
        user_id = u.id if n == len(users) else f"{u.id}-{clone:03d}"
        out.append(DevicePlan(f"{u.id}-g{clone:03d}", user_id, u))
    return out


@dataclass
class Observation:
    """One line of the timeline (never transcript text: ``said`` is the scenario's script)."""

    t: float  # simulated epoch seconds
    device: str
    kind: str  # said | decided | queued | sent | dropped | profile | hardware | power
    detail: dict[str, Any] = field(default_factory=dict)


Observer = Callable[[Observation], None]


class SimDevice:
    """One pair of glasses running the device code; rebuilt from disk after a power cut."""

    def __init__(self, plan: DevicePlan, world: World) -> None:
        self.plan = plan
        self.id = plan.device_id
        self.world = world
        self.state_dir = world.workdir / "devices" / self.id
        u = plan.template
        self.proxy = LinkProxy(world.broker_addr, name=self.id, seed=zlib.crc32(self.id.encode()))
        self.glasses = SimGlasses(
            world.clock,
            world.scenario.places[u.place],
            battery=Battery(level=u.battery, charging=u.charging),
            temperature_c=u.temperature_c,
            storage_limit_bytes=u.storage_kb * 1024,
            always_listening=u.always_listening,
            proxy=self.proxy,
        )
        self.down_until: float | None = None
        self.decisions: list[PrivacyDecision] = []
        self.reported_sent = 0
        self.reported_dropped = 0
        self.boot()
        if u.consent and not self.parts.consent.granted():
            self.parts.consent.grant(world.clock.now(), self.id)

    def boot(self) -> None:
        w = self.world
        self.parts: PrivacyParts = build_parts(
            self.state_dir, self.id, w.clock, taxonomy=w.taxonomy
        )
        self.outbox = Outbox(
            self.state_dir,
            clock=w.clock,
            ledger=self.parts.ledger,
            max_bytes=self.glasses.storage_limit_bytes(),
        )
        password = w.services.passwords.get(self.id)
        broker = BrokerConfig.from_url(
            self.proxy.url, username=self.id if password else None, password=password
        )
        self.publisher = Publisher(
            self.outbox, self.id, broker, ledger=self.parts.ledger, backoff=(0.05, 0.5)
        ).start()
        self.runtime = DeviceRuntime(
            self.id,
            clock=w.clock,
            hardware=self.glasses,
            engine=w.stt,
            classifier=w.classifier,
            gate=self.parts.gate,
            batcher=self.parts.batcher,
            outbox=self.outbox,
            publisher=self.publisher,
            on_decision=self.decisions.append,
        )
        self.down_until = None

    @property
    def off(self) -> bool:
        return self.down_until is not None

    def power_loss(self, down_s: float) -> None:
        """No clean shutdown: in-flight uploads die, the open window in memory is lost."""
        self.runtime.crash()
        self.parts.ledger.close()
        self.down_until = self.world.clock.now() + down_s

    def say(self, pcm: bytes, triggered: bool, name: str) -> tuple[list[PrivacyDecision], str]:
        """Play one utterance into the microphone; returns the gate's decisions on it."""
        gap = silence(self.world.scenario.gap_s)
        u = self.plan.template
        mic = SimMic(
            gap + pcm + gap,
            clock=self.world.clock,
            name=name,
            gain_db=u.mic_gain_db,
            noise_dbfs=u.noise_dbfs,
            seed=zlib.crc32(name.encode()),
        )
        before = len(self.decisions)
        counts_before = dict(self.runtime.stats.decisions)
        self.glasses.tap(triggered)
        try:
            self.runtime.run(mic)
        finally:
            self.glasses.tap(False)
        if triggered or self.glasses.always_listening:
            self.glasses.battery.spend_listening(mic.duration)
        new = {
            k: v - counts_before.get(k, 0)
            for k, v in self.runtime.stats.decisions.items()
            if v != counts_before.get(k, 0)
        }
        other = ", ".join(k for k in new if k in ("throttled", "empty")) or (
            "" if len(self.decisions) > before else "nothing heard"
        )
        return self.decisions[before:], other

    def shutdown(self) -> None:
        if not self.off:
            self.runtime.close()
            self.outbox.close()
            self.parts.ledger.close()
        self.proxy.close()


class World:
    """The clock, the shared models, the services and every device of one simulation."""

    def __init__(
        self,
        scenario: Scenario,
        services: Services,
        workdir: Path,
        *,
        devices: int | None = None,
        speed: float = 0.0,
        stt: Any = None,
        classifier: Any = None,
        observer: Observer | None = None,
        settle_s: float = SETTLE_S,
        step_s: float = STEP_S,
    ) -> None:
        self.scenario = scenario
        self.services = services
        self.workdir = workdir
        self.taxonomy = services.taxonomy
        self.observer = observer or (lambda o: None)
        self.settle_s = settle_s
        self.step_s = step_s
        day0 = (int(time.time()) // 86400 - scenario.days_ago) * 86400
        self.clock = SimClock(day0, speed=speed)
        self.start_t = float(day0)
        if stt is None:
            from earmark.device.stt import PocketSphinxEngine

            stt = PocketSphinxEngine()
        if classifier is None:
            from earmark.device.topics import TopicClassifier

            classifier = TopicClassifier.load()
        self.stt, self.classifier = stt, classifier
        from urllib.parse import urlsplit

        u = urlsplit(services.broker_url)
        self.broker_addr = (u.hostname or "127.0.0.1", int(u.port or 1883))
        self.plans = plan_devices(scenario, devices)
        self.devices: list[SimDevice] = []
        for p in self.plans:
            services.register(p.device_id, p.user_id)
            self.devices.append(SimDevice(p, self))
        self._clips: dict[str, bytes] = {}

    # --- running -------------------------------------------------------------------------

    def run(self) -> None:
        for event in self.scenario.events:
            self.advance_to(self.start_t + event.t)
            for dev in self._targets(event):
                self._apply(dev, event)
            self._settle()
        self.finish()

    def advance_to(self, t: float) -> None:
        """Let simulated time pass, polling every device each ``step_s`` as its firmware would."""
        while self.clock.now() + self.step_s < t:
            self.clock.advance(self.step_s)
            self._wake_and_poll()
        self.clock.advance_to(t)
        self._wake_and_poll()

    def finish(self, drain_timeout: float = 30.0) -> None:
        """End of the day: close every window, reboot the dead, upload, let the gateway merge."""
        end = self.clock.now() + 2 * 3600  # every window closed, every random delay passed
        self.clock.advance_to(end)
        for dev in self.devices:
            if dev.off:
                dev.boot()
                self._emit(dev, "power", state="rebooted")
            queued = dev.runtime.stats.batches_queued
            dev.runtime.poll()
            dev.runtime.flush()
            if dev.runtime.stats.batches_queued > queued:
                self._emit(dev, "queued", batches=dev.runtime.stats.batches_queued - queued)
        self._settle(timeout=drain_timeout, all_devices=True)

    def _targets(self, event: Event) -> list[SimDevice]:
        return [d for d in self.devices if event.user is None or d.plan.template.id == event.user]

    def _wake_and_poll(self) -> None:
        now = self.clock.now()
        for dev in self.devices:
            if dev.off and dev.down_until is not None and now >= dev.down_until:
                dev.boot()
                self._emit(dev, "power", state="rebooted")
            if not dev.off:
                queued = dev.runtime.stats.batches_queued
                dev.runtime.poll()
                if dev.runtime.stats.batches_queued > queued:
                    self._emit(dev, "queued", batches=dev.runtime.stats.batches_queued - queued)
                self._report_throttle(dev)

    def _apply(self, dev: SimDevice, e: Event) -> None:
        g = dev.glasses
        if dev.off:
            self._emit(dev, "power", state="off", missed=e.kind)
            return
        if e.kind == "say":
            self._emit(dev, "said", text=e.value, triggered=e.options["triggered"])
            queued = dev.runtime.stats.batches_queued
            decisions, other = dev.say(self.clip(e), e.options["triggered"], f"{dev.id}:{e.label}")
            if dev.runtime.stats.batches_queued > queued:  # a window closed while it played
                self._emit(dev, "queued", batches=dev.runtime.stats.batches_queued - queued)
            for d in decisions:
                self._emit(
                    dev,
                    "decided",
                    reason=d.reason,
                    tags=list(d.why or [t for t, _ in d.tags]),
                    allowed=d.allowed,
                    expect=e.options["expect"],
                )
            if other:
                self._emit(
                    dev, "decided", reason=other, tags=[], allowed=False, expect=e.options["expect"]
                )
            self._report_throttle(dev)
        elif e.kind == "move":
            g.move(self.scenario.places[e.value])
            self._emit(dev, "hardware", what="moved", to=e.value)
        elif e.kind == "link":
            g.set_link_quality(e.options["latency_s"], e.options["loss"])
            g.set_link(e.value)
            dev.runtime.poll()
            self._emit(dev, "hardware", what="link", up=e.value, **e.options)
        elif e.kind == "battery":
            g.set_power(battery=e.value, charging=e.options.get("charging"))
            self._emit(dev, "hardware", what="battery", level=e.value)
            dev.runtime.poll()
            self._report_throttle(dev)
        elif e.kind == "temperature":
            g.set_power(temp=float(e.value))
            self._emit(dev, "hardware", what="temperature", celsius=e.value)
            dev.runtime.poll()
            self._report_throttle(dev)
        elif e.kind == "consent":
            self._consent(dev, e.value)
        elif e.kind == "power":
            pending = dev.outbox.count()
            dev.power_loss(e.options["down_s"])
            self._emit(dev, "power", state="lost", down_s=e.options["down_s"], pending=pending)

    def _consent(self, dev: SimDevice, granted: bool) -> None:
        now = self.clock.now()
        if granted:
            dev.parts.consent.grant(now, dev.id)
            self._emit(dev, "hardware", what="consent", granted=True)
            return
        result = dev.parts.consent.revoke(now, dev.outbox, dev.id)
        dev.parts.batcher.discard(now, "consent_revoked")
        dev.publisher.notify()
        self._emit(
            dev,
            "hardware",
            what="consent",
            granted=False,
            discarded=result.discarded,
            deletion_seq=result.deletion_seq,
        )

    def clip(self, e: Event) -> bytes:
        """The utterance's audio: a named clip, a pre-rendered one, or Piper on demand."""
        from earmark.firmware_sim.speech import read_pcm

        text = e.value
        if text not in self._clips:
            if "clip" in e.options:
                path = self.scenario.path.parent / e.options["clip"]
            elif self.scenario.clips and (self.scenario.clips / clip_name(text)).is_file():
                path = self.scenario.clips / clip_name(text)
            else:
                from earmark.firmware_sim.speech import synthesize

                path = synthesize(text)
            self._clips[text] = read_pcm(path)
        return self._clips[text]

    # --- uploads and what the gateway made of them ------------------------------------------

    def _settle(self, timeout: float | None = None, all_devices: bool = False) -> None:
        timeout = self.settle_s if timeout is None else timeout
        deadline = time.monotonic() + timeout
        for dev in self.devices:
            if dev.off or not (all_devices or dev.glasses.link_up()):
                continue
            if dev.outbox.count() and dev.glasses.link_up():
                dev.publisher.wait_drained(max(0.0, deadline - time.monotonic()))
        self._wait_gateway(deadline)
        self._report_sends()

    def _wait_gateway(self, deadline: float) -> None:
        """Until the gateway holds every message the ledgers say was sent (or the deadline)."""
        while time.monotonic() < deadline:
            if all(self.reconcile(d)["match"] for d in self.devices if not d.off):
                return
            time.sleep(0.05)

    def reconcile(self, dev: SimDevice) -> dict[str, Any]:
        """The device ledger against the gateway: same messages, same tag weights, exactly."""
        ledger = dev.parts.ledger
        sent = {r.seq: r for r in ledger.sent()} if not dev.off else {}
        got, floor = self.services.received(dev.id)
        live = {s for s in sent if s > floor}
        contrib = self.services.contributions(dev.id)
        expected = {
            (s, t["id"]): float(t["w"])
            for s, r in sent.items()
            if s > floor
            for t in r.message.get("tags", [])
        }
        return {
            "match": live == got and expected == contrib,
            "sent": len(sent),
            "at_gateway": len(got),
            "erased_up_to": floor,
            "tags_sent": sum(len(r.message.get("tags", [])) for r in sent.values()),
        }

    def _report_sends(self) -> None:
        changed_users = set()
        for dev in self.devices:
            if dev.off:
                continue
            records = dev.parts.ledger.sent()
            for r in records[dev.reported_sent :]:
                tags = [(t["id"], t["w"]) for t in r.message.get("tags", [])]
                self._emit(
                    dev,
                    "sent",
                    seq=r.seq,
                    message=r.kind,
                    tags=tags,
                    bytes=len(_payload(r.message)),
                )
                changed_users.add(dev.plan.user_id)
            dev.reported_sent = len(records)
            dropped = dev.parts.ledger.dropped()
            for seq, kind, _ws, reason, _at in dropped[dev.reported_dropped :]:
                self._emit(dev, "dropped", seq=seq, message=kind, reason=reason)
            dev.reported_dropped = len(dropped)
        for user in sorted(changed_users):
            prof = self.services.profile(user, self.clock.now())
            self.observer(
                Observation(self.clock.now(), user, "profile", {"interests": prof["interests"]})
            )

    def _report_throttle(self, dev: SimDevice) -> None:
        log_ = dev.glasses.throttle_log
        seen = getattr(dev, "_throttle_seen", 0)
        for t, level in log_[seen:]:
            self.observer(
                Observation(t, dev.id, "hardware", {"what": "throttle", "level": level.value})
            )
        dev._throttle_seen = len(log_)  # type: ignore[attr-defined]

    def _emit(self, dev: SimDevice, kind: str, **detail: Any) -> None:
        self.observer(Observation(self.clock.now(), dev.id, kind, detail))

    def close(self) -> None:
        for dev in self.devices:
            dev.shutdown()


def _payload(message: dict[str, Any]) -> bytes:
    import json

    return json.dumps(message, separators=(",", ":")).encode()
