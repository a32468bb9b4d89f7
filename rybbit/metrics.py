"""Prometheus metrics: every definition, how requests record them, and ``GET /metrics``.

Under gunicorn, prometheus_client runs in multiprocess mode: gunicorn.conf.py points
``PROMETHEUS_MULTIPROC_DIR`` at an empty folder before any worker starts, every worker writes
its values to files there, and a scrape, whichever worker answers it, adds up the files of all
workers, running or gone. Without it (``flask run``, the test client) values live in this
process's default registry, beside the process and GC collectors.

Labels stay bounded: ``site_id`` only once a key authenticated for the site (sites are made by
an admin), event types and reasons from fixed sets, routes as URL rules (never raw paths), HTTP
methods outside the usual ones as ``other``. docs/operations.md describes every metric.

The per-event cost stays small: label children are looked up once and kept, a request's event
outcomes are added up and counted once per distinct label set, and the enrichment runner's
per-enricher timings, which it keeps anyway, are published once a second by each process (and
when the process answers a scrape).
"""

from __future__ import annotations

import functools
import hmac
import logging
import os
import threading
import time
import weakref
from collections import Counter as Tally
from collections.abc import Callable
from typing import Any

from flask import Blueprint, Flask, Response, current_app, g, request
from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    multiprocess,
)
from prometheus_client.exposition import choose_encoder
from werkzeug.datastructures import WWWAuthenticate
from werkzeug.exceptions import Unauthorized

from .plugin_loader import RUNNER_KEY

log = logging.getLogger(__name__)

# prometheus_client chose its storage when it was imported, from this same variable.
MULTIPROCESS = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
# The *_created series exist only outside multiprocess mode; leave them out in both.
disable_created_metrics()

_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

EVENTS = Counter(
    "rybbit_events_total",
    "Events received, by type, site and outcome: accepted (stored and acknowledged), filtered "
    "(left out by the site's settings, answered 200) or rejected (answered with an error), "
    "with the reason.",
    ["type", "site_id", "outcome", "reason"],
)
REQUEST_DURATION = Histogram(
    "rybbit_request_duration_seconds",
    "Time from the start of a request to its response, by method, route and status.",
    ["method", "route", "status"],
    buckets=_SECONDS,
)
RATE_LIMITED = Counter(
    "rybbit_rate_limited_total",
    "Requests refused by an API key's rate limit (a batch counts once per key refused).",
    ["site_id"],
)
ENRICHED_EVENTS = Counter(
    "rybbit_enriched_events_total", "Events that went through the enrichment chain."
)
ENRICHER_SECONDS = Counter(
    "rybbit_enricher_seconds_total",
    "Seconds spent in each enricher, summed over events; divide by "
    "rybbit_enriched_events_total for the time per event.",
    ["enricher"],
)
ENRICHER_FAILURES = Counter(
    "rybbit_enricher_failures_total",
    "Enricher calls that raised; the event was stored without that enricher's fields.",
    ["enricher"],
)
STORE_WRITE_DURATION = Histogram(
    "rybbit_store_write_duration_seconds",
    "Time of one write of events to the store (a request's or a batch's), until it was "
    "acknowledged or failed.",
    buckets=_SECONDS,
)
STORE_WRITE_ERRORS = Counter(
    "rybbit_store_write_errors_total",
    "Event writes that failed, by error: the driver's exception class.",
    ["error"],
)

OUTCOMES = ("accepted", "filtered", "rejected")
# Why an event was filtered out, from the message prepare_event answers with.
FILTER_REASONS = {
    "Event not tracked - IP excluded": "ip_excluded",
    "Event not tracked - bot detected": "bot",
    "Event not tracked - country excluded": "country_excluded",
}
SPOOL_BACKLOG_EVENTS = Gauge(
    "rybbit_spool_backlog_events",
    "Events acknowledged but not yet shipped to MongoDB (ACK=spool), in the spools of live "
    "workers.",
    multiprocess_mode="livesum",
)
SPOOL_BACKLOG_BYTES = Gauge(
    "rybbit_spool_backlog_bytes",
    "Bytes of those events in the spools (each worker's SPOOL_QUOTA_BYTES bounds its own).",
    multiprocess_mode="livesum",
)
SPOOL_OLDEST_SECONDS = Gauge(
    "rybbit_spool_oldest_unshipped_seconds",
    "Age of the oldest unshipped event, in any live worker's spool.",
    multiprocess_mode="livemax",
)
SPOOL_SHIPPED = Counter("rybbit_spool_shipped_total", "Events shipped from the spool to MongoDB.")
SPOOL_REFUSED = Counter(
    "rybbit_spool_refused_total",
    "Events MongoDB refused at shipping time, written to the spool's dead-letter file.",
)
SPOOL_SHIP_ERRORS = Counter(
    "rybbit_spool_ship_errors_total",
    "Shipments that failed (MongoDB unreachable, ...) and were retried.",
)
# Why an event was rejected, from the status it was answered with; anything else is "error".
REJECT_REASONS = {
    400: "invalid",
    403: "invalid_key",
    404: "site_not_found",
    413: "too_large",
    415: "unsupported_encoding",
    429: "rate_limited",
    503: "store_unavailable",
}
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_TRACK_ENDPOINT = "track.track"
_JUDGED = "metrics_events"
# How often each process publishes the enrichment runner's timings (and when it answers a
# scrape): a value per enricher, each a write to a shared file under gunicorn, would cost more
# per request than the enrichers' own timing.
ENRICHMENT_PUBLISH_SECONDS = 1.0
_STARTED = "metrics_started"


