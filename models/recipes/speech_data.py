"""What the recogniser hears of the natural training sentences: Piper speech through PocketSphinx.

Why: the topic model is trained on text, but on the device it reads PocketSphinx output (24-29 %
word error rate), and through speech its accuracy drops a lot. Training copies of the natural
sentences as the recogniser really hears them close part of that gap; the hand-made noise of
``topic_data.noisy`` only imitates it.

Each distinct sentence of ``topic_data.natural_examples()`` (never one of
``topic_data.never_train_on()``) is spoken by the bundled Piper voice, loaded as
``firmware_sim/speech.py`` does, and recognised through earmark's own ``utterances()`` path, as
the device and the speech evaluation do. The voice varies a little so the model does not learn
one rendering: Piper's default generator noise, and a length scale picked per sentence by a
stable hash of its text. Piper reads the sentence as written in ``natural/*.toml`` (punctuation
and digits shape its speech, and the evaluation's clips are read from written text too).

The output, ``natural_heard.jsonl``, is committed so a model rebuild needs no hours of
synthesis. A run appends as it goes and skips sentences already in the file, so it resumes
after being killed; at the end the file is rewritten sorted by text, for a stable diff.

    python models/recipes/speech_data.py [--limit N]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterable
from pathlib import Path

from tqdm import tqdm

from earmark.device.audio import WavSource, write_wav
from earmark.device.stt import SttEngine, engine_for, heard_text
from earmark.device.wer import corpus_wer
from earmark.firmware_sim import speech

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import topic_data  # noqa: E402

OUT = HERE / "natural_heard.jsonl"
ENGINE = "pocketsphinx"
LENGTH_SCALES = (0.85, 1.0, 1.15)
NOISE_SCALE = 0.667  # Piper's defaults (the voice's config has the same)
NOISE_W_SCALE = 0.8


def length_scale(text: str) -> float:
    """The sentence's speaking rate, by a stable hash of its text."""
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return LENGTH_SCALES[int.from_bytes(digest[:8], "big") % len(LENGTH_SCALES)]


def render(text: str, length: float) -> bytes:
    """``text`` spoken by the bundled voice with generator noise on, as 16 kHz mono int16 PCM."""
    return speech.render(text, NOISE_SCALE, NOISE_W_SCALE, length)


def hear(pcm: bytes, engine: SttEngine, workdir: Path) -> str:
    """What the recogniser makes of a clip: its utterances' words, joined ("" if none)."""
    path = workdir / "clip.wav"
    write_wav(path, pcm)
    try:
        return heard_text(WavSource(path), engine)
    finally:
        path.unlink()


def written_forms() -> dict[str, str]:
    """Recogniser text -> the sentence as written in ``natural/*.toml`` (the first such)."""
    out: dict[str, str] = {}
    for path in sorted((HERE / "natural").glob("*.toml")):
        data = tomllib.loads(path.read_text(encoding="utf-8"))
        groups = [cls["sentences"] for cls in data.get("classes", {}).values()]
        groups += list(data.get("hard_negatives", {}).values())
        for text in (t for group in groups for t in group):
            out.setdefault(topic_data.spoken(text), " ".join(text.split()))
    return out


def sentences() -> dict[str, str]:
    """Distinct natural training sentences (recogniser text) -> label, evaluation text left out."""
    banned = topic_data.never_train_on()
    out: dict[str, str] = {}
    for e in topic_data.natural_examples():
        if e.text and e.text not in banned:
            out.setdefault(e.text, e.label)
    return out


def load_done(path: Path) -> dict[str, dict[str, object]]:
    """Rows already in the output, by text; a line cut short by a killed run is ignored."""
    done: dict[str, dict[str, object]] = {}
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            done[row["text"]] = row
    return done


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--limit", type=int, default=0, help="do at most N new sentences (0: all)")
    ap.add_argument("--out", type=Path, default=OUT, help="output jsonl (default: %(default)s)")
    args = ap.parse_args(argv)

    labels = sentences()
    written = written_forms()
    done = load_done(args.out)
    todo = sorted(t for t in labels if t not in done)
    if args.limit:
        todo = todo[: args.limit]
    print(f"{len(labels)} sentences, {len(done)} already heard, {len(todo)} to do", flush=True)

    start = time.monotonic()
    if todo:
        engine = engine_for(ENGINE)
        # rewrite what is kept, so a line cut short by a killed run does not stay in the file
        _write(args.out, done.values())
        with (
            tempfile.TemporaryDirectory(prefix="earmark-speech-data-") as tmp,
            args.out.open("a", encoding="utf-8") as out,
        ):
            for text in tqdm(todo, desc="speaking and hearing", unit="sentence", mininterval=5):
                length = length_scale(text)
                heard = hear(render(written.get(text, text), length), engine, Path(tmp))
                row = {"text": text, "label": labels[text], "heard": heard, "length_scale": length}
                out.write(json.dumps(row, ensure_ascii=False) + "\n")
                out.flush()
                done[text] = row
    elapsed = time.monotonic() - start

    # sorted, with current labels; sentences no longer in the natural set (or now evaluation
    # text) are dropped
    rows = [{**done[t], "label": labels[t]} for t in sorted(done) if t in labels]
    _write(args.out, rows)
    res = corpus_wer((str(r["text"]), str(r["heard"])) for r in rows)
    empty = sum(1 for r in rows if not r["heard"])
    print(
        f"{len(todo)} heard in {elapsed / 60:.1f} min; {args.out.name}: {len(rows)} sentences "
        f"({len(done) - len(rows)} dropped), {empty} heard as nothing, "
        f"word error rate {res.wer:.1%} ({res.errors}/{res.ref_words} words)"
    )
    return 0


def _write(path: Path, rows: Iterable[dict[str, object]]) -> None:
    """Write rows as JSON lines, atomically (temporary file, then rename)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".part")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


if __name__ == "__main__":
    raise SystemExit(main())
