"""The hardware the device pipeline runs on, as one small protocol.

:class:`earmark.device.runtime.DeviceRuntime` never reads a sensor, a radio or a battery
itself: it asks a :class:`Hardware` object. A real machine passes :class:`HostHardware`
(system clock, region from flags, link always up, mains power); the simulated glasses in
``earmark.firmware_sim`` pass their own object with a GPS track, a link that drops, a battery
that drains and a trigger the wearer taps. Both drive exactly the same device code, which is
the point: what the simulator proves is what ships.

Every method is a cheap poll. The runtime calls them between frames and between utterances,
so an implementation must not block (a simulator reads its scenario state; a real device
reads cached sensor values).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:  # the privacy module owns RegionSignals; imported lazily at run time
    from earmark.device.privacy import RegionSignals


class Throttle(enum.Enum):
    """What the device may spend energy on right now, decided from power and heat.

    The order is by how much is switched off; the runtime honours each level as follows:

    * ``NORMAL``: listen, recognise, classify, publish.
    * ``DEFER_UPLOAD``: listen, recognise and classify, but keep batches in the outbox and
      leave the radio alone (the outbox drains in order once the level drops back).
    * ``SKIP_CLASSIFY``: the microphone stays closed (frames are replaced by silence, so no
      speech reaches the recogniser) and nothing is published: the cheapest state short of
      power-off. Speech heard here is simply never processed; nothing is buffered for later,
      because buffering audio would keep it on the device longer than needed.
    """

    NORMAL = "normal"
    DEFER_UPLOAD = "defer_upload"
    SKIP_CLASSIFY = "skip_classify"


@dataclass(frozen=True)
class PowerState:
    """Battery and heat, as the firmware reports them. ``None`` means not measured."""

    battery: float | None = None  # state of charge in [0, 1]
    charging: bool = True
    temperature_c: float | None = None  # SoC / skin temperature


@dataclass(frozen=True)
class ThrottlePolicy:
    """Thresholds for :func:`throttle_for`; documented defaults for glasses-class devices.

    Uploading costs more than recognising (the radio wakes a power amplifier; a 1 kB MQTT
    publish with TLS costs about as much as a few seconds of keyword-size STT), so the first
    thing a weak battery gives up is the upload, and only a critical battery or a hot frame
    (skin contact: glasses must stay below ~43 °C) stops the recogniser.
    """

    defer_upload_below: float = 0.20  # battery fraction: keep batches local below this
    skip_classify_below: float = 0.07  # battery fraction: stop processing speech below this
    defer_upload_above_c: float = 40.0  # temperature: radio off above this
    skip_classify_above_c: float = 43.0  # temperature: recogniser off above this


def throttle_for(power: PowerState, policy: ThrottlePolicy = ThrottlePolicy()) -> Throttle:
    """The throttle level for a power state; charging lifts the battery limits, not heat."""
    level = Throttle.NORMAL
    temp = power.temperature_c
    if temp is not None:
        if temp >= policy.skip_classify_above_c:
            return Throttle.SKIP_CLASSIFY
        if temp >= policy.defer_upload_above_c:
            level = Throttle.DEFER_UPLOAD
    if power.battery is not None and not power.charging:
        if power.battery < policy.skip_classify_below:
            return Throttle.SKIP_CLASSIFY
        if power.battery < policy.defer_upload_below:
            level = Throttle.DEFER_UPLOAD
    return level


@runtime_checkable
class Hardware(Protocol):
    """What the device pipeline needs to know about the body it runs in."""

    def region_signals(self) -> RegionSignals:
        """Where the device is now (GPS fix, account country, SIM MCC, locale, time zone)."""
        ...

    def link_up(self) -> bool:
        """Whether a network link exists. False: the runtime holds the MQTT client offline."""
        ...

    def power(self) -> PowerState:
        """Battery and heat now (only reported; the runtime asks :meth:`throttle`)."""
        ...

    def throttle(self) -> Throttle:
        """What the device may spend energy on now; usually ``throttle_for(self.power())``."""
        ...

    def listening(self) -> bool:
        """Whether the wearer has the microphone open (trigger tap / wake word / always-on).

        While False the runtime replaces frames by silence: nothing heard is recognised.
        """
        ...

    def storage_limit_bytes(self) -> int:
        """Flash the outbox may use, in bytes (its message cap is derived from this)."""
        ...


class HostHardware:
    """A laptop, a Raspberry Pi, a server: region from configuration, link and power always on.

    The region is what the operator states (``--lat/--lon``, ``--country``, ``--mcc``,
    ``--locale``, ``--tz``); with none of them the privacy gate has no signal and fails
    closed, which is the right default for a device that cannot say where it is.
    """

    def __init__(
        self,
        region: RegionSignals | None = None,
        *,
        storage_limit_bytes: int = 16 * 1024 * 1024,
        throttle_policy: ThrottlePolicy = ThrottlePolicy(),
    ) -> None:
        if region is None:
            region = _empty_region()
        self._region = region
        self._storage = storage_limit_bytes
        self._policy = throttle_policy

    def region_signals(self) -> RegionSignals:
        return self._region

    def link_up(self) -> bool:
        return True

    def power(self) -> PowerState:
        return PowerState()

    def throttle(self) -> Throttle:
        return throttle_for(self.power(), self._policy)

    def listening(self) -> bool:
        return True

    def storage_limit_bytes(self) -> int:
        return self._storage


def _empty_region() -> RegionSignals:
    from earmark.device.privacy import RegionSignals

    return RegionSignals(
        lat=None, lon=None, account_country=None, sim_mcc=None, locale=None, timezone=None
    )
