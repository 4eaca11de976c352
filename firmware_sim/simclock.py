"""An accelerated clock for simulated glasses: implements :class:`earmark.clock.Clock`.

Why: the device code asks a Clock for every timestamp (window starts, outbox TTLs, the
ledger), so a simulated day only has to move this clock. Time moves when the simulation says
so: the microphone advances it frame by frame as it plays audio, and the scenario runner jumps
it between events. ``speed`` paces the jumps against real time (``speed=60``: a simulated
minute per real second); ``speed=0`` runs as fast as the machine can.

One clock is shared by every device in a simulation (one world, one time), and it never goes
backwards: ``advance_to`` a time already passed is a no-op.
"""

from __future__ import annotations

import threading
import time


class SimClock:
    def __init__(self, start: float, speed: float = 0.0) -> None:
        if speed < 0:
            raise ValueError("speed must be >= 0 (0: as fast as possible)")
        self._t = float(start)
        self._start = float(start)
        self.speed = speed
        self._lock = threading.Lock()

    def now(self) -> float:
        return self._t

    def monotonic(self) -> float:
        return self._t - self._start

    def sleep(self, seconds: float) -> None:
        """A device sleeping on this clock lets simulated time pass (paced by ``speed``)."""
        if seconds > 0:
            self.advance(seconds)

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("a clock does not go backwards")
        with self._lock:
            self._t += seconds
        if self.speed > 0:
            time.sleep(seconds / self.speed)

    def advance_to(self, t: float) -> None:
        """Move to ``t`` if it is ahead; a time already passed leaves the clock alone."""
        gap = t - self._t
        if gap > 0:
            self.advance(gap)

    @property
    def elapsed(self) -> float:
        return self._t - self._start
