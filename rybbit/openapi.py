"""The OpenAPI 3 document, generated from the Marshmallow schemas the routes validate with.

Paths are listed here explicitly; a test fails when a route is missing from them or vice versa.
"""

from __future__ import annotations

from importlib.metadata import version
from typing import Any

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from flask import Blueprint, Flask, current_app, jsonify
from flask.typing import ResponseReturnValue
from marshmallow import Schema, fields, validate

from .admin_schemas import (
    CountryCode,
    Domain,
    EventsQuerySchema,
    IpOrNetwork,
    KeyCreateSchema,
    KeyRotateSchema,
    Moment,
    Origin,
    SettingsSchema,
    SiteCreateSchema,
    SiteUpdateSchema,
)
from .browser import TRACKING_SETTINGS, IdentifySchema, Traits
from .keys import SCOPES
from .schemas import (
    BrowserTrackEventSchema,
    ClientTime,
    IpAddress,
    JSONString,
    SiteId,
    TrackEventSchema,
    ZNumber,
    ZString,
)
from .stats.query_schema import QuerySchema

bp = Blueprint("openapi", __name__)
EXTENSION_KEY = "rybbit.openapi"


# Response bodies, described for the document only.
class Success(Schema):
    success = fields.Boolean(required=True)
    message = fields.String(metadata={"description": "Set when the event was filtered out"})


class Error(Schema):
    success = fields.Boolean(required=True)
    error = fields.String(required=True)


class ErrorDetails(Schema):
    fieldErrors = fields.Dict(keys=fields.String(), values=fields.List(fields.String()))
    formErrors = fields.List(fields.String())


class InvalidPayloadError(Error):
    details = fields.Nested(ErrorDetails, required=True)


class BatchItemResult(Schema):
    index = fields.Integer(required=True)
    success = fields.Boolean(required=True)
    message = fields.String()
    error = fields.String()
    details = fields.Nested(ErrorDetails)


class BatchResult(Schema):
    success = fields.Boolean(required=True, metadata={"description": "True when no item failed"})
    accepted = fields.Integer(required=True)
    rejected = fields.Integer(required=True)
    results = fields.List(fields.Nested(BatchItemResult), required=True)


class Site(Schema):
    site_id = fields.String(required=True)
    name = fields.String(required=True)
    domain = fields.String(required=True)
    settings = fields.Nested(SettingsSchema, required=True)
    time_zone = fields.String(required=True, metadata={"description": "IANA name; default UTC"})
    created_at = fields.DateTime(required=True)


class SiteList(Schema):
    sites = fields.List(fields.Nested(Site), required=True)


class ApiKey(Schema):
    id = fields.String(required=True)
    prefix = fields.String(required=True)
    name = fields.String(allow_none=True)
    site_id = fields.String(required=True)
    created_at = fields.DateTime(required=True)
    last_used_at = fields.DateTime(allow_none=True)
    revoked_at = fields.DateTime(allow_none=True)
    expires_at = fields.DateTime(allow_none=True)
    scopes = fields.List(
        fields.String(validate=validate.OneOf(SCOPES)),
        required=True,
        metadata={"description": "ingest: send events; stats:read: POST /api/v2/query"},
    )


class ApiKeyCreated(ApiKey):
    api_key = fields.String(required=True, metadata={"description": "Shown only once"})


class ApiKeyRotated(ApiKeyCreated):
    replaces = fields.String(required=True)
    replaced_key_expires_at = fields.DateTime(required=True)


class ApiKeyList(Schema):
    api_keys = fields.List(fields.Nested(ApiKey), required=True)


class PluginInfo(Schema):
    name = fields.String(required=True)
    version = fields.String(required=True)
    source = fields.String(required=True)
    hooks = fields.List(fields.String(), required=True)
    enrichers = fields.List(fields.String(), required=True)
    enabled = fields.Boolean(required=True)
    healthy = fields.Boolean(required=True)
    status = fields.String(required=True)


class PluginList(Schema):
    plugins = fields.List(fields.Nested(PluginInfo), required=True)


