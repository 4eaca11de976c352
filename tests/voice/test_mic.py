"""The microphone path through real PortAudio and ALSA, without microphone hardware.

A test-owned ALSA config defines a capture PCM of ``type file`` whose ``infile`` is raw s16le
audio: PortAudio sees it as a capture device and delivers the file's samples. PortAudio reads
the ALSA config once, when it initialises, so each check runs in a subprocess with
ALSA_CONFIG_PATH pointing at the test's config; nothing else on the machine sees it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.voice.conftest import read_pcm

pytestmark = pytest.mark.slow

DEVICE = "earmark_test_mic"


@pytest.fixture(scope="module")
def alsa_env(tmp_path_factory: pytest.TempPathFactory, clips: list[tuple[Path, str]]) -> dict:
    """Environment whose ALSA config has a file-backed capture device playing goforward.raw."""
    root = tmp_path_factory.mktemp("alsa")
    speech = read_pcm(next(p for p, _ in clips if p.name == "goforward.raw"))
    infile = root / "mic.raw"
    infile.write_bytes(b"\x00\x00" * 8000 + speech + b"\x00\x00" * 16000 * 2)
    conf = root / "asound.conf"
    conf.write_text(
        "</usr/share/alsa/alsa.conf>\n"  # the stock definitions (pcm types, ctl, ...)
        f"pcm.{DEVICE} {{\n"
        "    type file\n"
        '    slave.pcm "null"\n'
        '    file "/dev/null"\n'
        f'    infile "{infile}"\n'
        '    format "raw"\n'
        "}\n"
    )
    env = dict(os.environ, ALSA_CONFIG_PATH=str(conf), PYTHONUNBUFFERED="1")
    env["EARMARK_TEST_MIC_FILE"] = str(infile)
    return env


def run_py(code: str, env: dict) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )


def test_device_is_listed(alsa_env: dict) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "earmark", "devices"],
        env=alsa_env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert DEVICE in out.stdout


def test_mic_delivers_the_samples_by_name_and_by_index(alsa_env: dict) -> None:
    code = f"""
import json, os
from earmark.device.mic import MicSource, find_input_device
expected = open(os.environ["EARMARK_TEST_MIC_FILE"], "rb").read()
index = find_input_device("{DEVICE}").index
for dev in ("{DEVICE}", index):
    mic = MicSource(dev, max_seconds=1.5)
    frames = list(mic.frames())
    pcm = b"".join(f.pcm for f in frames)
    starts_ok = all(abs(b.start - a.start - 0.02) < 1e-9 for a, b in zip(frames, frames[1:]))
    print(json.dumps({{"rate": mic.rate, "n": len(pcm), "same": pcm == expected[:len(pcm)],
                      "starts_ok": starts_ok, "dropped": mic.dropped_s}}))
"""
    out = run_py(code, alsa_env)
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert len(rows) == 2
    for row in rows:
        assert row["rate"] == 16000
        assert row["n"] == 16000 * 2 * 3 // 2  # 1.5 s of int16
        assert row["same"], "the mic did not deliver the file's samples"
        assert row["starts_ok"] and row["dropped"] == 0.0


def test_speech_from_the_mic_is_transcribed(alsa_env: dict) -> None:
    code = f"""
import os
from earmark.device.audio import RawPcmSource
from earmark.device.mic import MicSource
from earmark.device.stt import PocketSphinxEngine, utterances
for source in (MicSource("{DEVICE}", max_seconds=4.5),
               RawPcmSource(os.environ["EARMARK_TEST_MIC_FILE"])):
    for t in utterances(source, PocketSphinxEngine()):
        print(f"{{type(source).__name__}} {{t.start:.2f}} {{t.end:.2f}} {{t.text}}")
"""
    out = run_py(code, alsa_env)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 2, lines
    mic, start, _, text = lines[0].split(" ", 3)
    assert mic == "MicSource" and text.startswith("go forward ten")
    assert 0.4 <= float(start) <= 1.0  # the file starts with 0.5 s of silence
    # the mic path hears exactly what the file path hears
    assert lines[0].split(" ", 1)[1] == lines[1].split(" ", 1)[1]


def test_unknown_device_is_a_clear_error(alsa_env: dict) -> None:
    code = """
from earmark.device.mic import MicSource
from earmark.errors import AudioError
for dev in ("no-such-microphone", 999):
    try:
        MicSource(dev)
    except AudioError as err:
        print(err)
"""
    out = run_py(code, alsa_env)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert "no capture device by that name" in lines[0]
    assert "no capture device with that index" in lines[1]


def test_a_lagging_reader_drops_the_oldest_audio_not_memory(alsa_env: dict) -> None:
    # the ALSA file device has no clock: it captures far faster than real time, exactly the
    # situation of a recogniser that has fallen behind a real microphone
    code = f"""
import json, time
from earmark.device.mic import MicSource
mic = MicSource("{DEVICE}", max_queue_s=0.5)
time.sleep(1.0)
held = mic._queue.qsize()
mic.close()
print(json.dumps({{"held": held, "dropped": mic.dropped_s}}))
"""
    out = run_py(code, alsa_env)
    assert out.returncode == 0, out.stderr
    row = json.loads(out.stdout.splitlines()[-1])
    assert row["dropped"] > 0.0
    assert row["held"] <= 25  # 0.5 s of 20 ms blocks
