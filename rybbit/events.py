"""The stored event document: how a validated payload becomes one, and how one is exported."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from bson import ObjectId
from bson.errors import InvalidId

from .jsonutil import json_default

# Payload names that are stored under Rybbit's column names.
_RENAMED = {"screenWidth": "screen_width", "screenHeight": "screen_height"}
FUTURE_TOLERANCE = timedelta(hours=1)
# Never stored: the credential is replaced by the id of the key that was used.
_NOT_STORED = {"api_key"}


def now_ms() -> datetime:
    """UTC now, truncated to the millisecond precision BSON dates keep."""
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def idempotent_id(site_id: str, event_id: str) -> ObjectId:
    """The document id of a client-identified event: the same for every retry of it, so the
    store's unique ``_id`` index (present on every store) keeps it from being stored twice."""
    digest = hashlib.sha256(f"{site_id}\x00{event_id}".encode()).digest()
    return ObjectId(digest[:12])


def event_time(client_time: datetime | None, received_at: datetime) -> datetime:
    """The client's time when given, unless it is more than an hour ahead of ours (a broken
    clock): then ours. (Times over 72 hours old are refused by validation.)"""
    if client_time is None or client_time > received_at + FUTURE_TOLERANCE:
        return received_at
    return client_time


def build_event(payload: dict[str, Any], *, key_id: str, received_at: datetime) -> dict[str, Any]:
    """A new event document from a validated payload; enrichers add fields to it afterwards."""
    event: dict[str, Any] = {
        "site_id": payload["site_id"],
        "type": payload["type"],
        "timestamp": event_time(payload.get("timestamp"), received_at),
        "received_at": received_at,
    }
    if "event_id" in payload:
        event["_id"] = idempotent_id(payload["site_id"], payload["event_id"])
    for name, value in payload.items():
        if name not in _NOT_STORED and name not in event:
            event[_RENAMED.get(name, name)] = value
    event["api_key_id"] = key_id
    return event


def public_event(event: dict[str, Any]) -> dict[str, Any]:
    """An event as the API shows it: ``_id`` becomes ``id``."""
    doc = dict(event)
    doc["id"] = doc.pop("_id", None)
    return doc


def event_to_json(event: dict[str, Any]) -> str:
    """One event as a JSON line: ``_id`` becomes ``id``, dates ISO 8601 in UTC."""
    return json.dumps(
        public_event(event), default=json_default, ensure_ascii=False, separators=(",", ":")
    )


def encode_cursor(event: dict[str, Any]) -> str:
    return f"{int(event['timestamp'].timestamp() * 1000)}_{event['_id']}"


def decode_cursor(cursor: str) -> tuple[datetime, ObjectId]:
    """Inverse of ``encode_cursor``; ValueError for anything else (a time out of range too)."""
    millis, _, oid = cursor.partition("_")
    try:
        moment = datetime.fromtimestamp(int(millis) / 1000, UTC)
    except (OverflowError, OSError) as exc:
        raise ValueError(f"cursor time out of range: {exc}") from None
    try:
        return moment, ObjectId(oid)
    except (TypeError, InvalidId) as exc:
        raise ValueError(str(exc)) from None


def query_events(
    store: Any,
    site_id: str,
    *,
    start: datetime | None = None,
    end: datetime | None = None,
    event_type: str | None = None,
    newest_first: bool = True,
    limit: int = 100,
    after: str | None = None,
) -> list[dict[str, Any]]:
    """One page of a site's events in ``[start, end)``, ordered by timestamp then id.

    ``after`` is the cursor of the last event of the previous page.
    """
    query: dict[str, Any] = {"site_id": site_id}
    window: dict[str, Any] = {}
    if start is not None:
        window["$gte"] = start
    if end is not None:
        window["$lt"] = end
    if window:
        query["timestamp"] = window
    if event_type is not None:
        query["type"] = event_type
    if after is not None:
        stamp, oid = decode_cursor(after)
        beyond = "$lt" if newest_first else "$gt"
        query["$or"] = [
            {"timestamp": {beyond: stamp}},
            {"timestamp": stamp, "_id": {beyond: oid}},
        ]
    direction = -1 if newest_first else 1
    with store.op():
        cursor = store.events.find(query).sort([("timestamp", direction), ("_id", direction)])
        return list(cursor.limit(limit))


def iter_events(
    store: Any, site_id: str, page_size: int = 1000, **filters: Any
) -> Iterator[dict[str, Any]]:
    """Every matching event, fetched a page at a time so no store call runs long."""
    after = None
    while True:
        page = query_events(store, site_id, limit=page_size, after=after, **filters)
        yield from page
        if len(page) < page_size:
            return
        after = encode_cursor(page[-1])
