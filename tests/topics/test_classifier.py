"""The shipped artifact on utterances it never saw in training."""

from __future__ import annotations

from pathlib import Path

import pytest

from earmark.device.topics import TopicClassifier, TopicInputError, normalise
from earmark.device.topics_eval import FRESH_SETS, SPLITS, load_fresh, load_split
from earmark.taxonomy import SENSITIVE_CATEGORIES, load_taxonomy
from tests.topics.cases import INTEREST, NO_INTEREST, SENSITIVE
from tests.topics.recipes import load_recipe


def _top_tier1(clf: TopicClassifier, text: str) -> str:
    return next(t.tier1 for t in clf.classify(text).topics if t.name == t.tier1)


@pytest.mark.parametrize("tier1", sorted(INTEREST))
def test_clear_utterances_land_in_their_tier1(classifier: TopicClassifier, tier1: str) -> None:
    # Measured bar: topics-1.5.0 gets 0.942 of these natural utterances right overall and no
    # category fewer than 10 of 12 (1.4.0: 0.955, 1.3.0: 0.968); some misses are fair
    # doubts ("must see places in barcelona" -> Attractions). Below 10 is a regression.
    texts = INTEREST[tier1]
    assert len(texts) == 12
    got = {t: _top_tier1(classifier, t) for t in texts}
    wrong = {t: g for t, g in got.items() if g != tier1}
    assert len(wrong) <= 2, wrong


def test_clear_utterances_overall(classifier: TopicClassifier) -> None:
    pairs = [(tier1, t) for tier1, texts in INTEREST.items() for t in texts]
    right = [_top_tier1(classifier, t) == tier1 for tier1, t in pairs]
    published = [
        ok and classifier.decide(classifier.classify(t))[0] == "publish"
        for ok, (_, t) in zip(right, pairs, strict=True)
    ]
    assert sum(right) / len(pairs) >= 0.93
    assert sum(published) / len(pairs) >= 0.80


@pytest.mark.parametrize("category", SENSITIVE_CATEGORIES)
def test_sensitive_utterances_of_every_category_are_suppressed(
    classifier: TopicClassifier, category: str
) -> None:
    for text in SENSITIVE[category]:
        scores = classifier.classify(text)
        decision, reason = classifier.decide(scores)
        assert decision == "suppress", (text, scores.sensitive)
        assert reason.startswith("sensitive:")


def test_no_interest_utterances_yield_none(classifier: TopicClassifier) -> None:
    decisions = {t: classifier.decide(classifier.classify(t))[0] for t in NO_INTEREST}
    assert [t for t, d in decisions.items() if d != "none"] == []


def test_scores_cover_every_targetable_tag_and_category(classifier: TopicClassifier) -> None:
    scores = classifier.classify("book me a flight to rome")
    ids = [t.id for t in scores.topics]
    assert set(ids) == {n.id for n in classifier.taxonomy.targetable}
    assert [t.score for t in scores.topics] == sorted(
        (t.score for t in scores.topics), reverse=True
    )
    assert set(scores.sensitive) == set(SENSITIVE_CATEGORIES)
    assert scores.topics[0].tier1 == "Travel"
    assert scores.model_version == classifier.version
    # tier-1 scores include their tier-2 children: Entertainment >= Music for a music request
    music = {t.name: t.score for t in classifier.classify("play some jazz please").topics}
    assert music["Entertainment"] >= music["Music"] > 0.5


def test_typed_text_is_normalised_like_recogniser_output(classifier: TopicClassifier) -> None:
    assert normalise("Book a FLIGHT, to Rome!") == "book a flight to rome"
    a = classifier.classify("Book a FLIGHT, to Rome!")
    b = classifier.classify("book a flight to rome")
    assert a == b
    assert classifier.classify_many(["book a flight to rome"]) == [b]


@pytest.mark.parametrize("bad", ["", "   ", "?!...", None, 42, b"bytes"])
def test_bad_input_is_a_clear_error(classifier: TopicClassifier, bad: object) -> None:
    with pytest.raises(TopicInputError) as err:
        classifier.classify(bad)  # type: ignore[arg-type]
    assert "\n" not in str(err.value) and "classify" in str(err.value)


