"""Per-API-key (and, for keyless browser requests, per-IP) rate limiting.

Flask-Limiter is the extension: it reads the ``RATELIMIT_*`` settings, builds the storage from
``RATELIMIT_STORAGE_URI`` (through ``limits``), keeps the in-memory fallback and its backoff,
and still enforces any ``RATELIMIT_DEFAULT``/``RATELIMIT_APPLICATION`` limits an operator
configures. The tracking routes do not go through its per-request machinery, which costs
a few hundred microseconds of CPU a request besides its storage calls, and makes a second
storage call for the headers (bench/ratelimit.py prints both ways). Instead ``limited`` takes
one hit through ``rybbit.limit_window``: one storage call that answers both "allowed?" and the
window the headers describe. Flask-Limiter's app-wide before/after-request hooks, which have
nothing to check when no default or application limits are configured, are then removed.

The moving-window strategy counts every hit in the last window, atomically in the shared
storage, so "20 per second" admits exactly 20 requests in any one-second span, whatever the
number of workers. A fixed window would admit up to twice that across a window boundary.
Storage: ``sqlite://`` by default (a file in the instance folder shared by the workers of the
machine, rybbit.limit_sqlite); ``redis://`` shares the counts between machines.

If the limiter's storage cannot be reached, no request is refused for it: for analytics
ingestion, losing events is worse than briefly exceeding a limit. Each process then counts in
memory (a key may get up to workers x its limit) and probes the storage with Flask-Limiter's
backoff until it answers again, so an outage costs one timeout and one warning, not one per
request. Storage calls are bounded by RATE_LIMIT_STORAGE_TIMEOUT_MS.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from flask import Flask, Response, current_app, g, request
from flask_limiter import RateLimitExceeded
from limits import RateLimitItem, parse

from . import limit_sqlite, metrics
from .errors import error_response
from .extensions import limiter
from .limit_window import WindowCounter, counter_for

log = logging.getLogger(__name__)

OFF = "off"
# One budget per API key, shared by /api/track, /track and each key of a batch.
LIMIT_SCOPE = "track"
# One budget per client IP for keyless requests, shared by track and identify.
KEYLESS_SCOPE = "keyless"
EXTENSION = "rybbit.ratelimit"
_NOTED = "_rybbit_rate_window"  # g attribute: the limit and window the headers describe
SQLITE_FILE = "ratelimit.sqlite"

View = TypeVar("View", bound=Callable[..., Any])


@dataclass
class _Limits:
    """An app's limits, parsed once at start-up; None where a limit is off."""

    per_key: RateLimitItem | None
    keyless: RateLimitItem | None
    per_key_message: str
    keyless_message: str
    counter: WindowCounter | None  # in the configured storage
    fallback: WindowCounter | None  # in memory, while that storage is down
    headers: bool


def _limits() -> _Limits:
    return current_app.extensions[EXTENSION]  # type: ignore[no-any-return]


def keyless_request() -> bool:
    """The request was authenticated without a key (a browser's): it is limited per IP."""
    return g.get("api_key", False) is None


def limited(per_key: bool = True) -> Callable[[View], View]:
    """Decorate a view whose ``before_request`` authenticated the request (``g.api_key``,
    ``g.site``): keyless requests spend their IP's KEYLESS_RATE_LIMIT budget; with
    ``per_key``, keyed ones spend their key's RATE_LIMIT budget (else they are not limited)."""

    def decorate(view: View) -> View:
        @functools.wraps(view)
        def check_then_run(*args: Any, **kwargs: Any) -> Any:
            limits = _limits()
            key = g.api_key
            if key is None:
                item, identifiers = limits.keyless, (request.remote_addr or "", KEYLESS_SCOPE)
            elif per_key:
                item, identifiers = limits.per_key, (str(key["_id"]), LIMIT_SCOPE)
            else:
                item = None
            if item is not None and not _hit(limits, item, identifiers):
                site = g.get("site")
                metrics.rate_limited(site["_id"] if site else "")
                message = limits.keyless_message if key is None else limits.per_key_message
                return error_response(429, message)
            return view(*args, **kwargs)

        return check_then_run  # type: ignore[return-value]

    return decorate


def spend(key_id: str, site_id: str) -> bool:
    """Take one request from the budget of ``key_id``, a key of ``site_id`` (a batch spends
    one per key it uses); False when it is spent. Same storage and counter as ``limited``."""
    limits = _limits()
    if limits.per_key is None:
        return True
    allowed = _hit(limits, limits.per_key, (key_id, LIMIT_SCOPE), note=False)
    if not allowed:
        metrics.rate_limited(site_id)
    return allowed


def limit_message() -> str:
    limits = _limits()
    return limits.keyless_message if keyless_request() else limits.per_key_message


