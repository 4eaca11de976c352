"""Where is the device, and may anything leave from there? Offline, and failing closed.

Country from a GPS fix is a point-in-polygon lookup over the Natural Earth 1:50m polygons
shipped in ``models/geo`` (bounding boxes first, then an even-odd ray cast over the few rings
whose box holds the point, all in numpy). Places too small for 1:50m (Büsingen, Llívia,
Gibraltar, Campione) are boxes in the policy, checked first. A fix in no polygon is at sea:
within ``sea_buffer_km`` of a blocked coast it is blocked, near another coast it belongs to the
nearest country, and in open sea it cannot be decided (blocked). A fix on land within
``border_margin_km`` of a blocked country is blocked too: 1:50m borders are approximate.

The other signals (account country, SIM MCC, locale, time zone) must all agree with the fix
on one jurisdiction (territories such as Åland count as their state): a conflict, a signal
that cannot be read, no signal at all, or any signal naming a blocked jurisdiction blocks.
Results are cached per fix, so the per-utterance cost is a dictionary lookup.
"""

from __future__ import annotations

import gzip
import json
import math
import re
from dataclasses import dataclass
from functools import cache, lru_cache
from importlib import resources

import numpy as np

from earmark.device.policy import RegionPolicy
from earmark.errors import ModelError

KM_PER_DEG = 111.195
_LOCALE = re.compile(r"^[a-zA-Z]{2,3}(?:[_-][A-Za-z]{4})?[_-]([A-Za-z]{2})(?:[.@].*)?$")
_CC = re.compile(r"^[A-Z]{2}$")


@dataclass(frozen=True)
class GeoHit:
    country: str | None  # ISO alpha-2, or None in open sea / undecidable ground
    how: str  # "land" | "enclave" | "coast" | "sea"
    near_blocked: str | None  # a blocked country within the margin (border or coast)


@dataclass(frozen=True)
class RegionResult:
    country: str | None
    blocked: bool
    reason: str  # "allowed" | "region_blocked:FR" | "no_signal" | "conflict:…" | …
    signals: tuple[tuple[str, str | None], ...]  # (signal, country it names) for the record

    def to_dict(self) -> dict[str, object]:
        return {"country": self.country, "blocked": self.blocked, "reason": self.reason}


def _data(name: str) -> bytes:
    return resources.files("earmark.models").joinpath("geo", name).read_bytes()


class GeoIndex:
    """Country polygons as numpy rings with bounding boxes; ``lookup`` answers one fix."""

    def __init__(self) -> None:
        try:
            raw = json.loads(gzip.decompress(_data("countries.json.gz")))
        except (OSError, ValueError) as err:
            raise ModelError(f"geo data models/geo/countries.json.gz unusable: {err}") from None
        scale = float(raw["scale"])
        self.ring_cc: list[str] = []
        self.rings: list[np.ndarray] = []
        boxes = []
        for c in raw["countries"]:
            for flat in c["rings"]:
                pts = np.asarray(flat, dtype=np.float64).reshape(-1, 2) / scale
                self.rings.append(pts)
                self.ring_cc.append(c["cc"])
                boxes.append((*pts.min(axis=0), *pts.max(axis=0)))
        self.boxes = np.asarray(boxes)  # (R, 4): west, south, east, north
        self.countries = sorted(set(self.ring_cc))

    def contains(self, lat: float, lon: float) -> str | None:
        b = self.boxes
        idx = np.nonzero((b[:, 0] <= lon) & (lon <= b[:, 2]) & (b[:, 1] <= lat) & (lat <= b[:, 3]))[
            0
        ]
        parity: dict[str, int] = {}
        for i in idx:
            if _crossings(self.rings[i], lon, lat) % 2:
                cc = self.ring_cc[i]
                parity[cc] = parity.get(cc, 0) ^ 1
        inside = [cc for cc, odd in parity.items() if odd]
        return inside[0] if inside else None

    def near(self, lat: float, lon: float, km: float) -> list[tuple[float, str]]:
        """(distance km, country) of every country with an edge within ``km``, nearest first."""
        dlat = km / KM_PER_DEG
        dlon = dlat / max(math.cos(math.radians(lat)), 0.01)
        b = self.boxes
        idx = np.nonzero(
            (b[:, 0] - dlon <= lon) & (lon <= b[:, 2] + dlon)
            & (b[:, 1] - dlat <= lat) & (lat <= b[:, 3] + dlat)
        )[0]  # fmt: skip
        best: dict[str, float] = {}
        for i in idx:
            d = _ring_distance_km(self.rings[i], lat, lon)
            cc = self.ring_cc[i]
            if d <= km and d < best.get(cc, math.inf):
                best[cc] = d
        return sorted((d, cc) for cc, d in best.items())


def _in_box(box: tuple[float, float, float, float], lat: float, lon: float) -> bool:
    return box[0] <= lon <= box[2] and box[1] <= lat <= box[3]


def _crossings(ring: np.ndarray, x: float, y: float) -> int:
    x0, y0 = ring[:-1, 0], ring[:-1, 1]
    x1, y1 = ring[1:, 0], ring[1:, 1]
    straddles = (y0 > y) != (y1 > y)
    with np.errstate(divide="ignore", invalid="ignore"):
        xcross = x0 + (y - y0) * (x1 - x0) / (y1 - y0)
    return int(np.count_nonzero(straddles & (x < xcross)))


