"""Quality of the topic model on the evaluation sets in models/data/ (never trained on).

None of these sets is ever trained on: the held-out splits the build writes
(``heldout_*.jsonl``: corpus items split per intent, and template utterances whose topic phrase
and frame training never saw), and the fresh sets in ``FRESH_SETS``: natural utterances, each
set by a writer who saw neither the training data nor the other sets. Dev sets are tuned on;
the sealed sets (``SEALED_SETS``) are read once per release (docs/topics.md says what was tuned on
what). Shared by `earmark eval topics` and the build recipe (which writes the figures into the
model card), so both measure the same way.

A decision is the classifier's own (`TopicClassifier.decide`) unless a ``suppress`` check is
given: the CLI passes the privacy gate's layered filter, which is how the device decides. The
model head's own recall and false suppression are reported either way.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

from earmark.device.topics import NONE_CLASS, TopicClassifier, TopicScores
from earmark.errors import EarmarkError

SPLITS = ("interest", "none", "sensitive")
FRESH_SETS = {
    "fresh-dev": "fresh_dev.toml",  # tuned on
    "fresh-dev-2": "fresh_dev_2.toml",  # tuned on: the privacy policy's look-alike words
    "fresh-test": "fresh_test.toml",  # never tuned on; its summary figures were seen in 1.1.0
    "fresh-test-2": "fresh_test_2.toml",  # read for topics-1.2.0; a dev set since 1.3.0
    "fresh-test-3": "fresh_test_3.toml",  # read for policy 2026.11.5; a dev set since 1.3.0
    "fresh-test-4": "fresh_test_4.toml",  # read for topics-1.3.0; a dev set since 1.4.0
    "fresh-test-5": "fresh_test_5.toml",  # read for topics-1.4.0; a dev set since 1.5.0
    "fresh-test-6": "fresh_test_6.toml",  # read for topics-1.4.0; a dev set since 1.5.0
    "fresh-test-7": "fresh_test_7.toml",  # read for topics-1.5.0; a dev set since 1.6.0
    "fresh-test-8": "fresh_test_8.toml",  # read for topics-1.5.0; a dev set since 1.6.0
    "fresh-test-9": "fresh_test_9.toml",  # read for topics-1.6.0; a dev set since 1.7.0
    "fresh-test-10": "fresh_test_10.toml",  # read for topics-1.6.0; a dev set since 1.7.0
    "fresh-test-11": "fresh_test_11.toml",  # read for topics-1.7.0; a dev set since 1.8.0
    "fresh-test-12": "fresh_test_12.toml",  # read for topics-1.7.0; a dev set since 1.8.0
    "fresh-test-13": "fresh_test_13.toml",  # read for topics-1.8.0; a dev set since 1.9.0
    "fresh-test-14": "fresh_test_14.toml",  # read for topics-1.8.0; a dev set since 1.9.0
    "fresh-test-15": "fresh_test_15.toml",  # read for topics-1.9.0; a dev set after it
    "fresh-test-16": "fresh_test_16.toml",  # read for topics-1.9.0; a dev set after it
    "fresh-test-17": "fresh_test_17.toml",  # sealed, the harder brief: read once per release
    "fresh-test-18": "fresh_test_18.toml",  # sealed, the harder brief: read once per release
}
# What a model build chooses its thresholds on (with the held-out split): the sets written to the
# sealed sets' brief. Fresh dev 2 is a third look-alike words, a stress test for the policy.
DEV_SETS = (
    "fresh-dev",
    "fresh-test-2",
    "fresh-test-3",
    "fresh-test-4",
    "fresh-test-5",
    "fresh-test-6",
    "fresh-test-7",
    "fresh-test-8",
    "fresh-test-9",
    "fresh-test-10",
    "fresh-test-11",
    "fresh-test-12",
    "fresh-test-13",
    "fresh-test-14",
    "fresh-test-15",
    "fresh-test-16",
)
# What the privacy policy's threshold, floor and rules are chosen on (with the held-out split).
POLICY_DEV_SETS = tuple(n for n in FRESH_SETS if n in DEV_SETS or n == "fresh-dev-2")
# Two writers, so the claim does not rest on one writer's style (fresh test 4 fell far below 3).
SEALED_SETS = ("fresh-test-17", "fresh-test-18")
Suppress = Callable[[str, TopicScores], str | None]  # a reason when the utterance is sensitive


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
    model_sensitive_recall: float  # the model head alone (clf.decide), whatever decided above
    model_false_suppression: float

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


def load_fresh(name: str, directory: Path | None = None) -> dict[str, list[HeldOut]]:
    """A fresh natural set (a FRESH_SETS key), split as the held-out: interest, none, sensitive."""
    from earmark.taxonomy import load_taxonomy

    path = (directory or data_dir()) / FRESH_SETS[name]
    try:
        classes = tomllib.loads(path.read_text(encoding="utf-8"))["classes"]
    except FileNotFoundError:
        raise EarmarkError(f"the {name} set is not at {path}") from None
    except (tomllib.TOMLDecodeError, KeyError) as err:
        raise EarmarkError(f"{path}: not a fresh utterance set ({err})") from err
    tax = load_taxonomy()
    out: dict[str, list[HeldOut]] = {s: [] for s in SPLITS}
    for label, cls in classes.items():
        for text in cls["sentences"]:
            if label == NONE_CLASS:
                out["none"].append(HeldOut(text, "none", name))
            elif label.startswith("sensitive:"):
                out["sensitive"].append(HeldOut(text, label.split(":", 1)[1], name))
            else:
                out["interest"].append(HeldOut(text, tax.node(label).tier1, name))
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
    suppress: Suppress | None = None,
) -> TopicEval:
    """Score every item; `texts` may replace each item's text (e.g. by speech+STT)."""

    def run(items: list[HeldOut]) -> list[_Scored]:
        out = []
        source = texts(items) if texts else (i.text for i in items)
        for item, text in progress(zip(items, source, strict=True)):
            if not text.strip():  # a recogniser can hear nothing: that is a "none" decision
                out.append(_Scored(item, "", "none", "", "none"))
                continue
            scores = clf.classify(text)
            own, _ = clf.decide(scores)
            decision = "suppress" if suppress and suppress(text, scores) else own
            tier1 = next(t.tier1 for t in scores.topics if t.name == t.tier1)
            top_cat = max(scores.sensitive.items(), key=lambda kv: kv[1])[0]
            out.append(_Scored(item, tier1, decision, top_cat, own))
        return out

    interest = run(splits["interest"])
    none = run(splits["none"])
    sensitive = run(splits["sensitive"])
    ordinary = interest + none

    def rate(xs: list[bool]) -> float:
        return sum(xs) / len(xs) if xs else 0.0

    return TopicEval(
        n_interest=len(interest),
        top1_tier1_accuracy=rate([r.item.expect == r.tier1 for r in interest]),
        macro_f1=macro_f1([(r.item.expect, r.tier1) for r in interest]),
        publish_rate=rate([r.decision == "publish" and r.item.expect == r.tier1 for r in interest]),
        n_none=len(none),
        none_rate=rate([r.decision == "none" for r in none]),
        n_sensitive=len(sensitive),
        sensitive_recall=rate([r.decision == "suppress" for r in sensitive]),
        sensitive_category_accuracy=rate([r.item.expect == r.top_category for r in sensitive]),
        false_suppression=rate([r.decision == "suppress" for r in ordinary]),
        model_sensitive_recall=rate([r.model_decision == "suppress" for r in sensitive]),
        model_false_suppression=rate([r.model_decision == "suppress" for r in ordinary]),
    )


