"""The one wire schema: what may leave the device, defined once for device and gateway.

Two messages cross the network, both small JSON objects over MQTT:

* :class:`SignalBatch`: at most ``MAX_TAGS`` coarse, targetable IAB tags with quantised
  weights for one closed time window. No text, no audio, no timestamp finer than the window,
  no counts.
* :class:`DeletionRequest`: erase the profile of the user who owns this device.

The device builds them with ``to_bytes()``; the gateway parses with :func:`decode`, which
rejects (with a stable ``WireError.reason``) unknown fields, wrong versions, oversized
arrays, unknown or sensitive tags and out-of-range weights. :func:`json_schema` publishes
the same rules as JSON Schema (draft 2020-12) for other implementations.

Topics: ``earmark/v1/<device_id>/signals``, ``.../deletion`` and a retained ``.../status``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from earmark.errors import WireError

SCHEMA_VERSION = 1
MAX_PAYLOAD_BYTES = 2048
MAX_TAGS = 5
WEIGHT_STEP = 0.25  # weights are quantised to multiples of this, in (0, 1]
WEIGHTS = (0.25, 0.5, 0.75, 1.0)
WINDOW_SECONDS = (900, 1800, 3600, 7200, 21600, 86400)  # allowed window lengths
DEFAULT_WINDOW_SECONDS = 3600
MAX_SEQ = 2**53 - 1
DEVICE_ID_RE = re.compile(r"^[A-Za-z0-9_-]{4,64}$")
REGION_RE = re.compile(r"^[A-Z]{2}$")
VERSION_RE = re.compile(r"^[A-Za-z0-9._+/-]{1,64}$")
EPSILON_RANGE = (0.01, 10.0)

TOPIC_PREFIX = "earmark/v1"
# Regions where nothing may be collected (EU-27, the rest of the EEA, and the UK, plus the
# territories with their own ISO code under those laws: Åland, the French outermost regions,
# Gibraltar and the Crown Dependencies): the device never sends from them and the gateway
# rejects a batch that claims one. The device policy (models/policy/policy.toml) must agree;
# tests/core/test_blocked_regions.py checks it does.
BLOCKED_REGIONS: frozenset[str] = frozenset(
    "AT BE BG HR CY CZ DK EE FI FR DE GR HU IE IT LV LT LU MT NL PL PT RO SK SI ES SE"
    " IS LI NO GB AX MF GF RE GP MQ YT GI JE GG IM".split()
)
Kind = Literal["signals", "deletion", "status"]
KINDS: tuple[Kind, ...] = ("signals", "deletion", "status")

# A tag check answers "targetable", "sensitive", "other" or "unknown" for an IAB id.
TagCheck = Callable[[str], str]


@dataclass(frozen=True)
class Tag:
    id: str  # IAB Content Taxonomy 3.1 unique id
    w: float  # quantised weight, one of WEIGHTS


@dataclass(frozen=True)
class SignalBatch:
    device_id: str
    seq: int  # per-device sequence number, shared with DeletionRequest; dedup key
    taxonomy: str  # taxonomy version the tags come from
    model: str  # topic model version that inferred them
    window_start: int  # epoch seconds, a multiple of window_s
    window_s: int  # one of WINDOW_SECONDS
    region: str  # ISO 3166-1 alpha-2 the device was in; never a blocked one
    tags: tuple[Tag, ...]
    ldp_epsilon: float | None = None  # set when randomised response was applied

    type: Literal["signal_batch"] = "signal_batch"

    def to_dict(self) -> dict[str, Any]:
        return {
            "v": SCHEMA_VERSION,
            "type": self.type,
            "device_id": self.device_id,
            "seq": self.seq,
            "taxonomy": self.taxonomy,
            "model": self.model,
            "window_start": self.window_start,
            "window_s": self.window_s,
            "region": self.region,
            "tags": [{"id": t.id, "w": t.w} for t in self.tags],
            "ldp": None if self.ldp_epsilon is None else {"epsilon": self.ldp_epsilon},
        }

    def to_bytes(self) -> bytes:
        return _dump(self.to_dict())

    @property
    def topic(self) -> str:
        return topic_for(self.device_id, "signals")


@dataclass(frozen=True)
class DeletionRequest:
    device_id: str
    seq: int
    requested_window: int  # epoch seconds rounded down to the hour: no finer timestamp leaves
    scope: Literal["profile"] = "profile"

    type: Literal["deletion_request"] = "deletion_request"

    def to_dict(self) -> dict[str, Any]:
        return {
            "v": SCHEMA_VERSION,
            "type": self.type,
            "device_id": self.device_id,
            "seq": self.seq,
            "requested_window": self.requested_window,
            "scope": self.scope,
        }

    def to_bytes(self) -> bytes:
        return _dump(self.to_dict())

    @property
    def topic(self) -> str:
        return topic_for(self.device_id, "deletion")


Message = SignalBatch | DeletionRequest


def _dump(obj: dict[str, Any]) -> bytes:
    data = json.dumps(obj, separators=(",", ":"), sort_keys=True, allow_nan=False).encode()
    if len(data) > MAX_PAYLOAD_BYTES:
        raise WireError("oversized", f"{len(data)} bytes > {MAX_PAYLOAD_BYTES}")
    return data


# --- topics -----------------------------------------------------------------------------


def topic_for(device_id: str, kind: Kind) -> str:
    if not DEVICE_ID_RE.match(device_id):
        raise WireError(
            "bad_device_id", f"device id {device_id!r} must match {DEVICE_ID_RE.pattern}"
        )
    return f"{TOPIC_PREFIX}/{device_id}/{kind}"


def parse_topic(topic: str) -> tuple[str, Kind]:
    """``earmark/v1/<device_id>/<kind>`` → (device_id, kind); WireError otherwise."""
    parts = topic.split("/")
    if len(parts) != 4 or "/".join(parts[:2]) != TOPIC_PREFIX or parts[3] not in KINDS:
        raise WireError("bad_topic", f"topic {topic!r} is not {TOPIC_PREFIX}/<device_id>/<kind>")
    if not DEVICE_ID_RE.match(parts[2]):
        raise WireError("bad_device_id", f"device id in topic {topic!r} is invalid")
    return parts[2], parts[3]  # type: ignore[return-value]


# --- decoding ---------------------------------------------------------------------------

_BATCH_FIELDS = {
    "v", "type", "device_id", "seq", "taxonomy", "model", "window_start", "window_s",
    "region", "tags", "ldp",
}  # fmt: skip
_DELETION_FIELDS = {"v", "type", "device_id", "seq", "requested_window", "scope"}


def _default_tag_check() -> TagCheck:
    from earmark.taxonomy import load_taxonomy

    return load_taxonomy().status


def decode(payload: bytes, tag_check: TagCheck | None = None) -> Message:
    """Parse and validate one message. Raises WireError with a stable ``reason``."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise WireError("oversized", f"{len(payload)} bytes > {MAX_PAYLOAD_BYTES}")
    try:
        obj = _loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError, ValueError) as err:
        raise WireError("malformed_json", str(err)) from None
    return from_dict(obj, tag_check)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