class StatsRow(Schema):
    metrics = fields.List(
        fields.Raw(), required=True, metadata={"description": "In the query's metrics order"}
    )
    dimensions = fields.List(
        fields.Raw(), required=True, metadata={"description": "In the query's dimensions order"}
    )


class StatsMeta(Schema):
    time_labels = fields.List(fields.String())
    total_rows = fields.Integer()


class StatsAnswer(Schema):
    results = fields.List(fields.Nested(StatsRow), required=True)
    meta = fields.Nested(StatsMeta, required=True)
    query = fields.Dict(
        required=True,
        metadata={"description": "The query as run: defaults filled in, dates resolved"},
    )


class SiteDeleted(Schema):
    success = fields.Boolean(required=True)
    site_id = fields.String(required=True)
    events_deleted = fields.Integer(required=True)


class DeletedSite(Schema):
    site_id = fields.String(required=True)
    name = fields.String(allow_none=True)
    domain = fields.String(allow_none=True)
    deleted_at = fields.DateTime(required=True)
    events = fields.Integer(
        required=True, metadata={"description": "Events still stored: arrived after the delete"}
    )


class DeletedSiteList(Schema):
    sites = fields.List(fields.Nested(DeletedSite), required=True)


class TrackingConfig(Schema):
    """What Rybbit's browser SDK reads from GET /api/site/tracking-config/{site_id}."""

    type = fields.String(required=True, metadata={"enum": ["web"]})
    sessionReplay = fields.Boolean(
        required=True, metadata={"description": "Always false: replays are not stored here"}
    )
    persistentClientIds = fields.Boolean(required=True)


for _setting, _key in TRACKING_SETTINGS.items():
    TrackingConfig._declared_fields[_key] = fields.Boolean(
        required=True, metadata={"description": f"The site's `{_setting}` setting"}
    )


class EventsPage(Schema):
    events = fields.List(fields.Dict(), required=True)
    next_cursor = fields.String(allow_none=True, required=True)


def _string_field_properties(self: Any, field: fields.Field, **kwargs: Any) -> dict[str, Any]:
    """Lengths and bounds our own zod-style fields carry outside Marshmallow validators."""
    props: dict[str, Any] = {}
    if isinstance(field, ZString):
        if field.max_length is not None:
            props["maxLength"] = field.max_length
        if field.min_length is not None:
            props["minLength"] = field.min_length
    if isinstance(field, SiteId):
        props["description"] = "The site's id; a JSON integer is accepted too"
    if isinstance(field, ZNumber):
        if field.integer:
            props["type"] = "integer"
        if field.minimum is not None:
            props["minimum"] = field.minimum
        if field.positive:
            props["minimum"], props["exclusiveMinimum"] = 0, True
        if field.maximum is not None:
            props["maximum"] = field.maximum
    return props


def _json_body(schema: Any) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": schema}}}


def _reply(description: str, schema: Any | None = None) -> dict[str, Any]:
    reply: dict[str, Any] = {"description": description}
    if schema is not None:
        reply["content"] = {"application/json": {"schema": schema}}
    return reply


_INVALID = _reply("Invalid payload", "InvalidPayloadError")
_UNAUTHORIZED = _reply("Missing or wrong admin token", "Error")
_NO_SITE = _reply("Site not found", "Error")
_UNAVAILABLE = _reply("Storage unavailable; see Retry-After", "Error")
_SITE_ID = {"name": "site_id", "in": "path", "required": True, "schema": {"type": "string"}}
_KEY_ID = {"name": "key_id", "in": "path", "required": True, "schema": {"type": "string"}}


def _admin(operation: dict[str, Any]) -> dict[str, Any]:
    operation.setdefault("tags", ["admin"])
    operation.setdefault("security", [{"adminToken": []}])
    operation["responses"].setdefault("401", _UNAUTHORIZED)
    operation["responses"].setdefault("503", _UNAVAILABLE)
    return operation


