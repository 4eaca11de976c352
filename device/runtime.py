"""The whole device pipeline in one object: audio in, consented coarse tags out.

audio (AudioSource) → endpointing + STT (``earmark.device.stt.utterances``) → topics
(``TopicClassifier``) → privacy gate (``PrivacyGate``) → window batcher → outbox → publisher.

Everything the pipeline needs from the world comes in through two seams, a
:class:`earmark.clock.Clock` and a :class:`earmark.device.hardware.Hardware`, so the simulated
glasses (``earmark.firmware_sim``) run this exact code. The runtime polls the hardware once
per second of audio (and after every utterance): the link state and throttle go to the
publisher, the listening state decides whether frames reach the recogniser at all, and due
windows are closed into the outbox.

Text never outlives :meth:`DeviceRuntime.handle_transcript`: it goes to the classifier and the
gate and is dropped; only the gate's decision (tags, reason) is kept, and it is logged at
DEBUG without text.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from earmark.clock import Clock
from earmark.device.hardware import Hardware, Throttle
from earmark.device.outbox import Outbox
from earmark.errors import EarmarkError
from earmark.wire import DeletionRequest, SignalBatch

if TYPE_CHECKING:
    from earmark.device.audio import AudioFrame, AudioSource
    from earmark.device.consent import ConsentStore
    from earmark.device.privacy import PrivacyDecision, RegionSignals
    from earmark.device.publisher import Publisher
    from earmark.device.stt import SttEngine, Transcript
    from earmark.device.topics import TopicScores
    from earmark.endpoint import BrokerConfig

log = logging.getLogger(__name__)

POLL_EVERY_S = 1.0  # audio seconds between hardware polls while frames flow


class Classifier(Protocol):
    version: str

    def classify(self, text: str) -> TopicScores: ...


class Gate(Protocol):
    def decide(
        self, text: str, scores: TopicScores, region: RegionSignals, now: float
    ) -> PrivacyDecision: ...


class Batcher(Protocol):
    """Collects allowed decisions per window and hands out closed windows as batches."""

    def add(self, decision: PrivacyDecision, now: float) -> None: ...

    def close_due(self, now: float) -> list[SignalBatch]: ...

    def flush(self, now: float) -> list[SignalBatch]: ...


@dataclass
class RuntimeStats:
    """Counts only: what the device heard and did, never what was said."""

    utterances: int = 0
    decisions: Counter[str] = field(default_factory=Counter)  # reason → count
    batches_queued: int = 0
    deletions_queued: int = 0
    silenced_frames: int = 0  # frames replaced by silence (not listening / throttled)
    throttle_changes: int = 0
    region_paused: bool = False  # uploads held: the device is in a blocked region
    # stage → CPU seconds of the runtime's thread: "listen" (endpointing + STT), "topics",
    # "gate" (the publisher's own thread counts in Publisher.stats.cpu_s)
    cpu_s: dict[str, float] = field(default_factory=dict)


class DeviceRuntime:
    """Runs the device pipeline against a Clock and a Hardware object.

    Build the parts once and share the heavy ones: ``engine`` and ``classifier`` hold models
    that several simulated devices in one process may share; ``gate``, ``batcher``,
    ``outbox`` and ``publisher`` are per device.
    """

    def __init__(
        self,
        device_id: str,
        *,
        clock: Clock,
        hardware: Hardware,
        engine: SttEngine,
        classifier: Classifier,
        gate: Gate,
        batcher: Batcher,
        outbox: Outbox,
        publisher: Publisher | None = None,
        vad: Any = None,
        on_decision: Callable[[PrivacyDecision], None] | None = None,
        consent: ConsentStore | None = None,
    ) -> None:
        self.device_id = device_id
        self.clock = clock
        self.hardware = hardware
        self.engine = engine
        self.classifier = classifier
        self.gate = gate
        self.batcher = batcher
        self.outbox = outbox
        self.publisher = publisher
        self.vad = vad
        self.on_decision = on_decision
        self.consent = consent
        self.stats = RuntimeStats()
        self._throttle = Throttle.NORMAL
        self._last_poll: float | None = None
        outbox.max_bytes = hardware.storage_limit_bytes()

    # --- the pipeline -------------------------------------------------------------------

    def run(self, source: AudioSource) -> RuntimeStats:
        """Consume ``source`` to its end, deciding each utterance as it completes."""
        from earmark.device.stt import utterances

        gated = _GatedSource(source, self)
        args = () if self.vad is None else (self.vad,)
        self.poll()
        for transcript in utterances(gated, self.engine, *args):
            t0 = time.thread_time()
            self.handle_transcript(transcript)
            self.poll()
            gated.not_listening += time.thread_time() - t0
        self.poll()
        return self.stats

    def handle_transcript(self, transcript: Transcript) -> PrivacyDecision | None:
        """Classify and gate one utterance; its text is dropped when this returns."""
        self.stats.utterances += 1
        if self._throttle is Throttle.SKIP_CLASSIFY or not transcript.text.strip():
            reason = "throttled" if transcript.text.strip() else "empty"
            self.stats.decisions[reason] += 1
            return None
        t0 = time.thread_time()
        scores = self.classifier.classify(transcript.text)
        t1 = time.thread_time()
        now = self.clock.now()
        decision = self.gate.decide(transcript.text, scores, self.hardware.region_signals(), now)
        t2 = time.thread_time()
        self.batcher.add(decision, now)
        cpu = self.stats.cpu_s
        cpu["topics"] = cpu.get("topics", 0.0) + t1 - t0
        cpu["gate"] = cpu.get("gate", 0.0) + t2 - t1
        self.stats.decisions[decision.reason] += 1
        log.debug("utterance decided: %s (layer %s)", decision.reason, decision.layer)
        if self.on_decision is not None:
            self.on_decision(decision)
        return decision

    def poll(self) -> None:
        """Read the hardware, steer the publisher, move closed windows to the outbox."""
        now = self.clock.now()
        self._last_poll = now
        throttle = self.hardware.throttle()
        if throttle is not self._throttle:
            log.info("throttle %s → %s", self._throttle.value, throttle.value)
            self._throttle = throttle
            self.stats.throttle_changes += 1
        self.outbox.max_bytes = self.hardware.storage_limit_bytes()
        self._queue(self.batcher.close_due(now))
        if self.publisher is not None:
            self.publisher.set_link(self.hardware.link_up())
            self.publisher.set_paused(throttle is not Throttle.NORMAL or not self._region_allows())

    def flush(self) -> None:
        """Close the open window now (end of a recording, shutdown) and queue it."""
        self._queue(self.batcher.flush(self.clock.now()))

    def request_deletion(self) -> int | None:
        """Consent revoked: stop, drop queued batches and open windows, queue a deletion.

        With a consent store the revoke goes through it (state first, so signals stop at
        once); returns the deletion request's sequence number.
        """
        now = self.clock.now()
        if self.consent is not None:
            result = self.consent.revoke(now, self.outbox, self.device_id)
            discarded, seq = result.discarded, result.deletion_seq
        else:
            discarded = self.outbox.discard_pending()
            seq = self.outbox.put(
                DeletionRequest(self.device_id, 0, requested_window=int(now // 3600) * 3600)
            )
        discard = getattr(self.batcher, "discard", None)
        if discard is not None:
            discard(now, "consent_revoked")
        self.stats.deletions_queued += 1
        log.info("deletion requested: %d queued batches discarded, seq=%d", discarded, seq)
        if self.publisher is not None:
            self.publisher.notify()
        return seq

    def close(self, drain_timeout: float = 0.0) -> None:
        """Stop cleanly: optionally wait for the outbox to drain, then stop the publisher."""
        if self.publisher is not None:
            if drain_timeout > 0:
                self.publisher.wait_drained(drain_timeout)
            self.publisher.stop()

    def crash(self) -> None:
        """Power loss: drop everything in memory without a clean shutdown (simulators, tests).

        The open window in the batcher is lost, as it would be on a device; the outbox is on
        disk and a runtime built again from the same state dir resends what it holds.
        """
        if self.publisher is not None:
            self.publisher.kill()
        self.outbox.close()

    # --- helpers ------------------------------------------------------------------------

    def _region_allows(self) -> bool:
        """Nothing is transmitted from a blocked (or undecidable) region, not even old batches."""
        check = getattr(self.gate, "region_allows", None)
        allowed = True if check is None else bool(check(self.hardware.region_signals()))
        if not allowed and not self.stats.region_paused:
            log.info("in a blocked region: uploads paused")
        self.stats.region_paused = not allowed
        return allowed

    def _queue(self, batches: list[SignalBatch]) -> None:
        for batch in batches:
            if batch.device_id != self.device_id:
                raise ValueError(f"batch for {batch.device_id!r} on device {self.device_id!r}")
            seq = self.outbox.put(batch)
            self.stats.batches_queued += 1
            log.info("window closed: %d tags queued as seq=%d", len(batch.tags), seq)
        if batches and self.publisher is not None:
            self.publisher.notify()

    def _frame_gate(self, frame: AudioFrame) -> AudioFrame:
        """Called for every frame: poll now and then, and silence what may not be heard."""
        if self._last_poll is None or self.clock.now() - self._last_poll >= POLL_EVERY_S:
            self.poll()
        if self._throttle is Throttle.SKIP_CLASSIFY or not self.hardware.listening():
            self.stats.silenced_frames += 1
            return type(frame)(pcm=bytes(len(frame.pcm)), start=frame.start)
        return frame


class _GatedSource:
    """An AudioSource wrapper: frames pass through the runtime's listening/throttle gate."""

    def __init__(self, source: AudioSource, runtime: DeviceRuntime) -> None:
        self._source = source
        self._runtime = runtime
        self.name = getattr(source, "name", "audio")
        self.not_listening = 0.0  # CPU the runtime spent on an utterance during this frame

    def frames(self) -> Iterator[AudioFrame]:
        cpu = self._runtime.stats.cpu_s
        for frame in self._source.frames():
            out = self._runtime._frame_gate(frame)
            self.not_listening = 0.0
            t0 = time.thread_time()
            yield out
            # the consumer ran between yield and resume: endpointer and recogniser, plus
            # the runtime's own per-utterance work, which it reports in not_listening
            spent = time.thread_time() - t0 - self.not_listening
            cpu["listen"] = cpu.get("listen", 0.0) + max(spent, 0.0)

    def close(self) -> None:
        self._source.close()


