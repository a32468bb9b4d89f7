"""Per-API-key rate limiting with Flask-Limiter, exact across workers and machines.

The moving-window strategy counts every hit in the last window, atomically in the shared
storage (a Lua script in Redis), so "20 per second" admits exactly 20 requests in any one-second
span, whatever the number of workers. A fixed window would admit up to twice that across a
window boundary.

If the limiter's storage cannot be reached, no request is refused for it: for analytics
ingestion, losing events is worse than briefly exceeding a limit. Flask-Limiter's in-memory
fallback then counts in each process (a key may get up to workers x its limit) and probes the
storage with backoff until it answers again, so an outage costs one timeout and one warning,
not one per request. Redis calls are bounded by RATE_LIMIT_STORAGE_TIMEOUT_MS.
"""

from __future__ import annotations

import logging
import time

from flask import Flask, Response, current_app, g
from flask_limiter import RateLimitExceeded
from limits import parse

from . import metrics
from .errors import error_response
from .extensions import limiter

log = logging.getLogger(__name__)

OFF = "off"
# One budget per API key, shared by /api/track, /track and each event of a batch.
LIMIT_SCOPE = "track"


def current_limit() -> str:
    """The configured per-key limit, for the decorator (read per request)."""
    text = str(current_app.config["RATE_LIMIT"])
    return "1000000 per second" if text.strip().lower() == OFF else text  # exempt, see below


def key_limit_off() -> bool:
    """RATE_LIMIT is "off" (the limiter may still run for KEYLESS_RATE_LIMIT)."""
    return str(current_app.config["RATE_LIMIT"]).strip().lower() == OFF


def keyless_request() -> bool:
    """The request was authenticated without a key (a browser's): it is limited per IP."""
    return g.get("api_key", False) is None


def spend(key_id: str, site_id: str) -> bool:
    """Take one request from the budget of ``key_id``, a key of ``site_id``, by hand (a batch);
    False when it is spent. Uses the same storage, strategy and counter as the decorated routes."""
    if not current_app.config["RATELIMIT_ENABLED"] or key_limit_off():
        return True
    limit = parse(current_limit())
    _Fallback.probe()
    try:
        allowed = bool(limiter.limiter.hit(limit, key_id, LIMIT_SCOPE))
    except Exception as exc:
        _storage_failed(exc)
        if not current_app.config["RATELIMIT_IN_MEMORY_FALLBACK_ENABLED"]:
            return True
        _Fallback.start()
        allowed = bool(limiter.limiter.hit(limit, key_id, LIMIT_SCOPE))  # now in memory
    if not allowed:
        metrics.rate_limited(site_id)
    return allowed


class _Fallback:
    """Flask-Limiter's in-memory fallback, driven from the batch path as its own decorated
    routes drive it: a batch that finds the storage down switches the process to counting in
    memory, and while it does, batches too probe the storage (with Flask-Limiter's backoff)
    and switch back once it answers. Without this, batch-only traffic would wait out a Redis
    timeout per key in every batch of an outage. Flask-Limiter exposes no API for it, so its
    internals are touched here and nowhere else; tests/test_rate_limit.py covers both ways."""

    @staticmethod
    def start() -> None:
        limiter._storage_dead = True

    @staticmethod
    def probe() -> None:
        if not limiter._storage_dead or not limiter._Limiter__should_check_backend():  # type: ignore[attr-defined]
            return
        try:
            up = limiter.storage.check()
        except Exception:  # noqa: BLE001 - still down, whatever the error
            up = False
        if up:
            log.info("rate limit storage recovered")
            limiter._storage_dead = False
            limiter._Limiter__check_backend_count = 0  # type: ignore[attr-defined]

    @staticmethod
    def reset() -> None:
        """The limiter object is shared by every app in the process (tests, CLI): a new app
        starts with its storage presumed up and the probing backoff from the start."""
        limiter._storage_dead = False
        limiter._Limiter__check_backend_count = 0  # type: ignore[attr-defined]
        limiter._Limiter__last_check_backend = time.time()  # type: ignore[attr-defined]


