"""Held-out utterances for measuring the sensitive filter: recall and false suppression.

Sensitive: BBQ contexts (Religion → religion, Sexual_orientation → sexual_orientation,
Disability_status → health), split by template: odd ``question_index`` templates were used
while writing the rule lists (dev), even ones are held out; plus the project's own written set
(``tests/privacy/data/sensitive_heldout.tsv``, every category, never used for tuning), and
the topic-model engineer's held-out split ``models/data/heldout_sensitive.jsonl``.
Ordinary interest utterances: CLINC150 (travel, auto, kitchen and dining, banking, credit
cards; minus the health intent ``vaccines``), SNIPS and HWU64 interest scenarios, split by
position (even rows dev, odd rows held out), plus ``models/data/heldout_interest.jsonl``
(held out).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from earmark.errors import EarmarkError

CORPORA = Path("/work/shared/data/corpora")
OWN_SET = Path(__file__).resolve().parent.parent / "tests" / "privacy" / "data"
MODEL_DATA = Path(__file__).resolve().parent.parent / "models" / "data"
BBQ = {"Religion": "religion", "Sexual_orientation": "sexual_orientation",
       "Disability_status": "health"}  # fmt: skip
CLINC_DOMAINS = ("travel", "auto_and_commute", "kitchen_and_dining", "banking", "credit_cards")
CLINC_SENSITIVE_INTENTS = {"vaccines"}
SNIPS = ("PlayMusic", "AddToPlaylist", "BookRestaurant", "RateBook", "SearchScreeningEvent",
         "SearchCreativeWork")  # fmt: skip
HWU = ("music", "cooking", "takeaway", "transport", "recommendation", "play")


@dataclass(frozen=True)
class Utterance:
    text: str
    category: str | None  # sensitive category, or None for an ordinary interest utterance
    source: str


def sensitive_set(split: str = "heldout", corpora: Path = CORPORA) -> list[Utterance]:
    want_even = split == "heldout"
    out: list[Utterance] = []
    seen: set[str] = set()
    for name, cat in BBQ.items():
        for line in _open(corpora / "bbq" / f"{name}.jsonl"):
            row = json.loads(line)
            if (int(row["question_index"]) % 2 == 0) != want_even or row["context"] in seen:
                continue
            seen.add(row["context"])
            out.append(Utterance(row["context"], cat, f"bbq/{name}"))
    if split == "heldout":
        for line in _open(OWN_SET / "sensitive_heldout.tsv"):
            if line.strip() and not line.startswith("#"):
                cat, text = line.rstrip("\n").split("\t", 1)
                out.append(Utterance(text, cat, "earmark"))
        out += _jsonl(MODEL_DATA / "heldout_sensitive.jsonl", sensitive=True)
    return out


def _jsonl(path: Path, sensitive: bool) -> list[Utterance]:
    """The topic model's held-out splits, when they are there (they ship with the model)."""
    if not path.exists():
        return []
    rows = [json.loads(line) for line in _open(path) if line.strip()]
    source = f"models/data/{path.stem}"
    return [Utterance(r["text"], r["category"] if sensitive else None, source) for r in rows]


def ordinary_set(split: str = "heldout", corpora: Path = CORPORA) -> list[Utterance]:
    rows = list(_ordinary(corpora))
    parity = 1 if split == "heldout" else 0
    out = [u for i, u in enumerate(rows) if i % 2 == parity]
    if split == "heldout":
        out += _jsonl(MODEL_DATA / "heldout_interest.jsonl", sensitive=False)
    return out


def _ordinary(corpora: Path) -> Iterator[Utterance]:
    domains = json.loads("".join(_open(corpora / "clinc150" / "domains.json")))
    intents = {i for d in CLINC_DOMAINS for i in domains[d]} - CLINC_SENSITIVE_INTENTS
    clinc = json.loads("".join(_open(corpora / "clinc150" / "train_val.json")))
    for text, intent in clinc["train"] + clinc["val"]:
        if intent in intents:
            yield Utterance(text, None, f"clinc150/{intent}")
    for name in SNIPS:
        data = json.loads("".join(_open(corpora / "snips" / f"train_{name}.json")))
        for item in data[name]:
            yield Utterance("".join(p["text"] for p in item["data"]).strip(), None, f"snips/{name}")
    with (corpora / "hwu64" / "hwu64_fold1_train.csv").open(encoding="utf-8") as f:
        for row in csv.DictReader(f):
            if row["scenario"] in HWU:
                yield Utterance(row["text"], None, f"hwu64/{row['scenario']}")


def _open(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8", errors="replace").splitlines(keepends=True)
    except FileNotFoundError:
        raise EarmarkError(f"evaluation data {path} not found") from None
