"""The throttle decision the runtime obeys (device/hardware.py)."""

from __future__ import annotations

import pytest

from earmark.device.hardware import PowerState, Throttle, ThrottlePolicy, throttle_for


@pytest.mark.parametrize(
    "power, expected",
    [
        (PowerState(), Throttle.NORMAL),  # nothing measured: mains-powered host
        (PowerState(battery=0.80, charging=False, temperature_c=30), Throttle.NORMAL),
        (PowerState(battery=0.19, charging=False), Throttle.DEFER_UPLOAD),
        (PowerState(battery=0.05, charging=False), Throttle.SKIP_CLASSIFY),
        (PowerState(battery=0.05, charging=True), Throttle.NORMAL),  # on the charger
        (PowerState(battery=0.9, charging=True, temperature_c=41), Throttle.DEFER_UPLOAD),
        (PowerState(battery=0.9, charging=True, temperature_c=43.5), Throttle.SKIP_CLASSIFY),
        (PowerState(battery=0.15, charging=False, temperature_c=44), Throttle.SKIP_CLASSIFY),
    ],
)
def test_throttle_for(power: PowerState, expected: Throttle) -> None:
    assert throttle_for(power) is expected


def test_thresholds_are_configurable() -> None:
    lenient = ThrottlePolicy(defer_upload_below=0.05, skip_classify_below=0.01)
    assert throttle_for(PowerState(battery=0.06, charging=False), lenient) is Throttle.NORMAL