@dataclass(frozen=True)
class _Scored:
    item: HeldOut
    tier1: str  # the top tier-1 ("" when nothing was heard)
    decision: str  # with the suppress check, if any
    top_category: str
    model_decision: str  # the classifier's own


SWEEP = (0.03, 0.04, 0.05, 0.06, 0.08, 0.10, 0.12, 0.15, 0.20, 0.25, 0.30)


@dataclass(frozen=True)
class SweepPoint:
    threshold: float
    recall: float
    false_suppression: float
    n_sensitive: int = 0
    n_ordinary: int = 0


def sweep(
    clf: TopicClassifier,
    splits: dict[str, list[HeldOut]],
    other_layers: Suppress,
    grid: Iterable[float] = SWEEP,
) -> list[SweepPoint]:
    """The gate's recall and false suppression if the model head fired at each threshold of
    ``grid``: an utterance is suppressed when ``other_layers`` (the gate without its model layer)
    fires or its highest sensitive score reaches the threshold. How the policy's
    ``model_threshold`` is chosen, on dev sets only."""

    def scored(items: list[HeldOut]) -> list[tuple[bool, float]]:
        rows = []
        for item in items:
            scores = clf.classify(item.text)
            fired = other_layers(item.text, scores) is not None
            rows.append((fired, max(scores.sensitive.values())))
        return rows

    sensitive = scored(splits["sensitive"])
    ordinary = scored(splits["interest"] + splits["none"])

    def rate(rows: list[tuple[bool, float]], t: float) -> float:
        return sum(hit or top >= t for hit, top in rows) / len(rows) if rows else 0.0

    return [
        SweepPoint(t, rate(sensitive, t), rate(ordinary, t), len(sensitive), len(ordinary))
        for t in grid
    ]


def pooled(points: dict[str, list[SweepPoint]]) -> list[SweepPoint]:
    """Every set's utterances together, per threshold: the policy's rule reads these."""

    def together(at: list[SweepPoint]) -> SweepPoint:
        ns, no = sum(p.n_sensitive for p in at), sum(p.n_ordinary for p in at)
        caught = sum(p.recall * p.n_sensitive for p in at)
        wrong = sum(p.false_suppression * p.n_ordinary for p in at)
        return SweepPoint(
            at[0].threshold, caught / ns if ns else 0.0, wrong / no if no else 0.0, ns, no
        )

    return [together(list(at)) for at in zip(*points.values(), strict=True)]


def format_sweep(points: dict[str, list[SweepPoint]], current: float) -> str:
    if len(points) > 1:
        points = {**points, "all together": pooled(points)}
    names = list(points)
    lines = [
        f"gate recall / false suppression by model threshold (policy now {current:g}):",
        "threshold  " + "".join(f"{n:>18}" for n in names),
    ]
    for k, t in enumerate(next(iter(points.values()))):
        cells = "".join(
            f"{points[n][k].recall:>11.3f} / {points[n][k].false_suppression:.3f}" for n in names
        )
        lines.append(f"{t.threshold:9.2f}  {cells}")
    return "\n".join(lines)


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
            f"  model head alone: recall {e.model_sensitive_recall:6.3f}, false suppression"
            f" {e.model_false_suppression:.3f}",
        ]
    )
