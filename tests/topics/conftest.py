"""The shipped topic model, loaded once per session (about a second and ~100 MB)."""

from __future__ import annotations

import pytest

from earmark.device.topics import TopicClassifier


@pytest.fixture(scope="session")
def classifier() -> TopicClassifier:
    return TopicClassifier.load()
