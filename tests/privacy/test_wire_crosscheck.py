"""earmark.wire's hand-written validator against `jsonschema` with wire.json_schema():
on batches the gate builds and on random mutations of them, both must agree.

Two rules cannot be said in JSON Schema and are checked by the validator only: a window
start that is a multiple of the window length, and tag ids unique regardless of weight.
Mutations that touch only those are expected to be refused by the validator alone.
"""

from __future__ import annotations

import json

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from earmark import wire
from earmark.errors import WireError

pytestmark = pytest.mark.slow

JSON_SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**54), 2**54),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=20),
)  # fmt: skip


@pytest.fixture(scope="module")
def validator(taxonomy):
    schema = wire.json_schema([n.id for n in taxonomy.targetable])
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def _valid(taxonomy, n_tags: int, window_s: int, eps: float | None) -> dict:
    ids = [n.id for n in taxonomy.targetable][:n_tags]
    return wire.SignalBatch(
        "glasses-0001", 7, taxonomy.version, "topics-1.0.0", 1_800_000_000 // window_s * window_s,
        window_s, "US", tuple(wire.Tag(i, w) for i, w in zip(ids, wire.WEIGHTS * 2, strict=False)),
        eps,
    ).to_dict()  # fmt: skip


def _decodes(obj: object, taxonomy) -> bool:
    try:
        wire.decode(json.dumps(obj).encode(), taxonomy.status)
    except WireError:
        return False
    except ValueError:  # json.dumps refused: neither side would see it
        return False
    return True


@given(
    n_tags=st.integers(0, wire.MAX_TAGS),
    window_s=st.sampled_from(wire.WINDOW_SECONDS),
    eps=st.one_of(st.none(), st.floats(wire.EPSILON_RANGE[0], wire.EPSILON_RANGE[1])),
    key=st.sampled_from(sorted(wire._BATCH_FIELDS) + ["extra", "tags.0.id", "tags.0.w", "tags.+"]),
    value=JSON_SCALARS,
    drop=st.booleans(),
)  # fmt: skip
@settings(max_examples=400, deadline=None, derandomize=True)
def test_validator_and_json_schema_agree(validator, taxonomy, n_tags, window_s, eps, key,
                                         value, drop):  # fmt: skip
    obj = _valid(taxonomy, n_tags, window_s, eps)
    assert validator.is_valid(obj) and _decodes(obj, taxonomy)
    if key.startswith("tags."):
        if key == "tags.+":
            obj["tags"].append({"id": value, "w": 1.0})
        elif obj["tags"]:
            field = key.split(".")[2]
            if drop:
                del obj["tags"][0][field]
            else:
                obj["tags"][0][field] = value
    elif drop and key in obj:
        del obj[key]
    else:
        obj[key] = value
    schema_ok, validator_ok = validator.is_valid(obj), _decodes(obj, taxonomy)
    only_validator_rules = (
        key == "window_start" and not drop and isinstance(value, int)
        and not isinstance(value, bool)
        and 0 <= value <= 2**40 and value % window_s
    ) or (key == "tags.+" and value in [t["id"] for t in obj["tags"][:-1]])  # fmt: skip
    # JSON Schema counts 0.0 as an integer; earmark's validator refuses a float where the wire
    # has an integer (as it refuses true for 1)
    integral_float = isinstance(value, float) and value.is_integer() and not drop
    if only_validator_rules:
        assert schema_ok and not validator_ok
    elif integral_float and key in ("v", "seq", "window_start", "window_s"):
        assert not validator_ok
    else:
        assert schema_ok == validator_ok, (key, value, obj)


def test_deletion_requests_agree(validator, taxonomy) -> None:
    good = wire.DeletionRequest("glasses-0001", 3, 1_800_000_000 // 3600 * 3600).to_dict()
    assert validator.is_valid(good) and _decodes(good, taxonomy)
    for key, value in (("scope", "all"), ("requested_window", 1_800_000_001), ("seq", 0),
                       ("device_id", "x"), ("extra", 1)):  # fmt: skip
        bad = dict(good, **{key: value})
        assert not validator.is_valid(bad) and not _decodes(bad, taxonomy)