def _hit(
    limits: _Limits, item: RateLimitItem, identifiers: tuple[str, str], note: bool = True
) -> bool:
    """Spend one from ``item``'s budget of ``identifiers``; never refuses for a dead storage.
    With ``note``, the window is kept for the response's headers."""
    counter = limits.counter
    if _Internals.storage_dead() and not _Internals.probe():
        counter = limits.fallback
    try:
        allowed, window = counter.hit(item, identifiers)  # type: ignore[union-attr]
    except Exception as exc:  # noqa: BLE001 - whatever the storage raises, the policy is one
        if counter is limits.fallback or limits.fallback is None:
            _storage_failed(exc)
            return True
        log.warning(
            "Rate limit storage unreachable - falling back to in-memory storage (%s)",
            type(exc).__name__,
        )
        _Internals.start_fallback()
        allowed, window = limits.fallback.hit(item, identifiers)
    if note and limits.headers:
        setattr(g, _NOTED, (item, window))
    return allowed


class _Internals:
    """Flask-Limiter's storage-failure state and request hooks, driven from here: its
    in-memory fallback flag and probing backoff (so a process counting in memory goes back to
    the storage as its own routes would), and the removal of its app-wide hooks. It exposes no
    API for these, so its internals are touched here and nowhere else (tested in
    tests/test_rate_limit.py; written against Flask-Limiter 4.1)."""

    @staticmethod
    def forget_storage_options() -> None:
        """init_app adds RATELIMIT_STORAGE_OPTIONS to those of the apps set up before it in
        this process: a Redis storage would get the SQLite storage's ``timeout`` and fail."""
        limiter._storage_options = {}

    @staticmethod
    def storage_dead() -> bool:
        return bool(limiter._storage_dead)

    @staticmethod
    def start_fallback() -> None:
        limiter._storage_dead = True

    @staticmethod
    def probe() -> bool:
        """Whether the storage is back (asked with Flask-Limiter's backoff: 1 s, 2 s, 4 s...)."""
        if not limiter._Limiter__should_check_backend():  # type: ignore[attr-defined]
            return False
        try:
            up = limiter.storage.check()
        except Exception:  # noqa: BLE001 - still down, whatever the error
            up = False
        if up:
            log.info("Rate limit storage recovered")
            limiter._storage_dead = False
            limiter._Limiter__check_backend_count = 0  # type: ignore[attr-defined]
        return bool(up)

    @staticmethod
    def reset() -> None:
        """The limiter object is shared by every app in the process (tests, CLI): a new app
        starts with its storage presumed up and the probing backoff from the start."""
        limiter._storage_dead = False
        limiter._Limiter__check_backend_count = 0  # type: ignore[attr-defined]
        limiter._Limiter__last_check_backend = time.time()  # type: ignore[attr-defined]

    @staticmethod
    def fallback_storage() -> Any:
        return limiter._fallback_storage if limiter._in_memory_fallback_enabled else None

    @staticmethod
    def has_app_wide_limits(app: Flask) -> bool:
        manager = limiter.limit_manager
        return bool(
            manager._application_limits
            or manager._default_limits
            or limiter._meta_limits
            or limiter._in_memory_fallback  # RATELIMIT_IN_MEMORY_FALLBACK: limits of its own
        )

    @staticmethod
    def drop_request_hooks(app: Flask) -> None:
        """Remove the before/after/teardown hooks Limiter.init_app registered on ``app``."""
        checks = app.before_request_funcs.get(None, [])
        if limiter._check_request_limit in checks:
            checks.remove(limiter._check_request_limit)
        app.after_request_funcs[None] = [
            f
            for f in app.after_request_funcs.get(None, [])
            if not (isinstance(f, functools.partial) and f.args[:1] == (limiter,))
        ]
        release = limiter._Limiter__release_context  # type: ignore[attr-defined]
        teardowns = app.teardown_request_funcs.get(None, [])
        if release in teardowns:
            teardowns.remove(release)


_FAILURE_LOG_SECONDS = 60.0
_failures = {"next_log": 0.0, "unlogged": 0}


def _storage_failed(exc: Exception) -> None:
    """Log a failed limiter call with no fallback to take over, at most once a minute per
    process: during an outage every request would otherwise add a line to the logs."""
    now = time.monotonic()
    if now < _failures["next_log"]:
        _failures["unlogged"] += 1
        return
    log.error(
        "rate limit storage failed (%s: %s; %d more failures since the last report)",
        type(exc).__name__,
        exc,
        _failures["unlogged"],
    )
    _failures["next_log"], _failures["unlogged"] = now + _FAILURE_LOG_SECONDS, 0


