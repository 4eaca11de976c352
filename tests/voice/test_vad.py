"""Endpointing on signals whose speech/silence layout is known exactly."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from earmark.device.audio import SAMPLE_RATE, AudioFrame, PcmBufferSource, to_int16_bytes
from earmark.device.vad import (
    Endpointer,
    SpeechChunk,
    SpeechEnd,
    SpeechStart,
    VadConfig,
    level_dbfs,
)

RNG_SEED = 7


def layout(parts: list[tuple[str, float]], noise_dbfs: float = -70.0) -> bytes:
    """Audio from ("speech"|"silence", seconds) parts: speech is a loud modulated tone."""
    rng = np.random.default_rng(RNG_SEED)
    out = []
    for kind, secs in parts:
        n = int(secs * SAMPLE_RATE)
        t = np.arange(n) / SAMPLE_RATE
        noise = rng.normal(0, 10 ** (noise_dbfs / 20), n)
        if kind == "speech":
            syllables = 0.6 + 0.4 * np.sin(2 * np.pi * 4 * t)  # 4 Hz syllable rhythm
            out.append(0.3 * syllables * np.sin(2 * np.pi * 220 * t) + noise)
        else:
            out.append(noise)
    return to_int16_bytes(np.concatenate(out))


def run(pcm: bytes, config: VadConfig | None = None, frame_ms: int = 20) -> list[object]:
    ep = Endpointer(config)
    events: list[object] = []
    for frame in PcmBufferSource(pcm, frame_ms=frame_ms).frames():
        events += ep.feed(frame)
    return events + ep.flush()


def spans(events: list[object]) -> list[tuple[float, float, SpeechEnd]]:
    out, start = [], None
    for ev in events:
        if isinstance(ev, SpeechStart):
            start = ev.start
        elif isinstance(ev, SpeechEnd):
            assert start is not None
            out.append((start, ev.end, ev))
            start = None
    return out


def test_three_utterances_found_with_pre_roll_and_timeout() -> None:
    pcm = layout([("silence", 1.0), ("speech", 1.5), ("silence", 1.2), ("speech", 0.8),
                  ("silence", 1.5), ("speech", 2.0), ("silence", 1.0)])  # fmt: skip
    cfg = VadConfig()
    found = spans(run(pcm, cfg))
    starts = [1.0, 3.7, 6.0]
    ends = [2.5, 4.5, 8.0]
    assert len(found) == 3
    for (s, e, end), s0, e0 in zip(found, starts, ends, strict=True):
        assert s == pytest.approx(s0 - cfg.pre_roll_ms / 1000, abs=0.07)  # pre-roll kept
        assert e == pytest.approx(e0 + cfg.silence_timeout_ms / 1000, abs=0.07)
        assert not end.too_short and not end.forced


def test_chunks_cover_each_utterance_without_gaps() -> None:
    pcm = layout([("silence", 0.5), ("speech", 1.0), ("silence", 1.0)])
    events = run(pcm)
    chunks = [e for e in events if isinstance(e, SpeechChunk)]
    (start, end, _), = spans(events)  # fmt: skip
    assert chunks[0].start == pytest.approx(start)
    for a, b in zip(chunks, chunks[1:], strict=False):
        assert b.start == pytest.approx(a.start + len(a.pcm) / 2 / SAMPLE_RATE)
    first = int(round(start * SAMPLE_RATE)) * 2
    assert b"".join(c.pcm for c in chunks) == pcm[first : first + sum(len(c.pcm) for c in chunks)]


def test_pause_shorter_than_timeout_keeps_one_utterance() -> None:
    pcm = layout([("silence", 0.5), ("speech", 1.0), ("silence", 0.4), ("speech", 1.0),
                  ("silence", 1.0)])  # fmt: skip
    assert len(spans(run(pcm, VadConfig(silence_timeout_ms=700)))) == 1
    assert len(spans(run(pcm, VadConfig(silence_timeout_ms=300)))) == 2


def test_click_is_marked_too_short() -> None:
    pcm = layout([("silence", 0.5), ("speech", 0.1), ("silence", 1.0)])
    ((_, _, end),) = spans(run(pcm))
    assert end.too_short


def test_silence_and_steady_noise_yield_nothing() -> None:
    assert run(layout([("silence", 3.0)])) == []
    assert run(b"\x00\x00" * SAMPLE_RATE * 2) == []
    # steady room noise at -35 dBFS: learned as the floor, never speech
    assert spans(run(layout([("silence", 4.0)], noise_dbfs=-35.0))) == []


def test_speech_over_noise_is_found() -> None:
    pcm = layout([("silence", 2.0), ("speech", 1.0), ("silence", 1.5)], noise_dbfs=-35.0)
    found = spans(run(pcm))
    assert len(found) == 1 and found[0][0] == pytest.approx(1.7, abs=0.1)


def test_long_speech_is_cut_at_max_length() -> None:
    pcm = layout([("silence", 0.5), ("speech", 5.0), ("silence", 1.0)])
    found = spans(run(pcm, VadConfig(max_utterance_ms=2000)))
    assert [end.forced for _, _, end in found][:2] == [True, True]
    assert all(e - s <= 2.0 + 1e-6 for s, e, _ in found)


def test_speech_running_into_end_of_source_is_closed() -> None:
    found = spans(run(layout([("silence", 0.5), ("speech", 1.0)])))
    assert len(found) == 1 and found[0][1] == pytest.approx(1.5, abs=0.03)


def test_frame_size_of_source_does_not_matter() -> None:
    pcm = layout([("silence", 0.7), ("speech", 1.3), ("silence", 1.0), ("speech", 0.9)])
    a = [(round(s, 3), round(e, 3)) for s, e, _ in spans(run(pcm, frame_ms=20))]
    ep = Endpointer()
    events: list[object] = []
    step = 2 * 333  # odd-sized frames as a microphone might deliver them
    for i in range(0, len(pcm), step):
        events += ep.feed(AudioFrame(pcm[i : i + step], i / 2 / SAMPLE_RATE))
    b = [(round(s, 3), round(e, 3)) for s, e, _ in spans(events + ep.flush())]
    assert a == b and len(a) == 2


def test_levels_and_bad_config() -> None:
    assert level_dbfs(b"\x00\x00" * 100) == -120.0
    full = to_int16_bytes(np.ones(160))
    assert level_dbfs(full) == pytest.approx(0.0, abs=0.01)
    with pytest.raises(ValueError):
        VadConfig(frame_ms=15)
    with pytest.raises(ValueError):
        VadConfig(silence_timeout_ms=-1)


@settings(max_examples=25, deadline=None)
@given(
    sizes=st.lists(st.integers(min_value=1, max_value=2000), min_size=1, max_size=30),
    gaps=st.lists(st.floats(min_value=0.1, max_value=1.5), min_size=1, max_size=3),
)
def test_events_do_not_depend_on_how_frames_are_cut(sizes: list[int], gaps: list[float]) -> None:
    parts: list[tuple[str, float]] = [("silence", 0.5)]
    for g in gaps:
        parts += [("speech", 0.6), ("silence", g)]
    pcm = layout(parts)
    reference = [(round(s, 3), round(e, 3)) for s, e, _ in spans(run(pcm))]
    ep = Endpointer()
    events: list[object] = []
    at, i = 0, 0
    while at < len(pcm):
        n = sizes[i % len(sizes)] * 2  # whole samples
        events += ep.feed(AudioFrame(pcm[at : at + n], at / 2 / SAMPLE_RATE))
        at, i = at + n, i + 1
    got = [(round(s, 3), round(e, 3)) for s, e, _ in spans(events + ep.flush())]
    # the same events at the same times, to the millisecond (times are sums of float frame
    # offsets, so a rounded 3.0395 can come out 3.039 or 3.040 depending on the cuts)
    assert len(got) == len(reference)
    for g, r in zip(got, reference, strict=True):
        assert g == pytest.approx(r, abs=0.0011)
    # a gap shorter than the silence timeout joins speech; a longer one separates it
    assert len(reference) == 1 + sum(g >= 0.7 + 0.02 for g in gaps[:-1]) or any(
        abs(g - 0.7) < 0.05 for g in gaps
    )
