"""The tag space: IAB Content Taxonomy 3.1 nodes, each flagged targetable or sensitive.

The data lives in ``models/taxonomy/taxonomy.json`` (built by ``models/recipes/build_taxonomy.py``
from the IAB TSV and ``models/taxonomy/flags.toml``). Device, topic model, privacy gate and
gateway all read it through :func:`load_taxonomy`, so they agree on one version.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Literal

from earmark.errors import ModelError

# Sensitive categories (GDPR Art. 9 special categories plus IAB's own sensitive topics).
# sexual_orientation covers gender identity; health covers physical and mental health,
# conditions, medication, pregnancy and reproduction, disability and addiction.
SENSITIVE_CATEGORIES: tuple[str, ...] = (
    "health",
    "religion",
    "sexual_orientation",
    "sex_life",
    "politics",
    "ethnicity",
    "trade_union",
    "criminal_record",
    "genetic_biometric",
    "iab_sensitive",
)

TagStatus = Literal["targetable", "sensitive", "other", "unknown"]


@dataclass(frozen=True)
class TaxonomyNode:
    id: str  # IAB unique id, e.g. "653"
    name: str  # e.g. "Travel"
    parent: str | None
    tier: int  # 1..4
    tier1: str  # name of the tier-1 ancestor
    targetable: bool  # may be sent as an interest tag
    sensitive: str | None  # one of SENSITIVE_CATEGORIES, or None


@dataclass(frozen=True)
class Taxonomy:
    version: str
    nodes: dict[str, TaxonomyNode]

    @property
    def targetable(self) -> tuple[TaxonomyNode, ...]:
        return tuple(n for n in self.nodes.values() if n.targetable)

    def node(self, tag_id: str) -> TaxonomyNode:
        try:
            return self.nodes[tag_id]
        except KeyError:
            raise ModelError(
                f"unknown taxonomy node id {tag_id!r} (taxonomy {self.version})"
            ) from None

    def status(self, tag_id: str) -> TagStatus:
        node = self.nodes.get(tag_id)
        if node is None:
            return "unknown"
        if node.sensitive is not None:
            return "sensitive"
        return "targetable" if node.targetable else "other"


def taxonomy_path() -> Path:
    return Path(str(resources.files("earmark.models").joinpath("taxonomy", "taxonomy.json")))


def parse_taxonomy(data: dict) -> Taxonomy:
    try:
        nodes = {
            str(n["id"]): TaxonomyNode(
                id=str(n["id"]),
                name=n["name"],
                parent=n.get("parent"),
                tier=int(n["tier"]),
                tier1=n["tier1"],
                targetable=bool(n["targetable"]),
                sensitive=n.get("sensitive"),
            )
            for n in data["nodes"]
        }
        version = str(data["version"])
    except (KeyError, TypeError, ValueError) as err:
        raise ModelError(f"taxonomy file is malformed: {err!r}") from err
    for node in nodes.values():
        if node.sensitive is not None and node.sensitive not in SENSITIVE_CATEGORIES:
            raise ModelError(
                f"taxonomy node {node.id} has unknown sensitive category {node.sensitive!r}"
            )
        if node.sensitive is not None and node.targetable:
            raise ModelError(f"taxonomy node {node.id} is both sensitive and targetable")
    return Taxonomy(version=version, nodes=nodes)


@cache
def load_taxonomy(path: str | None = None) -> Taxonomy:
    p = Path(path) if path else taxonomy_path()
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(
            f"taxonomy not found at {p}; reinstall earmark or rebuild models/"
        ) from None
    except json.JSONDecodeError as err:
        raise ModelError(f"taxonomy at {p} is not valid JSON: {err}") from err
    return parse_taxonomy(data)
