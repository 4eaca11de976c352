"""The privacy policy: every rule the gate applies, as data, versioned and validated.

The default policy ships as ``models/policy/policy.toml``; a deployment may pass its own
(``--policy FILE`` or ``EARMARK_POLICY``). A policy that cannot be read or does not validate
raises :class:`earmark.errors.PolicyError` naming the file and the key, and the gate built
from it never exists: nothing is sent (fail closed).
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from earmark.errors import PolicyError
from earmark.taxonomy import SENSITIVE_CATEGORIES
from earmark.wire import EPSILON_RANGE, MAX_TAGS, WINDOW_SECONDS

REGION_SIGNALS = ("gps", "account", "mcc", "locale", "timezone")
_CC = re.compile(r"^[A-Z]{2}$")


@dataclass(frozen=True)
class Enclave:
    name: str
    country: str
    box: tuple[float, float, float, float]  # west, south, east, north (degrees)


@dataclass(frozen=True)
class RegionPolicy:
    blocked: frozenset[str]
    territories: dict[str, str]  # territory code → the state whose law it shares
    signals: tuple[str, ...]
    sea_buffer_km: float
    border_margin_km: float
    enclaves: tuple[Enclave, ...]

    def is_blocked(self, cc: str) -> bool:
        return cc in self.blocked or self.territories.get(cc) in self.blocked


@dataclass(frozen=True)
class SensitivePolicy:
    model_threshold: float
    model_thresholds: dict[str, float]  # per category overrides
    taxonomy_threshold: float
    rules: dict[str, tuple[str, ...]]  # category → terms
    allow: tuple[str, ...] = ()  # names removed before the rules run ("credit union")
    # category → words with an everyday sense too ("sick", "strike", "died"): they fire only
    # when the model also gives the category at least weak_rule_floor
    weak_rules: dict[str, tuple[str, ...]] = field(default_factory=dict)
    weak_rule_floor: float = 0.0

    def threshold(self, category: str) -> float:
        return self.model_thresholds.get(category, self.model_threshold)


@dataclass(frozen=True)
class Policy:
    version: str
    source: str  # where it was read from, for messages and the ledger
    region: RegionPolicy
    sensitive: SensitivePolicy
    min_score: float
    max_tags_per_utterance: int
    window_s: int
    max_tags: int
    max_delay_s: float
    min_utterances: int
    ldp_enabled: bool
    ldp_epsilon: float
    ldp_lifetime_budget: float


def default_policy_path() -> Path:
    env = os.environ.get("EARMARK_POLICY")
    if env:
        return Path(env)
    return Path(str(resources.files("earmark.models").joinpath("policy", "policy.toml")))


def load_policy(path: str | Path | None = None) -> Policy:
    p = Path(path) if path else default_policy_path()
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PolicyError(f"policy file {p} not found; nothing will be sent") from None
    except (OSError, UnicodeDecodeError) as err:
        raise PolicyError(f"policy file {p} cannot be read: {err}") from None
    except tomllib.TOMLDecodeError as err:
        raise PolicyError(f"policy file {p} is not valid TOML: {err}") from None
    return parse_policy(data, str(p))


def parse_policy(data: dict[str, Any], source: str = "<policy>") -> Policy:
    r = _Reader(data, source)
    version = r.text("version")
    blocked = r.seq("region.blocked")
    for cc in blocked:
        r.check(_CC.match(str(cc)), "region.blocked", f"{cc!r} is not an ISO alpha-2 code")
    territories = r.table("region.territories", {})
    for k, v in territories.items():
        r.check(_CC.match(k) and _CC.match(str(v)), "region.territories", f"{k}={v!r}")
    signals = r.seq("region.signals")
    for s in signals:
        r.check(s in REGION_SIGNALS, "region.signals", f"{s!r} not one of {REGION_SIGNALS}")
    r.check(signals, "region.signals", "at least one signal is needed")
    enclaves = []
    for name, e in r.table("region.enclaves", {}).items():
        box = e.get("box") if isinstance(e, dict) else None
        ok = (
            isinstance(e, dict)
            and _CC.match(str(e.get("country", "")))
            and isinstance(box, list)
            and len(box) == 4
            and all(isinstance(x, (int, float)) for x in box)
            and box[0] < box[2]
            and box[1] < box[3]
        )
        r.check(ok, f"region.enclaves.{name}", "needs country = CC and box = [w, s, e, n]")
        w, south, east, n = (float(x) for x in box)  # type: ignore[union-attr]
        enclaves.append(Enclave(name, e["country"], (w, south, east, n)))
    rules: dict[str, tuple[str, ...]] = {}
    weak_rules: dict[str, tuple[str, ...]] = {}
    for cat, body in r.table("sensitive.rules", {}).items():
        r.check(cat in SENSITIVE_CATEGORIES, f"sensitive.rules.{cat}", "unknown category")
        terms = body.get("terms") if isinstance(body, dict) else None
        ok = isinstance(terms, list) and terms and all(isinstance(t, str) and t for t in terms)
        r.check(ok, f"sensitive.rules.{cat}.terms", "must be a non-empty list of strings")
        rules[cat] = tuple(terms)  # type: ignore[arg-type]
        weak = body.get("weak", [])
        ok = isinstance(weak, list) and all(isinstance(t, str) and t for t in weak)
        r.check(ok, f"sensitive.rules.{cat}.weak", "must be a list of strings")
        if weak:
            weak_rules[cat] = tuple(weak)
    overrides = r.table("sensitive.model_thresholds", {})
    for cat, v in overrides.items():
        r.check(cat in SENSITIVE_CATEGORIES, "sensitive.model_thresholds", f"{cat!r}")
        r.check(_unit(v), f"sensitive.model_thresholds.{cat}", "must be in [0, 1]")
    window_s = r.integer("batching.window_s")
    r.check(window_s in WINDOW_SECONDS, "batching.window_s", f"not one of {WINDOW_SECONDS}")
    max_tags = r.integer("batching.max_tags")
    r.check(1 <= max_tags <= MAX_TAGS, "batching.max_tags", f"must be 1..{MAX_TAGS}")
    eps = r.num("ldp.epsilon")
    r.check(EPSILON_RANGE[0] <= eps <= EPSILON_RANGE[1], "ldp.epsilon", f"not in {EPSILON_RANGE}")
    budget = r.num("ldp.lifetime_budget")
    r.check(budget >= 0, "ldp.lifetime_budget", "must be ≥ 0")
    return Policy(
        version=version,
        source=source,
        region=RegionPolicy(
            blocked=frozenset(blocked),
            territories=dict(territories),
            signals=tuple(signals),
            sea_buffer_km=r.num("region.sea_buffer_km", lo=0),
            border_margin_km=r.num("region.border_margin_km", lo=0),
            enclaves=tuple(enclaves),
        ),
        sensitive=SensitivePolicy(
            model_threshold=r.unit("sensitive.model_threshold"),
            model_thresholds={k: float(v) for k, v in overrides.items()},
            taxonomy_threshold=r.unit("sensitive.taxonomy_threshold"),
            rules=rules,
            allow=tuple(_strings(r, "sensitive.allow")),
            weak_rules=weak_rules,
            weak_rule_floor=r.unit("sensitive.weak_rule_floor") if weak_rules else 0.0,
        ),
        min_score=r.unit("interest.min_score"),
        max_tags_per_utterance=r.integer("interest.max_tags_per_utterance", lo=1),
        window_s=window_s,
        max_tags=max_tags,
        max_delay_s=r.num("batching.max_delay_s", lo=0),
        min_utterances=r.integer("batching.min_utterances", lo=1),
        ldp_enabled=r.flag("ldp.enabled"),
        ldp_epsilon=eps,
        ldp_lifetime_budget=budget,
    )


def _strings(r: _Reader, key: str) -> list[str]:
    v = r.get(key, [])
    ok = isinstance(v, list) and all(isinstance(x, str) and x for x in v)
    r.check(ok, key, "must be a list of strings")
    return v


def _unit(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1


class _Reader:
    """Typed access to dotted keys; every problem is one PolicyError naming file and key."""

    def __init__(self, data: dict[str, Any], source: str) -> None:
        self.data = data
        self.source = source

    def fail(self, key: str, why: str) -> PolicyError:
        return PolicyError(f"policy {self.source}: {key}: {why}; the gate stays closed")

    def check(self, ok: Any, key: str, why: str) -> None:
        if not ok:
            raise self.fail(key, why)

    def get(self, key: str, default: Any = ...) -> Any:
        node: Any = self.data
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                if default is not ...:
                    return default
                raise self.fail(key, "missing")
            node = node[part]
        return node

    def text(self, key: str) -> str:
        v = self.get(key)
        self.check(isinstance(v, str) and v, key, "must be a non-empty string")
        return v

    def flag(self, key: str) -> bool:
        v = self.get(key)
        self.check(isinstance(v, bool), key, "must be true or false")
        return v

    def integer(self, key: str, lo: int | None = None) -> int:
        v = self.get(key)
        self.check(isinstance(v, int) and not isinstance(v, bool), key, "must be an integer")
        self.check(lo is None or v >= lo, key, f"must be ≥ {lo}")
        return v

    def num(self, key: str, lo: float | None = None) -> float:
        v = self.get(key)
        self.check(isinstance(v, (int, float)) and not isinstance(v, bool), key, "not a number")
        self.check(lo is None or v >= lo, key, f"must be ≥ {lo}")
        return float(v)

    def unit(self, key: str) -> float:
        v = self.get(key)
        self.check(_unit(v), key, "must be a number in [0, 1]")
        return float(v)

    def seq(self, key: str) -> list[Any]:
        v = self.get(key)
        self.check(isinstance(v, list), key, "must be a list")
        return v

    def table(self, key: str, default: Any = ...) -> dict[str, Any]:
        v = self.get(key, default)
        self.check(isinstance(v, dict), key, "must be a table")
        return v
