"""The stored event document: how a validated payload becomes one, and how one is exported."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from bson import ObjectId

# Payload names that are stored under Rybbit's column names.
_RENAMED = {"screenWidth": "screen_width", "screenHeight": "screen_height"}
# Never stored: the credential is replaced by the id of the key that was used.
_NOT_STORED = {"api_key"}


def now_ms() -> datetime:
    """UTC now, truncated to the millisecond precision BSON dates keep."""
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def build_event(payload: dict[str, Any], *, key_id: str, received_at: datetime) -> dict[str, Any]:
    """A new event document from a validated payload; enrichers add fields to it afterwards."""
    event: dict[str, Any] = {
        "site_id": payload["site_id"],
        "type": payload["type"],
        "timestamp": received_at,
    }
    for name, value in payload.items():
        if name not in _NOT_STORED and name not in event:
            event[_RENAMED.get(name, name)] = value
    event["api_key_id"] = key_id
    return event


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        aware = value if value.tzinfo else value.replace(tzinfo=UTC)
        return aware.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    if isinstance(value, ObjectId):
        return str(value)
    raise TypeError(f"cannot serialise {type(value).__name__}")


def event_to_json(event: dict[str, Any]) -> str:
    """One event as a JSON line: ``_id`` becomes ``id``, dates ISO 8601 in UTC."""
    doc = dict(event)
    doc["id"] = doc.pop("_id", None)
    return json.dumps(doc, default=_json_default, ensure_ascii=False, separators=(",", ":"))
