"""The taxonomy flags: every IAB special-category node is sensitive, the file is current."""

from __future__ import annotations

import csv
import tomllib
from pathlib import Path
from types import ModuleType

import pytest

from earmark.taxonomy import SENSITIVE_CATEGORIES, load_taxonomy, parse_taxonomy, taxonomy_path
from tests.topics.recipes import load_recipe

REPO = Path(__file__).resolve().parents[2]
TSV = REPO / "models/taxonomy/iab-content-taxonomy-3.1.tsv"


def _iab_rows() -> list[list[str]]:
    with TSV.open(newline="", encoding="utf-8") as f:
        return [r for r in list(csv.reader(f, delimiter="\t"))[2:] if r and r[0].strip()]


def _recipe() -> ModuleType:
    return load_recipe("build_taxonomy")


def test_every_iab_scd_node_is_sensitive_and_never_targetable() -> None:
    tax = load_taxonomy()
    scd = [r[0] for r in _iab_rows() if len(r) > 7 and r[7].strip() == "SCD"]
    assert len(scd) == 63  # IAB 3.1 marks 63 nodes
    for node_id in scd:
        node = tax.node(node_id)
        assert node.sensitive in SENSITIVE_CATEGORIES, node
        assert not node.targetable, node
        assert tax.status(node_id) == "sensitive"


def test_sensitive_subtrees_carry_their_category() -> None:
    tax = load_taxonomy()
    by_tier1 = {
        "Medical Health": "health",
        "Religion & Spirituality": "religion",
        "Politics": "politics",
        "Crime": "criminal_record",
    }
    for node in tax.nodes.values():
        if node.tier1 in by_tier1:
            assert node.sensitive == by_tier1[node.tier1], node
        if node.tier1 == "Sensitive Topics":
            assert node.sensitive is not None and not node.targetable, node
    assert tax.node("Rm3SiT").sensitive == "sex_life"  # Adult & Explicit Sexual Content
    assert tax.node("pg0WhF").sensitive == "health"  # drugs, tobacco, alcohol: addiction


def test_targetable_tags_are_coarse_and_include_the_advertiser_categories() -> None:
    tax = load_taxonomy()
    names = {n.name for n in tax.targetable}
    for wanted in (
        "Travel",
        "Automotive",
        "Sports",
        "Food & Drink",
        "Style & Fashion",
        "Technology & Computing",
        "Personal Finance",
        "Home & Garden",
        "Pets",
        "Entertainment",
        "Video Gaming",
        "Books and Literature",
        "Real Estate",
    ):
        assert wanted in names
    assert all(n.tier <= 2 and n.sensitive is None for n in tax.targetable)
    assert tax.version.startswith("iab-content-3.1+earmark.")


def test_taxonomy_json_is_what_the_recipe_builds_from_the_flags() -> None:
    recipe = _recipe()
    flags = tomllib.loads((REPO / "models/taxonomy/flags.toml").read_text(encoding="utf-8"))
    built = parse_taxonomy(recipe.build(recipe.read_tsv(TSV), flags))
    shipped = load_taxonomy(str(taxonomy_path()))
    assert built == shipped


def test_flags_refuse_an_scd_node_made_targetable_by_accident() -> None:
    recipe = _recipe()
    flags = tomllib.loads((REPO / "models/taxonomy/flags.toml").read_text(encoding="utf-8"))
    flags["targetable"]["tier2"].append("406")  # Credit Cards, SCD in IAB
    with pytest.raises(SystemExit, match="406"):
        recipe.build(recipe.read_tsv(TSV), flags)
