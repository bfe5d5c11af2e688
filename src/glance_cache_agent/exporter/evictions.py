"""Which images prune evicted recently: the memory behind eviction churn.

An image that prune evicts, that glance-api then caches again (someone asked
for it) and that prune evicts once more within a day is the signature of a
cache too small for its working set: every such round trip re-downloads the
image from the backend. The agent counts those re-evictions
(``glance_cache_reevicted_images_total``) so an alert can tell churn from
ordinary turnover, which ``pruned_images_total`` alone cannot.

The memory lives in the daemon only (a restart forgets it) and is bounded:
at most ``capacity`` ids, the oldest evictions dropping out first.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable

#: how long an eviction is remembered: a re-eviction within it counts as churn
CHURN_WINDOW = 24 * 3600.0
#: ids remembered at most (about 100 bytes each)
CAPACITY = 10_000


class EvictionMemory:
    """Recent evictions by image id; not thread-safe (the caller holds a lock)."""

    def __init__(self, window: float = CHURN_WINDOW, capacity: int = CAPACITY) -> None:
        self.window = window
        self.capacity = capacity
        #: image id -> when it was last evicted, oldest first
        self._evicted: OrderedDict[str, float] = OrderedDict()

    def evicted(self, image_ids: Iterable[str], now: float) -> int:
        """Remember these evictions at ``now``; return how many are re-evictions.

        A re-eviction is an image evicted before, less than ``window`` ago.
        """
        self._forget_before(now - self.window)
        again = 0
        for image_id in image_ids:
            if self._evicted.pop(image_id, None) is not None:
                again += 1
            self._evicted[image_id] = now
        while len(self._evicted) > self.capacity:
            self._evicted.popitem(last=False)
        return again

    def _forget_before(self, cutoff: float) -> None:
        """Drop evictions older than ``cutoff`` (kept in eviction order)."""
        while self._evicted:
            oldest = next(iter(self._evicted.values()))
            if oldest >= cutoff:
                return
            self._evicted.popitem(last=False)

    def __len__(self) -> int:
        return len(self._evicted)


__all__ = ["CAPACITY", "CHURN_WINDOW", "EvictionMemory"]
