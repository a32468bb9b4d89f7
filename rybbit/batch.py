"""``POST /api/track/batch``: many events in one request, each judged like ``/api/track``.

The body is a JSON array of events, or ``{"events": [...]}``: at most ``BATCH_MAX_EVENTS``
events and ``BATCH_MAX_CONTENT_LENGTH`` bytes. Every item is validated and authenticated on its
own; valid items are stored even when others fail, and the reply lists each item's outcome by
index. The rate limit counts requests: a batch spends one from the budget of each key it uses
(the same budget ``/api/track`` spends), so batching is the way to send more events per second.
Stored items go to the store in one write; the reply comes after the store acknowledged it.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app, jsonify, request
from flask.typing import ResponseReturnValue

from . import ratelimit
from .errors import ApiError, InvalidPayload
from .payloads import load, read_json
from .schemas import TrackEventSchema, js_type
from .store import get_store
from .track import authenticate, prepare_event, usage_recorder

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


def _failure(index: int, exc: ApiError) -> dict[str, Any]:
    result: dict[str, Any] = {"index": index, "success": False, "error": exc.message}
    if exc.details is not None:
        result["details"] = exc.details
    return result


@bp.post("/api/track/batch")
def track_batch() -> ResponseReturnValue:
    items = _items(read_json())
    store = get_store()
    results: list[dict[str, Any]] = []
    to_store: list[dict[str, Any]] = []
    used_keys: dict[str, Any] = {}
    allowed: dict[str, bool] = {}  # per key: did this batch get through its rate limit?
    for index, item in enumerate(items):
        try:
            if not isinstance(item, dict):
                raise InvalidPayload(form_errors=[f"Expected object, received {js_type(item)}"])
            payload = load(_schema, item)
            site, key = authenticate(store, payload)
            if key["_id"] not in allowed:
                allowed[key["_id"]] = ratelimit.spend(key["_id"])
            if not allowed[key["_id"]]:
                raise ApiError(429, ratelimit.limit_message())
            event, message = prepare_event(store, payload, site, key)
        except ApiError as exc:
            results.append(_failure(index, exc))
            continue
        outcome: dict[str, Any] = {"index": index, "success": True}
        if event is None:
            outcome["message"] = message
        else:
            to_store.append(event)
            used_keys[key["_id"]] = event["received_at"]
        results.append(outcome)

    store.insert_events(to_store)  # StoreUnavailable: 503 for the whole batch, nothing acked
    for key_id, moment in used_keys.items():
        usage_recorder(current_app).touch(store, key_id, moment)
    rejected = sum(1 for r in results if not r["success"])
    return jsonify(
        success=rejected == 0,
        accepted=len(results) - rejected,
        rejected=rejected,
        results=results,
    )
