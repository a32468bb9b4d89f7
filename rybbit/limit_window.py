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

import os
import time
from typing import Any, Protocol

from limits import RateLimitItem
from limits.storage import RedisStorage, Storage
from limits.strategies import STRATEGIES, MovingWindowRateLimiter, RateLimiter, WindowStats
from redis.connection import Connection
from redis.exceptions import ConnectionError, NoScriptError

from .group_commit import GroupCommit
from .limit_sqlite import SQLiteStorage

# (key, limit, window in seconds, cost)
_Hit = tuple[str, int, int, int]
# Enough for every request a worker holds at once; a call of this many takes ~1 ms in Redis.
_MAX_HITS_A_CALL = 256

MOVING_WINDOW = "moving-window"

# limits' acquire_moving_window.lua (same list per key, same key names, so the two mix), then
# the window after the hit, as its moving_window.lua finds it: entries are newest first, so the
# last one still in the window is found by binary search over at most `limit` entries. One call
# takes the hits of several requests (KEYS[k] with ARGV 3k-1..3k+1: limit, expiry, amount;
# ARGV[1] is the time), in order, so a key hit twice in one call is counted twice.
_HIT_AND_WINDOW_LUA = """
local now = tonumber(ARGV[1])
local answers = {}
for k = 1, #KEYS do
    local key = KEYS[k]
    local limit = tonumber(ARGV[3 * k - 1])
    local expiry = tonumber(ARGV[3 * k])
    local amount = tonumber(ARGV[3 * k + 1])
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
        answers[k] = {acquired, false, 0}
    else
        answers[k] = {acquired, redis.call('lindex', key, last), last + 1}
    end
end
return answers
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


def _bulk(value: bytes) -> bytes:
    return b"$%d\r\n%b\r\n" % (len(value), value)


def _closed_by_server(connection: Connection) -> bool:
    """An idle connection with something to read has been closed by the server (a restart,
    its idle timeout): nothing else is ever sent to an idle one. Found before sending, since
    a call whose answer is lost cannot be sent again."""
    try:
        return bool(connection.can_read(timeout=0))
    except (ConnectionError, OSError):
        return True


class _NotSent(Exception):
    """A call that failed before it reached Redis (its cause says why): safe to send again."""


class _RedisMovingWindow:
    """The script, called on connections of the storage's own client, for the hits of all the
    requests that wait on this process at once.

    A round trip costs a gevent worker far more than the script's work (a send, a switch to
    the hub and back, a receive: ~250 us of CPU a request under load), so concurrent requests
    share one: the first to arrive sends its hit; the hits that arrive meanwhile go together in
    the next call (rybbit.group_commit: no timer, nobody waits for company). Redis runs a
    script atomically and in order, so the counts stay exact across workers and machines.

    redis-py's command path (its pool's checkout and release, retries, event hooks) costs
    ~100 us of CPU a call here, three times the round trip itself (bench/ratelimit.py). So
    calls are packed here, and sent and read through redis-py's public connection API on
    connections this counter keeps aside, made by the client's own pool (``make_connection``:
    same host, TLS, credentials, database, timeouts; a sentinel pool's connections find the
    current master). A connection that fails in any way is dropped, never reused. Cluster
    clients, which have no single pool (and whose keys of one call must share a slot), call
    the script the ordinary way, one hit a call."""

    def __init__(self, storage: RedisStorage) -> None:
        client = storage.get_connection()
        self.prefixed_key = storage.prefixed_key
        self.script = client.register_script(_HIT_AND_WINDOW_LUA)
        self.pool = getattr(client, "connection_pool", None)  # None: a cluster client
        self.evalsha = _bulk(b"EVALSHA") + _bulk(self.script.sha.encode())
        self.idle: list[Connection] = []
        self.pid = os.getpid()
        self.group: GroupCommit[_Hit, Any] = GroupCommit(self._call, _MAX_HITS_A_CALL)

    def hit(
        self, item: RateLimitItem, identifiers: tuple[str, ...], cost: int = 1
    ) -> tuple[bool, WindowStats]:
        key = self.prefixed_key(item.key_for(*identifiers))
        hit = (key, item.amount, item.get_expiry(), cost)
        if self.pool is None:
            now = time.time()
            (reply,) = self.script([key], [now, *hit[1:]])
        else:
            now, reply = self.group.submit((hit,))[0]
        acquired, start, count = reply
        return bool(acquired), _stats(item, float(start) if start else now, int(count))

    def _call(self, hits: list[_Hit]) -> list[tuple[float, Any]]:
        """One script call for ``hits``: (the time it counted them at, its answer), each."""
        now = time.time()
        parts = [b"*%d\r\n" % (4 + 4 * len(hits)), self.evalsha, _bulk(b"%d" % len(hits))]
        parts += [_bulk(key.encode()) for key, *_ in hits]
        parts.append(_bulk(repr(now).encode()))
        for _, amount, expiry, cost in hits:
            parts += (_bulk(b"%d" % amount), _bulk(b"%d" % expiry), _bulk(b"%d" % cost))
        packed = b"".join(parts)
        if self.pid != os.getpid():  # forked: the parent's connections are not ours
            self.idle, self.pid = [], os.getpid()
        while self.idle and _closed_by_server(self.idle[-1]):
            self.idle.pop().disconnect()
        reused = bool(self.idle)
        try:
            replies = self._round_trip(self.idle.pop() if reused else None, packed)
        except _NotSent as exc:
            if not reused:
                raise exc.__cause__ from None  # type: ignore[misc]
            # An idle connection the server closed (restart, idle timeout): one new one. Only
            # when the call was not sent: one that may have run is never sent twice, which
            # would count every hit in it twice.
            try:
                replies = self._round_trip(None, packed)
            except _NotSent as again:
                raise again.__cause__ from None  # type: ignore[misc]
        return [(now, reply) for reply in replies]

    def _round_trip(self, connection: Connection | None, packed: bytes) -> Any:
        connection = connection or self.pool.make_connection()  # type: ignore[union-attr]
        try:
            try:
                try:
                    connection.send_packed_command([packed], check_health=False)
                except ConnectionError as exc:
                    raise _NotSent from exc
                reply = connection.read_response()
            except NoScriptError:  # a restarted or flushed server: load it, once
                self.script.registered_client.script_load(_HIT_AND_WINDOW_LUA)
                connection.send_packed_command([packed], check_health=False)
                reply = connection.read_response()
        except BaseException:
            connection.disconnect()
            raise
        self.idle.append(connection)
        return reply


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