def test_test_and_fresh_utterances_are_not_in_the_training_data(shared_data: Path) -> None:
    topic_data = load_recipe("topic_data")
    train, _ = topic_data.build_splits()
    seen = {e.text for e in train}
    ours = [t for ts in INTEREST.values() for t in ts]
    ours += [t for ts in SENSITIVE.values() for t in ts] + NO_INTEREST
    for name in FRESH_SETS:
        fresh = load_fresh(name)
        assert sum(map(len, fresh.values())) > 500, name
        ours += [i.text for split in fresh.values() for i in split]
    assert [t for t in ours if topic_data.spoken(t) in seen] == []


def test_heard_copies_come_from_training_sentences_only(shared_data: Path) -> None:
    """The recogniser-output copies (natural_heard.jsonl) are trained on only for sentences that
    are themselves trained on: never for one that is also evaluation or test text."""
    import json

    topic_data = load_recipe("topic_data")
    rows = [json.loads(line) for line in topic_data.HEARD.read_text().splitlines()]
    train, _ = topic_data.build_splits()
    heard = {e.text for e in train if e.source == "natural+heard"}
    assert len(heard) > 1000
    banned = topic_data.never_train_on()
    from_banned = {topic_data.spoken(r["heard"]) for r in rows if r["text"] in banned}
    trained_sentences = {e.text for e in train if e.source == "natural"}
    from_trained = {topic_data.spoken(r["heard"]) for r in rows if r["text"] in trained_sentences}
    assert heard <= from_trained
    assert not (heard & (from_banned - from_trained))


def test_the_committed_held_out_split_is_the_audited_build_output(shared_data: Path) -> None:
    """models/data/heldout_*.jsonl are what the recipe writes, with the blind audit applied: a
    corpus 'none' item both annotators moved is evaluated under its new class."""
    topic_data = load_recipe("topic_data")
    _, held = topic_data.build_splits()
    built = {(e.text, e.label) for e in held}
    committed = {(i.text, i.expect) for split in SPLITS for i in load_split(split)}
    tax = load_taxonomy()

    def expect(label: str) -> str:
        if label == "none" or label.startswith("sensitive:"):
            return label.split(":")[-1]
        return tax.node(label).tier1

    assert {(t, expect(label)) for t, label in built} == committed
    assert ("what is the story of the movie titanic", "Entertainment") in committed
    assert ("church with mom and dad on sunday", "religion") in committed


def test_the_audit_moves_an_item_only_when_both_annotators_agree(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    topic_data = load_recipe("topic_data")
    audit = tmp_path / "audit.tsv"
    audit.write_text(
        "# a comment line\n"
        "text\tannotator_1\tannotator_2\n"
        "play the new film\t324\t324\n"
        "a film night at the cinema\t324\tJLBCU7\n"
        "the shop down the road\t473\tnone\n"
        "headphones with a flat response\t596\t338\n",
        encoding="utf-8",
    )
    monkeypatch.setattr(topic_data, "AUDIT", audit)
    held = [
        topic_data.Example(t, "none", "clinc150")
        for t in (
            "play the new film",
            "a film night at the cinema",
            "the shop down the road",
            "headphones with a flat response",
        )
    ] + [topic_data.Example("set a timer", "none", "seed")]
    # same tag, or the same tier-1 (Movies is under Entertainment): moved; one "none": kept;
    # two different tier-1s (Technology, Music under Entertainment): contested, left out
    assert [(e.text, e.label) for e in topic_data.audited(held)] == [
        ("play the new film", "324"),
        ("a film night at the cinema", "324"),
        ("the shop down the road", "none"),
        ("set a timer", "none"),
    ]


def test_the_device_publishes_at_the_model_s_interest_threshold(
    classifier: TopicClassifier,
) -> None:
    """The privacy gate's interest bar (policy) is the threshold the build chose on the dev
    sets, so `earmark eval topics` measures what the device does."""
    from earmark.device.policy import load_policy

    assert load_policy().min_score == classifier.thresholds.interest
