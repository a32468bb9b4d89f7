"""A fast path for the tracking schema's common case: ordinary pageviews and custom events.

Marshmallow stays the schema of record (``rybbit.schemas``): its messages are the contract.
Loading one event through it costs ~70-100 us of CPU, most of it in its per-field machinery,
on every request. ``fast_load`` checks the shapes nearly every client sends (known keys, ASCII
strings within their limits, a pageview or a custom event, integer screen sizes, properties
that are a JSON object) and returns exactly what ``TrackEventSchema.load`` returns for them.
Anything else, valid or not, returns ``DEFER`` and goes through Marshmallow, so every error
message still comes from the schema. tests/test_fast_schema.py checks with generated inputs
that whenever this answers, Marshmallow answers the same.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Final

from .schemas import (
    NUMERIC_SITE_ID,
    PROPERTIES_MAX,
    SCREEN_MAX,
    BrowserTrackEventSchema,
    TrackEventSchema,
    check_json_value,
    js_length,
    js_trim,
    loads_strict,
)
from .site_rules import ipv4_number

DEFER: Final = None

# Each plain string field and its length limit (None: no limit), as TrackEventSchema has them.
_STRINGS: dict[str, int | None] = {
    "api_key": None,
    "pathname": 2048,
    "hostname": 253,
    "page_title": 512,
    "referrer": 2048,
    "user_id": 255,
    "user_agent": 512,
    "querystring": 2048,
    "language": 35,
    "event_name": 256,
}
_SCREEN = ("screenWidth", "screenHeight")
_OTHERS = frozenset(("site_id", "type", "ip_address", "properties", "event_id", *_SCREEN))
_HANDLED = frozenset(_STRINGS) | _OTHERS
_TYPES = ("pageview", "custom_event")
# Integer site ids below this (255 digits at most). A constant: Python computes 10**255 in
# the expression on every call, ~0.7 us (constants that large are not folded).
_SITE_ID_LIMIT: Final = 10**255


def fast_load(schema: TrackEventSchema, data: dict[str, Any]) -> dict[str, Any] | None:
    """What ``schema.load(data)`` returns, or ``DEFER`` when this shape is not one handled
    here (then only the schema can say whether it is valid, and why not)."""
    if type(schema) not in (TrackEventSchema, BrowserTrackEventSchema):
        return DEFER  # a subclass may have rules of its own
    if not _HANDLED.issuperset(data):
        return DEFER  # unknown keys, performance fields, timestamp: the schema's cases
    if "api_key" not in data and type(schema) is TrackEventSchema:
        return DEFER  # required there
    out: dict[str, Any] = {}
    for name, value in data.items():
        if name in _STRINGS:
            length = _length(value)
            limit = _STRINGS[name]
            if length is None or (limit is not None and length > limit):
                return DEFER
            out[name] = value
    event_type = data.get("type", "pageview")
    if event_type not in _TYPES:
        return DEFER
    out["type"] = event_type
    if event_type == "custom_event" and not out.get("event_name"):
        return DEFER  # missing or empty: refused, with messages

    site_id = data.get("site_id")
    if type(site_id) is int and 0 <= site_id < _SITE_ID_LIMIT:
        out["site_id"] = str(site_id)
    elif type(site_id) is str and 0 < (_length(site_id) or 256) <= 255:
        out["site_id"] = str(int(site_id)) if NUMERIC_SITE_ID.fullmatch(site_id) else site_id
    else:
        return DEFER

    for name in _SCREEN:
        if name in data:
            size = data[name]
            if type(size) is not int or not 0 < size <= SCREEN_MAX:
                return DEFER
            out[name] = size

    if "ip_address" in data:
        address = data["ip_address"]
        if type(address) is not str or not address.isascii():
            return DEFER
        if ipv4_number(address) is not None:
            out["ip_address"] = address  # already as ipaddress writes it (0.7 us, not 3)
        else:
            try:
                out["ip_address"] = str(ipaddress.ip_address(address))
            except ValueError:
                return DEFER

    if "event_id" in data:
        event_id = data["event_id"]
        if not 0 < (_length(event_id) or 65) <= 64:
            return DEFER
        out["event_id"] = event_id

    if "properties" in data:
        text = data["properties"]
        # The schema reads up to the error type's limit, then applies the type's own: for
        # pageviews and custom events the lower one.
        if (_length(text) or PROPERTIES_MAX + 1) > PROPERTIES_MAX:
            return DEFER
        try:
            parsed = loads_strict(text)
        except (ValueError, RecursionError):
            return DEFER  # dropped for pageviews, refused for custom events: the schema's call
        if type(parsed) is not dict:
            return DEFER
        try:
            out["properties"] = check_json_value(parsed)
        except (ValueError, RecursionError):
            return DEFER

    if "user_id" in out:
        trimmed = js_trim(out["user_id"])
        if trimmed:
            out["user_id"] = trimmed
        else:
            del out["user_id"]
    return out


def _length(value: Any) -> int | None:
    """A string's JavaScript length (what the schema's limits count), or None when it is not
    a string or holds an unpaired surrogate (refused, with a message, by the schema)."""
    if type(value) is not str:
        return None
    if value.isascii():
        return len(value)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return None
    return js_length(value)
