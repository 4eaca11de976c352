"""HIL: a day of mixed speech, a trip through the EU, and a revoked consent, end to end."""

from __future__ import annotations

import json
import re

import pytest

from tests.hil.conftest import Hil

pytestmark = pytest.mark.slow

# What each interest question of firmware_sim/scenarios/day.toml must become (tier-1 names).
DAY_INTERESTS = {
    "What is a good recipe for chicken curry tonight": "Food & Drink",
    "How do I file my taxes this year": "Personal Finance",
    "Recommend a good science fiction book": "Books and Literature",
    "What are the best beaches in Mexico": "Travel",
    "I would like to buy a used car with low mileage": "Automotive",
    "Play some jazz music": "Entertainment",
}


def sent_batches(h: Hil) -> list[dict]:
    return [
        r.message
        for d in h.world.devices
        for r in d.parts.ledger.sent()
        if r.message.get("type") == "signal_batch"
    ]


def test_day_of_mixed_speech(hil) -> None:  # type: ignore[no-untyped-def]
    h: Hil = hil("day")
    h.world.run()
    events = {e.value: e for e in h.world.scenario.events if e.kind == "say"}
    decided = h.said_and_decided()
    assert {text for _, text, _ in decided} == set(events)
    for _, text, d in decided:
        if events[text].options["expect"] == "published":
            assert d["allowed"], (text, d["reason"])
            assert any(t.startswith(DAY_INTERESTS[text]) for t in d["tags"]), (text, d["tags"])
        else:  # sensitive: refused whole, innocent tags included
            assert not d["allowed"] and d["reason"].startswith("sensitive:"), (text, d)
            assert d["tags"] == []

    # the profile holds exactly the expected interests' tier-1 categories
    dev = h.world.devices[0]
    profile = h.world.services.profile(dev.plan.user_id, h.world.clock.now())
    got = {h.tier1(i["tag"]) for i in profile["interests"]}
    assert set(DAY_INTERESTS.values()) <= got
    assert not got & {"Health", "Religion & Spirituality", "Politics"}

    # a sensitive question sits alone in its hour: that window sent nothing at all
    start = h.world.start_t
    sensitive_hours = {
        int(start + e.t) // 3600 * 3600
        for e in events.values()
        if e.options["expect"] == "suppressed"
    }
    windows = {b["window_start"] for b in sent_batches(h)}
    assert windows and not windows & sensitive_hours
    assert all(h.world.reconcile(d)["match"] for d in h.world.devices)

    # no transcript text on the wire: every byte through the link and every delivered payload
    wire = h.wire_bytes().lower()
    assert len(wire) > 500 and h.wiretap.payloads("signals")
    for text in events:
        for word in re.findall(r"[a-z]{5,}", text.lower()):
            assert word.encode() not in wire, f"{word!r} from {text!r} reached the broker"
    for payload in h.wiretap.payloads("signals"):
        assert set(json.loads(payload)) <= {
            "v", "type", "device_id", "seq", "taxonomy", "model", "window_start",
            "window_s", "region", "tags", "ldp",
        }  # fmt: skip


def test_travel_nothing_leaves_inside_the_eu(hil) -> None:  # type: ignore[no-untyped-def]
    h: Hil = hil("travel")
    h.world.run()
    moves = [(e.t, e.value) for e in h.world.scenario.events if e.kind == "move"]
    left_us = h.world.start_t + moves[0][0]
    back_us = h.world.start_t + [t for t, v in moves if v == "new_york"][0]
    for _, text, d in h.said_and_decided():
        e = next(e for e in h.world.scenario.events if e.value == text)
        if left_us <= h.world.start_t + e.t < back_us:
            assert not d["allowed"], (text, d)
            assert d["reason"].startswith(("region_blocked:", "open_sea", "conflict", "near_"))
        else:
            assert d["allowed"], (text, d)
    batches = sent_batches(h)
    before = [b for b in batches if b["window_start"] + b["window_s"] <= left_us]
    during = [b for b in batches if left_us - 3600 < b["window_start"] < back_us]
    after = [b for b in batches if b["window_start"] >= back_us]
    assert before and after and not during, [b["window_start"] for b in batches]
    delivered = [json.loads(p) for p in h.wiretap.payloads("signals")]
    assert delivered and {b["region"] for b in delivered} == {"US"}
    assert not [b for b in delivered if left_us - 3600 < b["window_start"] < back_us]
    assert all(h.world.reconcile(d)["match"] for d in h.world.devices)


def test_consent_revoked_mid_day(hil) -> None:  # type: ignore[no-untyped-def]
    h: Hil = hil("consent")
    h.world.run()
    dev = h.world.devices[0]
    revoked = [o for o in h.observations if o.detail.get("what") == "consent"]
    assert len(revoked) == 1 and revoked[0].detail["granted"] is False
    discarded = revoked[0].detail["discarded"]
    assert discarded >= 1  # batches waiting behind the dead link were thrown away
    dropped = dev.parts.ledger.dropped()
    assert len(dropped) == discarded and {r[3] for r in dropped} == {"consent_revoked"}
    # the deletion request reached the gateway, which erased the profile and its records
    assert h.wiretap.payloads("deletion")
    profile = h.world.services.profile(dev.plan.user_id, h.world.clock.now())
    assert profile["interests"] == []
    got, floor = h.world.services.received(dev.id)
    assert got == set() and floor == revoked[0].detail["deletion_seq"]
    assert h.world.services.contributions(dev.id) == {}
    # after the revoke, speech is refused at the gate
    after = [d for _, text, d in h.said_and_decided() if "science fiction" in text]
    assert after and after[0]["reason"] == "no_consent"
    assert dev.outbox.count() == 0
    assert h.world.reconcile(dev)["match"]
