"""Quality of the topic model on the held-out splits in models/data/ (never trained on).

Shared by `earmark eval topics` and the build recipe (which writes the figures into the model
card), so the card and the command measure the same thing the same way.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

from earmark.device.topics import TopicClassifier
from earmark.errors import EarmarkError

SPLITS = ("interest", "none", "sensitive")


@dataclass(frozen=True)
class HeldOut:
    text: str
    expect: str  # tier-1 name for "interest", "none", or the sensitive category
    source: str


@dataclass(frozen=True)
class TopicEval:
    n_interest: int
    top1_tier1_accuracy: float  # argmax tier-1 == expected, over interest utterances
    macro_f1: float  # over tier-1 names, argmax tier-1 on interest utterances
    publish_rate: float  # interest utterances whose decision is "publish" with the right tier-1
    n_none: int
    none_rate: float  # no-interest utterances decided "none"
    n_sensitive: int
    sensitive_recall: float  # sensitive utterances decided "suppress"
    sensitive_category_accuracy: float  # ... whose top category is the expected one
    false_suppression: float  # interest + none utterances decided "suppress"

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def data_dir() -> Path:
    return Path(str(resources.files("earmark.models").joinpath("data")))


def load_split(name: str, directory: Path | None = None) -> list[HeldOut]:
    path = (directory or data_dir()) / f"heldout_{name}.jsonl"
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise EarmarkError(f"held-out split not found at {path}; rebuild models/") from None
    out = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            expect = row.get("tier1") or row.get("category") or "none"
            out.append(HeldOut(row["text"], expect, row.get("source", "")))
        except (json.JSONDecodeError, KeyError, AttributeError) as err:
            raise EarmarkError(f"{path}:{n}: not a held-out record ({err})") from err
    return out


def macro_f1(pairs: list[tuple[str, str]]) -> float:
    labels = sorted({e for e, _ in pairs})
    f1s = []
    for lab in labels:
        tp = sum(1 for e, p in pairs if e == lab and p == lab)
        fp = sum(1 for e, p in pairs if e != lab and p == lab)
        fn = sum(1 for e, p in pairs if e == lab and p != lab)
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return sum(f1s) / len(f1s) if f1s else 0.0


def evaluate(
    clf: TopicClassifier,
    splits: dict[str, list[HeldOut]],
    texts: Callable[[list[HeldOut]], Iterable[str]] | None = None,
    progress: Callable[[Iterable], Iterable] = lambda x: x,
) -> TopicEval:
    """Score every held-out item; `texts` may replace each item's text (e.g. by speech+STT)."""

    def run(items: list[HeldOut]) -> list[tuple[HeldOut, str, str, str]]:
        out = []
        source = texts(items) if texts else (i.text for i in items)
        for item, text in progress(zip(items, source, strict=True)):
            if not text.strip():  # a recogniser can hear nothing: that is a "none" decision
                out.append((item, "", "none", ""))
                continue
            scores = clf.classify(text)
            decision, _ = clf.decide(scores)
            tier1 = next(t.tier1 for t in scores.topics if t.name == t.tier1)
            top_cat = max(scores.sensitive.items(), key=lambda kv: kv[1])[0]
            out.append((item, tier1, decision, top_cat))
        return out

    interest = run(splits["interest"])
    none = run(splits["none"])
    sensitive = run(splits["sensitive"])

    def rate(xs: list[bool]) -> float:
        return sum(xs) / len(xs) if xs else 0.0

    return TopicEval(
        n_interest=len(interest),
        top1_tier1_accuracy=rate([i.expect == t for i, t, _, _ in interest]),
        macro_f1=macro_f1([(i.expect, t) for i, t, _, _ in interest]),
        publish_rate=rate([d == "publish" and i.expect == t for i, t, d, _ in interest]),
        n_none=len(none),
        none_rate=rate([d == "none" for _, _, d, _ in none]),
        n_sensitive=len(sensitive),
        sensitive_recall=rate([d == "suppress" for _, _, d, _ in sensitive]),
        sensitive_category_accuracy=rate([i.expect == c for i, _, _, c in sensitive]),
        false_suppression=rate([d == "suppress" for _, _, d, _ in interest + none]),
    )


def format_eval(name: str, e: TopicEval) -> str:
    return "\n".join(
        [
            f"{name}:",
            f"  interest utterances      {e.n_interest:6d}",
            f"  top-1 tier-1 accuracy    {e.top1_tier1_accuracy:6.3f}   (target >= 0.90 text,"
            " >= 0.80 speech)",
            f"  macro-F1 (tier-1)        {e.macro_f1:6.3f}",
            f"  published with right tag {e.publish_rate:6.3f}",
            f"  no-interest utterances   {e.n_none:6d}",
            f"  'none' rate              {e.none_rate:6.3f}   (target >= 0.90)",
            f"  sensitive utterances     {e.n_sensitive:6d}",
            f"  sensitive recall         {e.sensitive_recall:6.3f}   (target >= 0.99)",
            f"  sensitive category acc.  {e.sensitive_category_accuracy:6.3f}",
            f"  false suppression        {e.false_suppression:6.3f}   (target <= 0.05)",
        ]
    )
