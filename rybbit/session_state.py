"""Where the sessions enricher keeps visitors' state: in Redis, or in the store.

In the store (collection ``sessions``, plugins/sessions.py) a shipment costs a few queries
by ``_id``: cheap on MongoDB, but FerretDB (SQLite back end) scans the whole collection for
every one of them, so with tens of thousands of live sessions they cost more than the events'
own insert (issue #16). In Redis a shipment costs one round trip, whatever the store: one Lua
script (EVALSHA) resolves every visitor of the batch atomically, so workers and machines
sharing the Redis agree on one session per visitor as they do through the store's
conditional writes. Ended sessions expire by themselves (a TTL on each key).

Which one (``SESSIONS_STORAGE_URI``):

- ``"store"``: the store, whatever else is configured;
- a Redis URI (``redis://``, ``rediss://``, ``redis+unix://``, ``redis+sentinel://``, as
  the rate limiter reads them): Redis;
- unset (the default): Redis when events go to MongoDB (``MONGO_URI``) and the rate limiter
  already uses Redis (``RATELIMIT_STORAGE_URI``, with its ``RATELIMIT_STORAGE_OPTIONS``);
  the store otherwise. The embedded store keeps its own sessions: there events are shipped
  in the small groups of concurrent requests, and for those SQLite's primary-key lookups cost
  less than a Redis round trip (bench/shipping.py --embedded, events shipped with sessions in
  the store against in Redis: groups of 1, 2,580/s against 1,530/s; groups of 10, 5,411
  against 4,014; batches of 500, 24,460 against 23,724), and one machine needs no state
  shared between machines.

Redis Cluster is not supported: one script over keys in many slots is refused by the cluster.

When Redis cannot be reached or does not answer within ``SESSIONS_STORAGE_TIMEOUT_MS``, the
shipment raises StoreUnavailable, as for a store outage: the spool keeps its events and
retries them (nothing is shipped without sessions), and a request waiting for its events to be
stored (embedded store, ``ACK=store``) is answered 503.
"""

from __future__ import annotations

import logging
import os
from datetime import datetime, timedelta
from typing import Any

from flask import Flask
from limits.storage import storage_from_string
from redis import exceptions as redis_errors
from redis.backoff import NoBackoff
from redis.retry import Retry

from .storage.codec import to_ms
from .store_errors import StoreUnavailable

log = logging.getLogger(__name__)

STORE = "store"
KEY_PREFIX = "rybbit:session:"
_REDIS_SCHEMES = ("redis", "rediss", "redis+unix", "redis+sentinel")

# KEYS: the visitors' keys. ARGV: the timeout and the keys' time to live (ms), then for each
# key its first and last event of this shipment (ms) and the id a new session would get.
# A session goes on while its last_seen is within the timeout of the visitor's first event
# here (as the store's path judges it); last_seen only ever rises. Each hash: sid, start, last.
_RESOLVE_LUA = """
local timeout = tonumber(ARGV[1])
local ttl = ARGV[2]
local ids = {}
for i, key in ipairs(KEYS) do
    local at = 3 * i
    local first, last = ARGV[at], ARGV[at + 1]
    local state = redis.pcall('HMGET', key, 'sid', 'last')
    if state.err then  -- not a hash (written by something else): replaced, not fatal
        redis.call('DEL', key)
        state = {false, false}
    end
    local seen = tonumber(state[2])
    if state[1] and seen and seen >= tonumber(first) - timeout then
        ids[i] = state[1]
        if tonumber(last) > seen then
            redis.call('HSET', key, 'last', last)
        end
    else
        ids[i] = ARGV[at + 2]
        redis.call('HSET', key, 'sid', ids[i], 'start', first, 'last', last)
    end
    redis.call('PEXPIRE', key, ttl)
end
return ids
"""


