"""Build models/geo/ from the shared Natural Earth 1:50m polygons and the tz database.

Run from the repository root: ``python models/geo/build_geo.py``. Output:

* ``countries.json.gz``: per country (ISO 3166-1 alpha-2), every ring of every polygon as a
  flat list of integer coordinates in 1e-4 degrees (about 11 m, far finer than the 1:50m
  source). Features without an ISO code get one from ``NAMELESS`` (or are left out).
* ``timezones.json``: IANA zone → country, from ``/usr/share/zoneinfo/zone.tab``.

Why a derivative: the source GeoJSON is 2.3 MB of floats; this is about a quarter of that,
loads in a fraction of the time and keeps every vertex.
"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

SRC = Path("/work/shared/data/geo/countries-50m.geojson")
OUT = Path(__file__).resolve().parent
SCALE = 10_000

# Natural Earth features without an ISO code, mapped fail-closed: disputed ground goes to
# the state whose law a device there would most likely be under, or is left out (None).
NAMELESS = {
    "N. Cyprus": "CY",  # EU territory whose acquis is suspended: blocked, to be safe
    "Kosovo": "XK",  # user-assigned code, widely used (CLDR, EU)
    "Somaliland": "SO",
    "Indian Ocean Ter.": "AU",  # Christmas Island, Cocos (Keeling) Islands
    "Siachen Glacier": None,  # disputed: no country, so the signal cannot decide
}


def rings_of(geometry: dict) -> list[list[list[float]]]:
    if geometry["type"] == "Polygon":
        return list(geometry["coordinates"])
    return [ring for poly in geometry["coordinates"] for ring in poly]


def main(src: Path = SRC) -> None:
    data = json.loads(src.read_text(encoding="utf-8"))
    countries: dict[str, dict] = {}
    for feature in data["features"]:
        props, geom = feature["properties"], feature["geometry"]
        if geom is None:
            continue
        cc = props.get("iso_a2")
        if not cc or len(cc) != 2:
            cc = NAMELESS.get(props["name"])
            if cc is None:
                print(f"skip {props['name']!r} (no ISO code)", file=sys.stderr)
                continue
        entry = countries.setdefault(cc, {"cc": cc, "name": props["name"], "rings": []})
        for ring in rings_of(geom):
            flat = [round(v * SCALE) for pt in ring for v in pt[:2]]
            entry["rings"].append(flat)
    out = {
        "source": "Natural Earth 1:50m admin-0 via world-atlas 2.0.2 (public domain; ISC)",
        "scale": SCALE,
        "countries": sorted(countries.values(), key=lambda c: c["cc"]),
    }
    raw = json.dumps(out, separators=(",", ":")).encode()
    (OUT / "countries.json.gz").write_bytes(gzip.compress(raw, 9, mtime=0))
    zones: dict[str, str] = {}
    for line in Path("/usr/share/zoneinfo/zone.tab").read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        cc, _coord, zone = line.split("\t")[:3]
        zones[zone] = cc
    (OUT / "timezones.json").write_text(json.dumps(zones, indent=0, sort_keys=True) + "\n")
    print(f"{len(countries)} countries, {len(zones)} zones → {OUT}")


if __name__ == "__main__":
    main()
