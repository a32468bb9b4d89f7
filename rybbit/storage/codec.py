"""Documents as JSON text for the SQLite store, with the two types JSON lacks.

Datetimes become ``{"$date": <epoch milliseconds>}`` and ObjectIds ``{"$oid": "<hex>"}`` (the
names of MongoDB's extended JSON), so a document read back equals what MongoDB would hand back:
UTC-aware datetimes at millisecond precision, as BSON keeps them. A stored key never starts
with ``$`` (events' ``properties`` are escaped before they are stored), so the tags cannot be
confused with data.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from bson import ObjectId

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)

_encoder = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=lambda v: _tag(v))


def to_ms(value: datetime) -> int:
    """Epoch milliseconds of ``value``; a naive datetime counts as UTC, as pymongo takes it."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return (value - EPOCH) // _MS


def from_ms(millis: int) -> datetime:
    return EPOCH + timedelta(milliseconds=millis)


def _tag(value: Any) -> Any:
    if isinstance(value, datetime):
        return {"$date": to_ms(value)}
    if isinstance(value, ObjectId):
        return {"$oid": str(value)}
    raise TypeError(f"cannot store a {type(value).__name__}")


def _untag(obj: dict[str, Any]) -> Any:
    if len(obj) == 1:
        if "$date" in obj:
            return from_ms(obj["$date"])
        if "$oid" in obj:
            return ObjectId(obj["$oid"])
    return obj


def dumps(doc: dict[str, Any]) -> str:
    return _encoder.encode(doc)


_decoder = json.JSONDecoder(object_hook=_untag)


def loads(text: str) -> dict[str, Any]:
    return _decoder.decode(text)  # type: ignore[no-any-return]


def id_key(value: Any) -> str:
    """A document id as the text of a unique, ordered column. ObjectIds keep their order (their
    hex digits sort as their bytes do); other ids are prefixed by their kind, so no string can
    stand for an ObjectId."""
    if isinstance(value, ObjectId):
        return str(value)
    if isinstance(value, str):
        return "s:" + value
    return f"{type(value).__name__}:{value!r}"
