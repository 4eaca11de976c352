"""Training and held-out utterances for the topic model, from the corpora and seed.toml.

Why it is built like this:
- Labels are data (corpus_labels.toml, seed.toml); this module only applies them.
- Everything becomes recogniser-style text (lower case, digits as words, no punctuation),
  and training gets extra copies with recognition-like noise (dropped, swapped and inserted
  words), because the device sees PocketSphinx/Vosk output, not typed text.
- Held-out splits are disjoint by construction: for the project's own utterances, a held-out
  item never shares its topic phrase, its frame or its sentence with training; corpus items are
  split per intent. Splits are seeded, so the build is reproducible.
- Natural utterances (natural/*.toml: whole sentences people say, hard negatives that only look
  sensitive) go to training only, with extra noisy copies: templates alone taught the heads
  the frames, not how people talk. Their held-out counterparts are the fresh sets
  (models/data/fresh_*.toml, listed in earmark.device.topics_eval.FRESH_SETS), written
  separately; nothing in them, and no utterance of the tests (tests/topics/cases.py), is ever
  trained on.
- The natural sentences are also trained on as PocketSphinx heard them from Piper speech
  (natural_heard.jsonl, made by speech_data.py): the device's real input has recognition
  errors that the simulated noise does not imitate ("krispy kreme" -> "crispy cream").
"""

from __future__ import annotations

import ast
import csv
import json
import os
import random
import re
import tomllib
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from earmark.device import topics_eval
from earmark.device.topics import NONE_CLASS, normalise

HERE = Path(__file__).resolve().parent
# the shared data folder next to the repository, as tests/conftest.py finds it
SHARED = Path(os.environ.get("EARMARK_SHARED_DATA", HERE.parents[2] / "shared" / "data"))
CORPORA = SHARED / "corpora"
SEED = 1234
CORPUS_TRAIN_CAP = 60  # per intent: keeps the build a few minutes on a shared 2-core machine
CORPUS_HELDOUT_CAP = 12
HELDOUT_FRACTION = 0.25
TAXONOMY_FRAMES_PER_TOPIC = 6
EXCLUDED_NODES = {"390"}  # Science > Weather: weather questions are no-interest utterances
SENSITIVE_FRAMES_PER_TOPIC = 12  # sensitive classes have many more topic phrases
NATURAL_NOISY_COPIES = 4  # natural sentences are few next to the templates: weigh them up
HEARD = HERE / "natural_heard.jsonl"
# Corpus intents are mapped to a class whole, so some held-out "none" items are in fact an interest
# ("what is the story of the movie titanic") or sensitive ("church with mom and dad on sunday").
# Two annotators who saw only the label brief relabelled that split blind (heldout_audit.tsv).
AUDIT = HERE / "heldout_audit.tsv"
# A transcript that lost more than this share of its words teaches a label for noise; the
# device's sensitive head would learn to flag garbled speech.
MAX_HEARD_WER = 0.5
# every fresh evaluation set, dev and test alike (earmark eval topics reads the same list)
FRESH_SETS = [HERE.parent / "data" / f for f in topics_eval.FRESH_SETS.values()]
TEST_CASES = HERE.parents[1] / "tests" / "topics" / "cases.py"


@dataclass(frozen=True)
class Example:
    text: str
    label: str  # IAB id, "none", or "sensitive:<category>"
    source: str  # "seed", "clinc150", ...


_ONES = "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen".split()  # noqa: E501
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()


