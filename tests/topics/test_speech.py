"""The classifier on what the device really sees: Piper speech recognised by PocketSphinx."""

from __future__ import annotations

import pytest

from earmark.device.audio import WavSource
from earmark.device.stt import engine_for, heard_text
from earmark.device.topics import TopicClassifier

# (spoken sentence, expected tier-1 or decision); not in the training data
SPOKEN = [
    ("I want to book a cheap hotel in Barcelona for the summer holidays.", "Travel"),
    ("My dog needs a new lead and some food for puppies.", "Pets"),
    ("Set an alarm for seven in the morning.", "none"),
    ("My doctor changed my depression medication last week.", "suppress"),
]


@pytest.fixture(scope="module")
def heard() -> list[str]:
    from earmark.firmware_sim.speech import synthesize_many

    engine = engine_for("pocketsphinx")
    paths = synthesize_many([s for s, _ in SPOKEN], progress=False)
    return [heard_text(WavSource(path), engine) for path in paths]


@pytest.mark.slow
def test_recognised_speech_is_classified(classifier: TopicClassifier, heard: list[str]) -> None:
    for (sentence, expect), text in zip(SPOKEN, heard, strict=True):
        assert text.strip(), f"the recogniser heard nothing in {sentence!r}"
        scores = classifier.classify(text)
        decision, _ = classifier.decide(scores)
        if expect in ("none", "suppress"):
            assert decision == expect, (text, decision)
        else:
            top = next(t.tier1 for t in scores.topics if t.name == t.tier1)
            assert (decision, top) == ("publish", expect), text
