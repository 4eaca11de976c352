"""Region check: the coordinate table, signal conflicts, travel, configuration, the CLI."""

from __future__ import annotations

import dataclasses
import json

import pytest

from earmark.cli import main
from earmark.device.policy import Policy
from earmark.device.region import RegionChecker
from earmark.device.region_cases import CASES, RegionCase


@pytest.fixture(scope="module")
def checker(policy: Policy) -> RegionChecker:
    return RegionChecker(policy.region)


def test_the_table_covers_every_kind_of_place() -> None:
    kinds = {c.kind for c in CASES}
    assert len(CASES) >= 40
    assert {"border", "enclave", "microstate", "island", "sea", "city"} <= kinds
    names = " ".join(c.name for c in CASES)
    for place in ("Vaduz", "Valletta", "Monaco", "Büsingen", "Llívia", "Gibraltar", "Åland",
                  "Réunion", "French Guiana"):  # fmt: skip
        assert place in names


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_region_table(checker: RegionChecker, case: RegionCase) -> None:
    res = checker.decide(case.lat, case.lon)
    assert case.country_ok(res.country), (res.country, res.reason)
    assert res.blocked == case.blocked, res.reason


def test_the_per_fix_cache_answers_again_without_a_lookup(checker: RegionChecker) -> None:
    checker.decide(40.7128, -74.0060)
    before = checker.locate.cache_info().hits
    assert not checker.decide(40.71281, -74.00601).blocked  # same fix to ~11 m
    assert checker.locate.cache_info().hits == before or checker.check.cache_info().hits > 0


@pytest.mark.parametrize(
    ("signals", "blocked", "reason"),
    [
        ({}, True, "no_signal"),
        ({"account_country": "US"}, False, "allowed"),
        ({"sim_mcc": "310", "timezone": "America/Chicago"}, False, "allowed"),
        ({"account_country": "US", "sim_mcc": "208"}, True, "region_blocked:FR"),
        ({"account_country": "US", "locale": "de_DE"}, True, "region_blocked:DE"),
        ({"account_country": "US", "timezone": "Europe/Paris"}, True, "region_blocked:FR"),
        ({"account_country": "US", "sim_mcc": "302"}, True, "conflict:account=US,mcc=CA"),
        ({"account_country": "US", "sim_mcc": "999"}, True, "unreadable:mcc"),
        ({"account_country": "USA"}, True, "unreadable:account"),
        ({"account_country": "US", "locale": "en"}, False, "allowed"),  # no region in locale
        ({"account_country": "US", "timezone": "UTC"}, False, "allowed"),  # says nothing
        ({"locale": "fr_CA.UTF-8", "timezone": "America/Toronto"}, False, "allowed"),
        ({"account_country": "FI", "lat": 60.0973, "lon": 19.9348}, True, "region_blocked:AX"),
    ],
)
def test_signals_must_agree_and_none_may_name_a_blocked_region(
    checker: RegionChecker, signals: dict, blocked: bool, reason: str
) -> None:
    args = {"lat": None, "lon": None, **signals}
    res = checker.decide(**args)
    assert (res.blocked, res.reason) == (blocked, reason)


def test_gps_at_open_sea_with_a_home_country_is_still_undecided(checker: RegionChecker) -> None:
    res = checker.decide(0.0, -150.0, account_country="US", sim_mcc="310")
    assert res.blocked and res.reason == "open_sea:gps"


def test_a_traveller_is_blocked_while_in_a_blocked_region_and_only_then(
    checker: RegionChecker,
) -> None:
    home = {"account_country": "US", "sim_mcc": "310", "locale": "en_US"}
    trip = [((40.7128, -74.0060), False), ((48.8566, 2.3522), True), ((47.3769, 8.5417), True),
            ((51.5074, -0.1278), True), ((40.7128, -74.0060), False)]  # fmt: skip
    decisions = [checker.decide(lat, lon, **home).blocked for (lat, lon), _ in trip]
    assert decisions == [b for _, b in trip]
    # Zurich: Switzerland is not blocked, but a US home and a Swiss fix conflict.
    assert checker.decide(47.3769, 8.5417, **home).reason.startswith("conflict:")
    # A Swiss resident in Zurich is allowed; the same resident in Freiburg is not.
    assert not checker.decide(47.3769, 8.5417, account_country="CH", sim_mcc="228").blocked
    assert checker.decide(47.9990, 7.8421, account_country="CH").reason == "region_blocked:DE"


def test_the_blocked_set_is_configurable(policy: Policy) -> None:
    stricter = dataclasses.replace(policy.region, blocked=policy.region.blocked | {"CH", "KR"})
    c = RegionChecker(stricter)
    assert c.decide(47.3769, 8.5417).reason == "region_blocked:CH"
    assert c.decide(37.5665, 126.9780).reason == "region_blocked:KR"
    assert not c.decide(35.6762, 139.6503).blocked  # Tokyo


def test_region_cli_prints_the_json_the_issue_names(capsys: pytest.CaptureFixture) -> None:
    assert main(["region", "--lat", "47.1410", "--lon", "9.5209", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out == {"country": "LI", "blocked": True, "reason": "region_blocked:LI"}
    assert main(["region", "--lat", "40.7128", "--lon", "-74.006", "--country", "US",
                 "--mcc", "310", "--json"]) == 0  # fmt: skip
    out = json.loads(capsys.readouterr().out)
    assert out == {"country": "US", "blocked": False, "reason": "allowed"}
    assert main(["region", "--lat", "91", "--lon", "0"]) == 2
    assert "not a position on Earth" in capsys.readouterr().err
