"""Marshmallow schemas for the admin API's bodies and query strings."""

from __future__ import annotations

import functools
import ipaddress
import re
import zoneinfo
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from marshmallow import RAISE, Schema, ValidationError, fields, validate, validates_schema

from .events import decode_cursor
from .keys import SCOPES
from .origins import canonical_origin
from .schemas import EVENT_TYPES, ZNumber, ZString
from .site_rules import entry_networks

MAX_GRACE_SECONDS = 30 * 24 * 3600
_HOSTNAME = re.compile(
    r"(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
)
_COUNTRY = re.compile(r"[A-Z]{2}")


class Domain(ZString):
    """A hostname such as ``example.com``, stored lower-case."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        text = super()._deserialize(value, attr, data, **kwargs).strip().lower().rstrip(".")
        if not _HOSTNAME.fullmatch(text):
            raise ValidationError("Invalid domain")
        return text


class IpOrNetwork(ZString):
    """An IP address, a CIDR network or an inclusive range ``first-last``, stored in canonical
    form."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        text = super()._deserialize(value, attr, data, **kwargs).strip()
        try:
            if "-" in text:
                networks = entry_networks(text)
                return f"{networks[0].network_address}-{networks[-1].broadcast_address}"
            if "/" in text:
                return str(ipaddress.ip_network(text, strict=False))
            return str(ipaddress.ip_address(text))
        except ValueError:
            raise ValidationError(
                "Invalid IP address, CIDR range or address range (first-last)"
            ) from None


class Origin(ZString):
    """A browser origin, ``https://shop.example.net`` or ``http://localhost:3000``, stored in
    canonical form (lower-case, default port left out)."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        text = super()._deserialize(value, attr, data, **kwargs)
        origin = canonical_origin(text)
        if origin is None or not _only_origin(text):
            raise ValidationError("Invalid origin: give scheme, host and optional port only")
        return origin


def _only_origin(text: str) -> bool:
    """True when ``text`` names just an origin (no path, query or credentials)."""
    parts = urlsplit(text.strip())
    return (
        parts.path in ("", "/")
        and not parts.query
        and not parts.fragment
        and not (parts.username or parts.password)
    )


class CountryCode(ZString):
    """An ISO 3166-1 alpha-2 code, stored upper-case."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        text = super()._deserialize(value, attr, data, **kwargs).strip().upper()
        if not _COUNTRY.fullmatch(text):
            raise ValidationError("Invalid ISO 3166-1 alpha-2 country code")
        return text


@functools.cache
def _zone_names() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


class TimeZone(ZString):
    """An IANA time zone name (``Europe/Berlin``), as the system's zone database knows it."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        text = super()._deserialize(value, attr, data, **kwargs)
        if text not in _zone_names():
            raise ValidationError("Unknown time zone: use an IANA name such as Europe/Berlin")
        return text


class StrictBool(fields.Boolean):
    default_error_messages = {"invalid": "Expected boolean"}

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> bool:
        if not isinstance(value, bool):
            raise self.make_error("invalid")
        return value


class SettingsSchema(Schema):
    class Meta:
        unknown = RAISE

    block_bots = StrictBool()
    excluded_ips = fields.List(IpOrNetwork(), validate=validate.Length(max=1000))
    excluded_countries = fields.List(CountryCode(), validate=validate.Length(max=300))
    salt_user_ids = StrictBool()
    track_ip = StrictBool()
    allowed_origins = fields.List(Origin(), validate=validate.Length(max=100))
    track_initial_pageview = StrictBool()
    track_spa_navigation = StrictBool()
    track_url_params = StrictBool()
    track_outbound = StrictBool()
    web_vitals = StrictBool()
    track_errors = StrictBool()
    track_button_clicks = StrictBool()
    track_copy = StrictBool()
    track_form_interactions = StrictBool()


class SiteCreateSchema(Schema):
    class Meta:
        unknown = RAISE

    name = ZString(required=True, min_length=1, max_length=100)
    domain = Domain(required=True, max_length=253)
    settings = fields.Nested(SettingsSchema)
    time_zone = TimeZone(max_length=64)


class SiteUpdateSchema(Schema):
    class Meta:
        unknown = RAISE

    name = ZString(min_length=1, max_length=100)
    domain = Domain(max_length=253)
    settings = fields.Nested(SettingsSchema)
    time_zone = TimeZone(max_length=64)

    @validates_schema
    def _not_empty(self, data: dict[str, Any], **kwargs: Any) -> None:
        if not data:
            raise ValidationError("Nothing to update: give name, domain, settings or time_zone")


class UtcDateTime(fields.AwareDateTime):
    """An ISO 8601 date-time in a JSON body (UTC unless it says), converted to UTC here: BSON
    converts at write time, where a date near year 1 or 9999 with an offset would overflow."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> datetime:
        moment = super()._deserialize(value, attr, data, **kwargs)
        try:
            return moment.astimezone(UTC)
        except OverflowError:
            raise self.make_error("invalid", input=value, obj_type=self.OBJ_TYPE) from None


class KeyCreateSchema(Schema):
    class Meta:
        unknown = RAISE

    name = ZString(max_length=100, allow_none=True)
    expires_at = UtcDateTime(default_timezone=UTC)
    # What the key may do (keys.SCOPES); an ingest key unless said otherwise.
    scopes = fields.List(
        ZString(validate=validate.OneOf(SCOPES, error="Unknown scope: use ingest or stats:read")),
        validate=validate.Length(min=1, max=len(SCOPES)),
    )


class KeyRotateSchema(Schema):
    class Meta:
        unknown = RAISE

    grace_seconds = ZNumber(integer=True, minimum=0, maximum=MAX_GRACE_SECONDS, load_default=3600)


_CURSOR = re.compile(r"^[0-9]{1,15}_[0-9a-f]{24}$")


def _whole_cursor(value: str) -> None:
    if not _CURSOR.fullmatch(value):
        raise ValidationError("Invalid cursor")
    try:
        decode_cursor(value)  # well-formed is not enough: 999999999999999 ms is year 33658
    except ValueError:
        raise ValidationError("Invalid cursor") from None


class Moment(fields.Field):
    """A point in time in a query string: ISO 8601 (UTC unless it says) or epoch milliseconds."""

    default_error_messages = {"invalid": "Expected an ISO 8601 date-time or epoch milliseconds"}

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> datetime:
        text = str(value).strip()
        try:
            if text.isdigit():
                return datetime.fromtimestamp(int(text) / 1000, UTC)
            moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
            # In UTC here, where an offset pushing it past year 1 or 9999 is a 400 rather than
            # an OverflowError when the query is encoded.
            return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)
        except (ValueError, OverflowError, OSError):
            raise self.make_error("invalid") from None


class EventsQuerySchema(Schema):
    class Meta:
        unknown = RAISE

    start = Moment(data_key="from")
    end = Moment(data_key="to")
    type = fields.String(validate=validate.OneOf(EVENT_TYPES))
    limit = fields.Integer(load_default=100, validate=validate.Range(min=1, max=1000))
    # The Regexp (ECMA syntax) is what the OpenAPI document shows; fullmatch closes the gap
    # Python's `$` leaves before a trailing newline.
    cursor = fields.String(validate=[validate.Regexp(_CURSOR.pattern), _whole_cursor])
    order = fields.String(load_default="desc", validate=validate.OneOf(["desc", "asc"]))
