"""``POST /api/track`` (and ``/track``): validate, authenticate, enrich, store, acknowledge."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app, jsonify, request
from flask.typing import ResponseReturnValue
from marshmallow import ValidationError

from . import enrichment, keys, sites
from .errors import ApiError, InvalidPayload
from .events import build_event, now_ms
from .schemas import TrackEventSchema, js_type, loads_strict, validation_error_to_invalid_payload
from .store import get_store

bp = Blueprint("track", __name__)

_schema = TrackEventSchema()


def _is_json_mimetype(mimetype: str) -> bool:
    return mimetype == "application/json" or (
        mimetype.startswith("application/") and mimetype.endswith("+json")
    )


def read_json_object() -> dict[str, Any]:
    """The request body as a JSON object, or an InvalidPayload saying what is wrong with it."""
    if not _is_json_mimetype(request.mimetype):
        raise InvalidPayload(form_errors=["Content-Type must be application/json"])
    raw = request.get_data(cache=False)  # over MAX_CONTENT_LENGTH: 413 before any parsing
    try:
        body = loads_strict(raw)
    except (ValueError, RecursionError) as exc:
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise InvalidPayload(form_errors=[f"Malformed JSON: {reason}"]) from None
    if not isinstance(body, dict):
        raise InvalidPayload(form_errors=[f"Expected object, received {js_type(body)}"])
    return body


def validate_event(body: dict[str, Any]) -> dict[str, Any]:
    try:
        return _schema.load(body)
    except ValidationError as exc:
        raise validation_error_to_invalid_payload(_schema, exc, body) from None


@bp.post("/api/track")
@bp.post("/track")
def track() -> ResponseReturnValue:
    payload = validate_event(read_json_object())
    store = get_store()
    site = sites.find_site(store, payload["site_id"])
    if site is None:
        raise ApiError(404, "Site not found")
    key = keys.authenticate(store, payload["site_id"], payload["api_key"])

    event = build_event(payload, key_id=key["_id"], received_at=now_ms())
    context = enrichment.EnrichmentContext(
        site=site, remote_addr=request.remote_addr, headers=request.headers
    )
    enrichment.enrich(current_app, event, context)
    with store.op():
        store.events.insert_one(event)
    return jsonify(success=True)
