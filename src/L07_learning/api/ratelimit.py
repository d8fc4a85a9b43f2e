"""Per-key token buckets for event ingestion (contract §7.4: producers are rate-limited, spec T-DOS-002).

The buckets live in the serving process. With several ``l07 serve`` workers each enforces its own share; that is
enough to stop one runaway producer from flooding the database, which is the point of the limit.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from .errors import RateLimited


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """Token bucket per key: ``rate`` tokens per second, at most ``burst`` saved up.

    Args:
        rate: Sustained events per second per key.
        burst: Bucket size: events a key may send at once.
        clock: Monotonic clock (tests pass a fake one).
    """

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = float(rate)
        self.burst = float(burst)
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}

    def acquire(self, key: str, cost: int = 1) -> None:
        """Take ``cost`` tokens from ``key``'s bucket, or raise without taking any.

        Raises:
            RateLimited: with the seconds until ``cost`` tokens will be there.
        """
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(tokens=self.burst, updated=now)
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated) * self.rate)
        bucket.updated = now
        if cost > bucket.tokens:
            raise RateLimited(key, retry_after_s=(cost - bucket.tokens) / self.rate, limit_per_s=self.rate)
        bucket.tokens -= cost
