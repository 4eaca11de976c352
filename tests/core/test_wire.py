"""The wire schema: every message round-trips; everything the schema forbids is refused."""

from __future__ import annotations

import json

import pytest

from earmark import wire
from earmark.errors import WireError

TARGETABLE = {"653", "1", "210"}
SENSITIVE = {"286", "453"}


def check(tag_id: str) -> str:
    if tag_id in TARGETABLE:
        return "targetable"
    if tag_id in SENSITIVE:
        return "sensitive"
    return "unknown"


def batch(**kw: object) -> wire.SignalBatch:
    fields: dict[str, object] = dict(
        device_id="dev-0001",
        seq=7,
        taxonomy="iab-content-3.1+earmark.1",
        model="topics-1.0.0",
        window_start=3600 * 470_000,
        window_s=3600,
        region="US",
        tags=(wire.Tag("653", 1.0), wire.Tag("210", 0.25)),
        ldp_epsilon=None,
    )
    fields.update(kw)
    return wire.SignalBatch(**fields)  # type: ignore[arg-type]


MESSAGES = [
    batch(),
    batch(tags=(), ldp_epsilon=2.0),
    wire.DeletionRequest(device_id="dev-0001", seq=8, requested_window=3600 * 470_001),
]


@pytest.mark.parametrize("msg", MESSAGES, ids=lambda m: type(m).__name__)
def test_every_message_round_trips(msg: wire.Message) -> None:
    assert wire.decode(msg.to_bytes(), check) == msg
    assert wire.parse_topic(msg.topic) == (msg.device_id, msg.topic.rsplit("/", 1)[1])


def mutate(msg: wire.Message, **changes: object) -> bytes:
    obj = msg.to_dict()
    for key, value in changes.items():
        if value is KeyError:
            del obj[key]
        else:
            obj[key] = value
    return json.dumps(obj).encode()


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"{not json", "malformed_json"),
        (b"\xff\xfe", "malformed_json"),
        (b"[1, 2]", "not_object"),
        (b'{"v": 1, "x": NaN}', "malformed_json"),
        (mutate(batch(), v=2), "schema_version"),
        (mutate(batch(), type="profile_dump"), "unknown_type"),
        (mutate(batch(), text="i am planning a trip"), "unknown_field"),
        (mutate(batch(), region=KeyError), "missing_field"),
        (mutate(batch(), seq=0), "bad_value"),
        (mutate(batch(), seq="7"), "bad_type"),
        (mutate(batch(), seq=True), "bad_type"),
        (mutate(batch(), device_id="../../etc"), "bad_device_id"),
        (mutate(batch(), window_s=60), "bad_value"),
        (mutate(batch(), window_start=3600 * 470_000 + 5), "bad_value"),
        (mutate(batch(), region="usa"), "bad_value"),
        (mutate(batch(), tags=[{"id": "653", "w": 1.0}] * 2), "duplicate_tag"),
        (mutate(batch(), tags=[{"id": str(i), "w": 1.0} for i in range(6)]), "too_many_tags"),
        (mutate(batch(), tags=[{"id": "286", "w": 1.0}]), "sensitive_tag"),
        (mutate(batch(), tags=[{"id": "99999", "w": 1.0}]), "unknown_tag"),
        (mutate(batch(), tags=[{"id": "653", "w": 0.3}]), "bad_weight"),
        (mutate(batch(), tags=[{"id": "653", "w": 1.5}]), "bad_weight"),
        (mutate(batch(), tags=[{"id": "653", "w": 1.0, "text": "hi"}]), "bad_type"),
        (mutate(batch(), ldp={"epsilon": 100}), "bad_value"),
        (mutate(MESSAGES[2], scope="everything"), "bad_value"),
        (mutate(MESSAGES[2], requested_window=1234), "bad_value"),
        (b" " * (wire.MAX_PAYLOAD_BYTES + 1), "oversized"),
    ],
)
def test_invalid_messages_are_refused_with_a_stable_reason(payload: bytes, reason: str) -> None:
    with pytest.raises(WireError) as err:
        wire.decode(payload, check)
    assert err.value.reason == reason


@pytest.mark.parametrize(
    "topic",
    [
        "earmark/v1/dev-0001",
        "earmark/v2/dev-0001/signals",
        "earmark/v1/+/signals",
        "earmark/v1/dev-0001/text",
        "",
    ],
)
def test_bad_topics_are_refused(topic: str) -> None:
    with pytest.raises(WireError):
        wire.parse_topic(topic)


@pytest.mark.parametrize(
    ("score", "weight"),
    [(0.01, 0.25), (0.25, 0.25), (0.26, 0.5), (0.5, 0.5), (0.74, 0.75), (1.0, 1.0), (3.0, 1.0)],
)
def test_weights_are_quantised_up_to_the_grid(score: float, weight: float) -> None:
    assert wire.quantise_weight(score) == weight


def test_published_json_schema_agrees_with_the_validator() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schema = wire.json_schema(sorted(TARGETABLE))
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    for msg in MESSAGES:
        assert validator.is_valid(msg.to_dict())
    for bad in (
        mutate(batch(), text="x"),
        mutate(batch(), tags=[{"id": "286", "w": 1.0}]),
        mutate(batch(), tags=[{"id": "653", "w": 0.3}]),
        mutate(batch(), v=2),
    ):
        assert not validator.is_valid(json.loads(bad))
