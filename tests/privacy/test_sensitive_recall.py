"""Recall of the layered sensitive filter on held-out utterances of every category, and its
false-suppression rate on ordinary interest utterances, with the real topic model."""

from __future__ import annotations

from collections import Counter

import pytest

from earmark.device.policy import Policy
from earmark.device.sensitive import SensitiveFilter
from earmark.device.sensitive_eval import ordinary_set, sensitive_set
from earmark.taxonomy import SENSITIVE_CATEGORIES

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sf(policy: Policy, taxonomy) -> SensitiveFilter:
    return SensitiveFilter(policy.sensitive, taxonomy)


def test_recall_on_held_out_sensitive_utterances_of_every_category(sf, classifier) -> None:
    utts = sensitive_set("heldout")
    assert {u.category for u in utts} == set(SENSITIVE_CATEGORIES)
    missed = Counter()
    for u in utts:
        if not sf.check(u.text, classifier.classify(u.text)):
            missed[u.category] += 1
    recall = 1 - sum(missed.values()) / len(utts)
    assert recall >= 0.99, missed
    # the project's own set and BBQ were never used to tune the rules: hold them to it too
    own = [u for u in utts if u.source in ("earmark",) or u.source.startswith("bbq/")]
    own_missed = [u for u in own if not sf.check(u.text, classifier.classify(u.text))]
    assert len(own_missed) / len(own) <= 0.01, [u.text for u in own_missed]


def test_false_suppression_on_ordinary_interest_utterances(sf, classifier) -> None:
    utts = ordinary_set("heldout")[::3]  # a third of the held-out set keeps the test short
    suppressed = [u for u in utts if sf.check(u.text, classifier.classify(u.text))]
    assert len(utts) > 2000
    assert len(suppressed) / len(utts) <= 0.05, [u.text for u in suppressed[:20]]


def test_rules_alone_never_fire_on_the_dev_split_of_ordinary_utterances_much(sf) -> None:
    utts = ordinary_set("dev")
    rate = sum(bool(sf.rule_hits(u.text)) for u in utts) / len(utts)
    assert rate <= 0.02
