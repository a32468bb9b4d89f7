"""``POST /api/track/batch``: many events in one request, each judged like ``/api/track``.

The body is a JSON array of events, or ``{"events": [...]}``: at most ``BATCH_MAX_EVENTS``
events and ``BATCH_MAX_CONTENT_LENGTH`` bytes. Every item is validated and authenticated on its
own; valid items are stored even when others fail, and the reply lists each item's outcome by
index. The rate limit counts requests: a batch spends one from the budget of each key it uses
(the same budget ``/api/track`` spends), so batching is the way to send more events per second.
Stored items go to the store in one write; the reply comes after the store acknowledged it.
"""

from __future__ import annotations

import logging
from typing import Any, NamedTuple

from flask import Blueprint, current_app, jsonify, request
from flask.typing import ResponseReturnValue

from . import credentials, metrics, ratelimit, sites
from .delivery import get_delivery
from .enrichment import EnrichmentContext
from .errors import ApiError, InvalidPayload, refused_details
from .payloads import load, read_json
from .plugin_loader import RUNNER_KEY
from .schemas import TrackEventSchema, js_type
from .store import get_store
from .store_errors import EventsRefused, StoreUnavailable
from .track import authenticate, finish_event, start_event

log = logging.getLogger(__name__)

bp = Blueprint("batch", __name__)
_schema = TrackEventSchema()


@bp.before_request
def _raise_size_cap() -> None:
    request.max_content_length = int(current_app.config["BATCH_MAX_CONTENT_LENGTH"])


def _items(body: Any) -> list[Any]:
    if isinstance(body, dict) and set(body) == {"events"}:
        body = body["events"]
    if not isinstance(body, list):
        raise InvalidPayload(form_errors=[f"Expected an array of events, received {js_type(body)}"])
    limit = int(current_app.config["BATCH_MAX_EVENTS"])
    if not body:
        raise InvalidPayload(form_errors=["A batch needs at least one event"])
    if len(body) > limit:
        raise InvalidPayload(form_errors=[f"At most {limit} events per batch, got {len(body)}"])
    return body


class _Enriching(NamedTuple):
    """A batch item that passed validation, authentication and the rate limit."""

    index: int
    payload: dict[str, Any]
    site: dict[str, Any]
    key: dict[str, Any]
    settings: dict[str, Any]  # the site's (sites.settings_of)
    event: dict[str, Any]
    context: EnrichmentContext


_RETRY_ERROR = "Storage unavailable, please retry"
_RETRY_MESSAGE = "Not stored: send this event again (an event_id makes the retry safe)"


def _failure(index: int, exc: ApiError) -> dict[str, Any]:
    result: dict[str, Any] = {"index": index, "success": False, "error": exc.message}
    if exc.details is not None:
        result["details"] = exc.details
    return result


def _unexpected_failure(index: int, exc: Exception) -> dict[str, Any]:
    """An item that met an unexpected error: logged (its traceback, not its content) and
    reported as that item's failure, as a 500 would be for /api/track."""
    log.error("batch item %d failed", index, exc_info=exc)
    return _failure(index, ApiError(500, "Internal server error"))


@bp.post("/api/track/batch")
def track_batch() -> ResponseReturnValue:
    items = _items(read_json())
    bearer = credentials.bearer_key()  # the key of every item that names none
    store = get_store()
    results: list[dict[str, Any]] = [{} for _ in items]
    to_enrich: list[_Enriching] = []
    allowed: dict[str, bool] = {}  # per key: did this batch get through its rate limit?
    # (site_id, api_key) -> (site, key, the site's settings): a batch nearly always names one
    # site and key, so each pair is authenticated (6 us) and its settings merged (1 us, used
    # twice) once, not per item. Failures are not kept: each failing item raises its own.
    authenticated: dict[tuple[str, str], tuple[dict[str, Any], dict[str, Any], Any]] = {}
    for index, item in enumerate(items):
        payload: dict[str, Any] | None = None  # what metrics can tell of an item that fails
        site: dict[str, Any] | None = None
        try:
            if not isinstance(item, dict):
                raise InvalidPayload(form_errors=[f"Expected object, received {js_type(item)}"])
            payload = load(_schema, credentials.with_bearer_key(item, bearer))
            pair = (payload["site_id"], payload["api_key"])
            found = authenticated.get(pair)
            if found is None:
                site, key = authenticate(store, payload, bearer)
                found = authenticated[pair] = (site, key, sites.settings_of(site))
            site, key, settings = found
            if key["_id"] not in allowed:
                allowed[key["_id"]] = ratelimit.spend(key["_id"], site["_id"])
            if not allowed[key["_id"]]:
                raise ApiError(429, ratelimit.limit_message())
            started = start_event(store, payload, site, key, settings)
        except ApiError as exc:
            results[index] = _failure(index, exc)
            metrics.event_rejected(payload, site, exc.status)
            continue
        except StoreUnavailable:
            raise  # the batch's own write would fail too: 503 for all, nothing acknowledged
        except Exception as exc:  # a bug met by one item must not fail the others
            results[index] = _unexpected_failure(index, exc)
            metrics.event_rejected(payload, site, 500)
            continue
        if isinstance(started, str):  # filtered out before enrichment
            results[index] = {"index": index, "success": True, "message": started}
            metrics.event_judged(payload, site, started)
            continue
        to_enrich.append(_Enriching(index, payload, site, key, settings, *started))

    # All enrichers see the whole batch, so those keeping state in the store (sessions) need
    # one round trip for it rather than one per event.
    current_app.extensions[RUNNER_KEY].run_many(
        [e.event for e in to_enrich], [e.context for e in to_enrich]
    )
    to_store: list[dict[str, Any]] = []
    stored_items: list[_Enriching] = []  # the item of each event in to_store
    for each in to_enrich:
        try:
            message = finish_event(each.event, each.context, each.settings)
        except Exception as exc:
            results[each.index] = _unexpected_failure(each.index, exc)
            metrics.event_rejected(each.payload, each.site, 500)
            continue
        metrics.event_judged(each.payload, each.site, message)
        results[each.index] = {"index": each.index, "success": True}
        if message is not None:
            results[each.index]["message"] = message
        else:
            to_store.append(each.event)
            stored_items.append(each)

    try:
        # Durable before the answer. StoreUnavailable: 503 for the whole batch, nothing stored.
        get_delivery(current_app).accept(to_store)
    except EventsRefused as exc:  # the others are stored
        for position in exc.retry:  # a transient error for this document only
            item = stored_items[position]
            results[item.index] = _failure(item.index, ApiError(503, _RETRY_ERROR))
            results[item.index]["message"] = _RETRY_MESSAGE
            metrics.event_refused(item.payload, item.site, 503)
        for position, reason in exc.reasons.items():
            refused = stored_items[position]
            results[refused.index] = _failure(
                refused.index, ApiError(400, "Invalid payload", refused_details(reason))
            )
            metrics.event_refused(refused.payload, refused.site)
    rejected = sum(1 for r in results if not r["success"])
    return jsonify(
        success=rejected == 0,
        accepted=len(results) - rejected,
        rejected=rejected,
        results=results,
    )
