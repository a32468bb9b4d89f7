"""Per-process caches of the site and key documents the tracking path reads on every event.

Without them each event costs two store round trips before any work is done. The price is
bounded staleness: a revoked key, a deleted site or changed site settings take effect on every
worker within ``AUTH_CACHE_SECONDS`` (0 turns caching off). A key's expiry needs no refresh: it
is judged against the clock on each use. Misses (unknown site, unknown key) are not cached, so
a site or key created a moment ago works at once.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from typing import Any

from cachetools import TTLCache
from flask import Flask, current_app

EXTENSION_KEY = "rybbit.lookup_cache"


class LookupCache:
    """Documents by key for ``seconds``; None results are looked up again every time."""

    def __init__(self, seconds: float, max_entries: int = 100_000) -> None:
        self.seconds = seconds
        self._cache: TTLCache[Hashable, Any] | None = (
            TTLCache(maxsize=max_entries, ttl=seconds) if seconds > 0 else None
        )
        self._lock = threading.Lock()  # TTLCache is not thread-safe

    def get(self, key: Hashable, load: Callable[[], Any]) -> Any:
        if self._cache is None:
            return load()
        with self._lock:
            found = self._cache.get(key)
        if found is not None:
            return found
        found = load()  # outside the lock: a store round trip must not block other threads
        if found is not None:
            with self._lock:
                self._cache[key] = found
        return found

    def clear(self) -> None:
        if self._cache is not None:
            with self._lock:
                self._cache.clear()


def lookup_cache(app: Flask | None = None) -> LookupCache:
    app = app or current_app._get_current_object()  # type: ignore[attr-defined]
    return app.extensions[EXTENSION_KEY]  # type: ignore[no-any-return]


def init_app(app: Flask) -> None:
    app.extensions[EXTENSION_KEY] = LookupCache(float(app.config["AUTH_CACHE_SECONDS"]))
