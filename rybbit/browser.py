"""Browser tracking: what Rybbit's browser SDK (``@rybbit/js``) needs besides ``/api/track``.

- Keyless events: a track request without an API key is accepted only from a page of the
  site (``check_origin``, see rybbit.origins), counts against a per-IP limit
  (``KEYLESS_RATE_LIMIT``) instead of a key's, and cannot override the visitor's IP or user
  agent (only a key's holder, a server, is trusted to report those).
- ``GET /api/site/tracking-config/<site_id>``: what the SDK should record, from the site's
  settings, in the shape of Rybbit's route. Session replay is always reported off: this
  service does not store recordings, and the SDK then never loads its recorder.
- ``POST /api/identify``: links the visitor who sends it (the anonymous id the identity
  enricher gives their events) to a user id, so that their later events without a
  ``user_id`` carry it (plugins/aliases.py), and keeps the user's traits (rybbit.aliases).
- CORS for these routes and ``/api/track`` answered as Rybbit's server answers it: the page's
  origin echoed with ``Access-Control-Allow-Credentials: true``. ``navigator.sendBeacon``
  always sends credentials, and browsers refuse such a request when the answer is ``*``.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from flask import Blueprint, Flask, current_app, g, jsonify, request
from flask.typing import ResponseReturnValue
from marshmallow import EXCLUDE, Schema, ValidationError, fields

from . import aliases, credentials, keys, origins, ratelimit, request_log, site_rules, sites
from .enrichment import EnrichmentContext
from .errors import ApiError
from .lookup_cache import lookup_cache
from .payloads import load, read_json_object
from .plugin_loader import RUNNER_KEY
from .schemas import IpAddress, SiteId, ZString, js_trim, js_type
from .store import Store, get_store

bp = Blueprint("browser", __name__)

# Body fields only a key's holder may set: a browser could otherwise pick its own IP (and so
# its location, and its place in excluded_ips) or hide from bot detection.
UNTRUSTED_OVERRIDES = ("ip_address", "user_agent")
TRAITS_MAX_BYTES = 2048
_DIGITS = re.compile(r"[0-9]+")


# -- keyless events ---------------------------------------------------------------------------


def find_site(store: Store, site_id: str) -> dict[str, Any]:
    site = lookup_cache().get(("site", site_id), lambda: sites.find_site(store, site_id))
    if site is None:
        raise ApiError(404, "Site not found")
    return site  # type: ignore[no-any-return]


def check_origin(site: dict[str, Any]) -> None:
    """403 unless the request comes from a page the site allows (rybbit.origins)."""
    origin = origins.request_origin(request.headers.get("Origin"), request.headers.get("Referer"))
    allowed = sites.settings_of(site)["allowed_origins"]
    if not origins.origin_allowed(origin, site["domain"], allowed):
        raise ApiError(403, "Origin not allowed")


def authenticate_keyless(store: Store, payload: dict[str, Any]) -> dict[str, Any]:
    """The site of a keyless track payload, once its origin is checked; the overrides only a
    server may send are dropped from the payload."""
    site = find_site(store, payload["site_id"])
    check_origin(site)
    for name in UNTRUSTED_OVERRIDES:
        payload.pop(name, None)
    return site


# -- tracking config --------------------------------------------------------------------------

# Site setting -> the SDK's config key (Rybbit's names), as the route answers them.
TRACKING_SETTINGS = {
    "track_initial_pageview": "trackInitialPageView",
    "track_spa_navigation": "trackSpaNavigation",
    "track_url_params": "trackUrlParams",
    "track_outbound": "trackOutbound",
    "web_vitals": "webVitals",
    "track_errors": "trackErrors",
    "track_button_clicks": "trackButtonClicks",
    "track_copy": "trackCopy",
    "track_form_interactions": "trackFormInteractions",
}


def route_site_id(text: str) -> str:
    """A site id from a path as the body's ``site_id`` reads: digits name that number."""
    return str(int(text)) if _DIGITS.fullmatch(text) else text


@bp.get("/api/site/tracking-config/<site_id>")
@bp.get("/site/tracking-config/<site_id>")
def tracking_config(site_id: str) -> ResponseReturnValue:
    site = find_site(get_store(), route_site_id(site_id))
    settings = sites.settings_of(site)
    config: dict[str, Any] = {"type": "web", "sessionReplay": False}
    config.update({key: bool(settings[name]) for name, key in TRACKING_SETTINGS.items()})
    config["persistentClientIds"] = False
    return jsonify(config)


# -- identify ---------------------------------------------------------------------------------


class Traits(fields.Field):
    """A JSON object of at most TRAITS_MAX_BYTES bytes of JSON text (Rybbit's rule)."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if not isinstance(value, dict):
            raise ValidationError(f"Expected object, received {js_type(value)}")
        try:
            encoded = aliases.traits_json(value)
        except ValueError as exc:
            raise ValidationError(f"Traits must be storable JSON ({exc})") from None
        if len(encoded.encode("utf-8", "surrogatepass")) > TRAITS_MAX_BYTES:
            raise ValidationError(f"Traits must be less than {TRAITS_MAX_BYTES} bytes (2KB)")
        return aliases.storable_traits(value)


class TrimmedString(ZString):
    """Rybbit's ``z.string().trim().min(1)``: trimmed first, then at least one character."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        text = js_trim(super()._deserialize(value, attr, data, **kwargs))
        if not text:
            raise ValidationError("String must contain at least 1 character(s)")
        return text


