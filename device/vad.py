"""Endpointing: cut a continuous 16 kHz stream into utterances.

A mic that runs all day must produce one utterance per thing the user said, and nothing for
the silence and room noise between them. This is an energy detector with an adaptive noise
floor (no extra model or dependency, cheap enough for the glasses' CPU, deterministic):

* each ``frame_ms`` frame is *voiced* when its level is ``threshold_db`` above the running noise
  floor and above ``min_level_dbfs`` (so digital silence and a very quiet room stay silent);
* speech **starts** after ``start_ms`` of voiced frames; the ``pre_roll_ms`` before that start is
  sent with it, so the first syllable (often quiet) is not clipped;
* speech **ends** after ``silence_timeout_ms`` without a voiced frame, or when the utterance
  reaches ``max_utterance_ms`` (a long monologue is split rather than buffered forever);
* an utterance shorter than ``min_utterance_ms`` of voiced audio is marked ``too_short`` (a
  cough, a click); :func:`earmark.device.stt.utterances` drops it.

The noise floor is a low percentile (``floor_percentile``) of the frame levels over the last
``floor_window_ms``: steady background noise (a fan, a car) becomes the floor within a second or
two, while the pauses between words keep the floor down during speech. The first frame of a
source is its own floor, so a recording that starts in a noisy room does not start "speaking".
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import numpy as np

from earmark.device.audio import SAMPLE_RATE, AudioFrame


@dataclass(frozen=True)
class VadConfig:
    """Endpointing parameters; the defaults suit speech to an assistant at arm's length."""

    frame_ms: int = 20  # analysis frame
    threshold_db: float = 12.0  # voiced when this far above the noise floor
    min_level_dbfs: float = -50.0  # and at least this loud (full scale = 0 dB)
    start_ms: int = 60  # voiced audio needed to start an utterance
    pre_roll_ms: int = 300  # audio kept from before the start
    silence_timeout_ms: int = 700  # unvoiced audio that ends an utterance
    min_utterance_ms: int = 200  # voiced audio an utterance needs to count
    max_utterance_ms: int = 20_000  # longer speech is cut into pieces of this length
    floor_window_ms: int = 5000  # history the noise floor is estimated from
    floor_percentile: float = 10.0  # the floor is this percentile of recent frame levels

    def __post_init__(self) -> None:
        if self.frame_ms not in (10, 20, 30, 40, 50, 60):
            raise ValueError("frame_ms must be 10-60 in steps of 10")
        for name in ("start_ms", "pre_roll_ms", "silence_timeout_ms", "min_utterance_ms"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        if self.max_utterance_ms < self.min_utterance_ms or self.max_utterance_ms <= 0:
            raise ValueError("max_utterance_ms must be positive and >= min_utterance_ms")


@dataclass(frozen=True)
class SpeechStart:
    start: float  # seconds in the source, including pre-roll


@dataclass(frozen=True)
class SpeechChunk:
    pcm: bytes  # 16 kHz mono int16, part of the current utterance
    start: float


@dataclass(frozen=True)
class SpeechEnd:
    end: float  # seconds in the source
    voiced_s: float  # seconds of voiced audio in the utterance
    too_short: bool  # fewer than min_utterance_ms voiced: a click, not speech
    forced: bool  # cut at max_utterance_ms rather than by silence


VadEvent = SpeechStart | SpeechChunk | SpeechEnd


def level_dbfs(pcm: bytes) -> float:
    """RMS level of int16 PCM in dB relative to full scale (-120 for digital silence)."""
    x = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    if x.size == 0:
        return -120.0
    rms = math.sqrt(float(np.dot(x, x)) / x.size) / 32768.0
    return 20.0 * math.log10(rms) if rms > 1e-6 else -120.0


class Endpointer:
    """Feed frames of any size; get start / chunk / end events in order."""

    def __init__(self, config: VadConfig | None = None) -> None:
        self.config = config or VadConfig()
        c = self.config
        self._frame_bytes = SAMPLE_RATE * c.frame_ms // 1000 * 2
        self._frame_s = c.frame_ms / 1000
        self._pending = b""
        self._pending_start = 0.0
        self._levels = np.zeros(max(1, c.floor_window_ms // c.frame_ms))
        self._n_levels = 0
        self._pre: deque[tuple[bytes, float]] = deque(maxlen=max(1, c.pre_roll_ms // c.frame_ms))
        self._in_speech = False
        self._voiced_run = 0  # consecutive voiced frames while waiting to start
        self._silence_run = 0
        self._voiced = 0
        self._length = 0  # frames in the current utterance
        self._end = 0.0

    @property
    def in_speech(self) -> bool:
        return self._in_speech

    def feed(self, frame: AudioFrame) -> list[VadEvent]:
        """Take a frame from a source; return the events it completes."""
        if not self._pending:
            self._pending_start = frame.start
        self._pending += frame.pcm
        events: list[VadEvent] = []
        fb = self._frame_bytes
        while len(self._pending) >= fb:
            chunk, self._pending = self._pending[:fb], self._pending[fb:]
            start = self._pending_start
            self._pending_start += self._frame_s
            events.extend(self._step(chunk, start))
        return events

    def flush(self) -> list[VadEvent]:
        """End of the source: close an utterance still open."""
        events: list[VadEvent] = []
        if self._pending and self._in_speech:
            events.append(SpeechChunk(self._pending, self._pending_start))
            self._end = self._pending_start + len(self._pending) / 2 / SAMPLE_RATE
        self._pending = b""
        if self._in_speech:
            events.append(self._finish(forced=False))
        return events

    def _is_voiced(self, level: float) -> bool:
        c = self.config
        self._levels[self._n_levels % len(self._levels)] = level
        self._n_levels += 1
        history = self._levels[: min(self._n_levels, len(self._levels))]
        k = int(c.floor_percentile / 100 * (len(history) - 1))
        floor = float(np.partition(history, k)[k])
        return level >= c.min_level_dbfs and level >= floor + c.threshold_db

    def _step(self, pcm: bytes, start: float) -> list[VadEvent]:
        c = self.config
        voiced = self._is_voiced(level_dbfs(pcm))
        end = start + self._frame_s
        if not self._in_speech:
            self._pre.append((pcm, start))
            self._voiced_run = self._voiced_run + 1 if voiced else 0
            if self._voiced_run * c.frame_ms < max(c.start_ms, c.frame_ms):
                return []
            # speech starts: emit the pre-roll (which includes the voiced run)
            self._in_speech = True
            self._voiced, self._silence_run = self._voiced_run, 0
            self._length = len(self._pre)
            self._voiced_run = 0
            frames = list(self._pre)
            self._pre.clear()
            self._end = end
            started: list[VadEvent] = [SpeechStart(frames[0][1])]
            return started + [SpeechChunk(p, s) for p, s in frames]
        events: list[VadEvent] = [SpeechChunk(pcm, start)]
        self._length += 1
        self._end = end
        if voiced:
            self._voiced += 1
            self._silence_run = 0
        else:
            self._silence_run += 1
        if self._silence_run * c.frame_ms >= c.silence_timeout_ms:
            events.append(self._finish(forced=False))
        elif self._length * c.frame_ms >= c.max_utterance_ms:
            events.append(self._finish(forced=True))
        return events

    def _finish(self, forced: bool) -> SpeechEnd:
        c = self.config
        voiced_s = self._voiced * self._frame_s
        self._in_speech = False
        self._silence_run = self._voiced = self._length = 0
        return SpeechEnd(
            self._end, voiced_s, too_short=voiced_s * 1000 < c.min_utterance_ms, forced=forced
        )