# One decoder for every message: ``json.loads(..., parse_constant=...)`` builds a new
# JSONDecoder per call, a third of the parse time of a small message on the gateway.
_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


def _loads(payload: bytes | str) -> Any:
    """``json.loads(payload, parse_constant=_reject_constant)``, same errors, less overhead."""
    if isinstance(payload, str):
        if payload.startswith("\ufeff"):
            raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", payload, 0)
        return _DECODER.decode(payload)
    return _DECODER.decode(payload.decode(json.detect_encoding(payload), "surrogatepass"))


def from_dict(obj: Any, tag_check: TagCheck | None = None) -> Message:
    if not isinstance(obj, dict):
        raise WireError("not_object", f"expected a JSON object, got {type(obj).__name__}")
    if obj.get("v") != SCHEMA_VERSION or isinstance(obj.get("v"), bool):  # true == 1 in Python
        raise WireError(
            "schema_version", f"v={obj.get('v')!r}, this side speaks v={SCHEMA_VERSION}"
        )
    kind = obj.get("type")
    if kind == "signal_batch":
        return _batch_from_dict(obj, tag_check or _default_tag_check())
    if kind == "deletion_request":
        return _deletion_from_dict(obj)
    raise WireError("unknown_type", f"type={kind!r}")


def _check_fields(obj: dict[str, Any], allowed: set[str]) -> None:
    if obj.keys() == allowed:  # the usual case: one set comparison
        return
    unknown = set(obj) - allowed
    if unknown:
        raise WireError("unknown_field", f"unknown field(s) {sorted(unknown)}")
    missing = allowed - set(obj)
    if missing:
        raise WireError("missing_field", f"missing field(s) {sorted(missing)}")