_FAILURE_LOG_SECONDS = 60.0
_failures = {"next_log": 0.0, "unlogged": 0}


def _storage_failed(exc: Exception) -> None:
    """Log a failed limiter call, at most once a minute per process: during an outage every
    batch would otherwise add a traceback to the logs."""
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


def _bounded_redis_calls(app: Flask, scheme: str) -> None:
    """Give Redis storages socket timeouts (redis-py's default is to wait forever)."""
    if not scheme.startswith("redis"):  # redis, rediss, redis+sentinel, redis+cluster
        return
    seconds = int(app.config["RATE_LIMIT_STORAGE_TIMEOUT_MS"]) / 1000
    options = dict(app.config.get("RATELIMIT_STORAGE_OPTIONS") or {})
    options.setdefault("socket_timeout", seconds)
    options.setdefault("socket_connect_timeout", seconds)
    app.config["RATELIMIT_STORAGE_OPTIONS"] = options


def limit_message() -> str:
    if keyless_request():
        limit = str(current_app.config["KEYLESS_RATE_LIMIT"])
        return f"Rate limit exceeded. Maximum {describe(limit)} per IP address."
    return f"Rate limit exceeded. Maximum {describe(current_limit())} per API key."


def describe(limit_text: str) -> str:
    """ "20 per second" -> "20 requests per second"; "100/10 seconds" -> "... per 10 seconds"."""
    item = parse(limit_text)
    unit = item.GRANULARITY.name
    span = unit if item.multiples == 1 else f"{item.multiples} {unit}s"
    return f"{item.amount} requests per {span}"


def _rate_limited(exc: RateLimitExceeded) -> Response:
    site = g.get("site")  # the decorated routes authenticate first
    metrics.rate_limited(site["_id"] if site else "")
    return error_response(429, limit_message())


def _standard_headers(response: Response) -> Response:
    """The IETF ``RateLimit-*`` fields beside Flask-Limiter's ``X-RateLimit-*`` ones."""
    current = limiter.current_limit
    if response.status_code < 300:
        response.headers.pop("Retry-After", None)  # Flask-Limiter sets it on every response
    if current is not None:
        response.headers["RateLimit-Limit"] = str(current.limit.amount)
        response.headers["RateLimit-Remaining"] = str(current.remaining)
        response.headers["RateLimit-Reset"] = str(max(0, int(current.reset_at - time.time())))
    return response


def init_app(app: Flask) -> None:
    text = str(app.config["RATE_LIMIT"]).strip()
    keyless = str(app.config["KEYLESS_RATE_LIMIT"]).strip()
    # Always explicit: Flask-Limiter otherwise falls back to what the shared limiter object
    # was last told, by whichever app was set up before this one in the process.
    app.config["RATELIMIT_ENABLED"] = not (text.lower() == OFF and keyless.lower() == OFF)
    if not app.config["RATELIMIT_ENABLED"]:
        log.info("rate limit: off")
    else:
        for limit in (text, keyless):
            if limit.lower() != OFF:
                parse(limit)  # a malformed setting fails start-up, not every request
        scheme = str(app.config["RATELIMIT_STORAGE_URI"]).split("://", 1)[0]  # no credentials
        log.info(
            "rate limit: %s per API key, %s per IP for keyless requests, state in %s storage",
            text,
            keyless,
            scheme,
        )
        _bounded_redis_calls(app, scheme)
    # Flask runs after_request hooks in reverse order of registration: registered before the
    # limiter's own, this one runs after it and sees the headers it wrote.
    app.after_request(_standard_headers)
    limiter.init_app(app)
    _Fallback.reset()
    app.register_error_handler(RateLimitExceeded, _rate_limited)
