"""The glasses' microphone: plays recorded or synthesised PCM as an AudioSource.

Why: :class:`earmark.device.runtime.DeviceRuntime` reads an
:class:`earmark.device.audio.AudioSource`; a real device passes its MEMS microphone, the
simulator passes :class:`SimMic`. The frames are the same 16 kHz mono int16 frames. While it
plays, SimMic moves the :class:`~earmark.firmware_sim.simclock.SimClock` forward by each
frame's duration, so the device's timestamps follow the audio exactly as they would on real
hardware; with a real-time clock (``realtime=True``) it sleeps instead, like a live microphone.

Options model the acoustic path: ``gain_db`` (a quiet or loud wearer) and ``noise_dbfs``
(steady white noise, a seeded generator so runs repeat). Samples clip at int16 like a real
ADC.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from earmark.device.audio import SAMPLE_RATE, AudioFrame
from earmark.errors import EarmarkError

FRAME_MS = 20


class SimMic:
    """One stretch of sound reaching the microphone (an utterance with silence around it)."""

    def __init__(
        self,
        pcm: bytes,
        *,
        clock: object | None = None,
        name: str = "sim-mic",
        gain_db: float = 0.0,
        noise_dbfs: float | None = None,
        seed: int = 0,
        realtime: bool = False,
        frame_ms: int = FRAME_MS,
    ) -> None:
        if len(pcm) % 2:
            raise EarmarkError(f"{name}: PCM must be whole int16 samples")
        self.name = name
        self.clock = clock
        self.realtime = realtime
        self.frame_bytes = SAMPLE_RATE * frame_ms // 1000 * 2
        self.pcm = shape(pcm, gain_db, noise_dbfs, seed)
        self._closed = False

    @classmethod
    def from_wav(cls, path: str | Path, **kw: object) -> SimMic:
        from earmark.firmware_sim.speech import read_pcm

        try:
            pcm = read_pcm(path)
        except (OSError, ValueError, EOFError) as err:
            raise EarmarkError(f"cannot play {path}: {err}") from None
        return cls(pcm, name=Path(path).name, **kw)  # type: ignore[arg-type]

    @property
    def duration(self) -> float:
        return len(self.pcm) / 2 / SAMPLE_RATE

    def frames(self) -> Iterator[AudioFrame]:
        step = self.frame_bytes
        dt = step / 2 / SAMPLE_RATE
        t0 = time.monotonic()
        for i in range(0, len(self.pcm), step):
            if self._closed:
                return
            chunk = self.pcm[i : i + step]
            if len(chunk) < step:
                chunk = chunk + bytes(step - len(chunk))
            if self.realtime:  # against a deadline, so processing time does not add up
                time.sleep(max(0.0, t0 + (i + step) / 2 / SAMPLE_RATE - time.monotonic()))
            elif self.clock is not None:
                self.clock.advance(dt)  # type: ignore[attr-defined]
            yield AudioFrame(pcm=chunk, start=i / 2 / SAMPLE_RATE)

    def close(self) -> None:
        self._closed = True


def silence(seconds: float) -> bytes:
    return bytes(int(round(seconds * SAMPLE_RATE)) * 2)


def shape(
    pcm: bytes, gain_db: float = 0.0, noise_dbfs: float | None = None, seed: int = 0
) -> bytes:
    """Apply gain and add white noise at ``noise_dbfs`` (RMS relative to full scale)."""
    if gain_db == 0.0 and noise_dbfs is None:
        return pcm
    x = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    x *= 10 ** (gain_db / 20)
    if noise_dbfs is not None:
        rms = 32767.0 * 10 ** (noise_dbfs / 20)
        x += np.random.default_rng(seed).normal(0.0, rms, size=x.shape)
    return np.clip(np.round(x), -32768, 32767).astype("<i2").tobytes()
