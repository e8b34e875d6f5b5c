"""IB's pacing rules and subscription limits, as the simulated gateway enforces them.

Subscription limits: a login with the default 100 market data lines may hold 3
market depth subscriptions (error 309 beyond) and 3 tick-by-tick ones (error
10190), across all its API clients.

Two pacing rules matter to API users:
- Message rate: at most 50 messages per second from one client; TWS answers a
  violation with error 100 and disconnects a client that keeps violating.
- Historical data, for bars of 30 seconds or less (error 162, "Historical data
  request pacing violation"): no identical request within 15 seconds, fewer
  than six requests for the same contract and data type within 2 seconds, at
  most 60 requests within any ten minutes. IB lifted these limits for bars of
  1 minute and more. A real-time bars subscription counts as a request for
  5-second bars (its violations are error 420).
  Source: https://interactivebrokers.github.io/tws-api/historical_limitations.html
  ("Pacing Violations for Small Bars (30 secs or less)", and its note 1).

The same page limits a client to 50 simultaneous open historical data requests
(TWS: error 322, "Only 50 simultaneous API historical data requests allowed", as
quoted in ib_insync issues 241 and 293), and says that IB, though it lifted the
hard limits for larger bars, "soft" throttles them to balance its load: the
simulated gateway computes bars one request at a time, taking clients in turn
(see ``Session.send_bars``), so a client asking for years of bars waits for
them rather than starving every other client.
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
MAX_OPEN_HISTORICAL = 50  # simultaneous historical data requests of one client


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
        self.requests: deque[tuple[float, tuple, tuple]] = deque()  # (when, request, contract key)

    def check(self, now: float, request: tuple, contract_key: tuple, bar_seconds: float) -> str | None:
        """Return why the request breaks pacing, or None and record it. Only requests for
        bars of 30 seconds or less are paced (and remembered)."""
        if bar_seconds > SMALL_BAR_SECONDS:
            return None
        while self.requests and now - self.requests[0][0] > SMALL_BAR_WINDOW:
            self.requests.popleft()
        if any(r == request and now - t < IDENTICAL_WINDOW for t, r, _ in self.requests):
            return "identical historical data request within 15 seconds"
        same = sum(1 for t, _, c in self.requests if c == contract_key and now - t < SAME_CONTRACT_WINDOW)
        if same + 1 >= SAME_CONTRACT_MAX:
            return "six or more requests for the same contract and data type within two seconds"
        if len(self.requests) >= SMALL_BAR_MAX:
            return "more than 60 requests for bars of 30 seconds or less within ten minutes"
        self.requests.append((now, request, contract_key))
        return None
