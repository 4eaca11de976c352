"""Audio sources: every common WAV layout becomes the same 16 kHz mono int16 stream."""

from __future__ import annotations

import struct
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from earmark.device.audio import (
    SAMPLE_RATE,
    PcmBufferSource,
    RawPcmSource,
    Resampler,
    WavSource,
    open_audio,
)
from earmark.errors import AudioError
from tests.voice.conftest import read_pcm, samples


def wav_bytes(data: bytes, rate: int, channels: int, bits: int, tag: int = 1) -> bytes:
    """A WAV file built by hand, so every format tag and width can be written."""
    align = channels * bits // 8
    fmt = struct.pack("<HHIIHH", tag, channels, rate, rate * align, align, bits)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt
    body += b"LIST" + struct.pack("<I", 4) + b"INFO"  # an unknown chunk to skip
    body += b"data" + struct.pack("<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", len(body)) + body


def encode(x: np.ndarray, bits: int, is_float: bool = False) -> bytes:
    """Float samples (frames x channels) to interleaved little-endian bytes."""
    if is_float:
        return x.astype("<f4").tobytes()
    if bits == 8:
        return (np.clip(x * 128 + 128, 0, 255)).astype(np.uint8).tobytes()
    if bits == 16:
        return (x * 32767).astype("<i2").tobytes()
    if bits == 24:
        v = (x * (2**23 - 1)).astype("<i4").reshape(-1, 1).view(np.uint8).reshape(-1, 4)
        return v[:, :3].tobytes()
    return (x * (2**31 - 1)).astype("<i4").tobytes()


def resample_linear(x: np.ndarray, src: int, dst: int) -> np.ndarray:
    n = int(len(x) * dst / src)
    return np.interp(np.arange(n) * src / dst, np.arange(len(x)), x)


def all_pcm(source: object) -> bytes:
    return b"".join(f.pcm for f in source.frames())  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def reference(clips: list[tuple[Path, str]]) -> np.ndarray:
    """A real speech clip (cards 005, 3.5 s) as float samples at 16 kHz."""
    path = next(p for p, _ in clips if p.name == "005.wav")
    return samples(read_pcm(path))


@pytest.mark.parametrize(
    ("rate", "channels", "bits", "is_float"),
    [
        (16000, 1, 16, False),
        (8000, 1, 16, False),
        (22050, 1, 8, False),
        (44100, 2, 16, False),
        (48000, 2, 24, False),
        (32000, 1, 32, False),
        (44100, 1, 32, True),
    ],
)
def test_wav_formats_become_16k_mono(
    tmp_path: Path, reference: np.ndarray, rate: int, channels: int, bits: int, is_float: bool
) -> None:
    x = resample_linear(reference, SAMPLE_RATE, rate) * 0.8
    frames = np.repeat(x[:, None], channels, axis=1)
    if channels == 2:
        frames[:, 1] *= 0.5  # a quieter right channel: the downmix is their mean
    path = tmp_path / "clip.wav"
    path.write_bytes(
        wav_bytes(encode(frames, bits, is_float), rate, channels, bits, 3 if is_float else 1)
    )

    src = WavSource(path)
    got = samples(all_pcm(src))
    src.close()

    expected = reference * 0.8 * (0.75 if channels == 2 else 1.0)
    assert abs(len(got) - len(expected)) <= 2
    n = min(len(got), len(expected))
    if rate < SAMPLE_RATE:  # upsampled audio has no content above the old Nyquist
        corr = np.corrcoef(
            got[:n], resample_linear(resample_linear(expected, 16000, rate), rate, 16000)[:n]
        )[0, 1]
    else:
        corr = np.corrcoef(got[:n], expected[:n])[0, 1]
    assert corr > 0.97, f"converted audio does not match the original (r={corr:.3f})"


def test_frames_are_contiguous_and_timed(clips: list[tuple[Path, str]]) -> None:
    path = clips[0][0]
    frames = list(WavSource(path).frames())
    assert all(len(f.pcm) == 640 for f in frames[:-1])  # 20 ms of int16 at 16 kHz
    for a, b in zip(frames, frames[1:], strict=False):
        assert b.start == pytest.approx(a.start + a.duration)
    assert b"".join(f.pcm for f in frames) == read_pcm(path)


