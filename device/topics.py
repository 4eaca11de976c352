"""Text → coarse interest scores and sensitive-category scores, on the device.

One ONNX graph (int8 all-MiniLM-L6-v2 encoder, mean pooling, an interest softmax head over the
targetable IAB tags plus "none", a sigmoid head over the sensitive categories), run with
onnxruntime on one thread. The only other run-time pieces are numpy and the WordPiece
tokenizer; no torch. The graph carries its own version, the taxonomy version it was trained
against, its class list and decision thresholds in its metadata, so what is shipped is what
is checked: a model built for another taxonomy is refused.

Utterances are classified one at a time on purpose: dynamic int8 quantisation scales each
call's activations over the whole input, so padding a batch would change the scores.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from earmark.errors import EarmarkError, ModelError
from earmark.taxonomy import SENSITIVE_CATEGORIES, Taxonomy, load_taxonomy

log = logging.getLogger(__name__)

MODEL_FILE = "topic-model.onnx"
TOKENIZER_FILE = "tokenizer.json"
MAX_TOKENS = 64  # spoken utterances are short; the encoder's cost grows with length
NONE_CLASS = "none"


class TopicInputError(EarmarkError):
    """Text that cannot be classified: empty, not text, nothing left after normalising."""


@dataclass(frozen=True)
class TopicScore:
    id: str  # IAB unique id
    name: str
    tier1: str
    score: float


@dataclass(frozen=True)
class TopicScores:
    topics: tuple[TopicScore, ...]  # every targetable tag, highest first
    sensitive: dict[str, float]  # every category in SENSITIVE_CATEGORIES
    model_version: str
    no_interest: float = 0.0  # probability of the "none" outcome


@dataclass(frozen=True)
class Thresholds:
    """Decision thresholds chosen by the build on calibration data, shipped in the graph."""

    interest: float  # a tier-1 tag must reach this to publish
    sensitive: float  # any category at or above this suppresses the utterance


_KEEP = re.compile(r"[^a-z0-9' ]+")


def normalise(text: str) -> str:
    """Make typed text look like recogniser output: lower case, no punctuation."""
    t = _KEEP.sub(" ", text.lower().replace("’", "'"))
    return " ".join(w.strip("'") for w in t.split() if w.strip("'"))


def decide(scores: TopicScores, thresholds: Thresholds) -> tuple[str, str]:
    """The classify decision rule, in one place: ("publish"|"suppress"|"none", reason).

    Sensitivity is checked first and wins over any interest: a sensitive utterance yields
    nothing, not even its innocent tags. The privacy gate may later replace the sensitive
    check with its layered filter; until then the model's sensitive head decides.
    """
    category, s = max(scores.sensitive.items(), key=lambda kv: kv[1])
    if s >= thresholds.sensitive:
        return "suppress", f"sensitive:{category}:model"
    tier1 = [t for t in scores.topics if t.name == t.tier1]
    if not tier1 or tier1[0].score < thresholds.interest:
        return "none", "no_interest"
    return "publish", f"interest:{tier1[0].tier1}"


def default_model_dir() -> Path:
    return Path(str(resources.files("earmark.models").joinpath("topics")))


class TopicClassifier:
    """Loads the shipped artifact (or another model directory) and scores utterances."""

    def __init__(self, model_dir: Path, taxonomy: Taxonomy) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        model_path = model_dir / MODEL_FILE
        if not model_path.is_file():
            raise ModelError(f"topic model not found at {model_path}; reinstall earmark")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1  # latency on one core; the device has other work
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(
                str(model_path), opts, providers=["CPUExecutionProvider"]
            )
        except Exception as err:  # onnxruntime raises its own exception types
            raise ModelError(f"topic model at {model_path} cannot be loaded: {err}") from err
        meta = self.session.get_modelmeta().custom_metadata_map
        try:
            self.version = meta["earmark.version"]
            taxonomy_version = meta["earmark.taxonomy_version"]
            self.classes: list[str] = json.loads(meta["earmark.classes"])
            categories: list[str] = json.loads(meta["earmark.sensitive_categories"])
            th = json.loads(meta["earmark.thresholds"])
            self.thresholds = Thresholds(float(th["interest"]), float(th["sensitive"]))
        except (KeyError, ValueError, TypeError) as err:
            raise ModelError(f"topic model at {model_path} lacks earmark metadata: {err}") from err
        if taxonomy_version != taxonomy.version:
            raise ModelError(
                f"topic model {self.version} was built for taxonomy {taxonomy_version}, "
                f"but this earmark uses taxonomy {taxonomy.version}; rebuild or reinstall the model"
            )
        if tuple(categories) != SENSITIVE_CATEGORIES:
            raise ModelError(f"topic model {self.version} scores other sensitive categories")
        targetable = {n.id for n in taxonomy.targetable}
        if set(self.classes) - {NONE_CLASS} != targetable:
            raise ModelError(f"topic model {self.version} does not score the targetable tags")
        self.taxonomy = taxonomy
        self.tokenizer = Tokenizer.from_file(str(model_dir / TOKENIZER_FILE))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(MAX_TOKENS)
        self._nodes = [taxonomy.node(c) for c in self.classes if c != NONE_CLASS]
        self._none_index = self.classes.index(NONE_CLASS)
        # tier-1 score = its own class + its targetable tier-2 children (one softmax)
        self._rollup = np.zeros((len(self.classes), len(self._nodes)), dtype=np.float32)
        index = {c: i for i, c in enumerate(self.classes)}
        for j, node in enumerate(self._nodes):
            self._rollup[index[node.id], j] = 1.0
            if node.tier > 1 and node.parent is not None and node.parent in index:
                self._rollup[index[node.id], self._nodes.index(taxonomy.node(node.parent))] = 1.0

    @classmethod
    def load(cls, path: str | Path | None = None) -> TopicClassifier:
        """The shipped artifact by default; `path` may be a model directory or its .onnx file."""
        p = Path(path) if path is not None else default_model_dir()
        if p.suffix == ".onnx":
            p = p.parent
        return cls(p, load_taxonomy())

    def encode(self, text: object) -> dict[str, np.ndarray]:
        """Token ids for one utterance, as the graph takes them (batch of one, no padding)."""
        if not isinstance(text, str):
            raise TopicInputError(f"cannot classify {type(text).__name__}: expected text")
        norm = normalise(text)
        if not norm:
            raise TopicInputError("cannot classify empty text (nothing left after normalising)")
        enc = self.tokenizer.encode(norm)
        ids = np.asarray([enc.ids], dtype=np.int64)
        return {"input_ids": ids, "attention_mask": np.ones_like(ids)}

    def run(self, feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        interest, sensitive = self.session.run(["interest", "sensitive"], feeds)
        return interest[0], sensitive[0]

    def classify(self, text: str) -> TopicScores:
        interest, sensitive = self.run(self.encode(text))
        rolled = interest @ self._rollup
        order = np.argsort(-rolled, kind="stable")
        topics = tuple(
            TopicScore(
                self._nodes[j].id, self._nodes[j].name, self._nodes[j].tier1, float(rolled[j])
            )
            for j in order
        )
        return TopicScores(
            topics=topics,
            sensitive={c: float(s) for c, s in zip(SENSITIVE_CATEGORIES, sensitive, strict=True)},
            model_version=self.version,
            no_interest=float(interest[self._none_index]),
        )

    def classify_many(self, texts: list[str]) -> list[TopicScores]:
        return [self.classify(t) for t in texts]

    def decide(self, scores: TopicScores) -> tuple[str, str]:
        return decide(scores, self.thresholds)
