"""Minimisation: windows, quantised relative weights, random delay, LDP and its budget."""

from __future__ import annotations

import math
import random
from collections import Counter
from pathlib import Path

import pytest

from earmark.device.batching import WindowBatcher, randomised_response
from earmark.device.ledger import Ledger
from earmark.device.privacy import PrivacyDecision, PrivacyParts, build_parts
from earmark.wire import decode

from .conftest import DEVICE, HOUR, T0, ManualClock


def allowed(*tags: tuple[str, float], region: str = "US") -> PrivacyDecision:
    why = tuple(f"cat-{t}" for t, _ in tags)
    return PrivacyDecision(True, tags, "published", "interest", region, "topics-1", why)


def test_a_window_closes_to_one_batch_with_relative_quantised_weights(
    parts: PrivacyParts, taxonomy
) -> None:
    b = parts.batcher
    for _ in range(6):
        b.add(allowed(("653", 0.9)), T0)
    b.add(allowed(("210", 0.8)), T0 + 10)
    b.add(allowed(("338", 0.4), ("JLBCU7", 0.4)), T0 + 20)
    assert b.close_due(T0 + 100) == []  # window still open
    end = T0 - T0 % HOUR + HOUR
    batches = b.close_due(end + parts.policy.max_delay_s + 1)
    assert len(batches) == 1
    batch = batches[0]
    assert batch.window_start == T0 - T0 % HOUR and batch.window_s == HOUR
    assert [t.id for t in batch.tags] == ["653", "210", "338"][: parts.policy.max_tags]
    assert batch.tags[0].w == 1.0 and batch.tags[1].w == 0.25  # relative, not counts
    decoded = decode(_seq1(batch), taxonomy.status)
    assert decoded.tags == batch.tags
    assert b.close_due(end + 10 * HOUR) == []  # sent once


def _seq1(batch):
    import dataclasses

    return dataclasses.replace(batch, seq=1).to_bytes()


def test_batches_leave_after_a_random_delay_within_the_policy(tmp_path: Path, taxonomy) -> None:
    delays = []
    for seed in range(20):
        clock = ManualClock()
        p = build_parts(tmp_path / str(seed), DEVICE, clock, taxonomy=taxonomy)
        p.consent.grant(T0)
        p.batcher.rng = random.Random(seed)
        p.batcher.add(allowed(("653", 0.9)), T0)
        end = T0 - T0 % HOUR + HOUR
        t = end
        while not p.batcher.close_due(t):
            t += 30
        delays.append(t - end)
        p.ledger.close()
    assert all(0 <= d <= p.policy.max_delay_s + 30 for d in delays)
    assert len(set(delays)) > 5  # not a fixed offset


def test_nothing_is_sent_for_a_window_without_allowed_tags(parts: PrivacyParts) -> None:
    refused = PrivacyDecision(False, (), "no_interest", "interest")
    parts.batcher.add(refused, T0)
    assert parts.batcher.flush(T0 + 2 * HOUR) == []


def test_consent_revoked_mid_window_discards_the_open_window(parts: PrivacyParts) -> None:
    parts.batcher.add(allowed(("653", 0.9)), T0)
    parts.consent.revoke(T0 + 60, outbox=None)
    assert parts.batcher.flush(T0 + 2 * HOUR) == []
    parts.consent.grant(T0 + 120)
    assert parts.batcher.flush(T0 + 2 * HOUR) == []  # what was discarded stays discarded
    assert parts.ledger.suppressions() == {"window_discarded:consent_revoked": 1}


def test_randomised_response_keeps_the_true_tag_with_the_promised_probability() -> None:
    domain = [str(i) for i in range(20)]
    eps = 2.0
    rng = random.Random(1)
    draws = Counter(randomised_response("3", domain, eps, rng) for _ in range(20000))
    p = math.exp(eps) / (math.exp(eps) + len(domain) - 1)
    assert abs(draws["3"] / 20000 - p) < 0.02
    assert len(draws) == len(domain)  # every other tag gets reported sometimes


def test_the_lifetime_budget_is_spent_once_per_batch_and_never_exceeded(
    tmp_path: Path, policy, taxonomy
) -> None:
    import dataclasses

    ldp = dataclasses.replace(policy, ldp_enabled=True, ldp_epsilon=1.0, ldp_lifetime_budget=3.0)
    domain = [n.id for n in taxonomy.targetable]
    sent = []
    for _restart in range(2):  # the budget survives a restart: it lives in the ledger
        ledger = Ledger(tmp_path)
        consent = build_parts(tmp_path, DEVICE, ManualClock(), taxonomy=taxonomy).consent
        consent.grant(T0)
        b = WindowBatcher(DEVICE, ldp, taxonomy.version, consent=consent, ledger=ledger,
                          ldp_domain=domain, rng=random.Random(3))  # fmt: skip
        for hour in range(3):
            b.add(allowed(("653", 0.9)), T0 + (len(sent) + hour) * HOUR)
        sent += b.flush(T0 + 10 * HOUR)
        assert ledger.budget_spent() <= 3.0
        ledger.close()
    assert len(sent) == 3
    assert all(s.ldp_epsilon == 1.0 and len(s.tags) == 1 and s.tags[0].w == 1.0 for s in sent)
    ledger = Ledger(tmp_path)
    assert ledger.budget_spent() == 3.0
    assert ledger.suppressions()["ldp_budget_exhausted"] == 3


def test_ldp_without_a_tag_set_is_refused(policy, parts: PrivacyParts) -> None:
    import dataclasses

    with pytest.raises(ValueError):
        WindowBatcher(DEVICE, dataclasses.replace(policy, ldp_enabled=True), "t",
                      consent=parts.consent)  # fmt: skip
