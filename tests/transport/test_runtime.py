"""DeviceRuntime end to end with every real part: Piper speech → PocketSphinx → ONNX topic
model → privacy gate → window batcher → SQLite outbox → paho → Mosquitto (deploy config).

The hardware is a plain implementation of the Hardware protocol whose state the test sets,
the clock a manual one, so windows close when the test says so.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from earmark.device.audio import WavSource
from earmark.device.consent import ConsentStore
from earmark.device.hardware import PowerState, Throttle
from earmark.device.ledger import Ledger
from earmark.device.privacy import RegionSignals
from earmark.device.runtime import DeviceRuntime, build_runtime
from tests.support.broker import Broker
from tests.transport.conftest import DEVICES, Collector, ManualClock, device_config

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
NEW_YORK = RegionSignals(lat=40.71, lon=-74.0, account_country="US", locale="en_US")
PARIS = RegionSignals(lat=48.86, lon=2.35, account_country="FR", locale="fr_FR")
HOUR = 3600
T0 = 1_800_000_000 - 1_800_000_000 % HOUR + 60  # one minute into an hour window
INTEREST = "I want to book a cheap flight and a hotel for our vacation in Italy"
SENSITIVE = "my doctor changed the dose of my antidepressant medication for my depression"
TRAVEL = "653"  # IAB Content 3.1: Travel


class SettableHardware:
    """The Hardware protocol with settable state (what firmware_sim does with a scenario)."""

    def __init__(self, region: RegionSignals = NEW_YORK) -> None:
        self.region = region
        self.link = True
        self.power_state = PowerState()
        self.mic_open = True
        self.throttle_level = Throttle.NORMAL

    def region_signals(self) -> RegionSignals:
        return self.region

    def link_up(self) -> bool:
        return self.link

    def power(self) -> PowerState:
        return self.power_state

    def throttle(self) -> Throttle:
        return self.throttle_level

    def listening(self) -> bool:
        return self.mic_open

    def storage_limit_bytes(self) -> int:
        return 1 << 20


@pytest.fixture(scope="module")
def speech() -> dict[str, Path]:
    from earmark.firmware_sim.speech import concatenate, synthesize

    interest, sensitive = synthesize(INTEREST), synthesize(SENSITIVE)
    return {
        "interest": concatenate([interest]),
        "mixed": concatenate([interest, sensitive]),
        "sensitive": concatenate([sensitive]),
    }


@pytest.fixture(scope="module")
def models() -> tuple[object, object]:
    from earmark.device.stt import engine_for
    from earmark.device.topics import TopicClassifier

    return engine_for("pocketsphinx"), TopicClassifier.load()


@pytest.fixture
def collector(secure_broker: Broker) -> Iterator[Collector]:
    c = Collector(
        secure_broker,
        (
            "$share/earmark-gateway/earmark/v1/+/signals",
            "$share/earmark-gateway/earmark/v1/+/deletion",
        ),
    )
    try:
        yield c
    finally:
        c.close()


def device(
    tmp_path: Path,
    broker: Broker,
    models: tuple[object, object],
    hw: SettableHardware | None = None,
    *,
    link: bool = True,
) -> tuple[DeviceRuntime, ManualClock, SettableHardware]:
    hw = hw or SettableHardware()
    hw.link = link

    clock = ManualClock(T0)
    ConsentStore(tmp_path).grant(clock.now(), "dev-0001")
    engine, classifier = models
    rt = build_runtime(
        "dev-0001",
        tmp_path,
        broker=device_config(broker),
        clock=clock,
        hardware=hw,
        engine=engine,  # type: ignore[arg-type]
        classifier=classifier,  # type: ignore[arg-type]
    )
    return rt, clock, hw


def payloads(collector: Collector, kind: str = "signals") -> list[dict[str, object]]:
    return [json.loads(p) for t, p, _ in collector.messages if t.endswith(kind)]


def test_speech_to_broker_interest_sent_sensitive_silenced_no_text_leaves(
    tmp_path: Path, secure_broker: Broker, collector: Collector, speech, models
) -> None:
    rt, clock, _ = device(tmp_path, secure_broker, models)
    rt.run(WavSource(speech["mixed"]))
    assert rt.stats.utterances == 2
    assert rt.stats.decisions["published"] == 1
    assert sum(n for r, n in rt.stats.decisions.items() if r.startswith("sensitive")) == 1
    assert all(rt.stats.cpu_s[stage] > 0 for stage in ("listen", "topics", "gate"))
    clock.sleep(HOUR + 900)  # the window has closed and its random delay has passed
    rt.poll()
    assert rt.publisher is not None and rt.publisher.wait_drained(20)
    rt.close()
    assert collector.wait_for(1) == [1]
    (batch,) = payloads(collector)
    assert [t["id"] for t in batch["tags"]] == [TRAVEL]  # type: ignore[index]
    assert batch["region"] == "US" and batch["window_start"] == T0 - 60
    raw = b"".join(p for _, p, _ in collector.messages).decode()
    spoken = {w for w in (INTEREST + " " + SENSITIVE).lower().split() if len(w) > 3}
    assert not [w for w in spoken if w in raw.lower()]  # not one spoken word on the wire
    sent = Ledger(tmp_path).sent()
    assert [r.seq for r in sent] == [1]


def test_region_blocked_and_mic_closed_send_nothing(
    tmp_path: Path, secure_broker: Broker, collector: Collector, speech, models
) -> None:
    rt, clock, hw = device(tmp_path, secure_broker, models, SettableHardware(PARIS))
    rt.run(WavSource(speech["interest"]))
    assert rt.stats.decisions["published"] == 0
    assert any(r.startswith("region_blocked") for r in rt.stats.decisions)
    hw.region, hw.mic_open = NEW_YORK, False
    rt.run(WavSource(speech["interest"]))
    assert rt.stats.utterances == 1  # the closed mic heard nothing
    assert rt.stats.silenced_frames > 0
    clock.sleep(HOUR + 900)
    rt.poll()
    rt.flush()
    rt.close()
    assert rt.outbox.count() == 0 and rt.stats.batches_queued == 0
    assert collector.seqs() == []


def test_link_down_and_low_battery_keep_batches_then_drain_in_order(
    tmp_path: Path, secure_broker: Broker, collector: Collector, speech, models
) -> None:
    rt, clock, hw = device(tmp_path, secure_broker, models, link=False)
    for _ in range(3):  # three hours, one interest utterance each
        rt.run(WavSource(speech["interest"]))
        clock.sleep(HOUR)
    clock.sleep(900)
    rt.poll()
    hw.link = True
    hw.throttle_level = Throttle.DEFER_UPLOAD  # battery low: still no radio
    rt.poll()
    assert rt.outbox.count() == 3
    hw.throttle_level = Throttle.NORMAL
    rt.poll()
    assert rt.publisher is not None and rt.publisher.wait_drained(20)
    rt.close()
    assert collector.wait_for(3) == [1, 2, 3]
    starts = [b["window_start"] for b in payloads(collector)]
    assert starts == [T0 - 60, T0 - 60 + HOUR, T0 - 60 + 2 * HOUR]


def test_a_batch_from_new_york_is_not_uploaded_from_paris(
    tmp_path: Path, secure_broker: Broker, collector: Collector, speech, models
) -> None:
    rt, clock, hw = device(tmp_path, secure_broker, models, link=False)
    rt.run(WavSource(speech["interest"]))  # heard in New York, allowed
    clock.sleep(HOUR + 900)
    hw.region = PARIS  # the window closes after landing in Paris, before any upload
    rt.poll()
    assert rt.outbox.count() == 1
    hw.link = True
    rt.poll()
    assert rt.stats.region_paused
    assert rt.publisher is not None and not rt.publisher.wait_drained(1.0)
    assert collector.seqs() == [] and rt.outbox.count() == 1
    hw.region = NEW_YORK  # home again: the held batch goes out
    rt.poll()
    assert rt.publisher.wait_drained(20)
    rt.close()
    assert not rt.stats.region_paused
    assert collector.wait_for(1) == [1]


def test_consent_revoke_discards_queue_and_sends_deletion(
    tmp_path: Path, secure_broker: Broker, collector: Collector, speech, models
) -> None:
    rt, clock, hw = device(tmp_path, secure_broker, models, link=False)
    rt.run(WavSource(speech["interest"]))
    clock.sleep(HOUR + 900)
    rt.poll()
    assert rt.outbox.count() == 1
    seq = rt.request_deletion()
    hw.link = True
    rt.run(WavSource(speech["interest"]))  # after revoke: nothing counts
    assert rt.stats.decisions["no_consent"] == 1
    rt.poll()
    assert rt.publisher is not None and rt.publisher.wait_drained(20)
    rt.close()
    assert collector.wait_for(1, kind="deletion") == [seq] == [2]
    assert collector.seqs() == []  # the queued batch never left
    assert [(s, r) for s, _, _, r, _ in Ledger(tmp_path).dropped()] == [(1, "consent_revoked")]


def test_earmark_device_command(
    tmp_path: Path, secure_broker: Broker, collector: Collector, speech
) -> None:
    env_cmd = [sys.executable, "-m", "earmark"]
    state = tmp_path / "state"
    subprocess.run(
        [*env_cmd, "consent", "grant", "--state", str(state), "--device-id", "dev-0001"],
        check=True, cwd=REPO, capture_output=True,
    )  # fmt: skip
    out = subprocess.run(
        [*env_cmd, "device", "--broker", secure_broker.url, "--device-id", "dev-0001",
         "--password", DEVICES["dev-0001"], "--state", str(state), "--engine", "pocketsphinx",
         "--wav", str(speech["interest"]), str(tmp_path / "missing.wav"),
         "--lat", "40.71", "--lon", "-74.0", "--country", "US"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "missing.wav: no such file" in out.stderr  # one bad file reported, rest processed
    assert "1 utterances (published 1); 1 batches queued, 0 still in the outbox" in out.stdout
    assert collector.wait_for(1) == [1]
    assert "planning" not in out.stdout + out.stderr


def test_earmark_device_on_a_microphone(
    tmp_path: Path, secure_broker: Broker, collector: Collector, speech
) -> None:
    """--mic through real PortAudio/ALSA: a test-owned ALSA capture device of type file."""
    from earmark.firmware_sim.speech import read_pcm

    infile = tmp_path / "mic.raw"
    infile.write_bytes(read_pcm(speech["interest"]) + bytes(16000 * 2 * 2))
    conf = tmp_path / "asound.conf"
    conf.write_text(
        "</usr/share/alsa/alsa.conf>\n"
        "pcm.earmark_device_mic {\n"
        '    type file\n    slave.pcm "null"\n    file "/dev/null"\n'
        f'    infile "{infile}"\n    format "raw"\n}}\n'
    )
    env = dict(os.environ, ALSA_CONFIG_PATH=str(conf))
    state = tmp_path / "state"
    ConsentStore(state).grant(0.0, "dev-0001")
    out = subprocess.run(
        [sys.executable, "-m", "earmark", "device", "--broker", secure_broker.url,
         "--device-id", "dev-0001", "--password", DEVICES["dev-0001"], "--state", str(state),
         "--engine", "pocketsphinx", "--mic", "--mic-device", "earmark_device_mic",
         "--max-seconds", "8", "--country", "US", "--lat", "40.71", "--lon", "-74.0"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "(published 1)" in out.stdout
    assert collector.wait_for(1) == [1]
    (batch,) = payloads(collector)
    assert [t["id"] for t in batch["tags"]] == [TRAVEL]  # type: ignore[index]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--device-id", "bad id!"], "device id 'bad id!' must match"),
        (["--lat", "40.7"], "--lat and --lon go together"),
        (["--lat", "140", "--lon", "0"], "is not a position on Earth"),
        (["--ca", "/nonexistent/ca.crt"], "need an mqtts:// broker URL"),
        (["--broker", "mqtts://127.0.0.1:1", "--ca", "/nonexistent/ca.crt"], "no such file"),
    ],
)
def test_earmark_device_bad_input_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    from earmark.cli import main

    args = ["device", "--broker", "mqtt://127.0.0.1:1", "--device-id", "dev-0001",
            "--state", str(tmp_path), "--wav", "x.wav", *extra]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("earmark: error: ") and message in err and "\n" not in err
