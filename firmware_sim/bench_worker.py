"""The device process of ``earmark bench device``: one simulated device, measured stage by stage.

Why a separate process: peak resident memory must be the device's own (recogniser, topic
model, SQLite, paho), not the benchmark's broker client and gateway. The parent starts the
broker and the gateway, runs ``python -m earmark.firmware_sim.bench_worker``, and reads one
JSON document from its stdout. Progress goes to stderr.

Stages are timed with ``time.process_time`` on the same audio in the same round: the
endpointer alone; endpointer plus recogniser (the STT figure is the difference); the topic
model on the transcripts; the privacy gate; publishing (CPU per message through outbox,
publisher and PUBACK, times the messages an hour of speech produces). The baseline is the
bare recogniser decoding the same audio in one stream, without endpointing or earmark.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--proxy", required=True, help="mqtt:// URL of the link proxy (bytes counted)")
    p.add_argument("--broker", required=True, help="mqtt:// URL of the broker itself")
    p.add_argument("--utterances", type=int, default=24)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--latency", type=int, default=5)
    p.add_argument("--engine", default="pocketsphinx")
    a = p.parse_args(argv)

    from tqdm import tqdm

    from earmark.device.audio import SAMPLE_RATE
    from earmark.device.outbox import Outbox
    from earmark.device.privacy import build_parts
    from earmark.device.publisher import Publisher
    from earmark.device.runtime import DeviceRuntime
    from earmark.device.stt import engine_for, utterances
    from earmark.device.topics import TopicClassifier
    from earmark.device.vad import Endpointer
    from earmark.endpoint import BrokerConfig
    from earmark.firmware_sim.glasses import Battery, Place, SimGlasses
    from earmark.firmware_sim.mic import SimMic, silence
    from earmark.firmware_sim.scenario import BUNDLED
    from earmark.firmware_sim.simclock import SimClock
    from earmark.firmware_sim.speech import read_pcm

    engine = engine_for(a.engine)
    classifier = TopicClassifier.load()
    clips = [read_pcm(f) for f in sorted((BUNDLED / "clips").glob("*.wav"))]
    chosen = [clips[i % len(clips)] for i in range(a.utterances)]
    gap = silence(0.8)
    audio = gap + gap.join(chosen) + gap
    audio_s = len(audio) / 2 / SAMPLE_RATE
    speech_s = sum(len(c) for c in chosen) / 2 / SAMPLE_RATE
    nyc = Place("nyc", 40.7128, -74.006, "US", "310", "en_US", "America/New_York")
    day0 = (int(time.time()) // 86400 - 2) * 86400
    clock = SimClock(day0)
    state = Path(tempfile.mkdtemp(prefix="earmark-bench-device-"))
    parts = build_parts(state, "bench-dev1", clock)
    parts.consent.grant(clock.now(), "bench-dev1")
    region = nyc.signals()

    rounds: list[dict[str, float]] = []
    bar = tqdm(total=a.rounds * 5, desc="stages", unit="step", file=sys.stderr)
    for _ in range(a.rounds):
        r: dict[str, float] = {}
        t = time.process_time()
        ep = Endpointer()
        for f in SimMic(audio).frames():
            ep.feed(f)
        ep.flush()
        r["endpointing"] = time.process_time() - t
        bar.update()
        t = time.process_time()
        transcripts = list(utterances(SimMic(audio), engine))
        r["stt"] = time.process_time() - t - r["endpointing"]
        bar.update()
        t = time.process_time()
        scores = [classifier.classify(x.text) for x in transcripts]
        r["topics"] = time.process_time() - t
        bar.update()
        t = time.process_time()
        for x, s in zip(transcripts, scores, strict=True):
            parts.gate.decide(x.text, s, region, clock.now())
        r["gate"] = time.process_time() - t
        bar.update()
        t = time.process_time()
        stream = engine.stream()
        step = SAMPLE_RATE // 10 * 2
        for i in range(0, len(audio), step):
            stream.accept(audio[i : i + step])
        stream.finish()
        r["baseline_bare_stt"] = time.process_time() - t
        r["utterances_heard"] = len(transcripts)
        bar.update()
        rounds.append(r)
    bar.close()

    # the whole device: runtime + outbox + publisher over the link, an hour of speech per round
    glasses = SimGlasses(clock, nyc, battery=Battery(charging=True), always_listening=True)
    outbox = Outbox(state, clock=clock, ledger=parts.ledger)
    publisher = Publisher(
        outbox, "bench-dev1", BrokerConfig.from_url(a.proxy), ledger=parts.ledger
    ).start()
    live = False  # latency rounds: the window is flushed the moment the gate decides
    decided: list[float] = []

    def on_decision() -> None:
        if live:
            decided.append(time.time())
            runtime.flush()

    runtime = DeviceRuntime(
        "bench-dev1", clock=clock, hardware=glasses, engine=engine, classifier=classifier,
        gate=parts.gate, batcher=parts.batcher, outbox=outbox, publisher=publisher,
        on_decision=lambda d: on_decision(),
    )  # fmt: skip
    hours: list[dict[str, float]] = []
    for _ in tqdm(range(a.rounds), desc="device hours", unit="h", file=sys.stderr):
        hour = (int(clock.now()) // 3600 + 1) * 3600
        clock.advance_to(hour)
        t = time.process_time()
        runtime.run(SimMic(audio, clock=clock))
        clock.advance_to(hour + 3600 + 1000)  # the window closes, its random delay passes
        runtime.poll()
        publisher.wait_drained(30)
        hours.append({"device_cpu": time.process_time() - t})

    # the link proxy counted the device hours' bytes; what follows goes to the broker directly
    publisher.stop()
    publisher = Publisher(
        outbox, "bench-dev1", BrokerConfig.from_url(a.broker), ledger=parts.ledger
    ).start()
    runtime.publisher = publisher
    batches_in_hours = runtime.stats.batches_queued
    print(json.dumps({"phase": "hours_done"}), file=sys.stderr, flush=True)

    # publishing alone: CPU per message through outbox → MQTT → PUBACK → ledger
    from earmark.wire import SignalBatch, Tag

    n_pub = 200
    t = time.process_time()
    for i in range(n_pub):
        outbox.put(
            SignalBatch("bench-dev1", 0, parts.batcher.taxonomy_version, classifier.version,
                        day0 - 86400 * 3 + i * 3600, 3600, "US", (Tag("653", 1.0),))
        )  # fmt: skip
    publisher.notify()
    publisher.wait_drained(60)
    publish_per_msg = (time.process_time() - t) / n_pub

    # end-to-end latency: live-speed microphone, each utterance in its own window, flushed
    latency: list[dict[str, float | None]] = []
    live = True
    for i in tqdm(range(a.latency), desc="latency", unit="utt", file=sys.stderr):
        clip = chosen[i % len(chosen)]
        clock.advance_to((int(clock.now()) // 3600 + 1) * 3600)
        lead = silence(0.5)
        seq_before = outbox.next_seq()
        t0 = time.time()
        runtime.run(SimMic(lead + clip + silence(1.0), clock=clock, realtime=True))
        speech_end = t0 + (len(lead) + len(clip)) / 2 / SAMPLE_RATE
        publisher.wait_drained(10)
        at = decided[-1] if decided and decided[-1] > t0 else None
        latency.append({"seq_from": seq_before, "speech_end": speech_end, "decided": at})
    runtime.close()
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    json.dump(
        {
            "engine": getattr(engine, "description", getattr(engine, "name", a.engine)),
            "audio_s": audio_s,
            "speech_s": speech_s,
            "rounds": rounds,
            "hours": hours,
            "publish_cpu_per_msg": publish_per_msg,
            "batches_per_hour": batches_in_hours / a.rounds,
            "latency": latency,
            "peak_rss_mb": peak_kb / 1024,
            "decisions": dict(runtime.stats.decisions),
        },
        sys.stdout,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