def _ring_distance_km(ring: np.ndarray, lat: float, lon: float) -> float:
    kx = KM_PER_DEG * math.cos(math.radians(lat))
    px = (ring[:, 0] - lon) * kx
    py = (ring[:, 1] - lat) * KM_PER_DEG
    ax, ay, bx, by = px[:-1], py[:-1], px[1:], py[1:]
    dx, dy = bx - ax, by - ay
    seg2 = dx * dx + dy * dy
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.clip(np.where(seg2 > 0, -(ax * dx + ay * dy) / seg2, 0.0), 0.0, 1.0)
    cx, cy = ax + t * dx, ay + t * dy
    return float(np.sqrt(np.min(cx * cx + cy * cy))) if len(cx) else math.inf


@cache
def geo_index() -> GeoIndex:
    return GeoIndex()


@cache
def mcc_table() -> dict[str, str]:
    return dict(json.loads(_data("mcc.json"))["mcc"])


@cache
def timezone_table() -> dict[str, str]:
    return dict(json.loads(_data("timezones.json")))


class RegionChecker:
    """Decides the jurisdiction from RegionSignals under one RegionPolicy."""

    def __init__(self, policy: RegionPolicy, geo: GeoIndex | None = None) -> None:
        self.policy = policy
        self.geo = geo or geo_index()
        self.locate = lru_cache(maxsize=4096)(self._locate)
        self.check = lru_cache(maxsize=4096)(self._check)

    def jurisdiction(self, cc: str) -> str:
        return self.policy.territories.get(cc, cc)

    def _locate(self, lat: float, lon: float) -> GeoHit:
        """Country of a fix (rounded to ~11 m by the caller so nearby fixes share a cache line)."""
        p = self.policy
        how = "enclave"
        cc = next((e.country for e in p.enclaves if _in_box(e.box, lat, lon)), None)
        if cc is None:
            how, cc = "land", self.geo.contains(lat, lon)
        if cc is not None:
            near_blocked = None
            if not p.is_blocked(cc) and p.border_margin_km > 0:
                near = self.geo.near(lat, lon, p.border_margin_km)
                near_blocked = next((c for _, c in near if c != cc and p.is_blocked(c)), None)
            return GeoHit(cc, how, near_blocked)
        near = self.geo.near(lat, lon, p.sea_buffer_km)
        if not near:
            return GeoHit(None, "sea", None)
        blocked = next((c for _, c in near if p.is_blocked(c)), None)
        return GeoHit(near[0][1], "coast", blocked)

    def decide(
        self,
        lat: float | None,
        lon: float | None,
        account_country: str | None = None,
        sim_mcc: str | None = None,
        locale: str | None = None,
        timezone: str | None = None,
    ) -> RegionResult:
        fix = None
        if lat is not None and lon is not None:
            fix = (round(lat, 4), round(lon, 4))
        return self.check(fix, account_country, sim_mcc, locale, timezone)

    def _check(
        self,
        fix: tuple[float, float] | None,
        account: str | None,
        mcc: str | None,
        locale: str | None,
        tz: str | None,
    ) -> RegionResult:
        p = self.policy
        named: list[tuple[str, str | None]] = []  # (signal, country), None = unreadable
        hit = None
        if "gps" in p.signals and fix is not None:
            lat, lon = fix
            if not (-90 <= lat <= 90 and -180 <= lon <= 180) or not all(map(math.isfinite, fix)):
                named.append(("gps", None))
            else:
                hit = self.locate(lat, lon)
                named.append(("gps", hit.country))
        if "account" in p.signals and account:
            a = account.strip().upper()
            named.append(("account", a if _CC.match(a) else None))
        if "mcc" in p.signals and mcc:
            named.append(("mcc", mcc_table().get(mcc.strip())))
        if "locale" in p.signals and locale:
            m = _LOCALE.match(locale.strip())
            if m:  # a locale without a region ("en", "C") says nothing about where
                named.append(("locale", m.group(1).upper()))
        if "timezone" in p.signals and tz:
            cc = timezone_table().get(tz.strip())
            if cc:  # UTC, Etc/* and unknown zones say nothing about where
                named.append(("timezone", cc))
        signals = tuple(named)
        country = hit.country if hit is not None else None
        if not named:
            return RegionResult(None, True, "no_signal", signals)
        unreadable = [s for s, cc in named if cc is None]
        if unreadable:
            why = "open_sea" if hit is not None and hit.how == "sea" else "unreadable"
            return RegionResult(country, True, f"{why}:{unreadable[0]}", signals)
        ccs = [cc for _, cc in named if cc is not None]
        if country is None:
            country = ccs[0]
        for cc in ccs:
            if p.is_blocked(cc):
                return RegionResult(country, True, f"region_blocked:{cc}", signals)
        if hit is not None and hit.near_blocked:
            where = "coast" if hit.how == "coast" else "border"
            return RegionResult(country, True, f"near_blocked_{where}:{hit.near_blocked}", signals)
        jurisdictions = {self.jurisdiction(cc) for cc in ccs}
        if len(jurisdictions) > 1:
            detail = ",".join(f"{s}={cc}" for s, cc in named)
            return RegionResult(country, True, f"conflict:{detail}", signals)
        return RegionResult(country, False, "allowed", signals)
