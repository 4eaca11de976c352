"""Property tests over utterances, on real topic-model scores.

1. No substring of a transcript ever appears in a message that leaves (beyond the strings
   a batch is made of whatever was said: field names, versions, ids, region, tag ids).
2. A sensitive or blocked-region utterance never changes what leaves: a day of ordinary
   utterances yields the same batches with or without them mixed in.
"""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from earmark.device.privacy import RegionSignals, build_parts
from earmark.wire import SignalBatch

from .conftest import DEVICE, HOUR, NEW_YORK, PARIS, T0, ManualClock

pytestmark = pytest.mark.slow

ORDINARY = [
    "book a flight to paris next week", "play some jazz music", "find a good sushi restaurant",
    "i want to buy new running shoes", "recommend a thriller novel to read",
    "what movies are playing tonight", "how do i change the oil in my car",
    "i need a new laptop for gaming", "show me recipes for banana bread",
    "when does the next football game start", "find hiking trails near the lake",
]  # fmt: skip
SENSITIVE = [
    "find a hotel near the cancer center", "book a flight to the mosque in paris",
    "play some music for my depression", "find a restaurant near the union hall",
    "what time is mass at the church", "buy concert tickets for the pride parade",
    "where can i buy a gun", "i need a lawyer for my dui",
]  # fmt: skip
WORDS = st.sampled_from(
    "the a my to for and find book play buy hotel flight music recipe car game near tonight"
    " weekend paris tokyo new best cheap seven quiet lake trail jazz guitar pizza".split()
)
SETTINGS = settings(max_examples=60, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip


@pytest.fixture(scope="module")
def scored(classifier) -> dict[str, object]:
    return {t: classifier.classify(t) for t in ORDINARY + SENSITIVE}


def _run(state: Path, taxonomy, steps: list[tuple[str, object, RegionSignals]]) -> list[bytes]:
    """Feed utterances through gate and batcher over a day; return the payloads that leave."""
    clock = ManualClock()
    parts = build_parts(state, DEVICE, clock, taxonomy=taxonomy)
    parts.consent.grant(T0)
    parts.batcher.rng = random.Random(0)
    out: list[SignalBatch] = []
    for i, (text, scores, region) in enumerate(steps):
        now = T0 + i * 600  # one utterance every ten minutes
        parts.batcher.add(parts.gate.decide(text, scores, region, now), now)  # type: ignore[arg-type]
        out += parts.batcher.close_due(now)
    out += parts.batcher.flush(T0 + len(steps) * 600 + HOUR)
    parts.ledger.close()
    return [dataclasses.replace(b, seq=n + 1).to_bytes() for n, b in enumerate(out)]


def _skeleton_strings(payload: bytes) -> set[str]:
    obj = json.loads(payload)
    strings = set(obj) | {"epsilon", "id", "w"}
    strings |= {v for v in obj.values() if isinstance(v, str)}
    strings |= {t["id"] for t in obj["tags"]}
    return strings


@given(words=st.lists(WORDS, min_size=1, max_size=14), salt=st.text(min_size=0, max_size=12))
@SETTINGS
def test_no_substring_of_a_transcript_leaves(words, salt, classifier, taxonomy, tmp_path_factory):
    text = " ".join(words) + (" " + salt if salt.strip() else "")
    scores = classifier.classify(text) if any(c.isalnum() for c in text) else None
    if scores is None:
        return
    state = tmp_path_factory.mktemp("s")
    payloads = _run(state, taxonomy, [(text, scores, NEW_YORK)] * 3)
    for payload in payloads:
        body = payload.decode()
        allowed = _skeleton_strings(payload)
        for n in range(4, len(text) + 1):
            for i in range(len(text) - n + 1):
                piece = text[i : i + n]
                if piece in body:
                    assert any(piece in s for s in allowed) or piece.strip(" .0123456789") == "", (
                        f"{piece!r} of the transcript leaked into {body}"
                    )


@given(
    plan=st.lists(st.integers(0, len(ORDINARY) - 1), min_size=3, max_size=30),
    inserts=st.lists(
        st.tuples(st.integers(0, 30), st.integers(0, len(SENSITIVE) - 1), st.booleans()),
        min_size=1, max_size=8,
    ),
)  # fmt: skip
@SETTINGS
def test_sensitive_or_blocked_region_utterances_never_change_what_leaves(
    plan, inserts, scored, taxonomy, tmp_path_factory
):
    base = [(ORDINARY[i], scored[ORDINARY[i]], NEW_YORK) for i in plan]
    mixed = list(base)
    for pos, k, abroad in sorted(inserts, reverse=True):
        if abroad:  # an ordinary utterance heard while in Paris
            text = ORDINARY[k % len(ORDINARY)]
            step = (text, scored[text], PARIS)
        else:
            step = (SENSITIVE[k], scored[SENSITIVE[k]], NEW_YORK)
        mixed.insert(min(pos, len(mixed)), step)
    # Keep windows aligned: the mixed run has more steps, so give the base run the same
    # timeline by replacing each insert with a refused utterance of the same length in time.
    filler = ("", scored[ORDINARY[0]], RegionSignals())  # no region signal: refused
    padded = [filler if s[2] is PARIS or s[0] in SENSITIVE else s for s in mixed]
    a = _run(tmp_path_factory.mktemp("a"), taxonomy, padded)
    b = _run(tmp_path_factory.mktemp("b"), taxonomy, mixed)
    assert a == b
