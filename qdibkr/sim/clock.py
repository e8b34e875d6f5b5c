"""The simulator's clock: wall-clock time, optionally sped up or moved forward.

Everything in the simulator that depends on time (prices, fills, DAY order
expiry, bars) reads this clock, so an offline user can fast-forward a session
and a test can advance time to see a resting limit order fill instead of
waiting for the market to move.
"""

import time


class SimClock:
    def __init__(self, speed: float = 1.0, start: float | None = None):
        self.speed = speed
        self._wall_origin = time.time()
        self._sim_origin = self._wall_origin if start is None else start

    def now(self) -> float:
        """Simulated time in POSIX seconds."""
        return self._sim_origin + (time.time() - self._wall_origin) * self.speed

    def advance(self, seconds: float):
        """Jump forward; time never runs backwards."""
        if seconds < 0:
            raise ValueError("the simulated clock only moves forward")
        self._sim_origin += seconds
