"""Speech to text on the device: two real streaming engines behind one interface.

* :class:`VoskEngine` (Kaldi ``KaldiRecognizer``) is the engine for real devices; its model
  directory is resolved by :mod:`earmark.device.vosk_models`, never by Vosk's own downloader.
* :class:`PocketSphinxEngine` uses the en-us model inside the ``pocketsphinx`` wheel, so earmark
  transcribes English out of the box with no download.

Both stream: :meth:`RecognizerStream.accept` takes audio as it arrives and may return a partial
text; :meth:`RecognizerStream.finish` gives the final :class:`Transcript` with word timings.
A recogniser is reused between utterances (reset, not rebuilt), because building one costs far
more than an utterance of decoding on the glasses' CPU.

:func:`utterances` joins the endpointer and an engine: each utterance the endpointer finds is
streamed into a fresh recogniser stream while it is spoken, so the final result is ready
moments after the user stops talking. Transcripts are user speech: they are logged only at
DEBUG, never at INFO or above.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from earmark.device.audio import SAMPLE_RATE, AudioSource
from earmark.device.vad import Endpointer, SpeechChunk, SpeechEnd, SpeechStart, VadConfig
from earmark.errors import EarmarkError, ModelError

log = logging.getLogger(__name__)

ENGINES = ("auto", "vosk", "pocketsphinx")
PARTIAL_EVERY_S = 0.25  # how often a stream computes a partial result (it costs a search)
FEED_BYTES = SAMPLE_RATE // 10 * 2  # audio handed to a recogniser per call: 100 ms (fewer calls)


@dataclass(frozen=True)
class Word:
    word: str
    start: float  # seconds in the source
    end: float
    conf: float | None


@dataclass(frozen=True)
class Transcript:
    """One utterance, final."""

    text: str
    start: float
    end: float
    words: tuple[Word, ...]
    engine: str


class RecognizerStream(Protocol):
    def accept(self, pcm: bytes) -> str | None: ...  # partial text, if any

    def finish(self) -> Transcript: ...  # final result with word timings; stream is spent


class SttEngine(Protocol):
    name: str  # "vosk" | "pocketsphinx"
    description: str  # which model, for "using ..." messages

    def stream(self, start: float = 0.0) -> RecognizerStream: ...


class _Pool:
    """Idle recognisers kept for reuse; a stream takes one and gives it back reset."""

    def __init__(self, make: Any) -> None:
        self._make = make
        self._idle: list[Any] = []
        self._lock = threading.Lock()

    def take(self) -> Any:
        with self._lock:
            if self._idle:
                return self._idle.pop()
        return self._make()

    def give(self, rec: Any) -> None:
        with self._lock:
            self._idle.append(rec)


class _StreamBase:
    """Bookkeeping both engines share: position in the source and partial-result pacing."""

    engine_name = ""

    def __init__(self, pool: _Pool, start: float) -> None:
        self._pool = pool
        self._rec = pool.take()
        self.start = start
        self._samples = 0
        self._next_partial = int(PARTIAL_EVERY_S * SAMPLE_RATE)
        self._spent = False

    def _advance(self, pcm: bytes) -> bool:
        """Count the audio; True when a partial result is due."""
        if self._spent:
            raise RuntimeError("this recogniser stream is finished; open a new one")
        self._samples += len(pcm) // 2
        if self._samples >= self._next_partial:
            self._next_partial = self._samples + int(PARTIAL_EVERY_S * SAMPLE_RATE)
            return True
        return False

    def _transcript(self, words: list[Word]) -> Transcript:
        self._spent = True
        end = self.start + self._samples / SAMPLE_RATE
        text = " ".join(w.word for w in words)
        log.debug("%s final: %r", self.engine_name, text)
        return Transcript(text, self.start, end, tuple(words), self.engine_name)


class _VoskStream(_StreamBase):
    engine_name = "vosk"

    def __init__(self, pool: _Pool, start: float) -> None:
        super().__init__(pool, start)
        self._words: list[Word] = []

    def _collect(self, result_json: str) -> None:
        for w in json.loads(result_json).get("result", []):
            self._words.append(
                Word(w["word"], self.start + w["start"], self.start + w["end"], w.get("conf"))
            )

    def accept(self, pcm: bytes) -> str | None:
        due = self._advance(pcm)
        if self._rec.AcceptWaveform(pcm):  # Vosk found its own segment end: keep its words
            self._collect(self._rec.Result())
            return " ".join(w.word for w in self._words) if due else None
        if not due:
            return None
        partial = json.loads(self._rec.PartialResult()).get("partial", "")
        return " ".join([w.word for w in self._words] + ([partial] if partial else []))

    def finish(self) -> Transcript:
        self._collect(self._rec.FinalResult())  # FinalResult also resets the recogniser
        self._rec.Reset()
        self._pool.give(self._rec)
        return self._transcript(self._words)


class VoskEngine:
    """Vosk with a model directory earmark resolved itself."""

    name = "vosk"

    def __init__(self, model_dir: str | os.PathLike[str]) -> None:
        import vosk

        vosk.SetLogLevel(-1)
        self.model_dir = Path(model_dir)
        try:
            # model_path only: Model(lang=...) / model_name would download and sys.exit
            self._model = vosk.Model(model_path=str(self.model_dir))
        except Exception as err:
            raise ModelError(f"{self.model_dir}: Vosk could not load this model ({err})") from None
        self.description = f"vosk (model {self.model_dir})"
        self._pool = _Pool(self._recognizer)

    def _recognizer(self) -> Any:
        import vosk

        rec = vosk.KaldiRecognizer(self._model, SAMPLE_RATE)
        rec.SetWords(True)
        return rec

    def stream(self, start: float = 0.0) -> _VoskStream:
        return _VoskStream(self._pool, start)


_PS_FILLERS = ("<s>", "</s>", "<sil>")


class _SphinxStream(_StreamBase):
    engine_name = "pocketsphinx"

    def __init__(self, pool: _Pool, start: float) -> None:
        super().__init__(pool, start)
        self._rec.start_utt()

    def accept(self, pcm: bytes) -> str | None:
        due = self._advance(pcm)
        self._rec.process_raw(pcm, False, False)
        if not due:
            return None
        hyp = self._rec.hyp()
        return hyp.hypstr if hyp is not None else ""

    def finish(self) -> Transcript:
        dec = self._rec
        dec.end_utt()
        frate = int(dec.config["frate"])
        words = []
        for seg in dec.seg():
            w = seg.word
            if w in _PS_FILLERS or w.startswith("[") or w.startswith("++"):
                continue
            w = w.split("(")[0]  # alternate pronunciations are spelt word(2)
            start = self.start + seg.start_frame / frate
            end = self.start + (seg.end_frame + 1) / frate
            conf = min(1.0, max(0.0, float(seg.prob)))  # a posterior; rounding can pass 1
            words.append(Word(w, start, end, conf))
        self._pool.give(dec)
        return self._transcript(words)


class PocketSphinxEngine:
    """PocketSphinx with the en-us acoustic model, dictionary and LM its wheel ships."""

    name = "pocketsphinx"

    def __init__(self) -> None:
        import pocketsphinx

        self.model_dir = Path(pocketsphinx.get_model_path()) / "en-us"
        self.description = "pocketsphinx (bundled en-us model)"
        self._pool = _Pool(self._decoder)
        self._pool.give(self._decoder())  # load now: a broken install fails here, not mid-stream

    def _decoder(self) -> Any:
        from pocketsphinx import Decoder

        try:
            return Decoder(loglevel="FATAL", samprate=SAMPLE_RATE)
        except Exception as err:
            raise ModelError(f"pocketsphinx could not load its en-us model ({err})") from None

    def stream(self, start: float = 0.0) -> _SphinxStream:
        return _SphinxStream(self._pool, start)


def engine_for(name: str = "auto", vosk_model: str | os.PathLike[str] | None = None) -> SttEngine:
    """Build the engine asked for; ``auto`` is Vosk when a model is found, else PocketSphinx.

    The returned engine's ``description`` says which was picked and with which model.
    """
    from earmark.device.vosk_models import resolve_vosk_model

    if name not in ENGINES:
        raise EarmarkError(f"unknown engine {name!r}; choose one of {', '.join(ENGINES)}")
    if name == "pocketsphinx":
        return PocketSphinxEngine()
    model = resolve_vosk_model(vosk_model)
    if model is not None:
        return VoskEngine(model)
    if name == "vosk":
        raise ModelError(
            "no Vosk model found: pass --vosk-model DIR, set EARMARK_VOSK_MODEL, or run "
            "`earmark models fetch vosk-small-en-us`"
        )
    log.info("no Vosk model found; using the bundled PocketSphinx en-us model")
    return PocketSphinxEngine()


def utterances(
    source: AudioSource, engine: SttEngine, vad: VadConfig | None = None
) -> Iterator[Transcript]:
    """Endpoint ``source`` and recognise each utterance while it is spoken.

    Utterances the endpointer marks too short (clicks, coughs) and utterances in which the
    engine heard no words yield nothing.
    """
    endpointer = Endpointer(vad)
    stream: RecognizerStream | None = None
    buffered = bytearray()

    def feed(force: bool) -> None:
        if stream is not None and buffered and (force or len(buffered) >= FEED_BYTES):
            partial = stream.accept(bytes(buffered))
            buffered.clear()
            if partial:
                log.debug("partial: %r", partial)

    def handle(events: list[Any]) -> Iterator[Transcript]:
        nonlocal stream
        for ev in events:
            if isinstance(ev, SpeechStart):
                stream = engine.stream(start=ev.start)
            elif isinstance(ev, SpeechChunk) and stream is not None:
                buffered.extend(ev.pcm)
                feed(force=False)
            elif isinstance(ev, SpeechEnd) and stream is not None:
                feed(force=True)
                transcript = stream.finish()
                stream = None
                if ev.too_short or not transcript.words:
                    continue
                yield transcript

    for frame in source.frames():
        yield from handle(endpointer.feed(frame))
    yield from handle(endpointer.flush())


def heard_text(source: AudioSource, engine: SttEngine, vad: VadConfig | None = None) -> str:
    """The words of every utterance in ``source`` joined ("" when none heard), ``source``
    closed: what the device's recogniser makes of a whole recording."""
    try:
        return " ".join(u.text for u in utterances(source, engine, vad))
    finally:
        source.close()
