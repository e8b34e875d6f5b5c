"""The simulator's clock: wall-clock time, optionally started elsewhere, sped up or moved forward.

Everything in the simulator that depends on time (prices, sessions, fills, DAY
order expiry, bars) reads this clock, so an offline user can start on a
weekday morning whatever the hour, fast-forward a session, and a test can
advance time to see a resting order trade at the open instead of waiting for
it. ``qdibkr sim --start 2026-11-24T15:00:00Z --speed 600`` and
``SimGateway(start=..., speed=...)`` set it; ``SimGateway.advance()`` moves it.
"""

import datetime as dt
import time


def parse_instant(value) -> float | None:
    """POSIX seconds from an ISO-8601 instant with its offset ("2026-11-29T08:19:00Z",
    "2026-11-29T03:19:00-05:00"), an aware datetime or a number; None stays None
    (the simulated clock then starts at the wall clock's time)."""
    if value is None or isinstance(value, (int, float)):
        return value
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            raise ValueError(f"{value!r} is not an ISO-8601 instant such as 2026-11-24T15:00:00Z") from None
    if not isinstance(value, dt.datetime):
        raise TypeError(f"a start instant is an ISO-8601 string, a datetime or POSIX seconds, not {type(value).__name__}")
    if value.tzinfo is None:
        raise ValueError(f"{value.isoformat()} has no time zone: give the instant's offset, e.g. a trailing Z for UTC")
    return value.timestamp()


class SimClock:
    def __init__(self, speed: float = 1.0, start=None):
        if speed < 0:
            raise ValueError("the simulated clock's speed is 0 (stands still) or more")
        self.speed = speed
        self._wall_origin = time.time()
        start = parse_instant(start)
        self._set_start = start is not None
        self._sim_origin = self._wall_origin if start is None else start

    def begin(self):
        """Let a clock set to a start instant run from this moment on: the gateway calls it once it
        serves, so that clients first see the instant asked for, not the time it took to start."""
        if self._set_start:
            self._wall_origin = time.time()  # the start instant (plus any advance) is now

    def now(self) -> float:
        """Simulated time in POSIX seconds."""
        return self._sim_origin + (time.time() - self._wall_origin) * self.speed

    def advance(self, seconds: float):
        """Jump forward; time never runs backwards."""
        if seconds < 0:
            raise ValueError("the simulated clock only moves forward")
        self._sim_origin += seconds

    def advance_to(self, t: float):
        """Jump forward to the instant ``t`` (no move if it is already past)."""
        self.advance(max(0.0, t - self.now()))
