"""Build models/taxonomy/taxonomy.json from the IAB Content Taxonomy 3.1 TSV and flags.toml.

Why a build step: the IAB file is the source of truth for ids, names and tiers; the flags
(targetable / sensitive + category) are earmark's policy, written by hand and reviewed in one
small file. The JSON joins both, so the device, privacy gate and gateway load one versioned file.

Run:  .venv/bin/python models/recipes/build_taxonomy.py
"""

from __future__ import annotations

import csv
import json
import sys
import tomllib
from dataclasses import asdict, dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
TAXONOMY_DIR = HERE.parent / "taxonomy"
TSV = TAXONOMY_DIR / "iab-content-taxonomy-3.1.tsv"
FLAGS = TAXONOMY_DIR / "flags.toml"
OUT = TAXONOMY_DIR / "taxonomy.json"
BASE_VERSION = "iab-content-3.1"

sys.path.insert(0, str(HERE.parents[1]))
from earmark.taxonomy import SENSITIVE_CATEGORIES  # noqa: E402


@dataclass
class Row:
    id: str
    parent: str | None
    name: str
    tiers: list[str]
    scd: bool

    @property
    def tier(self) -> int:
        return len(self.tiers)


def read_tsv(path: Path) -> list[Row]:
    """The TSV has two header lines and CRLF line ends; the Extension column holds 'SCD'."""
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f, delimiter="\t"))[2:]
    out = []
    for r in rows:
        if not r or not r[0].strip():
            continue
        r = r + [""] * (8 - len(r))
        tiers = [t.strip() for t in r[3:7] if t.strip()]
        out.append(
            Row(
                id=r[0].strip(),
                parent=r[1].strip() or None,
                name=r[2].strip(),
                tiers=tiers,
                scd=r[7].strip().upper() == "SCD",
            )
        )
    return out


def build(rows: list[Row], flags: dict) -> dict:
    by_id = {r.id: r for r in rows}
    rules: dict[str, str] = dict(flags.get("sensitive", {}))
    for node_id, cat in rules.items():
        if node_id not in by_id:
            raise SystemExit(f"flags.toml: sensitive rule for unknown node id {node_id!r}")
        if cat not in SENSITIVE_CATEGORIES:
            raise SystemExit(f"flags.toml: unknown sensitive category {cat!r} for {node_id}")
    scd_default = flags["scd_default"]
    tier1_ok = set(flags["targetable"]["tier1"])
    tier2_ok = set(flags["targetable"]["tier2"])
    names1 = {r.name for r in rows if r.tier == 1}
    if unknown := tier1_ok - names1:
        raise SystemExit(f"flags.toml: unknown tier-1 names {sorted(unknown)}")

    def nearest_rule(row: Row) -> str | None:
        cur: Row | None = row
        while cur is not None:
            if cur.id in rules:
                return rules[cur.id]
            cur = by_id.get(cur.parent) if cur.parent else None
        return None

    nodes = []
    for r in rows:
        sensitive = nearest_rule(r)
        if r.scd and sensitive is None:
            sensitive = scd_default
        targetable = sensitive is None and (
            (r.tier == 1 and r.name in tier1_ok) or (r.tier == 2 and r.id in tier2_ok)
        )
        if r.id in tier2_ok and not targetable:
            raise SystemExit(f"flags.toml: tier-2 {r.id} {r.name!r} cannot be targetable")
        nodes.append(
            {
                "id": r.id,
                "name": r.name,
                "parent": r.parent,
                "tier": r.tier,
                "tier1": r.tiers[0],
                "targetable": targetable,
                "sensitive": sensitive,
            }
        )
    # The invariant the privacy gate and gateway rely on: no SCD node is ever targetable.
    for r, n in zip(rows, nodes, strict=True):
        assert not (r.scd and (n["targetable"] or n["sensitive"] is None)), asdict(r)
    version = f"{BASE_VERSION}+earmark.{flags['revision']}"
    return {
        "version": version,
        "source": "IAB Tech Lab Content Taxonomy 3.1 (CC BY 3.0)",
        "nodes": nodes,
    }


def main() -> int:
    flags = tomllib.loads(FLAGS.read_text(encoding="utf-8"))
    data = build(read_tsv(TSV), flags)
    OUT.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    n = data["nodes"]
    print(
        f"wrote {OUT.name}: version {data['version']}, {len(n)} nodes, "
        f"{sum(x['targetable'] for x in n)} targetable, "
        f"{sum(x['sensitive'] is not None for x in n)} sensitive"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