def _int(obj: dict[str, Any], key: str, lo: int, hi: int) -> int:
    value = obj[key]
    if not isinstance(value, int) or isinstance(value, bool):
        raise WireError("bad_type", f"{key} must be an integer")
    if not lo <= value <= hi:
        raise WireError("bad_value", f"{key}={value} outside [{lo}, {hi}]")
    return value


def _str(obj: dict[str, Any], key: str, pattern: re.Pattern[str]) -> str:
    value = obj[key]
    if not isinstance(value, str):
        raise WireError("bad_type", f"{key} must be a string")
    if not pattern.match(value):
        raise WireError("bad_value", f"{key}={value[:80]!r} does not match {pattern.pattern}")
    return value


def _device_id(obj: dict[str, Any]) -> str:
    value = obj["device_id"]
    if not isinstance(value, str) or not DEVICE_ID_RE.match(value):
        raise WireError("bad_device_id", f"device_id must match {DEVICE_ID_RE.pattern}")
    return value


def _batch_from_dict(obj: dict[str, Any], tag_check: TagCheck) -> SignalBatch:
    _check_fields(obj, _BATCH_FIELDS)
    window_s = obj["window_s"]
    if window_s not in WINDOW_SECONDS or isinstance(window_s, bool):
        raise WireError("bad_value", f"window_s={window_s!r} not one of {WINDOW_SECONDS}")
    window_start = _int(obj, "window_start", 0, 2**40)
    if window_start % window_s:
        raise WireError("bad_value", "window_start must be a multiple of window_s")
    tags_raw = obj["tags"]
    if not isinstance(tags_raw, list):
        raise WireError("bad_type", "tags must be an array")
    if len(tags_raw) > MAX_TAGS:
        raise WireError("too_many_tags", f"{len(tags_raw)} tags > {MAX_TAGS}")
    tags = []
    seen = set()
    for t in tags_raw:
        if not isinstance(t, dict) or set(t) != {"id", "w"}:
            raise WireError("bad_type", "each tag must be an object with exactly id and w")
        tag_id, w = t["id"], t["w"]
        if not isinstance(tag_id, str) or not 1 <= len(tag_id) <= 16:
            raise WireError("bad_type", "tag id must be a short string")
        if tag_id in seen:
            raise WireError("duplicate_tag", f"tag {tag_id!r} appears twice")
        seen.add(tag_id)
        status = tag_check(tag_id)
        if status == "sensitive":
            raise WireError("sensitive_tag", f"tag {tag_id!r} is a sensitive category")
        if status != "targetable":
            raise WireError("unknown_tag", f"tag {tag_id!r} is not a targetable tag")
        if isinstance(w, bool) or not isinstance(w, (int, float)) or float(w) not in WEIGHTS:
            raise WireError("bad_weight", f"weight {w!r} of tag {tag_id!r} not one of {WEIGHTS}")
        tags.append(Tag(tag_id, float(w)))
    ldp = obj["ldp"]
    epsilon = None
    if ldp is not None:
        if not isinstance(ldp, dict) or set(ldp) != {"epsilon"}:
            raise WireError("bad_type", "ldp must be null or {epsilon}")
        eps = ldp["epsilon"]
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps):
            raise WireError("bad_type", "ldp.epsilon must be a number")
        if not EPSILON_RANGE[0] <= eps <= EPSILON_RANGE[1]:
            raise WireError("bad_value", f"ldp.epsilon={eps} outside {EPSILON_RANGE}")
        epsilon = float(eps)
    return SignalBatch(
        device_id=_device_id(obj),
        seq=_int(obj, "seq", 1, MAX_SEQ),
        taxonomy=_str(obj, "taxonomy", VERSION_RE),
        model=_str(obj, "model", VERSION_RE),
        window_start=window_start,
        window_s=window_s,
        region=_str(obj, "region", REGION_RE),
        tags=tuple(tags),
        ldp_epsilon=epsilon,
    )


