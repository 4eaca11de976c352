"""The topic-model commands: ``classify``, ``eval topics``, ``bench topics``.

``classify`` prints the text it was given back to the user's own terminal (as ``transcribe``
does); nothing is logged or sent anywhere.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from earmark.cli import Cli
from earmark.errors import EarmarkError

if TYPE_CHECKING:
    from earmark.device.sensitive import SensitiveFilter
    from earmark.device.topics import TopicClassifier, TopicScores


def _read_inputs(args: argparse.Namespace) -> list[str]:
    texts: list[str] = list(args.text)
    if args.input:
        try:
            if args.input == "-":
                raw = sys.stdin.buffer.read()
            else:
                raw = Path(args.input).read_bytes()
            content = raw.decode("utf-8")
        except FileNotFoundError:
            raise EarmarkError(f"input file not found: {args.input}") from None
        except IsADirectoryError:
            raise EarmarkError(f"input is a directory, not a text file: {args.input}") from None
        except UnicodeDecodeError:
            raise EarmarkError(f"input {args.input} is not UTF-8 text") from None
        if "\x00" in content:
            raise EarmarkError(f"input {args.input} is binary, not text")
        texts += [line for line in content.splitlines() if line.strip()]
    if not texts:
        raise EarmarkError("nothing to classify: give TEXT arguments or --input FILE (- for stdin)")
    return texts


def _classify(args: argparse.Namespace) -> int:
    from earmark.device.topics import TopicClassifier, TopicInputError, normalise

    texts = _read_inputs(args)
    for n, t in enumerate(texts, 1):
        if not normalise(t):
            raise TopicInputError(f"input {n} ({t!r}) has no words to classify")
    clf = TopicClassifier.load(args.model)
    sensitive = _sensitive_filter(clf)
    for text in texts:
        scores = clf.classify(text)
        hits = sensitive.check(text, scores)
        # The privacy gate's layered filter (model head, rules, taxonomy flags) decides
        # suppression, as on the device; the model's own calibrated threshold still counts.
        decision, reason = ("suppress", hits[0].reason) if hits else clf.decide(scores)
        if args.json:
            record = {
                "text": text,
                "decision": decision,
                "topics": [
                    {"id": t.id, "name": t.name, "tier1": t.tier1, "score": round(t.score, 4)}
                    for t in scores.topics
                ],
                "sensitive": [
                    {"category": c, "score": round(s, 4)}
                    for c, s in sorted(scores.sensitive.items(), key=lambda kv: -kv[1])
                ],
                "reason": reason,
            }
            print(json.dumps(record, ensure_ascii=False), flush=True)
        else:
            top = scores.topics[0]
            cat, s = max(scores.sensitive.items(), key=lambda kv: kv[1])
            print(
                f"{decision:8s} {top.name} ({top.id}) {top.score:.2f}  sensitive {cat} {s:.2f}"
                f"  [{reason}]  {text}",
                flush=True,
            )
    return 0


def _sensitive_filter(clf: TopicClassifier) -> SensitiveFilter:
    from earmark.device.policy import load_policy
    from earmark.device.sensitive import SensitiveFilter

    return SensitiveFilter(load_policy().sensitive, clf.taxonomy)


def _speech_texts(engine_name: str) -> object:
    """Replace each held-out text by what the recogniser heard from synthesised speech."""
    from earmark.device.audio import WavSource
    from earmark.device.stt import engine_for, heard_text
    from earmark.firmware_sim.speech import synthesize_many

    engine = engine_for(engine_name)

    def heard(items: list) -> Iterable[str]:
        for path in synthesize_many([i.text for i in items]):
            yield heard_text(WavSource(path), engine)

    return heard


def _eval(args: argparse.Namespace) -> int:
    from functools import partial

    from tqdm import tqdm

    from earmark.device.topics import TopicClassifier
    from earmark.device.topics_eval import (
        FRESH_SETS,
        POLICY_DEV_SETS,
        SPLITS,
        evaluate,
        format_eval,
        load_fresh,
        load_split,
    )

    clf = TopicClassifier.load(args.model)
    data = Path(args.data) if args.data else None
    known = ["held-out", *FRESH_SETS]
    # a sweep is for choosing the policy's threshold: by default it reads only the dev sets
    chosen = args.sets or (["held-out", *POLICY_DEV_SETS] if args.sweep else known)
    if unknown := sorted(set(chosen) - set(known)):
        raise EarmarkError(f"unknown evaluation set {unknown[0]!r}; choose from {', '.join(known)}")
    sets = {"held-out": {s: load_split(s, data) for s in SPLITS}} if "held-out" in chosen else {}
    sets |= {name: load_fresh(name, data) for name in FRESH_SETS if name in chosen}
    if args.limit:
        rng = random.Random(args.seed)
        sets = {
            name: {k: rng.sample(v, min(args.limit, len(v))) for k, v in splits.items()}
            for name, splits in sets.items()
        }
    if args.sweep:
        return _sweep(clf, sets, args.json)
    gate = None if args.model_only else _sensitive_filter(clf)

    def suppress(text: str, scores: TopicScores) -> str | None:
        hits = gate.check(text, scores) if gate else []
        return hits[0].reason if hits else None

    results = {}
    for name, splits in sets.items():
        results[f"{name}/text"] = evaluate(
            clf, splits, progress=partial(tqdm, desc=name, leave=False), suppress=suppress
        )
        if args.speech:
            results[f"{name}/speech"] = evaluate(
                clf,
                splits,
                texts=_speech_texts(args.engine),
                progress=partial(tqdm, desc=f"{name} speech", leave=False),
                suppress=suppress,
            )
    if args.json:
        print(json.dumps({"model": clf.version, **{k: v.as_dict() for k, v in results.items()}}))
        return 0
    decided = "the model head alone" if args.model_only else "the privacy gate's filter"
    print(f"model {clf.version}, taxonomy {clf.taxonomy.version}; suppression by {decided}")
    for key, r in results.items():
        name, how = key.split("/")
        label = f"{name}, as text" if how == "text" else f"{name}, via Piper + {args.engine}"
        print(format_eval(label, r))
    return 0


def _sweep(clf: TopicClassifier, sets: dict, as_json: bool) -> int:
    """The gate's trade-off over model thresholds, per set: how the policy's is chosen."""
    import dataclasses
    import math

    from earmark.device.policy import load_policy
    from earmark.device.sensitive import SensitiveFilter
    from earmark.device.topics_eval import format_sweep, sweep

    policy = load_policy().sensitive
    # the gate without its model layer: rules (weak words still read the model) and taxonomy
    without_model = dataclasses.replace(policy, model_threshold=math.inf, model_thresholds={})
    others = SensitiveFilter(without_model, clf.taxonomy)

    def other_layers(text: str, scores: TopicScores) -> str | None:
        hits = others.check(text, scores)
        return hits[0].reason if hits else None

    points = {name: sweep(clf, splits, other_layers) for name, splits in sets.items()}
    if as_json:
        print(json.dumps({n: [dataclasses.asdict(p) for p in ps] for n, ps in points.items()}))
    else:
        print(format_sweep(points, policy.model_threshold))
    return 0


def _bench(args: argparse.Namespace) -> int:
    from earmark.device.bench_topics import run_bench

    print(run_bench(args.model, n=args.n, warmup=args.warmup, against=args.against))
    return 0


def register(cli: Cli) -> None:
    p = cli.command("classify", _classify, "score utterances: interest tags, sensitive categories")
    p.add_argument("text", nargs="*", metavar="TEXT", help="utterances to classify")
    p.add_argument("--input", metavar="FILE", help="one utterance per line ('-' for stdin)")
    p.add_argument("--json", action="store_true", help="one JSON object per input, in order")
    p.add_argument("--model", metavar="DIR", help="model directory (default: shipped artifact)")

    p = cli.command(
        "topics", _eval, "topic model quality on the held-out and fresh sets (text, speech)", "eval"
    )
    p.add_argument("--speech", action="store_true", help="also via Piper TTS + STT")
    p.add_argument("--engine", default="pocketsphinx", choices=("pocketsphinx", "vosk"))
    p.add_argument("--limit", type=int, default=0, help="sample N items per split (0: all)")
    p.add_argument("--seed", type=int, default=7, help="seed for --limit sampling")
    p.add_argument("--data", metavar="DIR", help="directory of the evaluation sets")
    p.add_argument(
        "--set",
        dest="sets",
        action="append",
        metavar="NAME",
        help="evaluate only this set: held-out or a fresh set (repeatable; default: all)",
    )
    p.add_argument(
        "--sweep",
        action="store_true",
        help="instead: the privacy gate's recall and false suppression at each model threshold,"
        " by default on the dev sets the policy's threshold is chosen on",
    )
    p.add_argument(
        "--model-only",
        action="store_true",
        help="suppress by the model's sensitive head alone, not the privacy gate's filter",
    )
    p.add_argument("--model", metavar="DIR", help="model directory (default: shipped artifact)")
    p.add_argument("--json", action="store_true")

    p = cli.command(
        "topics", _bench, "classifier latency vs bare onnxruntime, size, memory", "bench"
    )
    p.add_argument("--n", type=int, default=300, help="utterances to time")
    p.add_argument("--warmup", type=int, default=30)
    p.add_argument("--model", metavar="DIR", help="model directory (default: shipped artifact)")
    p.add_argument(
        "--against",
        metavar="DIR",
        help="also time this model's bare session call, interleaved: a release-to-release ratio",
    )