class RedisSessions:
    """Visitors' sessions in Redis: one hash per visitor, ``rybbit:session:<site>:<visitor>``.

    A key lives twice the timeout after its last write: long enough that a visitor's events
    shipped late by one worker's spool (a backlog) still find the session that another
    worker's events started, short enough that Redis holds only recent visitors."""

    def __init__(self, client: Any, timeout: timedelta) -> None:
        self.client = client
        self.script = client.register_script(_RESOLVE_LUA)
        self.timeout_ms = int(timeout.total_seconds() * 1000)
        self.ttl_ms = 2 * self.timeout_ms

    def resolve(self, first: dict[str, datetime], last: dict[str, datetime]) -> dict[str, str]:
        """The session id of each visitor key, given its first and last event of a shipment,
        in one round trip; StoreUnavailable when Redis does not answer."""
        keys = list(first)
        args: list[int | str] = [self.timeout_ms, self.ttl_ms]
        for key, candidate in zip(keys, new_session_ids(len(keys)), strict=True):
            args += [to_ms(first[key]), to_ms(last[key]), candidate]
        try:
            ids = self.script(keys=[KEY_PREFIX + key for key in keys], args=args)
        except (redis_errors.ConnectionError, redis_errors.TimeoutError) as exc:
            log.warning("session state: Redis unavailable (%s)", type(exc).__name__)
            raise StoreUnavailable("session state unavailable") from exc
        except redis_errors.RedisError as exc:
            # Refused (out of memory, a read-only replica after a failover...): retried too,
            # rather than stored without sessions; Redis's message says what to fix.
            log.error("session state: Redis refused the call (%s: %s)", type(exc).__name__, exc)
            raise StoreUnavailable("session state unavailable") from exc
        # bytes, unless the limiter's options (inherited) asked redis-py to decode replies
        return {
            key: sid if isinstance(sid, str) else sid.decode()
            for key, sid in zip(keys, ids, strict=True)
        }


def new_session_ids(count: int) -> list[str]:
    """``count`` ids as ``uuid.uuid4().hex`` makes them (the store's path does), from one
    read of random bytes: a shipment needs a candidate for each visitor, and 500 uuid4()
    objects cost 1.4 ms of CPU, half of the Redis call; this, 0.16 ms."""
    raw = bytearray(os.urandom(16 * count))
    raw[6::16] = bytes((b & 0x0F) | 0x40 for b in raw[6::16])  # version 4
    raw[8::16] = bytes((b & 0x3F) | 0x80 for b in raw[8::16])  # RFC 4122 variant
    text = raw.hex()
    return [text[32 * i : 32 * i + 32] for i in range(count)]


def _scheme(uri: str) -> str:
    return uri.split("://", 1)[0].lower()


def chosen_uri(config: Any) -> tuple[str | None, dict[str, Any]]:
    """The Redis URI (and client options) sessions use, or None for the store."""
    uri = config.get("SESSIONS_STORAGE_URI")
    if uri:
        uri = str(uri)
        if uri.lower() == STORE:
            return None, {}
        if _scheme(uri) not in _REDIS_SCHEMES:
            raise ValueError(
                f"SESSIONS_STORAGE_URI must be {STORE!r} or a Redis URI "
                f"({', '.join(s + '://' for s in _REDIS_SCHEMES)}), not {_scheme(uri)}://..."
            )
        return uri, {}
    limiter = str(config.get("RATELIMIT_STORAGE_URI") or "")
    if config.get("MONGO_URI") and _scheme(limiter) in _REDIS_SCHEMES:
        return limiter, dict(config.get("RATELIMIT_STORAGE_OPTIONS") or {})
    return None, {}


EXTENSION = "rybbit.session_state"


def init_app(app: Flask) -> None:
    """Decide where sessions live and log it; with Redis, keep a client for the sessions
    enricher (``redis_state``). A bad setting fails start-up here: were it to fail when the
    enricher registers, events would be stored without sessions. redis-py connects on first
    use, in each worker; its pool makes new connections after a fork."""
    uri, options = chosen_uri(app.config)
    app.extensions[EXTENSION] = None
    if uri is None:
        log.info("sessions: state in the store")
        return
    seconds = int(app.config["SESSIONS_STORAGE_TIMEOUT_MS"]) / 1000
    options.pop("timeout", None)  # the SQLite limiter storage's option, if any
    options.update(
        socket_timeout=seconds,
        socket_connect_timeout=seconds,
        # redis-py's default retries three times with backoff (seconds per call on a dead
        # server). Once, at once: for a connection the server closed while idle.
        retry=Retry(NoBackoff(), 1),
    )
    app.extensions[EXTENSION] = storage_from_string(uri, **options).get_connection()
    log.info("sessions: state in Redis (%s://)", _scheme(uri))  # no host: it may hold a password


def redis_state(app: Flask, timeout: timedelta) -> RedisSessions | None:
    """Session state in Redis for ``app``'s sessions enricher, or None: in the store."""
    client = app.extensions.get(EXTENSION)
    return None if client is None else RedisSessions(client, timeout)
