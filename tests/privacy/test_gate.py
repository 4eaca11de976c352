"""The gate on real topic-model scores: consent, region, sensitive layers, interest."""

from __future__ import annotations

import dataclasses

import pytest

from earmark.device.privacy import PrivacyGate, PrivacyParts, RegionSignals
from earmark.device.sensitive import SensitiveFilter

from .conftest import NEW_YORK, PARIS, T0

HOTEL = "find a hotel near the cancer center"
TRAVEL = "book a flight to paris next week"
TRAVEL_TAG = "653"


def test_an_interest_utterance_in_an_allowed_region_yields_its_tags(
    parts: PrivacyParts, classifier
) -> None:
    d = parts.gate.decide(TRAVEL, classifier.classify(TRAVEL), NEW_YORK, T0)
    assert d.allowed and d.reason == "published" and d.region == "US"
    assert TRAVEL_TAG in dict(d.tags)
    assert d.model == classifier.version and d.why and "Travel" in d.why[0]


def test_no_consent_no_region_no_tags(parts: PrivacyParts, classifier) -> None:
    scores = classifier.classify(TRAVEL)
    assert parts.gate.decide(TRAVEL, scores, PARIS, T0).reason == "region_blocked:FR"
    assert parts.gate.decide(TRAVEL, scores, RegionSignals(), T0).reason == "no_signal"
    parts.consent.revoke(T0, outbox=None)
    d = parts.gate.decide(TRAVEL, scores, NEW_YORK, T0)
    assert (d.allowed, d.tags, d.reason) == (False, (), "no_consent")


def test_a_sensitive_utterance_yields_nothing_not_even_its_innocent_tags(
    parts: PrivacyParts, classifier
) -> None:
    scores = classifier.classify(HOTEL)
    # Even if the model had been sure of Travel, the rule layer silences the utterance.
    travel = dataclasses.replace(scores.topics[0], id=TRAVEL_TAG, score=0.99)
    loud = dataclasses.replace(scores, topics=(travel, *scores.topics[1:]))
    d = parts.gate.decide(HOTEL, loud, NEW_YORK, T0)
    assert not d.allowed and d.tags == ()
    assert d.reason.startswith("sensitive:health:") and "health:rules" in d.fired


def test_each_layer_fires_on_its_own(parts: PrivacyParts, classifier, taxonomy) -> None:
    sf: SensitiveFilter = parts.gate.sensitive
    gun = classifier.classify("where can i buy a gun")
    assert any(h.layer == "model" for h in sf.model_hits(gun))
    assert [h.category for h in sf.rule_hits("my union rep called")] == ["trade_union"]
    assert sf.rule_hits("transfer money to my credit union account") == []  # allow list
    flagged = next(n for n in taxonomy.nodes.values() if n.sensitive == "health")
    base = classifier.classify(TRAVEL)
    fake = dataclasses.replace(base.topics[0], id=flagged.id, score=0.9)
    hits = sf.taxonomy_hits(dataclasses.replace(base, topics=(fake,)))
    assert [(h.category, h.layer) for h in hits] == [("health", "taxonomy")]


def test_suppressions_are_counted_by_reason_and_hold_no_text(
    parts: PrivacyParts, classifier
) -> None:
    for text in (HOTEL, HOTEL, TRAVEL):
        parts.gate.decide(text, classifier.classify(text), NEW_YORK, T0)
    parts.gate.decide(TRAVEL, classifier.classify(TRAVEL), PARIS, T0)
    counts = parts.ledger.suppressions()
    assert counts.pop("region_blocked:FR") == 1
    assert list(counts.values()) == [2] and next(iter(counts)).startswith("sensitive:health:")
    parts.ledger.close()
    raw = b"".join(p.read_bytes() for p in parts.ledger.path.parent.glob("ledger.sqlite3*"))
    for word in (b"cancer", b"hotel", b"flight", b"paris"):
        assert word not in raw.lower()


def test_a_check_that_breaks_refuses_instead_of_crashing(parts: PrivacyParts) -> None:
    class Broken:
        topics = None  # not iterable: the interest filter raises
        sensitive = {"health": 0.0}
        model_version = "x"

    d = parts.gate.decide(TRAVEL, Broken(), NEW_YORK, T0)  # type: ignore[arg-type]
    assert not d.allowed and d.reason == "error:TypeError" and d.layer == "error"


def test_a_gate_with_a_bad_region_signal_refuses(parts: PrivacyParts, classifier) -> None:
    gate: PrivacyGate = parts.gate
    bad = RegionSignals(lat=float("nan"), lon=0.0, account_country="US")
    assert not gate.decide(TRAVEL, classifier.classify(TRAVEL), bad, T0).allowed


@pytest.mark.parametrize("text", ["", "   "])
def test_empty_text_is_not_published_without_scores(parts: PrivacyParts, classifier, text) -> None:
    scores = classifier.classify("what is the weather tomorrow")
    d = parts.gate.decide(text, scores, NEW_YORK, T0)
    assert not d.allowed and d.reason == "no_interest"


@pytest.mark.parametrize(
    ("everyday", "sensitive", "category"),
    [
        (
            "that was a sick trick on the half pipe",
            "he's been off sick with the flu all week",
            "health",
        ),
        (
            "the bowling league had a strike contest",
            "we're going on strike next week over pay",
            "trade_union",
        ),
        ("my phone battery died again", "my grandad died on tuesday", "iab_sensitive"),
    ],
)
def test_weak_rule_words_fire_only_when_the_model_leans_that_way(
    parts: PrivacyParts, classifier, everyday: str, sensitive: str, category: str
) -> None:
    sf: SensitiveFilter = parts.gate.sensitive
    word = next(w for w in sf.policy.weak_rules[category] if w.rstrip("*") in everyday.split())
    assert word.rstrip("*") in sensitive.split()  # the same word in both
    calm = classifier.classify(everyday)
    assert calm.sensitive[category] < sf.policy.weak_rule_floor
    assert sf.rule_hits(everyday, calm) == []
    assert [h.category for h in sf.rule_hits(everyday)] == [category]  # rules alone: strict
    assert sf.check(sensitive, classifier.classify(sensitive))  # in context it is caught