def number_words(n: int) -> str:
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else " " + _ONES[n % 10])
    if n < 1000:
        rest = n % 100
        return _ONES[n // 100] + " hundred" + ("" if rest == 0 else " " + number_words(rest))
    return " ".join(_ONES[int(d)] for d in str(n))


def spoken(text: str) -> str:
    """Recogniser-style text: digits spelled out, then earmark's normalisation."""
    text = re.sub(r"\d+", lambda m: f" {number_words(int(m.group()))} ", text)
    return normalise(text.replace("&", " and "))


_FUNCTION_SWAPS = {
    "to": ["two", "too", "the"],
    "for": ["four", "from"],
    "a": ["the", "uh"],
    "the": ["a", "that"],
    "and": ["in", "an"],
    "in": ["and", "on"],
    "my": ["i", "by"],
    "i": ["a", "hi"],
    "is": ["as", "his"],
    "of": ["a", "have"],
    "me": ["be", "the"],
    "on": ["in", "an"],
}
_CONTRACTIONS = {"i'm": "i am", "what's": "what is", "don't": "do not", "it's": "it is"}
_FILLERS = ["uh", "um", "the", "and", "so"]
# what a recogniser makes of a breath, a cough or the wearer's "hey" before the utterance
_LEAD_INS = ["oh", "uh", "um", "what", "the", "a", "and", "hi", "so", "well", "hey", "i"]
LEAD_IN_RATE = 0.15


def noisy(text: str, rng: random.Random) -> str:
    """Recognition-like errors: dropped, swapped and inserted words; contractions split; a
    few junk words in front (1-3 lead-ins)."""
    out: list[str] = []
    if rng.random() < LEAD_IN_RATE:
        out += rng.choices(_LEAD_INS, k=rng.randint(1, 3))
    words = text.split()
    for w in words:
        r = rng.random()
        if r < 0.07 and len(words) > 3:
            continue
        if w in _CONTRACTIONS and rng.random() < 0.5:
            out.extend(_CONTRACTIONS[w].split())
            continue
        if w in _FUNCTION_SWAPS and rng.random() < 0.25:
            w = rng.choice(_FUNCTION_SWAPS[w])
        elif rng.random() < 0.04 and len(w) > 4:
            w = w[:-1] if w.endswith("s") and not w.endswith("ss") else w + "s"
        out.append(w)
        if rng.random() < 0.04:
            out.append(rng.choice(_FILLERS))
    return " ".join(out) or text


def _split(items: list, rng: random.Random, fraction: float) -> tuple[list, list]:
    items = list(items)
    rng.shuffle(items)
    k = max(1, round(len(items) * fraction)) if len(items) > 1 else 0
    return items[k:], items[:k]


def seed_examples(rng: random.Random) -> tuple[list[Example], list[Example]]:
    seed = tomllib.loads((HERE / "seed.toml").read_text(encoding="utf-8"))
    # One frame pool for interest and sensitive classes alike: the frame must not predict
    # the label, so the heads learn from the topic, which is what held-out items change.
    tr_frames, ho_frames = _split(
        seed["frames"]["interest"] + seed["frames"]["sensitive"], rng, 0.3
    )
    train: list[Example] = []
    held: list[Example] = []
    for label, cls in seed["classes"].items():
        per_topic = SENSITIVE_FRAMES_PER_TOPIC if label.startswith("sensitive:") else None
        tr_topics, ho_topics = _split(cls["topics"], rng, HELDOUT_FRACTION)
        tr_sent, ho_sent = _split(cls["sentences"], rng, HELDOUT_FRACTION)
        for s in tr_sent:
            train.append(Example(spoken(s), label, "seed"))
        for t in tr_topics:
            fs = rng.sample(tr_frames, per_topic) if per_topic else tr_frames
            for f in fs:
                train.append(Example(spoken(f.format(t=t)), label, "seed"))
        for s in ho_sent:
            held.append(Example(spoken(s), label, "seed"))
        for t in ho_topics:
            for f in rng.sample(ho_frames, min(3, len(ho_frames))):
                held.append(Example(spoken(f.format(t=t)), label, "seed"))
    return train, held


def _snips_text(path: Path) -> list[str]:
    data = json.loads(path.read_text(encoding="utf-8"))
    (rows,) = data.values()
    return ["".join(part["text"] for part in row["data"]) for row in rows]


def corpus_texts() -> dict[tuple[str, str], list[str]]:
    """(corpus, intent) -> texts, for every intent in the corpora."""
    out: dict[tuple[str, str], list[str]] = defaultdict(list)
    clinc = json.loads((CORPORA / "clinc150/train_val.json").read_text(encoding="utf-8"))
    for split in ("train", "val", "oos_train", "oos_val"):
        for text, intent in clinc[split]:
            out[("clinc150", intent)].append(text)
    with (CORPORA / "hwu64/hwu64_fold1_train.csv").open(encoding="utf-8") as f:
        for row in csv.DictReader(f):
            out[("hwu64", f"{row['scenario']}/{row['intent']}")].append(row["text"])
    for path in sorted((CORPORA / "snips").glob("train_*.json")):
        out[("snips", path.stem.removeprefix("train_"))] = _snips_text(path)
    with (CORPORA / "banking77/train.csv").open(encoding="utf-8") as f:
        out[("banking77", "*")] = [row["text"] for row in csv.DictReader(f)]
    for path in sorted((CORPORA / "bbq").glob("*.jsonl")):
        seen: dict[str, None] = {}
        for line in path.read_text(encoding="utf-8").splitlines():
            context = json.loads(line)["context"]
            seen.setdefault(re.split(r"(?<=[.!?])\s", context)[0], None)
        out[("bbq", path.stem)] = list(seen)
    return out


def corpus_examples(rng: random.Random) -> tuple[list[Example], list[Example]]:
    labels = tomllib.loads((HERE / "corpus_labels.toml").read_text(encoding="utf-8"))
    train: list[Example] = []
    held: list[Example] = []
    for (corpus, intent), texts in sorted(corpus_texts().items()):
        label = labels.get(corpus, {}).get(intent)
        if label is None:
            continue
        uniq = sorted({spoken(t) for t in texts} - {""})
        tr, ho = _split(uniq, rng, 0.15)
        cap = CORPUS_TRAIN_CAP * (8 if corpus in ("banking77",) else 1)
        cap = cap * 4 if corpus == "bbq" else cap
        train += [Example(t, label, corpus) for t in tr[:cap]]
        held += [
            Example(t, label, corpus)
            for t in ho[: CORPUS_HELDOUT_CAP * (3 if cap > CORPUS_TRAIN_CAP else 1)]
        ]
    return train, held


def _topic_name(name: str) -> str:
    return spoken(re.sub(r"\(.*?\)", " ", name).replace(",", " and"))


def taxonomy_topics() -> list[tuple[str, str]]:
    """(topic phrase, class) from IAB node names under targetable tags and from Google Topics.

    Only training ever sees these: they widen the vocabulary of each tag ("plumbing",
    "landscaping", "water sports") beyond the hand-written phrases.
    """
    from earmark.taxonomy import load_taxonomy

    tax = load_taxonomy()
    targetable = {n.id for n in tax.targetable}
    out: list[tuple[str, str]] = []
    for node in tax.nodes.values():
        if node.sensitive is not None or node.id in targetable or node.id in EXCLUDED_NODES:
            continue
        cur = node
        while cur.parent is not None and cur.id not in targetable:
            cur = tax.node(cur.parent)
        if cur.id in targetable and all(
            tax.node(a).sensitive is None for a in _ancestors(tax, node)
        ):
            out.append((_topic_name(node.name), cur.id))
    labels = tomllib.loads((HERE / "corpus_labels.toml").read_text(encoding="utf-8"))
    prefixes = labels["google_topics"]
    with (SHARED / "taxonomy/google-topics-taxonomy-v2.tsv").open(encoding="utf-8") as f:
        for row in csv.DictReader(f, delimiter="\t"):
            path = row["path"]
            match = max(
                (p for p in prefixes if path == p or path.startswith(p + "/")),
                key=len,
                default=None,
            )
            if match is not None and path != match.rsplit("/", 1)[0]:
                out.append((_topic_name(path.rsplit("/", 1)[1]), prefixes[match]))
    return sorted(set(out))


def _ancestors(tax, node) -> list[str]:  # type: ignore[no-untyped-def]
    ids = []
    while node.parent is not None:
        ids.append(node.parent)
        node = tax.node(node.parent)
    return ids


def taxonomy_examples(rng: random.Random) -> list[Example]:
    seed = tomllib.loads((HERE / "seed.toml").read_text(encoding="utf-8"))
    frames = seed["frames"]["interest"] + seed["frames"]["sensitive"]
    return [
        Example(spoken(f.format(t=topic)), label, "taxonomy")
        for topic, label in taxonomy_topics()
        for f in rng.sample(frames, TAXONOMY_FRAMES_PER_TOPIC)
    ]


def natural_examples() -> list[Example]:
    """Whole natural sentences per class, and hard negatives labelled with their interest tag."""
    out: list[Example] = []
    for path in sorted((HERE / "natural").glob("*.toml")):
        data = tomllib.loads(path.read_text(encoding="utf-8"))
        for label, cls in data.get("classes", {}).items():
            out += [Example(spoken(t), label, "natural") for t in cls["sentences"]]
        for label, texts in data.get("hard_negatives", {}).items():
            out += [Example(spoken(t), label, "natural") for t in texts]
    return out


def heard_examples(sentences: set[str]) -> list[Example]:
    """What the recogniser heard of those natural ``sentences`` that it misheard, labelled as the
    sentence was."""
    from earmark.device.wer import wer

    if not HEARD.exists():
        return []
    rows = [json.loads(line) for line in HEARD.read_text(encoding="utf-8").splitlines() if line]
    return [
        Example(spoken(r["heard"]), r["label"], "natural+heard")
        for r in rows
        if r["text"] in sentences
        and r["heard"]
        and r["heard"] != r["text"]
        and wer(r["text"], r["heard"]).wer <= MAX_HEARD_WER
    ]


def audited(held: list[Example]) -> list[Example]:
    """The held-out split as the blind audit labels it. An item moves to another class only when
    both annotators moved it there (for interests: to the same tier-1; the first annotator's tag
    is kept), and is left out of evaluation when both moved it but to different classes; one
    annotator's "none" keeps it "none"."""
    if not AUDIT.exists():
        return held
    from earmark.taxonomy import load_taxonomy

    tax = load_taxonomy()

    def kind(label: str) -> str:
        return label if label.startswith("sensitive:") else tax.node(label).tier1

    with AUDIT.open(encoding="utf-8", newline="") as f:
        rows = csv.DictReader((line for line in f if not line.startswith("#")), delimiter="\t")
        votes = {r["text"]: (r["annotator_1"], r["annotator_2"]) for r in rows}
    out = []
    for e in held:
        a, b = votes.get(e.text, (NONE_CLASS, NONE_CLASS))
        if NONE_CLASS in (a, b):
            out.append(e)
        elif kind(a) == kind(b):
            out.append(Example(e.text, a, e.source))
    return out


def never_train_on() -> set[str]:
    """The fresh dev and test sets and every string in the topic tests, as recogniser text."""
    texts: list[str] = []
    for path in FRESH_SETS:
        if path.exists():
            fresh = tomllib.loads(path.read_text(encoding="utf-8"))
            texts += [t for cls in fresh["classes"].values() for t in cls["sentences"]]
    if TEST_CASES.exists():
        tree = ast.parse(TEST_CASES.read_text(encoding="utf-8"))
        strings = (n for n in ast.walk(tree) if isinstance(n, ast.Constant))
        texts += [n.value for n in strings if isinstance(n.value, str)]
    return {spoken(t) for t in texts} - {""}


def build_splits() -> tuple[list[Example], list[Example]]:
    """(train, held_out); no held-out, fresh-evaluation or test text appears in training."""
    rng = random.Random(SEED)
    s_tr, s_ho = seed_examples(rng)
    c_tr, c_ho = corpus_examples(rng)
    natural = natural_examples()
    train, held = s_tr + c_tr + taxonomy_examples(rng) + natural, s_ho + c_ho
    banned = {e.text for e in held} | never_train_on()
    held = audited(held)
    kept = [e for e in train if e.text not in banned]
    # heard copies of sentences that are still trained on (never of evaluation text)
    heard = heard_examples({e.text for e in natural} - banned)
    kept += [e for e in heard if e.text not in banned]
    dropped = sorted({e.text for e in train if e.source == "natural"} & banned)
    if dropped:
        print(f"left out of training, being evaluation text: {len(dropped)} natural sentences")
    return kept, held


def augment(train: list[Example], copies: int = 1) -> list[Example]:
    rng = random.Random(SEED + 1)
    extra = [
        Example(noisy(e.text, rng), e.label, e.source + "+noise")
        for e in train
        for _ in range(copies + (NATURAL_NOISY_COPIES if e.source == "natural" else 0))
    ]
    return train + extra
