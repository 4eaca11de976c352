"""Audio sources: everything becomes 16 kHz mono int16 frames before it reaches earmark.

Why one frame format: the endpointer and both speech engines want 16 kHz mono int16, so the
conversion happens once, at the edge, and nothing downstream has to care where audio came from
(a WAV file, raw PCM, the microphone in :mod:`earmark.device.mic`, or the simulated glasses).

Files are streamed in blocks and never loaded whole, so an all-day recording costs the same
memory as a short clip. Problems with a file (missing, not audio, truncated, empty, an encoding
we cannot decode) are found when the source is opened, before any frame is produced, and raised
as :class:`earmark.errors.AudioError` with one line that names the file.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

import numpy as np

from earmark.errors import AudioError

SAMPLE_RATE = 16_000
FRAME_MS = 20  # what sources yield; the endpointer re-chunks to its own frame size
_BLOCK_FRAMES = 50  # frames read from disk per read() call (one second at 20 ms)

_FMT_PCM = 0x0001
_FMT_FLOAT = 0x0003
_FMT_EXTENSIBLE = 0xFFFE
_FMT_NAMES = {0x0002: "MS ADPCM", 0x0006: "A-law", 0x0007: "mu-law", 0x0011: "IMA ADPCM",
              0x0055: "MP3", 0x0050: "MPEG"}  # fmt: skip


@dataclass(frozen=True)
class AudioFrame:
    """A slice of 16 kHz mono int16 little-endian audio and where it starts in the source."""

    pcm: bytes
    start: float  # seconds since the source started

    @property
    def duration(self) -> float:
        return len(self.pcm) / 2 / SAMPLE_RATE


class AudioSource(Protocol):
    """Anything that yields frames: WavSource, RawPcmSource, MicSource, the simulated mic."""

    name: str

    def frames(self) -> Iterator[AudioFrame]: ...

    def close(self) -> None: ...


class Resampler:
    """Streaming sample-rate converter for float mono audio.

    A windowed-sinc low-pass (when reducing the rate, so high frequencies do not fold back as
    noise the recogniser would hear) followed by linear interpolation. State is carried between
    blocks, so feeding a file in blocks gives the same output as feeding it whole.
    """

    def __init__(self, src_rate: int, dst_rate: int = SAMPLE_RATE, taps: int = 63) -> None:
        if src_rate <= 0 or dst_rate <= 0:
            raise ValueError("sample rates must be positive")
        self.src_rate, self.dst_rate = src_rate, dst_rate
        self._step = src_rate / dst_rate
        self._kernel: np.ndarray | None = None
        if src_rate > dst_rate:
            cutoff = 0.45 * dst_rate / src_rate  # cycles per input sample, a little under Nyquist
            n = np.arange(taps) - (taps - 1) / 2
            kernel = 2 * cutoff * np.sinc(2 * cutoff * n) * np.hamming(taps)
            self._kernel = (kernel / kernel.sum()).astype(np.float64)
            self._hist = np.zeros(taps - 1)
        self._delay = 0 if self._kernel is None else (taps - 1) // 2  # filter lag, in samples
        self._tail = np.zeros(0)
        self._t = float(self._delay)  # next output position in buffer coordinates (lag-free)
        self._fed = 0
        self._made = 0

    def process(self, x: np.ndarray) -> np.ndarray:
        if self.src_rate == self.dst_rate:
            return x
        x = x.astype(np.float64)
        self._fed += len(x)
        if self._kernel is not None:
            padded = np.concatenate([self._hist, x])
            self._hist = padded[len(padded) - len(self._hist) :]
            x = np.convolve(padded, self._kernel, mode="valid")
        buf = np.concatenate([self._tail, x])
        last = len(buf) - 1
        if last < self._t:
            self._tail, self._t = buf, self._t
            return np.zeros(0)
        count = int(np.floor((last - self._t) / self._step)) + 1
        positions = self._t + self._step * np.arange(count)
        out = np.interp(positions, np.arange(len(buf)), buf)
        self._t = positions[-1] + self._step - last
        self._tail = buf[last:]
        self._made += len(out)
        return out

    def flush(self) -> np.ndarray:
        """The output still inside the filter at the end of the input (its lag)."""
        if self.src_rate == self.dst_rate or self._fed == 0:
            return np.zeros(0)
        want = int(self._fed * self.dst_rate / self.src_rate) - self._made
        if want <= 0:
            return np.zeros(0)
        out = self.process(np.zeros(self._delay + int(self._step) + 2))[:want]
        self._fed = self._made = 0
        return out


def to_int16_bytes(samples: np.ndarray) -> bytes:
    """Float samples in [-1, 1] to int16 little-endian bytes, clipped."""
    return (np.clip(samples, -1.0, 1.0) * 32767.0).round().astype("<i2").tobytes()


def frames_from_blocks(blocks: Iterator[bytes], frame_ms: int) -> Iterator[AudioFrame]:
    """Cut a stream of 16 kHz int16 byte blocks into frames of ``frame_ms``."""
    frame_bytes = SAMPLE_RATE * frame_ms // 1000 * 2
    pending = b""
    produced = 0  # samples already yielded
    for block in blocks:
        pending += block
        while len(pending) >= frame_bytes:
            yield AudioFrame(pending[:frame_bytes], produced / SAMPLE_RATE)
            pending = pending[frame_bytes:]
            produced += frame_bytes // 2
    if len(pending) >= 2:
        pending = pending[: len(pending) // 2 * 2]
        yield AudioFrame(pending, produced / SAMPLE_RATE)


@dataclass(frozen=True)
class WavFormat:
    """What the header of a WAV file says about its samples."""

    rate: int
    channels: int
    width: int  # bytes per sample
    is_float: bool
    data_offset: int
    data_bytes: int  # bytes of sample data actually present to read


def read_wav_header(path: Path, f: BinaryIO) -> WavFormat:
    """Parse the RIFF chunks up to ``data``; raise AudioError for anything we cannot decode."""
    size = os.fstat(f.fileno()).st_size
    head = f.read(12)
    if len(head) == 0:
        raise AudioError(f"{path}: zero-length file, no audio in it")
    if len(head) < 12 or head[:4] not in (b"RIFF", b"RF64") or head[8:12] != b"WAVE":
        raise AudioError(f"{path}: not a WAV file (no RIFF/WAVE header); raw PCM needs .raw/.pcm")
    if head[:4] == b"RF64":
        raise AudioError(f"{path}: unsupported encoding: RF64 WAV; convert to a plain WAV")
    fmt: tuple[int, int, int, int] | None = None
    while True:
        chunk = f.read(8)
        if len(chunk) < 8:
            what = "no data chunk" if fmt else "no fmt chunk"
            raise AudioError(f"{path}: truncated WAV file ({what})")
        cid, clen = chunk[:4], struct.unpack("<I", chunk[4:])[0]
        if cid == b"fmt ":
            body = f.read(clen)
            if len(body) < 16:
                raise AudioError(f"{path}: truncated WAV file (short fmt chunk)")
            tag, channels, rate, _, _, bits = struct.unpack("<HHIIHH", body[:16])
            if tag == _FMT_EXTENSIBLE and len(body) >= 26:
                tag = struct.unpack("<H", body[24:26])[0]
            fmt = (tag, channels, rate, bits)
            if clen % 2:
                f.read(1)
        elif cid == b"data":
            if fmt is None:
                raise AudioError(f"{path}: not a valid WAV file (data before fmt chunk)")
            break
        else:
            f.seek(clen + (clen % 2), os.SEEK_CUR)
    tag, channels, rate, bits = fmt
    if tag not in (_FMT_PCM, _FMT_FLOAT):
        name = _FMT_NAMES.get(tag, f"format tag 0x{tag:04x}")
        raise AudioError(f"{path}: unsupported encoding: {name}; use PCM or float WAV")
    is_float = tag == _FMT_FLOAT
    ok_bits = (32, 64) if is_float else (8, 16, 24, 32)
    if bits not in ok_bits:
        kind = "float" if is_float else "PCM"
        raise AudioError(f"{path}: unsupported encoding: {bits}-bit {kind}")
    if channels < 1 or rate < 1000 or rate > 384_000:
        raise AudioError(f"{path}: not a usable WAV file ({channels} channels at {rate} Hz)")
    offset = f.tell()
    available = size - offset
    if clen in (0xFFFFFFFF, 0) and available > 0:
        clen = available  # written by a streaming recorder that never patched the size
    block_align = channels * bits // 8
    if clen == 0 or available <= 0:
        raise AudioError(f"{path}: zero-length audio (the data chunk is empty)")
    if available < clen:
        raise AudioError(
            f"{path}: truncated WAV file (header promises {clen} bytes of audio, {available} there)"
        )
    data = clen - clen % block_align
    if data == 0:
        raise AudioError(f"{path}: zero-length audio (less than one sample)")
    return WavFormat(rate, channels, bits // 8, is_float, offset, data)


def _decode(raw: bytes, width: int, is_float: bool, channels: int) -> np.ndarray:
    """Interleaved sample bytes to mono float64 in [-1, 1] (channels averaged)."""
    if is_float:
        x = np.frombuffer(raw, dtype="<f4" if width == 4 else "<f8").astype(np.float64)
    elif width == 1:
        x = (np.frombuffer(raw, dtype=np.uint8).astype(np.float64) - 128.0) / 128.0
    elif width == 2:
        x = np.frombuffer(raw, dtype="<i2").astype(np.float64) / 32768.0
    elif width == 3:
        b = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
        v = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        x = (np.where(v >= 1 << 23, v - (1 << 24), v)).astype(np.float64) / float(1 << 23)
    else:
        x = np.frombuffer(raw, dtype="<i4").astype(np.float64) / float(1 << 31)
    if channels > 1:
        x = x.reshape(-1, channels).mean(axis=1)
    return x


class _FileSource:
    """A file read block by block; subclasses say how blocks become 16 kHz int16 bytes."""

    frame_ms: int
    _file: BinaryIO

    def _blocks(self) -> Iterator[bytes]:
        raise NotImplementedError

    def frames(self) -> Iterator[AudioFrame]:
        return frames_from_blocks(self._blocks(), self.frame_ms)

    def close(self) -> None:
        self._file.close()


class WavSource(_FileSource):
    """A WAV file of any common rate, width and channel count, as 16 kHz mono frames."""

    def __init__(self, path: str | os.PathLike[str], frame_ms: int = FRAME_MS) -> None:
        self.path = Path(path)
        self.name = str(path)
        self.frame_ms = frame_ms
        self._file = _open(self.path)
        try:
            self.format = read_wav_header(self.path, self._file)
        except Exception:
            self._file.close()
            raise

    @property
    def duration(self) -> float:
        fmt = self.format
        return fmt.data_bytes / (fmt.channels * fmt.width) / fmt.rate

    def _blocks(self) -> Iterator[bytes]:
        fmt = self.format
        align = fmt.channels * fmt.width
        block = max(1, fmt.rate * FRAME_MS // 1000 * _BLOCK_FRAMES) * align
        self._file.seek(fmt.data_offset)
        left = fmt.data_bytes
        native = fmt.rate == SAMPLE_RATE and fmt.channels == 1 and fmt.width == 2
        resampler = Resampler(fmt.rate)
        while left > 0:
            raw = self._file.read(min(block, left))
            if not raw:
                raise AudioError(f"{self.path}: truncated WAV file (ended while reading)")
            left -= len(raw)
            raw = raw[: len(raw) - len(raw) % align]
            if native and not fmt.is_float:
                yield raw
            else:
                x = _decode(raw, fmt.width, fmt.is_float, fmt.channels)
                yield to_int16_bytes(resampler.process(x))
        yield to_int16_bytes(resampler.flush())


class RawPcmSource(_FileSource):
    """Headerless signed 16-bit little-endian mono PCM at a stated rate."""

    def __init__(
        self, path: str | os.PathLike[str], rate: int = SAMPLE_RATE, frame_ms: int = FRAME_MS
    ) -> None:
        self.path = Path(path)
        self.name = str(path)
        self.rate = rate
        self.frame_ms = frame_ms
        self._file = _open(self.path)
        size = os.fstat(self._file.fileno()).st_size
        if size < 2:
            self._file.close()
            raise AudioError(f"{self.path}: zero-length audio (empty raw PCM file)")
        self.duration = size // 2 / rate

    def _blocks(self) -> Iterator[bytes]:
        resampler = Resampler(self.rate)
        block = self.rate * 2  # one second
        while raw := self._file.read(block):
            raw = raw[: len(raw) // 2 * 2]
            if self.rate == SAMPLE_RATE:
                yield raw
            else:
                x = np.frombuffer(raw, dtype="<i2").astype(np.float64) / 32768.0
                yield to_int16_bytes(resampler.process(x))
        yield to_int16_bytes(resampler.flush())


class PcmBufferSource:
    """16 kHz mono int16 audio already in memory (tests, synthesised speech, the simulator)."""

    def __init__(self, pcm: bytes, name: str = "buffer", frame_ms: int = FRAME_MS) -> None:
        self.name = name
        self.pcm = pcm
        self.frame_ms = frame_ms

    def frames(self) -> Iterator[AudioFrame]:
        return frames_from_blocks(iter([self.pcm]), self.frame_ms)

    def close(self) -> None:
        return None


RAW_SUFFIXES = (".raw", ".pcm", ".s16le")


def open_audio(path: str | os.PathLike[str], raw_rate: int = SAMPLE_RATE) -> AudioSource:
    """A source for a file: raw PCM by suffix (.raw/.pcm/.s16le), otherwise WAV."""
    p = Path(path)
    if p.suffix.lower() in RAW_SUFFIXES:
        return RawPcmSource(p, rate=raw_rate)
    return WavSource(p)


def _open(path: Path) -> BinaryIO:
    try:
        return open(path, "rb")
    except FileNotFoundError:
        raise AudioError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise AudioError(f"{path}: is a directory, not an audio file") from None
    except PermissionError:
        raise AudioError(f"{path}: permission denied") from None
    except OSError as err:
        raise AudioError(f"{path}: cannot open ({err.strerror})") from None


def write_wav(path: str | os.PathLike[str], pcm: bytes, rate: int = SAMPLE_RATE) -> Path:
    """Write 16-bit mono PCM as a WAV file (used by synthesis and tests)."""
    import wave

    p = Path(path)
    with wave.open(str(p), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm)
    return p
