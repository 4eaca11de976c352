"""The sensitive filter: three independent layers, any one of which silences an utterance.

1. **model**: the topic model's sensitive head (``TopicScores.sensitive``), a score per
   category in ``earmark.taxonomy.SENSITIVE_CATEGORIES``, against the policy's thresholds.
2. **rules**: terms and phrases the project writes (conditions, medications, faiths and places
   of worship, orientations, parties and campaigns, unions, records), as data in the policy.
   Words with an everyday sense too ("sick", "strike", "died": the policy's ``weak`` lists)
   fire only when the model gives their category at least ``weak_rule_floor``: "that's a
   sick trick" scores near zero for health, "he's been sick for weeks" does not.
3. **taxonomy**: any scored topic that the taxonomy flags sensitive (or does not know).

Layered for recall: a model can miss "the cancer center", a word list can miss a paraphrase.
The filter returns which layers fired and for which category; the text is not kept.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from earmark.device.policy import SensitivePolicy
from earmark.taxonomy import Taxonomy

if TYPE_CHECKING:
    from earmark.device.topics import TopicScores

LAYERS = ("model", "rules", "taxonomy")


@dataclass(frozen=True)
class SensitiveHit:
    category: str  # one of SENSITIVE_CATEGORIES
    layer: str  # "model" | "rules" | "taxonomy"
    detail: str  # score or taxonomy node; never the matched words

    @property
    def reason(self) -> str:
        return f"sensitive:{self.category}:{self.layer}"


def compile_terms(terms: Iterable[str]) -> re.Pattern[str]:
    """Whole-word, case-insensitive alternation; ``*`` at the end of a term matches any ending."""
    parts = []
    for term in sorted(set(terms), key=len, reverse=True):
        t = term.strip().lower()
        star = t.endswith("*")
        words = [re.escape(w) for w in t.rstrip("*").split()]
        body = r"[\s-]+".join(words) + (r"[\w'’]*" if star else "")
        parts.append(body)
    return re.compile(r"(?<![\w])(?:" + "|".join(parts) + r")(?![\w])", re.IGNORECASE)


class SensitiveFilter:
    def __init__(self, policy: SensitivePolicy, taxonomy: Taxonomy | None = None) -> None:
        self.policy = policy
        self.taxonomy = taxonomy
        self.rules = {cat: compile_terms(terms) for cat, terms in policy.rules.items()}
        self.weak = {cat: compile_terms(terms) for cat, terms in policy.weak_rules.items()}
        self.allow = compile_terms(policy.allow) if policy.allow else None

    def rule_hits(self, text: str, scores: TopicScores | None = None) -> list[SensitiveHit]:
        """Categories whose terms occur in ``text``. Without ``scores`` a weak term always
        fires (the rules alone, as strict as they can be)."""
        norm = text.replace("’", "'")
        if self.allow is not None:
            norm = self.allow.sub(" ", norm)
        floor = self.policy.weak_rule_floor
        hits = [
            SensitiveHit(cat, "rules", "term")
            for cat, pattern in self.rules.items()
            if pattern.search(norm)
        ]
        fired = {h.category for h in hits}
        return hits + [
            SensitiveHit(cat, "rules", "weak term")
            for cat, pattern in self.weak.items()
            if cat not in fired
            and pattern.search(norm)
            and (scores is None or scores.sensitive.get(cat, 1.0) >= floor)
        ]

    def model_hits(self, scores: TopicScores) -> list[SensitiveHit]:
        return [
            SensitiveHit(cat, "model", f"{score:.2f}")
            for cat, score in scores.sensitive.items()
            if score >= self.policy.threshold(cat)
        ]

    def taxonomy_hits(self, scores: TopicScores) -> list[SensitiveHit]:
        if self.taxonomy is None:
            return []
        hits = []
        for topic in scores.topics:
            if topic.score < self.policy.taxonomy_threshold:
                continue
            node = self.taxonomy.nodes.get(topic.id)
            if node is None:
                hits.append(SensitiveHit("iab_sensitive", "taxonomy", f"unknown:{topic.id}"))
            elif node.sensitive is not None:
                hits.append(SensitiveHit(node.sensitive, "taxonomy", topic.id))
        return hits

    def check(self, text: str, scores: TopicScores) -> list[SensitiveHit]:
        """Every layer that fires (empty: not sensitive). Model first: it is the cheapest."""
        return self.model_hits(scores) + self.taxonomy_hits(scores) + self.rule_hits(text, scores)
