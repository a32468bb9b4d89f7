"""How the service writes JSON: dates as ISO 8601 UTC with milliseconds, ObjectIds as text."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from bson import ObjectId
from flask.json.provider import DefaultJSONProvider


def json_default(value: Any) -> Any:
    """``json.dumps`` fallback for the values stored documents hold."""
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    if isinstance(value, ObjectId):
        return str(value)
    raise TypeError(f"cannot serialise {type(value).__name__}")


class JSONProvider(DefaultJSONProvider):
    """Flask's provider with our date format, and keys kept in the order they were built."""

    sort_keys = False

    @staticmethod
    def default(o: Any) -> Any:
        return json_default(o)
