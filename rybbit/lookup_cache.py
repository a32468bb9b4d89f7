"""Per-process caches of the site and key documents the tracking path reads on every event.

Without them each event costs two store round trips before any work is done. The price is
bounded staleness: a revoked key, a deleted site or changed site settings take effect on every
worker within ``AUTH_CACHE_SECONDS`` (0 turns caching off). A key's expiry needs no refresh: it
is judged against the clock on each use. Misses (unknown site, unknown key) are not served from
the cache while the store answers, so a site or key created a moment ago works at once.

**While the store is unreachable** (a read raises StoreUnavailable) the last answer the store
gave, a document or "no such document", is served for up to ``AUTH_CACHE_STALE_SECONDS`` past
its ``AUTH_CACHE_SECONDS`` (0: never), so that events keep being accepted into the spool
through a MongoDB outage instead of getting 503s once the cached documents expire. The trade:
a key revoked or a site deleted by another worker during the outage keeps working in this one
until the store answers again. After a failed read the store is not asked again for
``PROBE_SECONDS``: requests meanwhile get the last answer at once (or, if there is none, a 503
at once) rather than each waiting out MongoDB's timeout; the first request after that asks
again. Likewise, when a document expires, one thread reads it again and the others needing
it wait for that answer; if it takes longer than ``PATIENCE_SECONDS`` (a store slow or
frozen), they go on with the document it replaces (stale answers allowed) rather than every
request waiting on the same read.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from typing import Any

from cachetools import LRUCache
from flask import Flask, current_app

from .store_errors import StoreUnavailable

EXTENSION_KEY = "rybbit.lookup_cache"
PROBE_SECONDS = 1.0
# How long a request waits for another thread's read of the same document before it takes the
# document that read replaces (stale answers allowed): far above a healthy store's answer.
PATIENCE_SECONDS = 0.25


class _Flight:
    """A read in progress; the threads that need the same document wait for its answer."""

    __slots__ = ("done", "found", "failed", "unreachable")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.found: Any = None
        self.failed = False
        self.unreachable = False  # failed because the store is unreachable (StoreUnavailable)


class LookupCache:
    """Documents by key, fresh for ``seconds``; the last answer for ``stale_seconds`` more
    while the store is unreachable (see the module docstring)."""

    def __init__(
        self,
        seconds: float,
        stale_seconds: float = 0.0,
        max_entries: int = 100_000,
        max_misses: int = 10_000,
        probe_seconds: float = PROBE_SECONDS,
        patience: float = PATIENCE_SECONDS,
    ) -> None:
        self.seconds = seconds
        self.stale_seconds = stale_seconds
        self.probe_seconds = probe_seconds
        self.patience = patience
        keep = seconds > 0 or stale_seconds > 0
        # key -> (document, monotonic time it was read). Misses apart, and fewer: a flood of
        # unknown keys must not push the known documents out.
        self._found: LRUCache[Hashable, tuple[Any, float]] | None = (
            LRUCache(max_entries) if keep else None
        )
        self._missing: LRUCache[Hashable, float] | None = (
            LRUCache(max_misses) if stale_seconds > 0 else None
        )
        self._down_until = 0.0  # no read before this (monotonic) after a failed one
        self._flights: dict[Hashable, _Flight] = {}  # reads in progress, by key
        self._lock = threading.Lock()  # LRUCache is not thread-safe

    def get(self, key: Hashable, load: Callable[[], Any]) -> Any:
        if self._found is None:
            return load()
        now = time.monotonic()
        mine: _Flight | None = None
        with self._lock:
            entry = self._found.get(key)
            if entry is not None and now - entry[1] < self.seconds:
                return entry[0]
            if now < self._down_until:  # the store failed a moment ago: do not wait on it
                return self._last_answer(key, now, None)
            flight = self._flights.get(key)
            if flight is None:
                mine = self._flights[key] = _Flight()
                if self._down_until:
                    self._down_until = now + self.probe_seconds  # this one probes
        if (
            mine is None
            and flight is not None
            and entry is not None
            and now - entry[1] < self.seconds + self.stale_seconds
        ):
            # Another thread is reading it again: its answer, unless the store is slow to
            # give it; then the document it replaces (rather than every request waiting on
            # the same read, or on a store that stopped answering).
            if not flight.done.wait(self.patience):
                return entry[0]
            if not flight.failed:
                return flight.found
            if flight.unreachable:
                with self._lock:
                    return self._last_answer(key, now, None)
            # The read failed otherwise (not an outage): no stale answer, a read of its own.
        try:
            found = load()  # outside the lock: a store round trip must not block other threads
        except StoreUnavailable as exc:
            with self._lock:
                self._land(key, mine, None, failed=True, unreachable=True)
                self._down_until = time.monotonic() + self.probe_seconds
                return self._last_answer(key, now, exc)
        except BaseException:
            with self._lock:
                self._land(key, mine, None, failed=True)
            raise
        with self._lock:
            self._down_until = 0.0
            if found is not None:
                self._found[key] = (found, now)
                if self._missing is not None:
                    self._missing.pop(key, None)
            else:
                self._found.pop(key, None)
                if self._missing is not None:
                    self._missing[key] = now
            self._land(key, mine, found, failed=False)
        return found

    def _land(
        self,
        key: Hashable,
        flight: _Flight | None,
        found: Any,
        failed: bool,
        unreachable: bool = False,
    ) -> None:
        """Hand a finished read to the threads waiting on it (lock held)."""
        if flight is None:
            return
        if self._flights.get(key) is flight:
            del self._flights[key]
        flight.found, flight.failed, flight.unreachable = found, failed, unreachable
        flight.done.set()

    def _last_answer(self, key: Hashable, now: float, error: StoreUnavailable | None) -> Any:
        """The last answer the store gave for ``key`` if it is recent enough (lock held);
        else StoreUnavailable."""
        assert self._found is not None
        entry = self._found.get(key)
        if entry is not None and now - entry[1] < self.seconds + self.stale_seconds:
            return entry[0]
        missing_since = self._missing.get(key) if self._missing is not None else None
        if missing_since is not None and now - missing_since < self.seconds + self.stale_seconds:
            return None
        if error is not None:
            raise error
        raise StoreUnavailable("store unreachable a moment ago")

    def clear(self) -> None:
        with self._lock:
            if self._found is not None:
                self._found.clear()
            if self._missing is not None:
                self._missing.clear()


def lookup_cache(app: Flask | None = None) -> LookupCache:
    app = app or current_app._get_current_object()  # type: ignore[attr-defined]
    return app.extensions[EXTENSION_KEY]  # type: ignore[no-any-return]


def init_app(app: Flask) -> None:
    app.extensions[EXTENSION_KEY] = LookupCache(
        float(app.config["AUTH_CACHE_SECONDS"]), float(app.config["AUTH_CACHE_STALE_SECONDS"])
    )
