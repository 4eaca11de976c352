"""The shipped artifact itself: size, checksum, metadata, and refusal of a wrong version."""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import replace
from pathlib import Path

import onnx
import pytest

from earmark.device.topics import MODEL_FILE, TopicClassifier, default_model_dir
from earmark.errors import ModelError
from earmark.taxonomy import load_taxonomy


def test_artifact_is_small_and_matches_its_manifest() -> None:
    d = default_model_dir()
    blob = (d / MODEL_FILE).read_bytes()
    manifest = json.loads((d / "model.json").read_text())
    assert len(blob) <= 30_000_000
    assert manifest["sha256"] == hashlib.sha256(blob).hexdigest()
    assert manifest["taxonomy_version"] == load_taxonomy().version
    assert (
        (d / "MODEL_CARD.md").read_text().startswith(f"# Topic model card: {manifest['version']}")
    )


def test_a_model_for_another_taxonomy_version_is_refused() -> None:
    other = replace(load_taxonomy(), version="iab-content-3.1+earmark.999")
    with pytest.raises(ModelError, match="earmark.999") as err:
        TopicClassifier(default_model_dir(), other)
    assert "rebuild" in str(err.value)


def test_a_model_whose_metadata_names_another_taxonomy_is_refused(tmp_path: Path) -> None:
    src = default_model_dir()
    model = onnx.load(str(src / MODEL_FILE))
    for prop in model.metadata_props:
        if prop.key == "earmark.taxonomy_version":
            prop.value = "iab-content-2.2+earmark.1"
    onnx.save(model, str(tmp_path / MODEL_FILE))
    shutil.copy(src / "tokenizer.json", tmp_path / "tokenizer.json")
    with pytest.raises(ModelError, match="iab-content-2.2"):
        TopicClassifier.load(tmp_path)


def test_missing_or_corrupt_model_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="not found"):
        TopicClassifier.load(tmp_path)
    (tmp_path / MODEL_FILE).write_bytes(b"not an onnx model")
    with pytest.raises(ModelError, match="cannot be loaded"):
        TopicClassifier.load(tmp_path / MODEL_FILE)
