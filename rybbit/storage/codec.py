"""Documents as JSON for the SQLite store, with the two types JSON lacks.

Datetimes become ``{"$date": <epoch milliseconds>}`` and ObjectIds ``{"$oid": "<hex>"}`` (the
names of MongoDB's extended JSON), so a document read back equals what MongoDB would hand back:
UTC-aware datetimes at millisecond precision, as BSON keeps them. A stored key never starts
with ``$`` (events' ``properties`` are escaped before they are stored), so the tags cannot be
confused with data.

orjson does the encoding and parsing (several times faster than the standard library's json
on these documents, and on the write path of every event); the tags are put in through its
``default`` hook and taken out by a walk over the parsed document.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from bson import ObjectId

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)

# Datetimes go to _tag too, rather than out as orjson's RFC 3339 text.
_OPTIONS = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_NON_STR_KEYS
_CONTAINERS = (dict, list)


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


def _untag(value: Any) -> Any:
    """``value`` with tagged dates and ids turned back into datetimes and ObjectIds."""
    if type(value) is dict:
        if len(value) == 1:
            if "$date" in value:
                return from_ms(value["$date"])
            if "$oid" in value:
                return ObjectId(value["$oid"])
        for key, item in value.items():
            if type(item) in _CONTAINERS:
                value[key] = _untag(item)  # same keys: safe while iterating
    elif type(value) is list:
        for index, item in enumerate(value):
            if type(item) in _CONTAINERS:
                value[index] = _untag(item)
    return value


def dumps(doc: dict[str, Any]) -> str:
    """A document as JSON text (text, not bytes: SQLite's JSON functions refuse BLOBs)."""
    return orjson.dumps(doc, default=_tag, option=_OPTIONS).decode()


def loads(data: bytes | str) -> dict[str, Any]:
    return _untag(orjson.loads(data))  # type: ignore[no-any-return]


def id_key(value: Any) -> str:
    """A document id as the text of a unique, ordered column. ObjectIds keep their order (their
    hex digits sort as their bytes do); other ids are prefixed by their kind, so no string can
    stand for an ObjectId."""
    if isinstance(value, ObjectId):
        return str(value)
    if isinstance(value, str):
        return "s:" + value
    return f"{type(value).__name__}:{value!r}"
