"""The ingest rate limit (setting ``ingest_rate_limit``): how many requests each client
(an API key, or with authentication off an address) may post to this ingest process
within each window, as a moving window of the `limits` library."""

from __future__ import annotations

import math
import time

from limits import RateLimitItem, parse_many
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

from kappaflow.errors import SettingsError


class RateLimit:
    def __init__(self, rates: str) -> None:
        """``rates``: ``100/second``, or several such separated by ``;``."""
        try:
            self.rates: list[RateLimitItem] = parse_many(rates)
        except ValueError:
            raise SettingsError(f"KAPPAFLOW_INGEST_RATE_LIMIT: {rates!r} is not a rate such "
                                "as 100/second, or several separated by ;") from None  # fmt: skip
        self.limiter = MovingWindowRateLimiter(MemoryStorage())

    def wait_s(self, client: str) -> int | None:
        """None if ``client`` may post now (then counted against every rate); else the
        whole seconds until every rate it is over lets one more through (a refusal
        counts against none)."""
        over = [rate for rate in self.rates if not self.limiter.test(rate, client)]
        if not over:
            for rate in self.rates:
                self.limiter.hit(rate, client)
            return None
        reset_at = max(self.limiter.get_window_stats(rate, client)[0] for rate in over)
        return max(1, math.ceil(reset_at - time.time()))

    def __str__(self) -> str:
        return "; ".join(str(rate) for rate in self.rates)