def window_start(now: float, window_s: int) -> int:
    """The start of the window ``now`` falls in (epoch seconds, a multiple of window_s)."""
    return int(math.floor(now / window_s)) * window_s


def host_region(
    lat: float | None,
    lon: float | None,
    country: str | None,
    mcc: str | None,
    locale: str | None,
    tz: str | None,
) -> RegionSignals:
    """Region signals stated by the operator of a real machine (flags or config)."""
    from earmark.device.privacy import RegionSignals

    if (lat is None) != (lon is None):
        raise EarmarkError("--lat and --lon go together")
    if lat is not None and not (-90 <= lat <= 90 and -180 <= lon <= 180):  # type: ignore[operator]
        raise EarmarkError(f"--lat {lat} --lon {lon} is not a position on Earth")
    return RegionSignals(
        lat=lat,
        lon=lon,
        account_country=country.upper() if country else None,
        sim_mcc=mcc,
        locale=locale,
        timezone=tz,
    )


def build_runtime(
    device_id: str,
    state_dir: Path,
    *,
    broker: BrokerConfig | None,
    clock: Clock,
    hardware: Hardware,
    engine: str | SttEngine = "auto",
    vosk_model: str | None = None,
    classifier: Classifier | None = None,
    policy_path: str | Path | None = None,
    taxonomy: Any = None,
) -> DeviceRuntime:
    """Wire the real parts for one device from its state dir (consent, ledger, outbox).

    ``engine`` and ``classifier`` may be passed already loaded, so many simulated devices
    in one process share one model each.
    """
    from earmark.device.publisher import Publisher
    from earmark.wire import DEVICE_ID_RE

    if not DEVICE_ID_RE.match(device_id):
        raise EarmarkError(f"device id {device_id!r} must match {DEVICE_ID_RE.pattern}")
    from earmark.device.privacy import build_parts

    parts = build_parts(state_dir, device_id, clock, policy_path=policy_path, taxonomy=taxonomy)
    outbox = Outbox(
        state_dir,
        clock=clock,
        ledger=parts.ledger,
        max_bytes=hardware.storage_limit_bytes(),
    )
    if isinstance(engine, str):
        from earmark.device.stt import engine_for

        engine = engine_for(engine, vosk_model=vosk_model)
    if classifier is None:
        from earmark.device.topics import TopicClassifier

        classifier = TopicClassifier.load()
    publisher = None
    if broker is not None:
        publisher = Publisher(outbox, device_id, broker, ledger=parts.ledger).start()
    return DeviceRuntime(
        device_id,
        clock=clock,
        hardware=hardware,
        engine=engine,
        classifier=classifier,
        gate=parts.gate,
        batcher=parts.batcher,
        outbox=outbox,
        publisher=publisher,
        consent=parts.consent,
    )