class _Children:
    """A labelled metric's children by label values, looked up in prometheus_client once."""

    def __init__(self, metric: Any) -> None:
        self.metric = metric
        self.cache: dict[tuple[str, ...], Any] = {}

    def __call__(self, *values: str) -> Any:
        child = self.cache.get(values)
        if child is None:
            child = self.cache[values] = self.metric.labels(*values)
        return child


_events = _Children(EVENTS)
_request_duration = _Children(REQUEST_DURATION)
_rate_limited = _Children(RATE_LIMITED)
_enricher_seconds = _Children(ENRICHER_SECONDS)
_enricher_failures = _Children(ENRICHER_FAILURES)
_store_errors = _Children(STORE_WRITE_ERRORS)


def event_judged(payload: dict[str, Any], site: dict[str, Any], message: str | None) -> None:
    """Note an authenticated event: accepted (``message`` None) or filtered out by the site's
    settings (``message`` says why). Counted with the response: as rejected if that fails."""
    if message is None:
        outcome, reason = "accepted", "none"
    else:
        outcome, reason = "filtered", FILTER_REASONS.get(message, "other")
    g.setdefault(_JUDGED, []).append((payload["type"], site["_id"], outcome, reason))


def event_refused(payload: dict[str, Any], site: dict[str, Any], status: int = 400) -> None:
    """An event noted as accepted that the store then refused (400) or could not take now
    (503): counted as rejected with that status instead."""
    judged = g.get(_JUDGED, [])
    accepted = (payload["type"], site["_id"], "accepted", "none")
    if accepted in judged:
        judged.remove(accepted)
    event_rejected(payload, site, status)


def event_rejected(
    payload: dict[str, Any] | None, site: dict[str, Any] | None, status: int
) -> None:
    """Note an event answered with ``status``; ``payload`` if it was valid, ``site`` if its key
    authenticated."""
    g.setdefault(_JUDGED, []).append(_rejection(payload, site, status))


def rate_limited(site_id: str) -> None:
    """Count a request refused by a key of ``site_id`` for its rate limit."""
    _rate_limited(site_id).inc()


def _rejection(
    payload: dict[str, Any] | None, site: dict[str, Any] | None, status: int
) -> tuple[str, str, str, str]:
    event_type = payload["type"] if payload else "unknown"
    site_id = site["_id"] if site else ""
    return event_type, site_id, "rejected", REJECT_REASONS.get(status, "error")


def store_write(method: Callable[..., None]) -> Callable[..., None]:
    """Decorates ``Store.insert_events``: times each write of events and counts its errors."""

    @functools.wraps(method)
    def timed(store: Any, events: list[dict[str, Any]], *args: Any, **kwargs: Any) -> None:
        if not events:
            return method(store, events, *args, **kwargs)
        started = time.perf_counter()
        try:
            return method(store, events, *args, **kwargs)
        except Exception as exc:
            # StoreUnavailable names no cause itself; the driver's error it wraps does.
            cause = exc.__cause__ if exc.__cause__ is not None else exc
            _store_errors(type(cause).__name__).inc()
            raise
        finally:
            STORE_WRITE_DURATION.observe(time.perf_counter() - started)

    return timed


def spool_shipped(shipped: int, refused: int, errors: int) -> None:
    """Shipping counters since the last report (from the shipper)."""
    if shipped:
        SPOOL_SHIPPED.inc(shipped)
    if refused:
        SPOOL_REFUSED.inc(refused)
    if errors:
        SPOOL_SHIP_ERRORS.inc(errors)


