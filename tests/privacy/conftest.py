from __future__ import annotations

import random
from pathlib import Path

import pytest

from earmark.device.policy import Policy, load_policy
from earmark.device.privacy import PrivacyParts, RegionSignals, build_parts
from earmark.taxonomy import Taxonomy, load_taxonomy
from tests.transport.conftest import ManualClock as _ManualClock

HOUR = 3600
T0 = 1_800_000_000 - 1_800_000_000 % HOUR + 60  # one minute into an hour window
NEW_YORK = RegionSignals(40.7128, -74.0060, "US", "310", "en_US", "America/New_York")
PARIS = RegionSignals(48.8566, 2.3522, "US", "310", "en_US", "America/New_York")  # a traveller
DEVICE = "glasses-0001"


class ManualClock(_ManualClock):
    """The transport tests' manual clock, starting one minute into an hour window."""

    def __init__(self, t: float = T0) -> None:
        super().__init__(t)


@pytest.fixture(scope="session")
def classifier():  # the real ONNX topic model, loaded once
    from earmark.device.topics import TopicClassifier

    return TopicClassifier.load()


@pytest.fixture(scope="session")
def policy() -> Policy:
    return load_policy()


@pytest.fixture(scope="session")
def taxonomy() -> Taxonomy:
    return load_taxonomy()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def parts(tmp_path: Path, clock: ManualClock, taxonomy: Taxonomy) -> PrivacyParts:
    """Gate, batcher, consent and ledger on a fresh state dir, consent granted."""
    p = build_parts(tmp_path, DEVICE, clock, taxonomy=taxonomy)
    p.consent.grant(clock.now())
    p.batcher.rng = random.Random(7)
    return p
