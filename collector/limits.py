"""Per-key rate limits: a token bucket per client, in events per second.

A request costs one token per event; a client may burst up to the bucket size and then
sends at the refill rate. Buckets live in the worker process's memory, so with
``--workers N`` a client gets up to N times the configured rate (each worker has its own
bucket); a limit shared across processes would need shared state (Redis), which this
platform does not run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class TokenBucket:
    """``rate`` tokens per second, at most ``capacity``; starts full."""

    rate: float
    capacity: float
    tokens: float
    updated_at: float

    @classmethod
    def full(cls, rate: float, capacity: float, now: float) -> TokenBucket:
        return cls(rate, capacity, capacity, now)

    def _refill(self, now: float) -> None:
        if now > self.updated_at:
            self.tokens = min(self.capacity, self.tokens + (now - self.updated_at) * self.rate)
            self.updated_at = now

    def take(self, count: float, now: float) -> float:
        """Take ``count`` tokens and return 0, or take none and return the seconds until
        ``count`` tokens will be there (infinite if more than the bucket holds)."""
        self._refill(now)
        if count <= self.tokens:
            self.tokens -= count
            return 0.0
        if count > self.capacity:
            return math.inf
        return (count - self.tokens) / self.rate


class RateLimiter:
    """One token bucket per client name."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate, self.burst = rate, burst
        self._buckets: dict[str, TokenBucket] = {}

    def take(self, client: str, count: float, now: float) -> float:
        """0 if ``client`` may send ``count`` events now, else seconds to wait."""
        bucket = self._buckets.get(client)
        if bucket is None:
            bucket = self._buckets[client] = TokenBucket.full(self.rate, self.burst, now)
        return bucket.take(count, now)


def retry_after(wait_s: float) -> str:
    """A Retry-After header value: whole seconds, at least 1."""
    return str(max(1, math.ceil(wait_s)))