def spool_backlog(events: int, nbytes: int, oldest_seconds: float) -> None:
    SPOOL_BACKLOG_EVENTS.set(events)
    SPOOL_BACKLOG_BYTES.set(nbytes)
    SPOOL_OLDEST_SECONDS.set(oldest_seconds)


def _start_clock() -> None:
    setattr(g, _STARTED, time.perf_counter())


def _record_request(response: Response) -> Response:
    state = g._get_current_object()  # type: ignore[attr-defined]  # one proxy lookup, not many
    req = request._get_current_object()  # type: ignore[attr-defined]
    status = response.status_code
    started = getattr(state, _STARTED, None)
    if started is not None:
        method = req.method if req.method in _METHODS else "other"
        route = req.url_rule.rule if req.url_rule is not None else "unmatched"
        _request_duration(method, route, str(status)).observe(time.perf_counter() - started)

    judged: list[tuple[str, str, str, str]] | None = getattr(state, _JUDGED, None)
    if judged is None and req.endpoint == _TRACK_ENDPOINT and req.method == "POST":
        # /api/track answered before its view judged the event: invalid, refused, limited.
        judged = [_rejection(getattr(state, "payload", None), getattr(state, "site", None), status)]
    if judged:
        _count_events(judged, status)

    _enrichment_publisher.ensure_running(current_app._get_current_object())  # type: ignore[attr-defined]
    return response


def _count_events(judged: list[tuple[str, str, str, str]], status: int) -> None:
    if status >= 300:  # the store write failed after the events were judged: none was stored
        reason = REJECT_REASONS.get(status, "error")
        judged = [
            (t, s, "rejected", reason) if outcome == "accepted" else (t, s, outcome, r)
            for t, s, outcome, r in judged
        ]
    if len(judged) == 1:
        _events(*judged[0]).inc()
        return
    for labels, count in Tally(judged).items():
        _events(*labels).inc(count)


class _EnrichmentPublisher:
    """Publishes the enrichment runner's sums every ENRICHMENT_PUBLISH_SECONDS, from a thread
    of each process (a greenlet under gevent), started by the process's first request."""

    def __init__(self) -> None:
        self.pid = 0
        self.apps: weakref.WeakSet[Flask] = weakref.WeakSet()  # more than one: tests, embedding
        self.lock = threading.Lock()

    def ensure_running(self, app: Flask) -> None:
        if self.pid == os.getpid() and app in self.apps:
            return
        with self.lock:
            self.apps.add(app)
            if self.pid != os.getpid():  # none yet, or the parent's (gone with the fork)
                self.pid = os.getpid()
                threading.Thread(target=self._loop, name="rybbit-metrics", daemon=True).start()

    def _loop(self) -> None:
        while True:
            time.sleep(ENRICHMENT_PUBLISH_SECONDS)
            for app in list(self.apps):
                try:
                    _publish_enrichment(app)
                except Exception:  # never let a bad value stop the publishing for good
                    log.exception("publishing enrichment metrics failed")


_enrichment_publisher = _EnrichmentPublisher()


def _publish_enrichment(app: Flask) -> None:
    """Hand prometheus what the enrichment runner counted since the last time."""
    runner = app.extensions.get(RUNNER_KEY)
    if runner is None:
        return
    events, seconds, failures = runner.take_stats()
    if not events:
        return
    ENRICHED_EVENTS.inc(events)
    for name, spent in seconds.items():
        _enricher_seconds(name).inc(spent)
    for name, count in failures.items():
        _enricher_failures(name).inc(count)


bp = Blueprint("metrics", __name__)


@bp.get("/metrics")
def metrics() -> Response:
    token = current_app.config.get("METRICS_TOKEN")
    if token:
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        # WSGI hands headers over as latin-1 text; encoding back gives the bytes that were sent.
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.strip().encode("latin-1", "replace"), str(token).encode("utf-8")
        ):
            raise Unauthorized(www_authenticate=WWWAuthenticate("bearer"))
    _publish_enrichment(current_app)  # this process's figures up to now; others' lag < 1 s
    encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
    return Response(encoder(_registry()), content_type=content_type)


def _registry() -> CollectorRegistry:
    if not MULTIPROCESS:
        return REGISTRY
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # reads every worker's files at each scrape
    return registry


def init_app(app: Flask) -> None:
    """Record every request; serve ``GET /metrics`` unless ``METRICS_ENABLED`` is false."""
    if not app.config["METRICS_ENABLED"]:
        return
    app.before_request_funcs.setdefault(None, []).insert(0, _start_clock)  # before all others
    app.after_request(_record_request)
    app.register_blueprint(bp)
