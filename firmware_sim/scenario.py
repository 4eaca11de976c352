"""Scenarios as plain TOML: a day in the life of one or many wearers.

Why data, not code: a scenario is what a product person, a tester or a privacy reviewer
writes and reads ("Alice asks about hiking boots at 08:05, flies to Paris at noon, revokes
consent at 18:00"). The loader checks every field and says which line of which file is wrong.

Format (see firmware_sim/scenarios/*.toml for complete examples)::

    name = "..."
    clips = "day_clips"        # folder of pre-rendered speech, next to the file (optional)
    gap_s = 0.6                # silence before and after each utterance
    days_ago = 2               # the simulated day starts at UTC midnight this many days ago

    [places.nyc]               # lat, lon and what the phone says
    lat = 40.71
    lon = -74.0
    account = "US"
    mcc = "310"
    locale = "en_US"
    timezone = "America/New_York"

    [[users]]                  # one wearer; --devices N clones them
    id = "alice"
    place = "nyc"
    battery = 0.9              # optional: charge, temperature, flash, listening, consent
    storage_kb = 256
    listening = "tap"          # "tap": mic opens for each utterance; "always"
    consent = true
    mic_gain_db = -6           # optional: a quiet wearer; noise_dbfs = -45: a busy street

    [[events]]                 # in time order per user; `user` omitted: everyone
    at = "08:05"               # HH:MM[:SS], plus `day = 1` for the next day
    user = "alice"
    say = "I need new hiking boots for the mountains"
    expect = "published"       # published | suppressed | any (what a test checks)

Other event keys (one per event): ``move = "paris"``, ``link = "down" | "up"`` (with
optional ``latency_ms`` / ``loss``), ``battery = 0.05`` (``charging``, ``temperature``),
``consent = false | true``, ``power = "loss"`` (power cut, reboot ``down_s`` later),
``triggered = false`` on a ``say`` (speech the wearer did not address to the glasses).
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from earmark.errors import EarmarkError
from earmark.firmware_sim.glasses import Place
from earmark.wire import DEVICE_ID_RE

BUNDLED = Path(__file__).resolve().parent / "scenarios"
KINDS = ("say", "move", "link", "battery", "temperature", "consent", "power")
EXPECT = ("published", "suppressed", "any")


class ScenarioError(EarmarkError):
    """A scenario file that cannot be used; the message names the file and the field."""


@dataclass(frozen=True)
class User:
    id: str
    place: str
    battery: float = 1.0
    charging: bool = False
    temperature_c: float = 30.0
    storage_kb: int = 256
    always_listening: bool = False
    consent: bool = True
    mic_gain_db: float = 0.0  # a quiet (negative) or loud wearer
    noise_dbfs: float | None = None  # steady background noise, e.g. -45 for a busy street


@dataclass(frozen=True)
class Event:
    t: float  # seconds after the scenario's start
    kind: str  # one of KINDS
    user: str | None  # None: every user
    value: Any  # text for "say", place name for "move", bool for link/consent, ...
    options: dict[str, Any] = field(default_factory=dict)
    index: int = 0  # position in the file, for messages and a stable order

    @property
    def label(self) -> str:
        return f"events[{self.index}]"


@dataclass(frozen=True)
class Scenario:
    name: str
    path: Path
    places: dict[str, Place]
    users: tuple[User, ...]
    events: tuple[Event, ...]
    clips: Path | None
    gap_s: float
    days_ago: int
    description: str = ""

    def texts(self) -> list[str]:
        return [e.value for e in self.events if e.kind == "say"]

    @property
    def duration_s(self) -> float:
        return max((e.t for e in self.events), default=0.0)


def resolve(name_or_path: str) -> Path:
    """A path to a TOML file, or the name of a bundled scenario (``demo``, ``travel``…)."""
    p = Path(name_or_path)
    if p.is_file():
        return p
    bundled = BUNDLED / f"{name_or_path}.toml"
    if bundled.is_file():
        return bundled
    names = ", ".join(sorted(f.stem for f in BUNDLED.glob("*.toml")))
    raise ScenarioError(f"no scenario {name_or_path!r}: not a file, nor a bundled one ({names})")


def load(name_or_path: str) -> Scenario:
    path = resolve(name_or_path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as err:
        raise ScenarioError(f"{path}: cannot read: {err}") from None
    except tomllib.TOMLDecodeError as err:
        raise ScenarioError(f"{path}: not valid TOML: {err}") from None
    return parse(data, path)


def parse(data: dict[str, Any], path: Path) -> Scenario:
    def fail(where: str, why: str) -> ScenarioError:
        return ScenarioError(f"{path}: {where}: {why}")

    places = {}
    for name, p in _table(data, "places", path).items():
        if not isinstance(p, dict):
            raise fail(f"places.{name}", "must be a table")
        lat: Any = p.get("lat")
        lon: Any = p.get("lon")
        if (lat is None) != (lon is None) or (
            lat is not None
            and not (_num(lat) and -90 <= lat <= 90 and _num(lon) and -180 <= lon <= 180)
        ):
            raise fail(f"places.{name}", "lat and lon must both be given, in degrees")
        unknown = set(p) - {"lat", "lon", "account", "mcc", "locale", "timezone"}
        if unknown:
            raise fail(f"places.{name}", f"unknown keys {sorted(unknown)}")
        places[name] = Place(
            name,
            lat,
            lon,
            p.get("account"),
            _opt_str(p.get("mcc")),
            p.get("locale"),
            p.get("timezone"),
        )
    users = []
    for i, u in enumerate(data.get("users") or []):
        where = f"users[{i}]"
        uid = u.get("id")
        if not isinstance(uid, str) or not DEVICE_ID_RE.match(uid + "-g000"):
            raise fail(where, "id must be letters, digits, - or _ (up to 58 characters)")
        if u.get("place") not in places:
            raise fail(where, f"place {u.get('place')!r} is not in [places]")
        listening = u.get("listening", "tap")
        if listening not in ("tap", "always"):
            raise fail(where, 'listening must be "tap" or "always"')
        battery = u.get("battery", 1.0)
        if not (_num(battery) and 0 <= battery <= 1):
            raise fail(where, "battery must be a fraction in [0, 1]")
        storage = u.get("storage_kb", 256)
        if not (isinstance(storage, int) and storage > 0):
            raise fail(where, "storage_kb must be a positive integer")
        users.append(
            User(
                uid,
                u["place"],
                float(battery),
                bool(u.get("charging", False)),
                float(u.get("temperature", 30.0)),
                storage,
                listening == "always",
                bool(u.get("consent", True)),
                float(u.get("mic_gain_db", 0.0)),
                None if u.get("noise_dbfs") is None else float(u["noise_dbfs"]),
            )  # fmt: skip
        )
    if not users:
        raise fail("users", "a scenario needs at least one [[users]] entry")
    ids = {u.id for u in users}
    if len(ids) != len(users):
        raise fail("users", "user ids must be unique")
    events = [_event(i, e, places, ids, fail) for i, e in enumerate(data.get("events") or [])]
    events.sort(key=lambda e: (e.t, e.index))
    clips = data.get("clips")
    gap = data.get("gap_s", 0.6)
    if not (_num(gap) and 0.3 <= gap <= 10):
        raise fail("gap_s", "must be between 0.3 and 10 seconds (the endpointer needs silence)")
    days_ago = data.get("days_ago", 2)
    if not (isinstance(days_ago, int) and days_ago >= 1):
        raise fail("days_ago", "must be an integer >= 1 (the gateway refuses future windows)")
    return Scenario(
        name=str(data.get("name", path.stem)),
        path=path,
        places=places,
        users=tuple(users),
        events=tuple(events),
        clips=(path.parent / clips) if clips else None,
        gap_s=float(gap),
        days_ago=days_ago,
        description=str(data.get("description", "")),
    )


_TIME = re.compile(r"^(\d{1,2}):(\d{2})(?::(\d{2}))?$")


def _event(i: int, e: dict[str, Any], places: dict[str, Place], ids: set[str], fail: Any) -> Event:
    where = f"events[{i}]"
    m = _TIME.match(str(e.get("at", "")))
    if not m or int(m[1]) > 23 or int(m[2]) > 59:
        raise fail(where, 'at must be "HH:MM" or "HH:MM:SS"')
    day = e.get("day", 0)
    if not (isinstance(day, int) and 0 <= day <= 30):
        raise fail(where, "day must be an integer 0..30")
    t = day * 86400 + int(m[1]) * 3600 + int(m[2]) * 60 + int(m[3] or 0)
    user = e.get("user")
    if user is not None and user not in ids:
        raise fail(where, f"user {user!r} is not in [[users]]")
    kinds = [k for k in KINDS if k in e]
    if len(kinds) != 1:
        raise fail(where, f"needs exactly one of {', '.join(KINDS)}")
    kind = kinds[0]
    value = e[kind]
    opts: dict[str, Any] = {}
    if kind == "say":
        if not isinstance(value, str) or not value.strip():
            raise fail(where, "say must be a non-empty sentence")
        expect = e.get("expect", "any")
        if expect not in EXPECT:
            raise fail(where, f"expect must be one of {', '.join(EXPECT)}")
        opts = {"expect": expect, "triggered": bool(e.get("triggered", True))}
        if "clip" in e:
            opts["clip"] = str(e["clip"])
    elif kind == "move":
        if value not in places:
            raise fail(where, f"move to {value!r}: not in [places]")
    elif kind == "link":
        if value not in ("up", "down"):
            raise fail(where, 'link must be "up" or "down"')
        value = value == "up"
        opts = {"latency_s": e.get("latency_ms", 0) / 1000, "loss": float(e.get("loss", 0.0))}
    elif kind == "battery":
        if not (_num(value) and 0 <= value <= 1):
            raise fail(where, "battery must be a fraction in [0, 1]")
        opts = {"charging": e.get("charging")}
    elif kind == "temperature":
        if not _num(value):
            raise fail(where, "temperature must be a number (degrees C)")
    elif kind == "consent":
        if not isinstance(value, bool):
            raise fail(where, "consent must be true or false")
    elif kind == "power":
        if value != "loss":
            raise fail(where, 'power must be "loss"')
        opts = {"down_s": float(e.get("down_s", 60))}
    return Event(float(t), kind, user, value, opts, i)


def _table(data: dict[str, Any], key: str, path: Path) -> dict[str, Any]:
    v = data.get(key, {})
    if not isinstance(v, dict):
        raise ScenarioError(f"{path}: [{key}] must be a table")
    return v


def _num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _opt_str(v: Any) -> str | None:
    return None if v is None else str(v)


def clip_name(text: str) -> str:
    """The file a sentence is pre-rendered to: a readable slug plus a short hash."""
    import hashlib

    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40].rstrip("-")
    return f"{slug}-{hashlib.sha256(' '.join(text.split()).encode()).hexdigest()[:8]}.wav"
