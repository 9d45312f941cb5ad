"""Per-source connection-rate limits in a sliding window.

Each key (source address or IPv6 prefix, plus the protected port) keeps the
times of its last ``limit`` new connections in a bounded LRU cache; entries
older than the window are pruned when the key is next seen, so the window
is exact and the memory is capped by the cache's capacity whatever the
number of sources.
"""

from __future__ import annotations

from cachetools import LRUCache


class RateLimiter:
    """``hit()`` says whether a new connection exceeds ``limit`` in ``window`` s."""

    __slots__ = ("limit", "window", "_cache")

    def __init__(self, limit: int, window: float, capacity: int) -> None:
        self.limit = limit
        self.window = window
        self._cache: LRUCache[bytes, tuple[float, ...]] = LRUCache(maxsize=capacity)

    def __len__(self) -> int:
        return len(self._cache)

    def hit(self, key: bytes, now: float) -> int:
        """Record a connection at ``now``; return how many fall in the window
        (this one included) when that is more than the limit, else 0."""
        cache = self._cache
        prev = cache.get(key)
        if prev is None:
            cache[key] = (now,)
            return 0 if self.limit >= 1 else 1
        horizon = now - self.window
        i = 0
        n = len(prev)
        while i < n and prev[i] <= horizon:
            i += 1
        recent = prev[i:] + (now,)
        limit = self.limit
        count = len(recent)
        cache[key] = recent[-limit:] if limit else ()
        return count if count > limit else 0