def _deletion_from_dict(obj: dict[str, Any]) -> DeletionRequest:
    _check_fields(obj, _DELETION_FIELDS)
    if obj["scope"] != "profile":
        raise WireError("bad_value", f"scope={obj['scope']!r}, only 'profile' is defined")
    window = _int(obj, "requested_window", 0, 2**40)
    if window % 3600:
        raise WireError("bad_value", "requested_window must be a whole hour")
    return DeletionRequest(
        device_id=_device_id(obj), seq=_int(obj, "seq", 1, MAX_SEQ), requested_window=window
    )


def quantise_weight(x: float) -> float:
    """Round a score in [0, 1] up to the nearest allowed weight (never 0: absent tags drop)."""
    if not math.isfinite(x):
        raise ValueError(f"weight {x} is not finite")
    steps = max(1, min(len(WEIGHTS), math.ceil(round(x / WEIGHT_STEP, 9))))
    return WEIGHTS[steps - 1]


# --- JSON Schema (published form of the same rules) ---------------------------------------


def json_schema(targetable_ids: list[str] | None = None) -> dict[str, Any]:
    """JSON Schema (2020-12) for both messages. Pass the targetable ids to pin the tag enum."""
    tag_id: dict[str, Any] = {"type": "string", "minLength": 1, "maxLength": 16}
    if targetable_ids is not None:
        tag_id = {"enum": sorted(targetable_ids)}
    device_id = {"type": "string", "pattern": DEVICE_ID_RE.pattern}
    seq = {"type": "integer", "minimum": 1, "maximum": MAX_SEQ}
    batch = {
        "type": "object",
        "additionalProperties": False,
        "required": sorted(_BATCH_FIELDS),
        "properties": {
            "v": {"const": SCHEMA_VERSION},
            "type": {"const": "signal_batch"},
            "device_id": device_id,
            "seq": seq,
            "taxonomy": {"type": "string", "pattern": VERSION_RE.pattern},
            "model": {"type": "string", "pattern": VERSION_RE.pattern},
            "window_start": {"type": "integer", "minimum": 0, "maximum": 2**40},
            "window_s": {"enum": list(WINDOW_SECONDS)},
            "region": {"type": "string", "pattern": REGION_RE.pattern},
            "tags": {
                "type": "array",
                "maxItems": MAX_TAGS,
                "uniqueItems": True,
                "items": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["id", "w"],
                    "properties": {"id": tag_id, "w": {"enum": list(WEIGHTS)}},
                },
            },
            "ldp": {
                "oneOf": [
                    {"type": "null"},
                    {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["epsilon"],
                        "properties": {
                            "epsilon": {
                                "type": "number",
                                "minimum": EPSILON_RANGE[0],
                                "maximum": EPSILON_RANGE[1],
                            }
                        },
                    },
                ]
            },
        },
    }
    deletion = {
        "type": "object",
        "additionalProperties": False,
        "required": sorted(_DELETION_FIELDS),
        "properties": {
            "v": {"const": SCHEMA_VERSION},
            "type": {"const": "deletion_request"},
            "device_id": device_id,
            "seq": seq,
            "requested_window": {"type": "integer", "minimum": 0, "multipleOf": 3600},
            "scope": {"const": "profile"},
        },
    }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"urn:earmark:wire:v{SCHEMA_VERSION}",
        "oneOf": [{"$ref": "#/$defs/signal_batch"}, {"$ref": "#/$defs/deletion_request"}],
        "$defs": {"signal_batch": batch, "deletion_request": deletion},
    }