def build_spec() -> dict[str, Any]:
    """The whole document as a dict."""
    plugin = MarshmallowPlugin()
    spec = APISpec(
        title="rybbit-track",
        version=version("rybbit-track"),
        openapi_version="3.0.3",
        plugins=[plugin],
        info={"description": "Rybbit-compatible server-side event tracking API"},
    )
    for field_class, openapi_type in [
        (ZString, "string"),
        (ZNumber, "number"),
        (Moment, "string"),
        (ClientTime, "string"),
    ]:
        plugin.map_to_openapi_type(field_class, openapi_type, None)
    for field_class, fmt in [
        (IpAddress, "ip"),
        (IpOrNetwork, "ip-or-cidr"),
        (Domain, "hostname"),
        (CountryCode, "iso3166-alpha2"),
        (JSONString, "json"),
        (Origin, "origin"),
    ]:
        plugin.map_to_openapi_type(field_class, "string", fmt)
    plugin.map_to_openapi_type(Traits, "object", None)
    assert plugin.converter is not None
    plugin.converter.add_attribute_function(_string_field_properties)

    for schema in (
        TrackEventSchema,
        BrowserTrackEventSchema,
        IdentifySchema,
        TrackingConfig,
        SettingsSchema,
        SiteCreateSchema,
        SiteUpdateSchema,
        KeyCreateSchema,
        KeyRotateSchema,
        Success,
        Error,
        InvalidPayloadError,
        Site,
        SiteList,
        ApiKey,
        ApiKeyCreated,
        ApiKeyRotated,
        ApiKeyList,
        SiteDeleted,
        DeletedSiteList,
        PluginList,
        BatchResult,
        EventsPage,
        QuerySchema,
        StatsAnswer,
    ):
        spec.components.schema(schema.__name__, schema=schema)
    spec.components.security_scheme("adminToken", {"type": "http", "scheme": "bearer"})
    spec.components.security_scheme(
        "statsKey",
        {
            "type": "http",
            "scheme": "bearer",
            "description": "An API key of the site with the stats:read scope",
        },
    )
    spec.components.security_scheme(
        "apiKey",
        {
            "type": "http",
            "scheme": "bearer",
            "description": "A site's API key (rb_...), instead of or as well as the body's "
            "api_key (then both must be the same key)",
        },
    )

    track = {
        "summary": "Track one event",
        "description": "With an API key (body or Bearer): server-side tracking. Without one: "
        "a keyless (browser) event, accepted only when the Origin (or Referer) belongs to the "
        "site's domain (same registrable domain) or is in its allowed_origins, limited per "
        "client IP by KEYLESS_RATE_LIMIT; its body cannot set ip_address or user_agent.",
        "tags": ["tracking"],
        "security": [{}, {"apiKey": []}],  # the key may be in the body instead, or absent
        "requestBody": _json_body("BrowserTrackEventSchema"),
        "responses": {
            "200": _reply("Stored (or filtered out, with a message)", "Success"),
            "400": _INVALID,
            "403": _reply("Invalid API key; or, keyless, Origin not allowed", "Error"),
            "404": _NO_SITE,
            "413": _reply("Payload too large", "Error"),
            "429": _reply("Rate limit exceeded (per key, or per IP when keyless)", "Error"),
            "503": _UNAVAILABLE,
        },
    }
    spec.path(path="/api/track", operations={"post": track})
    spec.path(
        path="/api/v2/query",
        operations={
            "post": {
                "summary": "Query a site's statistics (Plausible's Stats API v2 shape)",
                "description": "See docs/stats.md for metrics, dimensions, filters and date "
                "ranges. Errors name the field (#/metrics/1: Unknown metric 'foo').",
                "tags": ["stats"],
                "security": [{"statsKey": []}, {"adminToken": []}],
                "requestBody": _json_body("QuerySchema"),
                "responses": {
                    "200": _reply("The rows, meta and the query as run", "StatsAnswer"),
                    "400": _reply(
                        "Invalid query: the error names the field", "InvalidPayloadError"
                    ),
                    "401": _reply("No Bearer credential", "Error"),
                    "403": _reply("Not a key of the site with the stats:read scope", "Error"),
                    "404": _NO_SITE,
                    "503": _UNAVAILABLE,
                },
            }
        },
    )
    spec.path(path="/track", operations={"post": {**track, "summary": "Alias of /api/track"}})
    config = {
        "summary": "What Rybbit's browser SDK should record on the site (its settings)",
        "tags": ["browser"],
        "parameters": [_SITE_ID],
        "responses": {"200": _reply("The tracking config", "TrackingConfig"), "404": _NO_SITE},
    }
    identify = {
        "summary": "Name the visitor: their later events without a user_id carry it",
        "description": "Keyless from a page of the site (the origin rule and per-IP limit of "
        "/api/track), or with the site's API key. The visitor is the one the request comes "
        "from (IP and User-Agent, as for anonymous ids). Traits are merged per user id; a "
        "trait given as null is removed.",
        "tags": ["browser"],
        "security": [{}, {"apiKey": []}],
        "requestBody": _json_body("IdentifySchema"),
        "responses": {
            "200": _reply("Identified", "Success"),
            "400": _INVALID,
            "403": _reply("Origin not allowed, or invalid API key", "Error"),
            "404": _NO_SITE,
            "429": _reply("Rate limit exceeded", "Error"),
            "503": _UNAVAILABLE,
        },
    }
    for prefix in ("/api", ""):
        spec.path(path=f"{prefix}/site/tracking-config/{{site_id}}", operations={"get": config})
        spec.path(path=f"{prefix}/identify", operations={"post": identify})
    events = {
        "type": "array",
        "items": {"$ref": "#/components/schemas/TrackEventSchema"},
        "minItems": 1,
        "maxItems": 500,
    }
    wrapped = {
        "type": "object",
        "required": ["events"],
        "properties": {"events": events},
        "additionalProperties": False,
    }
    spec.path(
        path="/api/track/batch",
        operations={
            "post": {
                "summary": "Track up to 500 events; per-item results",
                "tags": ["tracking"],
                "security": [{}, {"apiKey": []}],
                "requestBody": _json_body({"oneOf": [events, wrapped]}),
                "responses": {
                    "200": _reply("Per-item outcomes; valid items are stored", "BatchResult"),
                    "400": _INVALID,
                    "413": _reply("Payload too large", "Error"),
                    "503": _UNAVAILABLE,
                },
            }
        },
    )
    for path, summary in (
        ("/healthz", "The process answers"),
        ("/readyz", "Store reachable, plugins loaded, geo working or disabled"),
    ):
        spec.path(
            path=path,
            operations={
                "get": {
                    "summary": summary,
                    "tags": ["meta"],
                    "responses": {
                        "200": _reply("OK", {"type": "object"}),
                        "503": _reply("Not ready; `checks` says why", {"type": "object"}),
                    },
                }
            },
        )
    spec.path(
        path="/api/openapi.json",
        operations={
            "get": {
                "summary": "This document",
                "tags": ["meta"],
                "responses": {"200": _reply("OpenAPI 3 document", {"type": "object"})},
            }
        },
    )
    spec.path(
        path="/metrics",
        operations={
            "get": {
                "summary": "Prometheus metrics (see docs/operations.md); off if METRICS_ENABLED "
                "is false, bearer token if METRICS_TOKEN is set",
                "tags": ["meta"],
                "responses": {
                    "200": {
                        "description": "Prometheus text exposition format",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    "401": _reply("Missing or wrong metrics token", "Error"),
                },
            }
        },
    )

    spec.path(
        path="/api/admin/sites",
        operations={
            "get": _admin(
                {"summary": "List sites", "responses": {"200": _reply("Sites", "SiteList")}}
            ),
            "post": _admin(
                {
                    "summary": "Create a site",
                    "requestBody": _json_body("SiteCreateSchema"),
                    "responses": {"201": _reply("Created", "Site"), "400": _INVALID},
                }
            ),
        },
    )
    spec.path(
        path="/api/admin/sites/{site_id}",
        parameters=[_SITE_ID],
        operations={
            "get": _admin(
                {
                    "summary": "Get a site",
                    "responses": {"200": _reply("The site", "Site"), "404": _NO_SITE},
                }
            ),
            "patch": _admin(
                {
                    "summary": "Change a site's name, domain or settings",
                    "requestBody": _json_body("SiteUpdateSchema"),
                    "responses": {
                        "200": _reply("The site", "Site"),
                        "400": _INVALID,
                        "404": _NO_SITE,
                    },
                }
            ),
            "delete": _admin(
                {
                    "summary": "Delete a site, revoke its keys, delete its events",
                    "description": "On a site deleted before, deletes the events that arrived "
                    "after its deletion (from processes whose cached copy had not expired yet); "
                    "the service also does that once on its own, AUTH_CACHE_SECONDS + 30 s "
                    "after the first DELETE.",
                    "responses": {"200": _reply("Deleted", "SiteDeleted"), "404": _NO_SITE},
                }
            ),
        },
    )
    spec.path(
        path="/api/admin/deleted-sites",
        operations={
            "get": _admin(
                {
                    "summary": "List deleted sites with the number of events still stored",
                    "responses": {"200": _reply("Deleted sites", "DeletedSiteList")},
                }
            ),
        },
    )
    spec.path(
        path="/api/admin/sites/{site_id}/api-keys",
        parameters=[_SITE_ID],
        operations={
            "get": _admin(
                {
                    "summary": "List a site's keys (without secrets)",
                    "responses": {"200": _reply("Keys", "ApiKeyList"), "404": _NO_SITE},
                }
            ),
            "post": _admin(
                {
                    "summary": "Create a key (shown once)",
                    "requestBody": {**_json_body("KeyCreateSchema"), "required": False},
                    "responses": {
                        "201": _reply("Created", "ApiKeyCreated"),
                        "400": _INVALID,
                        "404": _NO_SITE,
                    },
                }
            ),
        },
    )
    spec.path(
        path="/api/admin/sites/{site_id}/api-keys/{key_id}",
        parameters=[_SITE_ID, _KEY_ID],
        operations={
            "delete": _admin(
                {
                    "summary": "Revoke a key at once",
                    "responses": {
                        "200": _reply("Revoked", "ApiKey"),
                        "404": _reply("Site or key not found", "Error"),
                    },
                }
            ),
        },
    )
    spec.path(
        path="/api/admin/sites/{site_id}/api-keys/{key_id}/rotate",
        parameters=[_SITE_ID, _KEY_ID],
        operations={
            "post": _admin(
                {
                    "summary": "Replace a key; the old one works until the grace period ends",
                    "requestBody": {**_json_body("KeyRotateSchema"), "required": False},
                    "responses": {
                        "201": _reply("The new key", "ApiKeyRotated"),
                        "400": _INVALID,
                        "404": _reply("Site or key not found", "Error"),
                    },
                }
            ),
        },
    )
    spec.path(
        path="/api/admin/plugins",
        operations={
            "get": _admin(
                {
                    "summary": "Loaded plugins, their enrichers and health",
                    "responses": {"200": _reply("Plugins", "PluginList")},
                }
            ),
        },
    )
    spec.path(
        path="/api/admin/sites/{site_id}/events",
        parameters=[_SITE_ID],
        operations={
            "get": _admin(
                {
                    "summary": "Stored events, newest first by default; NDJSON export with "
                    "Accept: application/x-ndjson",
                    "parameters": [{"in": "query", "schema": EventsQuerySchema}],
                    "responses": {
                        "200": {
                            "description": "A page of events, or the whole range as NDJSON",
                            "content": {
                                "application/json": {"schema": "EventsPage"},
                                "application/x-ndjson": {"schema": {"type": "string"}},
                            },
                        },
                        "400": _INVALID,
                        "404": _NO_SITE,
                    },
                }
            ),
        },
    )
    return spec.to_dict()


@bp.get("/api/openapi.json")
def openapi_document() -> ResponseReturnValue:
    return jsonify(current_app.extensions[EXTENSION_KEY])


def init_app(app: Flask) -> None:
    app.extensions[EXTENSION_KEY] = build_spec()  # built once: it only depends on the code
    app.register_blueprint(bp)
