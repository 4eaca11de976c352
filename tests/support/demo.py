"""What `earmark demo` must print, whichever broker it started: one check for every demo test."""

from __future__ import annotations


def check_demo_output(out: str) -> None:
    assert "Profile of alice at the gateway" in out
    profile = out.split("Profile of alice at the gateway")[1].split("Suppressed")[0]
    for category in ("Travel", "Food & Drink", "Automotive"):
        assert category in profile
    suppressed = out.split("Suppressed on the device, and why:")[1]
    assert "sensitive:health" in suppressed and "region_blocked:FR" in suppressed
    assert "1/1 devices match exactly" in out
