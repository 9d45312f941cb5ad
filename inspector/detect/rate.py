"""Per-source connection-rate limits in a sliding window.

Each key (source address or IPv6 prefix, plus the protected port) keeps the
times of its last ``limit`` new connections in a bounded LRU cache; entries
older than the window are pruned when the key is next seen, so the window
is exact and the memory is capped by the cache's capacity whatever the
number of sources.

The cache is an ``OrderedDict`` used as an LRU (``move_to_end`` on every hit, the least
recently seen key evicted past the capacity): its operations run in C, which matters when
every packet of a flood is a new key (``cachetools.LRUCache`` cost about 4 µs per new key
here, the ``OrderedDict`` under 1).
"""

from __future__ import annotations

from collections import OrderedDict


class RateLimiter:
    """``hit()`` says whether a new connection exceeds ``limit`` in ``window`` s."""

    __slots__ = ("limit", "window", "capacity", "_cache")

    def __init__(self, limit: int, window: float, capacity: int) -> None:
        self.limit = limit
        self.window = window
        self.capacity = max(1, capacity)
        self._cache: OrderedDict[bytes, tuple[float, ...]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._cache)

    def hit(self, key: bytes, now: float) -> int:
        """Record a connection at ``now``; return how many fall in the window
        (this one included) when that is more than the limit, else 0."""
        cache = self._cache
        prev = cache.get(key)
        limit = self.limit
        if prev is None:
            cache[key] = (now,)
            if len(cache) > self.capacity:
                cache.popitem(last=False)  # the least recently seen source
            return 0 if limit >= 1 else 1
        cache.move_to_end(key)
        horizon = now - self.window
        i = 0
        n = len(prev)
        while i < n and prev[i] <= horizon:
            i += 1
        recent = prev[i:] + (now,)
        count = len(recent)
        cache[key] = recent[-limit:] if limit else ()
        return count if count > limit else 0