class StrictBool(fields.Boolean):
    default_error_messages = {"invalid": "Expected boolean, received {received}"}

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> bool:
        if not isinstance(value, bool):
            raise self.make_error("invalid", received=js_type(value))
        return value


class IdentifySchema(Schema):
    """Rybbit's identify body. Unknown keys are ignored, as its (non-strict) zod object does."""

    class Meta:
        unknown = EXCLUDE

    site_id = SiteId(required=True, min_length=1, max_length=255)
    user_id = TrimmedString(required=True, max_length=255)
    api_key = ZString()
    # The visitor, as a server reports it (with a key only; ignored from browsers).
    ip_address = IpAddress()
    user_agent = ZString(max_length=512)
    traits = Traits()
    is_new_identify = StrictBool(load_default=True)


_identify_schema = IdentifySchema()


@bp.before_request
def _authenticate_identify() -> None:
    """As for track: bad requests are refused before any rate limit is spent."""
    if request.method == "OPTIONS" or request.endpoint != "browser.identify":
        return
    bearer = credentials.bearer_key()
    payload = load(_identify_schema, credentials.with_bearer_key(read_json_object(), bearer))
    g.payload = payload
    store = get_store()
    site = find_site(store, payload["site_id"])
    if "api_key" in payload:  # a server identifying its users: the key decides, not an origin
        credentials.check_agreement(payload, bearer)
        key = lookup_cache().get(
            ("key", payload["api_key"]), lambda: keys.find_key(store, payload["api_key"])
        )
        g.api_key = keys.check_ingest_key(key, payload["site_id"])
        request_log.note_key(site, g.api_key)
    else:
        check_origin(site)
        for name in UNTRUSTED_OVERRIDES:
            payload.pop(name, None)
        g.api_key = None
    g.site = site


@bp.post("/api/identify")
@bp.post("/identify")
@ratelimit.limited(per_key=False)  # keyless: the client IP's budget; a key's: none
def identify() -> ResponseReturnValue:
    store = get_store()
    payload, site = g.payload, g.site
    user_id = payload["user_id"]
    # Stored as events store it: pseudonymised on sites with salt_user_ids.
    holder = {"user_id": user_id}
    site_rules.pseudonymise(site, holder)
    user_id = holder["user_id"]
    now = datetime.now(UTC)
    if payload["is_new_identify"]:
        visitor = anonymous_id(store, site, payload, now)
        if visitor is not None:
            aliases.save_alias(store, site["_id"], visitor, user_id, now)
    if payload.get("traits"):
        aliases.merge_traits(store, site["_id"], user_id, payload["traits"], now)
    return jsonify(success=True)


def anonymous_id(
    store: Store, site: dict[str, Any], payload: dict[str, Any], now: datetime
) -> str | None:
    """The id the identity enricher gives this visitor's anonymous events (same site, IP and
    user agent, same day). The visitor is the browser that sent the request; for a server
    (a keyed request) the one its ``ip_address`` and ``user_agent`` name, and none when it
    names neither (its own address and agent are no visitor's). None too when no identity
    enricher is loaded."""
    runner = current_app.extensions[RUNNER_KEY]
    identity = next((e for e in runner.enrichers if e.name == "identity"), None)
    keyed = g.api_key is not None
    if identity is None or (keyed and not ("ip_address" in payload or "user_agent" in payload)):
        return None
    probe: dict[str, Any] = {"site_id": site["_id"]}
    if keyed and "user_agent" in payload:
        probe["user_agent"] = payload["user_agent"]
    context = EnrichmentContext(
        site=site,
        remote_addr=request.remote_addr,
        client_ip=payload.get("ip_address") or request.remote_addr,
        headers=request.headers,
        received_at=now,
        store=store,
    )
    identity.enrich(probe, context)
    found = probe.get("user_id")
    return str(found) if found else None


# -- CORS -------------------------------------------------------------------------------------

# The routes a page calls: the origin is echoed and credentials allowed (sendBeacon sends
# them). Everything else (batch, admin) keeps its own policy.
BROWSER_CORS = {
    "origins": "*",
    "send_wildcard": False,
    "supports_credentials": True,
    "methods": ["GET", "POST", "OPTIONS"],
    "allow_headers": ["Content-Type", "Content-Encoding", "Authorization"],
    "max_age": 86400,
}
BROWSER_ROUTES = (
    r"/api/track",
    r"/track",
    r"/api/identify",
    r"/identify",
    r"/api/site/tracking-config/.*",
    r"/site/tracking-config/.*",
)


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)  # KEYLESS_RATE_LIMIT is checked with RATE_LIMIT (ratelimit.py)
