"""The microphone, through PortAudio (``sounddevice``).

Capture runs in PortAudio's callback thread and only copies bytes into a queue, so a slow
recogniser never makes the sound card overrun: recognition drains the queue at its own pace.
If recognition falls so far behind that the queue is full (``max_queue_s`` of audio), the
oldest audio is dropped and counted in ``dropped_s`` rather than growing memory without bound.

The device is chosen by index or by (part of) its name; ``earmark devices`` lists them. When
the device cannot capture at 16 kHz we open it at its default rate and resample.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from earmark.device.audio import (
    FRAME_MS,
    SAMPLE_RATE,
    AudioFrame,
    Resampler,
    frames_from_blocks,
    to_int16_bytes,
)
from earmark.errors import AudioError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InputDevice:
    index: int
    name: str
    channels: int
    default_rate: float
    is_default: bool


def _sd() -> Any:
    try:
        import sounddevice
    except OSError as err:  # PortAudio library missing
        raise AudioError(f"microphone unavailable: PortAudio could not be loaded ({err})") from None
    return sounddevice


def list_input_devices() -> list[InputDevice]:
    """Every device that can capture, as PortAudio sees it."""
    sd = _sd()
    try:
        default_in = sd.default.device[0]
        devices = sd.query_devices()
    except Exception as err:
        raise AudioError(f"cannot list audio devices ({err})") from None
    return [
        InputDevice(i, d["name"], d["max_input_channels"], d["default_samplerate"], i == default_in)
        for i, d in enumerate(devices)
        if d["max_input_channels"] > 0
    ]


def find_input_device(device: int | str | None) -> InputDevice:
    """Resolve an index, an exact name or a unique part of a name; None means the default."""
    devices = list_input_devices()
    if not devices:
        raise AudioError("no capture device found (is a microphone connected?)")
    if device is None or device == "":
        return next((d for d in devices if d.is_default), devices[0])
    if isinstance(device, int) or (isinstance(device, str) and device.isdigit()):
        idx = int(device)
        for d in devices:
            if d.index == idx:
                return d
        raise AudioError(f"audio device {idx}: no capture device with that index")
    exact = [d for d in devices if d.name == device]
    if exact:
        return exact[0]
    partial = [d for d in devices if device.lower() in d.name.lower()]
    if len(partial) == 1:
        return partial[0]
    if partial:
        names = ", ".join(repr(d.name) for d in partial)
        raise AudioError(f"audio device {device!r} is ambiguous: {names}")
    raise AudioError(f"audio device {device!r}: no capture device by that name (earmark devices)")


class MicSource:
    """Live 16 kHz mono frames from a capture device, until ``close()`` or ``max_seconds``."""

    def __init__(
        self,
        device: int | str | None = None,
        max_seconds: float | None = None,
        frame_ms: int = FRAME_MS,
        max_queue_s: float = 30.0,
    ) -> None:
        self.device = find_input_device(device)
        self.name = f"mic:{self.device.name}"
        self.max_seconds = max_seconds
        self.frame_ms = frame_ms
        self.dropped_s = 0.0
        sd = _sd()
        self.rate = SAMPLE_RATE
        try:
            sd.check_input_settings(self.device.index, channels=1, dtype="int16", samplerate=16000)
        except Exception:
            self.rate = int(self.device.default_rate)
        block = self.rate * frame_ms // 1000
        self._queue: queue.Queue[bytes | None] = queue.Queue(
            maxsize=max(1, int(max_queue_s * 1000 / frame_ms))
        )
        self._closed = threading.Event()
        self._limit_bytes = None if max_seconds is None else int(max_seconds * self.rate) * 2
        self._captured = 0
        try:
            self._stream = sd.RawInputStream(
                samplerate=self.rate,
                blocksize=block,
                device=self.device.index,
                channels=1,
                dtype="int16",
                callback=self._callback,
            )
            self._stream.start()
        except Exception as err:
            raise AudioError(f"{self.name}: cannot open for capture ({err})") from None
        log.info("capturing from %s at %d Hz", self.device.name, self.rate)

    def _callback(self, indata: Any, frames: int, time: Any, status: Any) -> None:
        if status:
            log.debug("capture status: %s", status)
        data = bytes(indata)
        if self._limit_bytes is not None:
            # capture stops at max_seconds (a device without a clock, such as an ALSA file
            # device, delivers audio faster than real time and would otherwise overrun)
            data = data[: self._limit_bytes - self._captured]
            self._captured += len(data)
            if self._captured >= self._limit_bytes:
                self._put(data)
                self._put(None)
                raise _sd().CallbackStop
        self._put(data)

    def _put(self, data: bytes | None) -> None:
        try:
            self._queue.put_nowait(data)
        except queue.Full:  # recognition is far behind: drop the oldest block, keep the newest
            try:
                self._queue.get_nowait()
                self.dropped_s += self.frame_ms / 1000
            except queue.Empty:
                pass
            self._queue.put_nowait(data)

    def _blocks(self) -> Iterator[bytes]:
        resampler = Resampler(self.rate)
        while not self._closed.is_set():
            try:
                raw = self._queue.get(timeout=0.1)
            except queue.Empty:
                continue
            if raw is None:
                break
            if self.rate == SAMPLE_RATE:
                yield raw
            else:
                x = np.frombuffer(raw, dtype="<i2").astype(np.float64) / 32768.0
                yield to_int16_bytes(resampler.process(x))
        if self.rate != SAMPLE_RATE:
            yield to_int16_bytes(resampler.flush())
        self.close()

    def frames(self) -> Iterator[AudioFrame]:
        return frames_from_blocks(self._blocks(), self.frame_ms)

    def close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        try:
            self._stream.stop()
            self._stream.close()
        except Exception as err:  # closing a stream whose device vanished
            log.debug("closing capture stream: %s", err)
        try:
            self._queue.put_nowait(None)
        except queue.Full:
            pass