def test_resampler_in_blocks_matches_whole(reference: np.ndarray) -> None:
    whole = Resampler(44100).process(resample_linear(reference, 16000, 44100))
    r = Resampler(44100)
    x = resample_linear(reference, 16000, 44100)
    cuts = [0, 1, 7, 441, 1000, 5000, 20000, len(x)]
    parts = [r.process(x[a:b]) for a, b in zip(cuts, cuts[1:], strict=False)]
    assert np.allclose(np.concatenate(parts), whole)


def test_long_wav_is_streamed_not_loaded(tmp_path: Path) -> None:
    path = tmp_path / "long.wav"
    ten_minutes = 10 * 60 * 44100 * 2 * 2  # 44.1 kHz stereo: 106 MB
    with open(path, "wb") as f:
        f.write(wav_bytes(b"", 44100, 2, 16)[:-4] + struct.pack("<I", ten_minutes))
        f.truncate(f.tell() + ten_minutes)  # sparse zeros
    src = WavSource(path)
    assert src.duration == pytest.approx(600.0)
    tracemalloc.start()
    seen = 0.0
    for frame in src.frames():
        seen = frame.start + frame.duration
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    src.close()
    assert seen == pytest.approx(600.0, abs=0.01)
    assert peak < 5_000_000, f"peak Python memory {peak} bytes: the file was not streamed"


def test_raw_pcm_at_a_stated_rate(tmp_path: Path, reference: np.ndarray) -> None:
    path = tmp_path / "clip.raw"
    path.write_bytes(encode(resample_linear(reference, 16000, 8000), 16))
    got = samples(all_pcm(RawPcmSource(path, rate=8000)))
    assert abs(len(got) - len(reference)) <= 2
    assert isinstance(open_audio(path), RawPcmSource)


def test_buffer_source_splits_into_frames() -> None:
    pcm = b"\x01\x00" * 16_100
    frames = list(PcmBufferSource(pcm).frames())
    assert [len(f.pcm) for f in frames] == [640] * 50 + [200]


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


BAD_INPUTS = {
    "missing": (None, "no such file"),
    "empty file": (b"", "zero-length"),
    "not audio": (b"%PDF-1.7 this is a document, not sound" * 10, "not a WAV file"),
    "empty data chunk": (wav_bytes(b"", 16000, 1, 16), "zero-length audio"),
    "truncated": (wav_bytes(b"\x00\x01" * 8000, 16000, 1, 16)[:5000], "truncated"),
    "header only": (wav_bytes(b"", 16000, 1, 16)[:30], "truncated"),
    "mu-law": (wav_bytes(b"\x7f" * 800, 8000, 1, 8, tag=7), "unsupported encoding: mu-law"),
    "adpcm": (wav_bytes(b"\x00" * 800, 8000, 1, 4, tag=2), "unsupported encoding: MS ADPCM"),
    "12-bit": (wav_bytes(b"\x00" * 800, 8000, 1, 12), "unsupported encoding: 12-bit PCM"),
    "rf64": (b"RF64" + wav_bytes(b"\x00" * 80, 8000, 1, 16)[4:], "unsupported encoding: RF64"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_one_clear_line(tmp_path: Path, case: str) -> None:
    data, expected = BAD_INPUTS[case]
    path = tmp_path / "input.wav" if data is None else write(tmp_path, "input.wav", data)
    with pytest.raises(AudioError) as err:
        open_audio(path)
    message = str(err.value)
    assert expected in message
    assert str(path) in message and "\n" not in message


def test_directory_and_empty_raw(tmp_path: Path) -> None:
    with pytest.raises(AudioError, match="is a directory"):
        open_audio(tmp_path)
    with pytest.raises(AudioError, match="zero-length audio"):
        open_audio(write(tmp_path, "x.raw", b""))


@settings(max_examples=40, deadline=None)
@given(
    rate=st.sampled_from([8000, 11025, 22050, 44100, 48000]),
    cuts=st.lists(st.integers(min_value=1, max_value=4000), min_size=1, max_size=12),
)
def test_resampler_block_boundaries_never_change_the_output(rate: int, cuts: list[int]) -> None:
    x = np.sin(np.arange(sum(cuts) + 500) * 0.013) * 0.5
    whole = Resampler(rate).process(x)
    r = Resampler(rate)
    parts, at = [], 0
    for n in [*cuts, len(x) - sum(cuts)]:
        parts.append(r.process(x[at : at + n]))
        at += n
    assert np.allclose(np.concatenate(parts), whole)
    expected = len(x) * SAMPLE_RATE / rate
    r2 = Resampler(rate)
    total = len(r2.process(x)) + len(r2.flush())
    assert abs(total - expected) <= 1.0
