"""The simulated glasses' body: implements :class:`earmark.device.hardware.Hardware`.

Why one object: the device runtime polls a single Hardware seam for where it is, whether the
link is up, how much power and heat it has, whether the wearer opened the microphone, and how
much flash it may use. :class:`SimGlasses` answers from simulated parts the scenario runner
drives: a GPS fix and phone/SIM signals (:class:`Place`), a :class:`Battery` that drains with
time and with listening, a temperature, a tap / wake-word trigger, a link (optionally wired
to a :class:`~earmark.firmware_sim.proxy.LinkProxy` so "down" is a dead socket, not a flag),
and a flash budget.

Throttle changes are recorded with the simulated time they happened, so the timeline can
show when the device stopped uploading or stopped listening because the battery ran low.
"""

from __future__ import annotations

from dataclasses import dataclass

from earmark.device.hardware import PowerState, Throttle, ThrottlePolicy, throttle_for
from earmark.device.privacy import RegionSignals
from earmark.firmware_sim.proxy import LinkProxy
from earmark.firmware_sim.simclock import SimClock


@dataclass(frozen=True)
class Place:
    """Where the wearer is, as the glasses' GPS and the paired phone report it."""

    name: str
    lat: float | None
    lon: float | None
    account_country: str | None = None
    sim_mcc: str | None = None
    locale: str | None = None
    timezone: str | None = None

    def signals(self) -> RegionSignals:
        return RegionSignals(
            lat=self.lat,
            lon=self.lon,
            account_country=self.account_country,
            sim_mcc=self.sim_mcc,
            locale=self.locale,
            timezone=self.timezone,
        )


@dataclass
class Battery:
    """State of charge in [0, 1]: drains per hour idle and per second of open microphone."""

    level: float = 1.0
    charging: bool = False
    idle_per_hour: float = 0.02
    listen_per_second: float = 0.0001  # 0.36 per hour of open mic + recognition
    _at: float | None = None

    def level_at(self, now: float) -> float:
        if self._at is None:
            self._at = now
        if not self.charging and now > self._at:
            self.level = max(0.0, self.level - self.idle_per_hour * (now - self._at) / 3600)
        self._at = now
        return self.level

    def spend_listening(self, seconds: float) -> None:
        if not self.charging:
            self.level = max(0.0, self.level - self.listen_per_second * seconds)


class SimGlasses:
    """One pair of glasses: the state a scenario changes, read through the Hardware seam."""

    def __init__(
        self,
        clock: SimClock,
        place: Place,
        *,
        battery: Battery | None = None,
        temperature_c: float = 30.0,
        storage_limit_bytes: int = 256 * 1024,
        always_listening: bool = False,
        proxy: LinkProxy | None = None,
        policy: ThrottlePolicy | None = None,
    ) -> None:
        self.clock = clock
        self.place = place
        self.battery = battery or Battery()
        self.temperature_c = temperature_c
        self.storage = storage_limit_bytes
        self.always_listening = always_listening
        self.proxy = proxy
        self.policy = policy or ThrottlePolicy()
        self._link = True
        self._open = always_listening
        self._throttle = Throttle.NORMAL
        self.throttle_log: list[tuple[float, Throttle]] = []  # (sim time, new level)

    # --- the Hardware protocol -----------------------------------------------------------

    def region_signals(self) -> RegionSignals:
        return self.place.signals()

    def link_up(self) -> bool:
        return self._link

    def power(self) -> PowerState:
        return PowerState(
            battery=self.battery.level_at(self.clock.now()),
            charging=self.battery.charging,
            temperature_c=self.temperature_c,
        )

    def throttle(self) -> Throttle:
        level = throttle_for(self.power(), self.policy)
        if level is not self._throttle:
            self._throttle = level
            self.throttle_log.append((self.clock.now(), level))
        return level

    def listening(self) -> bool:
        return self._open or self.always_listening

    def storage_limit_bytes(self) -> int:
        return self.storage

    # --- what the scenario does to the glasses --------------------------------------------

    def tap(self, open_: bool) -> None:
        """The wearer taps the temple (or says "hey assistant"): the microphone opens/closes."""
        self._open = open_

    def set_link(self, up: bool) -> None:
        self._link = up
        if self.proxy is not None:
            self.proxy.set_up(up)

    def set_link_quality(self, latency_s: float | None = None, loss: float | None = None) -> None:
        if self.proxy is not None:
            if latency_s is not None:
                self.proxy.latency_s = latency_s
            if loss is not None:
                self.proxy.loss = loss

    def move(self, place: Place) -> None:
        self.place = place

    def set_power(
        self, battery: float | None = None, charging: bool | None = None, temp: float | None = None
    ) -> None:
        if battery is not None:
            self.battery.level_at(self.clock.now())
            self.battery.level = battery
        if charging is not None:
            self.battery.charging = charging
        if temp is not None:
            self.temperature_c = temp
