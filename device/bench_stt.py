"""``earmark bench stt``: accuracy, speed and memory of both engines on the shared clips.

Per engine it reports word error rate, real-time factor (processing seconds per audio second),
peak resident memory, and the ratio of earmark's end-to-end time (file reading, resampling,
endpointing, streaming with partial results) to a bare engine loop over the same audio in the
same process. Each engine is measured in its own child process, so one engine's memory does not
count against the other; timings are medians over ``--rounds`` rounds, alternating earmark and
bare runs so machine load hits both alike.

Word error rate is reported twice: *cold* is the first pass of a freshly loaded engine, *warm*
the last pass. The difference is PocketSphinx's live cepstral mean normalisation, which starts
from a generic estimate and adapts to the microphone and speaker over the first utterances; a
device that listens all day runs warm. earmark and the bare loop each get their own engine
instance so neither warms the other.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
import wave
from dataclasses import asdict, dataclass
from pathlib import Path

from earmark.device.audio import SAMPLE_RATE, open_audio
from earmark.device.wer import corpus_wer

GOFORWARD_REFERENCE = "go forward ten meters"  # per shared/data/SOURCES.md


def default_data_dir() -> Path:
    env = os.environ.get("EARMARK_SHARED_DATA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent.parent / "shared" / "data"


def speech_clips(data_dir: Path | None = None) -> list[tuple[Path, str]]:
    """The shared clips and their reference transcripts (sphinx ``.transcription`` files)."""
    root = (data_dir or default_data_dir()) / "speech"
    clips: list[tuple[Path, str]] = []
    for listing in sorted(root.glob("*/*transcription")):
        for line in listing.read_text().splitlines():
            if "(" not in line:
                continue
            text, _, ident = line.rpartition("(")
            text = text.replace("<s>", "").replace("</s>", "").strip()
            wav = listing.parent / f"{ident.strip(' )')}.wav"
            if wav.exists():
                clips.append((wav, text))
    raw = root / "goforward.raw"
    if raw.exists():
        clips.append((raw, GOFORWARD_REFERENCE))
    return clips


def _pcm(path: Path) -> bytes:
    if path.suffix == ".raw":
        return path.read_bytes()
    with wave.open(str(path)) as w:
        return w.readframes(w.getnframes())


@dataclass(frozen=True)
class EngineFigures:
    engine: str
    description: str
    clips: int
    audio_s: float
    load_s: float
    wer: float  # warm: the last pass
    bare_wer: float
    wer_cold: float  # the first pass of a freshly loaded engine
    bare_wer_cold: float
    rtf: float  # earmark end-to-end seconds per audio second (median round)
    bare_rtf: float
    overhead: float  # earmark time / bare time, median over rounds
    peak_rss_mb: float


def _bare_vosk(engine: object, pcm: bytes) -> str:
    rec = engine._pool.take()  # type: ignore[attr-defined]
    texts = []
    for i in range(0, len(pcm), 3200):
        if rec.AcceptWaveform(pcm[i : i + 3200]):
            texts.append(json.loads(rec.Result())["text"])
    texts.append(json.loads(rec.FinalResult())["text"])
    rec.Reset()
    engine._pool.give(rec)  # type: ignore[attr-defined]
    return " ".join(t for t in texts if t)


def _bare_sphinx(engine: object, pcm: bytes) -> str:
    dec = engine._pool.take()  # type: ignore[attr-defined]
    dec.start_utt()
    for i in range(0, len(pcm), 3200):
        dec.process_raw(pcm[i : i + 3200], False, False)
    dec.end_utt()
    hyp = dec.hyp()
    engine._pool.give(dec)  # type: ignore[attr-defined]
    return hyp.hypstr if hyp is not None else ""


def _earmark_pass(engine: object, clips: list[tuple[Path, str]]) -> list[str]:
    from earmark.device.stt import heard_text

    return [heard_text(open_audio(path), engine) for path, _ in clips]  # type: ignore[arg-type]


def measure(engine_name: str, vosk_model: str | None, rounds: int, data_dir: Path) -> EngineFigures:
    """Run in the child process: load the engine, alternate earmark and bare rounds."""
    from tqdm import tqdm

    from earmark.device.stt import PocketSphinxEngine, VoskEngine

    def load() -> object:
        return VoskEngine(vosk_model) if engine_name == "vosk" else PocketSphinxEngine()

    clips = speech_clips(data_dir)
    if not clips:
        raise SystemExit(f"no speech clips under {data_dir}/speech")
    refs = [ref for _, ref in clips]
    t0 = time.perf_counter()
    engine = load()
    load_s = time.perf_counter() - t0
    bare = _bare_vosk if engine_name == "vosk" else _bare_sphinx
    pcms = [_pcm(p) for p, _ in clips]  # the bare loop gets its audio for free, in memory
    audio_s = sum(len(p) for p in pcms) / 2 / SAMPLE_RATE
    ours_t, bare_t = [], []
    bare_engine = None
    for i in tqdm(range(rounds), desc=f"bench stt {engine_name}", unit="round", file=sys.stderr):
        t = time.perf_counter()
        ours_text = _earmark_pass(engine, clips)
        ours_t.append(time.perf_counter() - t)
        if bare_engine is None:  # peak memory of earmark alone, before the second engine loads
            rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            bare_engine = load()
        t = time.perf_counter()
        bare_text = [bare(bare_engine, pcm) for pcm in pcms]
        bare_t.append(time.perf_counter() - t)
        if i == 0:
            cold = [corpus_wer(zip(refs, x, strict=True)).wer for x in (ours_text, bare_text)]
    return EngineFigures(
        engine=engine_name,
        description=engine.description,  # type: ignore[attr-defined]
        clips=len(clips),
        audio_s=round(audio_s, 2),
        load_s=round(load_s, 2),
        wer=corpus_wer(zip(refs, ours_text, strict=True)).wer,
        bare_wer=corpus_wer(zip(refs, bare_text, strict=True)).wer,
        wer_cold=cold[0],
        bare_wer_cold=cold[1],
        rtf=statistics.median(ours_t) / audio_s,
        bare_rtf=statistics.median(bare_t) / audio_s,
        overhead=statistics.median(o / b for o, b in zip(ours_t, bare_t, strict=True)),
        peak_rss_mb=rss_kb / 1024,
    )


def run_child(engine: str, vosk_model: str | None, rounds: int, data_dir: Path) -> EngineFigures:
    cmd = [sys.executable, "-m", "earmark.device.bench_stt", engine, str(rounds), str(data_dir)]
    if vosk_model:
        cmd.append(str(vosk_model))
    out = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"bench child for {engine} failed (exit {out.returncode})")
    return EngineFigures(**json.loads(out.stdout.strip().splitlines()[-1]))


def format_table(rows: list[EngineFigures]) -> str:
    head = (
        f"{'engine':<13}{'clips':>6}{'audio s':>9}{'WER':>8}{'bare WER':>10}{'cold e/b':>13}"
        f"{'RTF':>8}"
        f"{'bare RTF':>10}{'overhead':>10}{'peak RSS':>11}{'load s':>8}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r.engine:<13}{r.clips:>6}{r.audio_s:>9.1f}{r.wer:>8.1%}{r.bare_wer:>10.1%}"
            f"  {r.wer_cold:>5.1%}/{r.bare_wer_cold:<5.1%}"
            f"{r.rtf:>8.3f}{r.bare_rtf:>10.3f}{r.overhead:>9.2f}x{r.peak_rss_mb:>8.0f} MB"
            f"{r.load_s:>8.2f}"
        )
    return "\n".join(lines)


if __name__ == "__main__":  # the child process: one engine, figures as one JSON line
    name, n_rounds, data = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
    model = sys.argv[4] if len(sys.argv) > 4 else None
    print(json.dumps(asdict(measure(name, model, n_rounds, data))))


def plot(rows: list[EngineFigures], path: Path) -> Path:
    """RTF and WER side by side, earmark next to the bare engine (needs the plot extra)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_rtf, ax_wer) = plt.subplots(1, 2, figsize=(9, 3.6))
    names = [
        r.engine
        + ("\n(Korean model: WER\nmeaningless on English)" if "_ko" in r.description else "")
        for r in rows
    ]
    xs = range(len(rows))
    ax_rtf.bar([x - 0.2 for x in xs], [r.rtf for r in rows], 0.4, label="earmark end-to-end")
    ax_rtf.bar([x + 0.2 for x in xs], [r.bare_rtf for r in rows], 0.4, label="bare engine loop")
    ax_rtf.axhline(0.3, color="grey", linestyle="--", linewidth=1, label="target 0.3")
    ax_rtf.set(title="real-time factor (lower is faster)", xticks=list(xs), xticklabels=names)
    ax_rtf.legend(fontsize=8)
    ax_wer.bar([x - 0.2 for x in xs], [r.wer * 100 for r in rows], 0.4, label="warm")
    ax_wer.bar([x + 0.2 for x in xs], [r.wer_cold * 100 for r in rows], 0.4, label="cold")
    ax_wer.axhline(25, color="grey", linestyle="--", linewidth=1, label="target 25%")
    ax_wer.set(title="word error rate, % (shared clips)", xticks=list(xs), xticklabels=names)
    ax_wer.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
