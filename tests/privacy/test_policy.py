"""Policy-file errors: a clear one-line error naming the file and key, and no gate (closed)."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from earmark.device.policy import default_policy_path, load_policy, parse_policy
from earmark.device.privacy import build_parts
from earmark.errors import PolicyError
from earmark.wire import BLOCKED_REGIONS

from .conftest import DEVICE, ManualClock


def _default() -> dict:
    return tomllib.loads(default_policy_path().read_text(encoding="utf-8"))


def test_default_policy_loads_and_blocks_at_least_what_the_gateway_rechecks() -> None:
    p = load_policy()
    assert p.version
    assert all(p.region.is_blocked(cc) for cc in BLOCKED_REGIONS)  # gateway re-check agrees
    assert {"GB", "NO", "IS", "LI", "FR", "DE"} <= p.region.blocked
    assert "CH" not in p.region.blocked and "KR" not in p.region.blocked
    assert p.region.is_blocked("AX") and p.region.is_blocked("GI")  # territories follow


@pytest.mark.parametrize(
    ("mutate", "key"),
    [
        (lambda d: d.pop("version"), "version"),
        (lambda d: d["region"].update(blocked=["France"]), "region.blocked"),
        (lambda d: d["region"].update(signals=["gps", "horoscope"]), "region.signals"),
        (lambda d: d["region"].update(signals=[]), "region.signals"),
        (lambda d: d["region"].update(sea_buffer_km=-1), "region.sea_buffer_km"),
        (lambda d: d["region"]["enclaves"].update(X={"country": "DE"}), "region.enclaves.X"),
        (lambda d: d["sensitive"].update(model_threshold=1.5), "sensitive.model_threshold"),
        (lambda d: d["sensitive"]["rules"].update(astrology={"terms": ["x"]}), "astrology"),
        (lambda d: d["sensitive"]["rules"]["health"].update(terms=[]), "health.terms"),
        (lambda d: d["sensitive"]["rules"]["health"].update(weak=["sick", 3]), "health.weak"),
        (lambda d: d["sensitive"].update(weak_rule_floor=2), "sensitive.weak_rule_floor"),
        (lambda d: d["sensitive"].pop("weak_rule_floor"), "sensitive.weak_rule_floor"),
        (lambda d: d["batching"].update(window_s=61), "batching.window_s"),
        (lambda d: d["batching"].update(max_tags=9), "batching.max_tags"),
        (lambda d: d["ldp"].update(epsilon=0), "ldp.epsilon"),
        (lambda d: d["ldp"].update(enabled="yes"), "ldp.enabled"),
        (lambda d: d.pop("interest"), "interest.min_score"),
    ],
)
def test_a_bad_policy_is_refused_with_the_key_named(mutate, key: str) -> None:
    data = _default()
    mutate(data)
    with pytest.raises(PolicyError) as err:
        parse_policy(data, "test.toml")
    msg = str(err.value)
    assert key in msg and "test.toml" in msg and "closed" in msg
    assert "\n" not in msg


def test_unreadable_policy_files_fail_closed(tmp_path: Path) -> None:
    clock = ManualClock()
    missing = tmp_path / "nope.toml"
    broken = tmp_path / "broken.toml"
    broken.write_text("version = \n[region", encoding="utf-8")
    for path, words in ((missing, "not found"), (broken, "not valid TOML")):
        with pytest.raises(PolicyError, match=words):
            build_parts(tmp_path / "state", DEVICE, clock, policy_path=path)


def test_cli_reports_a_bad_policy_on_one_line_and_exits_non_zero(tmp_path: Path) -> None:
    bad = tmp_path / "p.toml"
    bad.write_text('version = "x"\n', encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, "-m", "earmark", "region", "--lat", "40.7", "--lon", "-74",
         "--policy", str(bad)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode != 0
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "region.blocked: missing" in lines[0]
