"""PocketSphinx with its bundled en-us model on real recorded and synthesised speech."""

from __future__ import annotations

from pathlib import Path

import pytest

from earmark.device.audio import PcmBufferSource, open_audio
from earmark.device.stt import PocketSphinxEngine, Transcript, engine_for, utterances
from earmark.device.wer import corpus_wer, wer
from tests.voice.conftest import SENTENCES, read_pcm

pytestmark = pytest.mark.slow


def transcribe_all(
    clips: list[tuple[Path, str]], engine: PocketSphinxEngine
) -> list[tuple[str, list[Transcript]]]:
    out = []
    for path, ref in clips:
        source = open_audio(path)
        out.append((ref, list(utterances(source, engine))))
        source.close()
    return out


@pytest.fixture(scope="module")
def two_passes(
    clips: list[tuple[Path, str]],
) -> tuple[list[tuple[str, list[Transcript]]], list[tuple[str, list[Transcript]]]]:
    """A fresh engine over the clips twice: cold (first pass), then warm.

    PocketSphinx's live cepstral mean normalisation starts from a generic estimate and adapts
    to the microphone over the first utterances; a device that listens all day runs warm.
    """
    engine = PocketSphinxEngine()
    return transcribe_all(clips, engine), transcribe_all(clips, engine)


@pytest.fixture(scope="module")
def clip_results(two_passes: tuple) -> list[tuple[str, list[Transcript]]]:
    return two_passes[1]


def test_word_error_rate_on_the_shared_clips(two_passes: tuple) -> None:
    cold, warm = (
        corpus_wer((ref, " ".join(t.text for t in ts)) for ref, ts in results)
        for results in two_passes
    )
    assert warm.ref_words > 90
    # the target; a bare decode of these clips scored 23.9% on this machine
    assert warm.wer <= 0.25, f"PocketSphinx warm WER {warm.wer:.1%} on the shared clips"
    assert cold.wer <= 0.30, f"PocketSphinx cold WER {cold.wer:.1%} on the shared clips"
    pairs = [(ref, " ".join(t.text for t in ts)) for ref, ts in two_passes[1]]
    go = next(h for r, h in pairs if r == "go forward ten meters")
    assert wer("go forward ten meters", go).wer == 0.0


def test_word_timings_lie_inside_their_utterance(
    clip_results: list[tuple[str, list[Transcript]]],
) -> None:
    for _, transcripts in clip_results:
        for t in transcripts:
            assert t.engine == "pocketsphinx" and t.words
            assert t.text == " ".join(w.word for w in t.words)
            assert t.start <= t.words[0].start
            assert t.words[-1].end <= t.end + 0.011
            for a, b in zip(t.words, t.words[1:], strict=False):
                assert a.start < a.end <= b.start + 1e-9
            assert all(w.conf is not None and 0.0 <= w.conf <= 1.0 for w in t.words)


def test_stream_gives_partials_then_a_final_result(clips: list[tuple[Path, str]]) -> None:
    sphinx = PocketSphinxEngine()  # fresh: its result must not depend on which tests ran first
    path = next(p for p, _ in clips if p.name.endswith("0870.wav"))
    pcm = read_pcm(path)
    stream = sphinx.stream(start=10.0)
    partials = [stream.accept(pcm[i : i + 640]) for i in range(0, len(pcm), 640)]
    shown = [p for p in partials if p]
    assert len(shown) >= 5  # partial results keep arriving while the user speaks
    assert len(shown[-1].split()) > len(shown[0].split())
    final = stream.finish()
    assert final.start == 10.0 and final.end == pytest.approx(10.0 + len(pcm) / 32000)
    assert final.words[0].start >= 10.0  # timings are in source time, not stream time
    ref = next(r for p, r in clips if p == path)
    assert wer(ref, final.text).wer < 0.5, final.text
    with pytest.raises(RuntimeError):
        stream.accept(pcm[:640])


def test_silence_yields_no_utterance(sphinx: PocketSphinxEngine) -> None:
    assert list(utterances(PcmBufferSource(b"\x00\x00" * 16000 * 3), sphinx)) == []


def test_synthesised_utterances_in_one_long_file_come_back_separately(
    spoken: list[Path], tmp_path: Path
) -> None:
    from earmark.firmware_sim import speech

    sphinx = PocketSphinxEngine()  # fresh, so the result does not depend on test order

    long_file = speech.concatenate(spoken, gap_s=1.5, out=tmp_path / "three.wav")
    bounds = speech.clip_bounds(spoken, gap_s=1.5)
    source = open_audio(long_file)
    got = list(utterances(source, sphinx))
    source.close()
    assert len(got) == len(SENTENCES), [t.text for t in got]
    for t, sentence, (start, end) in zip(got, SENTENCES, bounds, strict=True):
        assert t.start <= start + 0.05 and t.start >= start - 0.5  # pre-roll, not earlier
        assert end <= t.end <= end + 1.0  # ends after the silence timeout
        assert wer(sentence, t.text).wer <= 0.25, (sentence, t.text)
    assert "paris" in got[0].text and "jazz" in got[1].text and "chicago" in got[2].text


def test_auto_picks_pocketsphinx_without_a_vosk_model(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for var in ("EARMARK_VOSK_MODEL", "VOSK_MODEL_PATH"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    if Path("/usr/share/vosk").exists():
        pytest.skip("this machine has models in /usr/share/vosk")
    engine = engine_for("auto")
    assert engine.name == "pocketsphinx"
    assert "bundled en-us" in engine.description
