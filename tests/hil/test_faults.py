"""HIL: link flaps and power cuts during upload, and fifty devices at accelerated time.

The check is the ledger's promise: whatever a device's ledger says was sent is exactly what
the gateway holds (same sequence numbers, same tags, same weights), nothing lost, nothing
counted twice, after any number of resets and reboots.
"""

from __future__ import annotations

import pytest

from tests.hil.conftest import Hil

pytestmark = pytest.mark.slow


def test_link_flaps_and_power_loss_during_upload(hil) -> None:  # type: ignore[no-untyped-def]
    h: Hil = hil("flaky")
    h.world.run()
    dev = h.world.devices[0]
    cuts = [o for o in h.observations if o.kind == "power" and o.detail["state"] == "lost"]
    assert len(cuts) == 2
    assert any(o.detail["pending"] > 0 for o in cuts), "no power cut caught an upload"
    # the proxy really reset connections (loss) and the device really reconnected
    assert dev.proxy.resets > 0 or any(o.detail.get("what") == "link" for o in h.observations)
    recon = h.world.reconcile(dev)
    assert recon["match"], recon
    queued = sum(o.detail["batches"] for o in h.observations if o.kind == "queued")
    sent = [r for r in dev.parts.ledger.sent() if r.message["type"] == "signal_batch"]
    assert queued == len(sent) >= 3  # every window that reached the outbox arrived once
    assert dev.parts.ledger.dropped() == []
    got, floor = h.world.services.received(dev.id)
    assert floor == 0 and got == {r.seq for r in sent}
    merged = h.world.services.gateway.metrics.get("earmark_gateway_merged_total")
    assert merged == len(sent)


def test_fifty_devices_at_accelerated_time(hil) -> None:  # type: ignore[no-untyped-def]
    h: Hil = hil("crowd", devices=50)
    h.world.run()
    assert len(h.world.devices) == 50
    mismatched = {d.id: r for d in h.world.devices if not (r := h.world.reconcile(d))["match"]}
    assert not mismatched
    expected = {"jazz": "Entertainment", "food": "Food & Drink"}
    for d in h.world.devices:
        assert d.parts.ledger.sent(), f"{d.id} sent nothing"
        prof = h.world.services.profile(d.plan.user_id, h.world.clock.now())
        tops = {h.tier1(i["tag"]) for i in prof["interests"]}
        assert expected[d.plan.template.id] in tops, (d.id, tops)
    assert h.world.clock.elapsed > 12 * 3600  # half a simulated day, in seconds of real time


FULL_FLASH = """
name = "Tiny flash behind a dead link"
clips = "{clips}"
days_ago = 2
[places.nyc]
lat = 40.7128
lon = -74.0060
account = "US"
mcc = "310"
locale = "en_US"
timezone = "America/New_York"
[[users]]
id = "fay"
place = "nyc"
storage_kb = 1
[[events]]
at = "06:00"
link = "down"
{says}
[[events]]
at = "13:00"
link = "up"
"""
SAYS = [
    "Play some jazz music",
    "Book a table at an italian restaurant",
    "What are the best beaches in Mexico",
    "How do I file my taxes this year",
    "Recommend a good science fiction book",
    "I would like to buy a used car with low mileage",
]


def test_full_flash_drops_oldest_and_ledger_still_matches(hil, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from earmark.firmware_sim.scenario import BUNDLED

    says = "\n".join(
        f'[[events]]\nat = "{6 + i}:10"\nsay = "{text}"' for i, text in enumerate(SAYS)
    )
    path = tmp_path / "flash.toml"
    path.write_text(FULL_FLASH.format(clips=BUNDLED / "clips", says=says))
    h: Hil = hil(str(path))
    h.world.run()
    dev = h.world.devices[0]
    dropped = dev.parts.ledger.dropped()
    assert dropped and {r[3] for r in dropped} == {"outbox_full"}
    sent = [r for r in dev.parts.ledger.sent() if r.message["type"] == "signal_batch"]
    assert sent  # the newest windows survived the wait
    assert max(r[0] for r in dropped) < min(r.seq for r in sent)  # oldest dropped first
    queued = sum(o.detail["batches"] for o in h.observations if o.kind == "queued")
    assert queued == len(sent) + len(dropped)
    assert h.world.reconcile(dev)["match"]


THROTTLED = """
name = "Low battery, hot frame"
clips = "{clips}"
days_ago = 2
[places.nyc]
lat = 40.7128
lon = -74.0060
account = "US"
mcc = "310"
locale = "en_US"
timezone = "America/New_York"
[[users]]
id = "gus"
place = "nyc"
battery = 0.05
[[events]]
at = "08:00"
say = "Play some jazz music"
[[events]]
at = "09:00"
battery = 0.9
[[events]]
at = "09:10"
temperature = 44
[[events]]
at = "09:20"
say = "Book a table at an italian restaurant"
[[events]]
at = "10:00"
temperature = 30
[[events]]
at = "10:10"
say = "What are the best beaches in Mexico"
"""


def test_low_battery_and_heat_stop_the_recogniser(hil, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from earmark.firmware_sim.scenario import BUNDLED

    path = tmp_path / "hot.toml"
    path.write_text(THROTTLED.format(clips=BUNDLED / "clips"))
    h: Hil = hil(str(path))
    h.world.run()
    levels = [o.detail["level"] for o in h.observations if o.detail.get("what") == "throttle"]
    assert levels[:3] == ["skip_classify", "normal", "skip_classify"]
    decided = [d["reason"] for _, _, d in h.said_and_decided()]
    assert decided == ["nothing heard", "nothing heard", "published"]
    dev = h.world.devices[0]
    assert dev.runtime.stats.silenced_frames > 100  # throttled: frames never reached the STT
    sent = [r for r in dev.parts.ledger.sent() if r.message["type"] == "signal_batch"]
    assert len(sent) == 1 and h.world.reconcile(dev)["match"]