def _bounded_storage_calls(app: Flask, scheme: str) -> None:
    """Bound each limiter call by RATE_LIMIT_STORAGE_TIMEOUT_MS: Redis socket timeouts
    (redis-py's default is to wait forever), SQLite's busy timeout (a file another process
    keeps locked). Past it the storage counts as down and the process counts in memory."""
    seconds = int(app.config["RATE_LIMIT_STORAGE_TIMEOUT_MS"]) / 1000
    options = dict(app.config.get("RATELIMIT_STORAGE_OPTIONS") or {})
    if scheme.startswith("redis"):  # redis, rediss, redis+sentinel, redis+cluster
        options.setdefault("socket_timeout", seconds)
        options.setdefault("socket_connect_timeout", seconds)
    elif scheme == limit_sqlite.SCHEME:
        options.setdefault("timeout", seconds)
    else:
        return
    app.config["RATELIMIT_STORAGE_OPTIONS"] = options


def _embedded_storage(app: Flask) -> None:
    """``sqlite://`` alone: the file in the instance folder."""
    uri = str(app.config["RATELIMIT_STORAGE_URI"])
    if uri.split("://", 1)[0] == limit_sqlite.SCHEME and not limit_sqlite.path_of(uri):
        path = os.path.join(app.instance_path, SQLITE_FILE)
        app.config["RATELIMIT_STORAGE_URI"] = f"{limit_sqlite.SCHEME}://{path}"


def describe(limit_text: str) -> str:
    """ "20 per second" -> "20 requests per second"; "100/10 seconds" -> "... per 10 seconds"."""
    item = parse(limit_text)
    unit = item.GRANULARITY.name
    span = unit if item.multiples == 1 else f"{item.multiples} {unit}s"
    return f"{item.amount} requests per {span}"


def _parsed(text: str) -> RateLimitItem | None:
    return None if text.lower() == OFF else parse(text)  # malformed: start-up fails


def _rate_limited(exc: RateLimitExceeded) -> Response:
    """A 429 from Flask-Limiter's own middleware (RATELIMIT_DEFAULT/APPLICATION limits)."""
    site = g.get("site")
    metrics.rate_limited(site["_id"] if site else "")
    return error_response(429, limit_message())


def _headers(response: Response) -> Response:
    """Flask-Limiter's ``X-RateLimit-*`` headers and the IETF ``RateLimit-*`` fields, from the
    window the request's hit left; ``Retry-After`` on a 429."""
    noted = g.pop(_NOTED, None)
    if noted is None:
        return response
    item, window = noted  # RateLimitItem, WindowStats
    now = time.time()
    reset_at = int(window.reset_time + 1)  # as Flask-Limiter rounds it
    amount, remaining = str(item.amount), str(window.remaining)
    headers = response.headers
    headers.add("X-RateLimit-Limit", amount)
    headers.add("X-RateLimit-Remaining", remaining)
    headers.add("X-RateLimit-Reset", str(reset_at))
    headers.add("RateLimit-Limit", amount)
    headers.add("RateLimit-Remaining", remaining)
    headers.add("RateLimit-Reset", str(max(0, int(reset_at - now))))
    if response.status_code == 429:
        headers["Retry-After"] = str(max(0, int(reset_at - now)))
    return response


def init_app(app: Flask) -> None:
    text = str(app.config["RATE_LIMIT"]).strip()
    keyless = str(app.config["KEYLESS_RATE_LIMIT"]).strip()
    per_key, keyless_item = _parsed(text), _parsed(keyless)
    # Always explicit: Flask-Limiter otherwise falls back to what the shared limiter object
    # was last told, by whichever app was set up before this one in the process.
    app.config["RATELIMIT_ENABLED"] = not (per_key is None and keyless_item is None)
    if not app.config["RATELIMIT_ENABLED"]:
        log.info("rate limit: off")
    else:
        _embedded_storage(app)
        scheme = str(app.config["RATELIMIT_STORAGE_URI"]).split("://", 1)[0]  # no credentials
        log.info(
            "rate limit: %s per API key, %s per IP for keyless requests, state in %s storage",
            text,
            keyless,
            scheme,
        )
        _bounded_storage_calls(app, scheme)
    _Internals.forget_storage_options()
    limiter.init_app(app)
    _Internals.reset()
    counter = fallback = None
    if app.config["RATELIMIT_ENABLED"]:
        strategy = str(app.config["RATELIMIT_STRATEGY"])
        counter = counter_for(limiter.storage, strategy)
        memory = _Internals.fallback_storage()
        fallback = counter_for(memory, strategy) if memory is not None else None
        if not _Internals.has_app_wide_limits(app):
            _Internals.drop_request_hooks(app)
    app.extensions[EXTENSION] = _Limits(
        per_key=per_key,
        keyless=keyless_item,
        per_key_message=f"Rate limit exceeded. Maximum {describe(text)} per API key."
        if per_key
        else "",
        keyless_message=f"Rate limit exceeded. Maximum {describe(keyless)} per IP address."
        if keyless_item
        else "",
        counter=counter,
        fallback=fallback,
        headers=bool(app.config["RATELIMIT_HEADERS_ENABLED"]),
    )
    app.after_request(_headers)
    app.register_error_handler(RateLimitExceeded, _rate_limited)
