"""IB's pacing rules and subscription limits, as the simulated gateway enforces them.

Subscription limits: a login with the default 100 market data lines may hold 3
market depth subscriptions (error 309 beyond) and 3 tick-by-tick ones (error
10190), across all its API clients.

Two pacing rules matter to API users:
- Message rate: at most 50 messages per second from one client; TWS answers a
  violation with error 100 and disconnects a client that keeps violating.
- Historical data (error 162): no identical request within 15 seconds; and, for
  bars of 30 seconds or less, at most 6 requests for the same contract and
  data type within 2 seconds and at most 60 requests within 10 minutes. A
  real-time bars subscription counts as a request for 5-second bars (its
  violations are error 420).
"""

from collections import deque

MAX_DEPTH_SUBSCRIPTIONS = 3
MAX_TICK_BY_TICK_SUBSCRIPTIONS = 3

MAX_MESSAGES_PER_SECOND = 50
VIOLATIONS_BEFORE_DISCONNECT = 3

IDENTICAL_WINDOW = 15.0
SAME_CONTRACT_WINDOW, SAME_CONTRACT_MAX = 2.0, 6
SMALL_BAR_WINDOW, SMALL_BAR_MAX = 600.0, 60
SMALL_BAR_SECONDS = 30


class MessageRate:
    """A token bucket per client: 50 messages of burst, refilled at 50 per second.

    A bucket rather than a strict sliding window, because a client that paces
    itself correctly (ib_insync sends at most 45 per second, in bursts) must
    never be flagged because its bursts arrived a few milliseconds closer
    together than they were sent.
    """

    def __init__(self, limit: int = MAX_MESSAGES_PER_SECOND):
        self.limit = limit
        self.tokens = float(limit)
        self.last = None
        self.violations = 0
        self.excess = 0  # messages over the limit in the current burst
        self._reported_until = 0.0

    def arrived(self, now: float) -> int | None:
        """Record a message; on a violation return how many messages came over the
        limit (at most once per second of violation), else None."""
        if self.last is not None:
            self.tokens = min(self.limit, self.tokens + (now - self.last) * self.limit)
        self.last = now
        if self.tokens >= 1:
            self.tokens -= 1
            self.excess = 0
            return None
        self.excess += 1
        if now < self._reported_until:
            return None
        self.violations += 1
        self._reported_until = now + 1.0
        return self.limit + self.excess

    @property
    def must_disconnect(self) -> bool:
        return self.violations >= VIOLATIONS_BEFORE_DISCONNECT


class HistoricalPacing:
    """Remembers recent historical data requests of the whole gateway."""

    def __init__(self):
        self.requests: deque[tuple[float, tuple, tuple, bool]] = deque()

    def check(self, now: float, request: tuple, contract_key: tuple, bar_seconds: float) -> str | None:
        """Return why the request breaks pacing, or None and record it."""
        while self.requests and now - self.requests[0][0] > SMALL_BAR_WINDOW:
            self.requests.popleft()
        small = bar_seconds <= SMALL_BAR_SECONDS
        if any(r == request and now - t < IDENTICAL_WINDOW for t, r, _, _ in self.requests):
            return "identical historical data request within 15 seconds"
        if small:
            same = sum(1 for t, _, c, s in self.requests if s and c == contract_key and now - t < SAME_CONTRACT_WINDOW)
            if same >= SAME_CONTRACT_MAX:
                return "six or more requests for the same contract within two seconds"
            if sum(1 for _, _, _, s in self.requests if s) >= SMALL_BAR_MAX:
                return "more than 60 requests for bars of 30 seconds or less within ten minutes"
        self.requests.append((now, request, contract_key, small))
        return None
