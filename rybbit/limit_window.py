"""A hit and the window it leaves, in one storage call.

Flask-Limiter takes a hit, then asks the storage again for the window its headers describe:
two round trips to Redis per request. Here one call does both, and the headers come from its
answer, which also makes them exact (the window as this hit left it, not as it was a moment
later after other workers' hits).

- Redis (plain, ``rediss``, sentinel and cluster URIs alike): one Lua script, registered on
  the ``limits`` storage's own client, so its connection options, timeouts and failover are
  the ones configured. It keeps the data layout of ``limits``' own moving window (one list per
  key, newest first, same key names), so both can count the same keys.
- The SQLite storage (rybbit.limit_sqlite): one transaction.
- ``memory://`` (and the in-memory fallback): two calls, both in the process.
- Any other storage or strategy: the strategy's hit, then its window (two calls).
"""

from __future__ import annotations

import time
from typing import Protocol

from limits import RateLimitItem
from limits.storage import RedisStorage, Storage
from limits.strategies import STRATEGIES, MovingWindowRateLimiter, RateLimiter, WindowStats

from .limit_sqlite import SQLiteStorage

MOVING_WINDOW = "moving-window"

# Same arguments and list as limits' acquire_moving_window.lua (so the two mix), then the
# window after the hit, as its moving_window.lua finds it: entries are newest first, so the
# last one still in the window is found by binary search over at most `limit` entries.
_HIT_AND_WINDOW_LUA = """
local key = KEYS[1]
local now = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local expiry = tonumber(ARGV[3])
local amount = tonumber(ARGV[4])
local since = now - expiry
local acquired = 0
if amount <= limit then
    local entry = redis.call('lindex', key, limit - amount)
    if not (entry and tonumber(entry) >= since) then
        local entries = {}
        for i = 1, amount do
            entries[i] = now
        end
        for i = 1, #entries, 5000 do
            redis.call('lpush', key, unpack(entries, i, math.min(i + 4999, #entries)))
        end
        redis.call('ltrim', key, 0, limit - 1)
        redis.call('expire', key, expiry)
        acquired = 1
    end
end
local low, high, last = 0, redis.call('llen', key) - 1, -1
while low <= high do
    local mid = math.floor((low + high) / 2)
    if tonumber(redis.call('lindex', key, mid)) >= since then
        last = mid
        low = mid + 1
    else
        high = mid - 1
    end
end
if last < 0 then
    return {acquired, false, 0}
end
return {acquired, redis.call('lindex', key, last), last + 1}
"""


class WindowCounter(Protocol):
    def hit(
        self, item: RateLimitItem, identifiers: tuple[str, ...], cost: int = 1
    ) -> tuple[bool, WindowStats]:
        """Spend ``cost`` from the limit ``item`` of ``identifiers``: whether it was allowed,
        and the window after it (reset time, remaining)."""
        ...


def _stats(item: RateLimitItem, start: float, count: int) -> WindowStats:
    return WindowStats(start + item.get_expiry(), max(0, item.amount - count))


class _RedisMovingWindow:
    def __init__(self, storage: RedisStorage) -> None:
        self.prefixed_key = storage.prefixed_key
        self.script = storage.get_connection().register_script(_HIT_AND_WINDOW_LUA)

    def hit(
        self, item: RateLimitItem, identifiers: tuple[str, ...], cost: int = 1
    ) -> tuple[bool, WindowStats]:
        now = time.time()
        acquired, start, count = self.script(
            [self.prefixed_key(item.key_for(*identifiers))],
            [now, item.amount, item.get_expiry(), cost],
        )
        return bool(acquired), _stats(item, float(start) if start else now, int(count))


class _SQLiteMovingWindow:
    def __init__(self, storage: SQLiteStorage) -> None:
        self.storage = storage

    def hit(
        self, item: RateLimitItem, identifiers: tuple[str, ...], cost: int = 1
    ) -> tuple[bool, WindowStats]:
        acquired, start, count = self.storage.acquire_with_window(
            item.key_for(*identifiers), item.amount, item.get_expiry(), cost
        )
        return acquired, _stats(item, start, count)


class _TwoCalls:
    """The strategy's own hit, then its window: for storages without a combined call."""

    def __init__(self, strategy: RateLimiter) -> None:
        self.strategy = strategy

    def hit(
        self, item: RateLimitItem, identifiers: tuple[str, ...], cost: int = 1
    ) -> tuple[bool, WindowStats]:
        acquired = self.strategy.hit(item, *identifiers, cost=cost)
        return acquired, self.strategy.get_window_stats(item, *identifiers)


def counter_for(storage: Storage, strategy: str) -> WindowCounter:
    """The cheapest exact counter for ``storage`` under ``strategy`` (a Flask-Limiter name)."""
    if strategy == MOVING_WINDOW:
        if isinstance(storage, RedisStorage):  # sentinel and cluster storages subclass it
            return _RedisMovingWindow(storage)
        if isinstance(storage, SQLiteStorage):
            return _SQLiteMovingWindow(storage)
        return _TwoCalls(MovingWindowRateLimiter(storage))
    return _TwoCalls(STRATEGIES[strategy](storage))
