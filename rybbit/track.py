"""``POST /api/track`` (and ``/track``): validate, authenticate, enrich, store, acknowledge."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import Blueprint, Flask, Response, current_app, g, jsonify, request
from flask.typing import ResponseReturnValue

from . import (
    browser,
    credentials,
    delivery,
    keys,
    metrics,
    ratelimit,
    request_log,
    site_rules,
    sites,
)
from .delivery import Shipping, get_delivery
from .enrichment import EnrichmentContext
from .errors import ApiError
from .events import build_event, now_ms
from .extensions import cors
from .lookup_cache import lookup_cache
from .payloads import load, read_json_object
from .plugin_loader import RUNNER_KEY
from .schemas import BrowserTrackEventSchema
from .store import Store, get_store

bp = Blueprint("track", __name__)

_schema = BrowserTrackEventSchema()
USAGE_KEY = "rybbit.key_usage"
_SUCCESS = b'{"success":true}\n'
_TRACK_ENDPOINT = "track.track"  # /api/track and /track


def authenticate(
    store: Store, payload: dict[str, Any], bearer: str | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The site and the key document for a validated payload (and the request's Bearer key, if
    any); 404 or 403 ApiError otherwise. Both come through the process's lookup cache (see
    lookup_cache for the staleness bound)."""
    cache = lookup_cache()
    site_id, api_key = payload["site_id"], payload["api_key"]
    site = cache.get(("site", site_id), lambda: sites.find_site(store, site_id))
    if site is None:
        raise ApiError(404, "Site not found")
    credentials.check_agreement(payload, bearer)
    key = cache.get(("key", api_key), lambda: keys.find_key(store, api_key))
    key = keys.check_ingest_key(key, site_id)
    request_log.note_key(site, key)
    return site, key


def prepare_event(
    store: Store, payload: dict[str, Any], site: dict[str, Any], key: dict[str, Any] | None
) -> tuple[dict[str, Any] | None, str | None]:
    """The document to store for an authenticated payload, or None and the reason the site's
    settings filter it out ("Event not tracked - ...")."""
    started = start_event(store, payload, site, key)
    if isinstance(started, str):
        return None, started
    event, context = started
    current_app.extensions[RUNNER_KEY].run(event, context)
    message = finish_event(event, context)
    return (None, message) if message else (event, None)


def start_event(
    store: Store,
    payload: dict[str, Any],
    site: dict[str, Any],
    key: dict[str, Any] | None,
    settings: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], EnrichmentContext] | str:
    """The event to enrich and its context; or, when the site's settings filter the event
    out before enrichment, the reason ("Event not tracked - ..."). ``key`` is None for a
    keyless (browser) event. ``settings``: ``sites.settings_of(site)`` if the caller has it
    (a batch makes it once per site rather than twice per event)."""
    received_at = now_ms()
    req = request._get_current_object()  # type: ignore[attr-defined]  # one proxy lookup, not three
    # A body IP is trusted because the request carries a valid API key (server-side tracking);
    # keyless payloads never have one (browser.authenticate_keyless drops it).
    client_ip = payload.get("ip_address") or req.remote_addr
    if settings is None:
        settings = sites.settings_of(site)
    if site_rules.ip_excluded(client_ip, settings["excluded_ips"]):
        return "Event not tracked - IP excluded"
    event = build_event(payload, key_id=key["_id"] if key else None, received_at=received_at)
    site_rules.pseudonymise(site, event)
    context = EnrichmentContext(
        site=site,
        remote_addr=req.remote_addr,
        client_ip=client_ip,
        headers=req.headers,
        received_at=received_at,
        store=store,
    )
    return event, context


def finish_event(
    event: dict[str, Any], context: EnrichmentContext, settings: dict[str, Any] | None = None
) -> str | None:
    """After enrichment: the reason the site's settings filter the event out (bots, countries),
    or None once the event is ready to store (with the site's IP policy applied). ``settings``
    as for start_event."""
    if settings is None:
        settings = sites.settings_of(context.site)
    reason = site_rules.exclusion_reason(settings, event)
    if reason is not None:
        return f"Event not tracked - {reason}"
    site_rules.apply_ip_policy(settings, event, context.client_ip)
    return None


@bp.before_request
def _validate_and_authenticate() -> None:
    """Reject bad requests before the rate limit is checked, so they spend no key's budget."""
    if request.method == "OPTIONS":
        return  # a CORS preflight carries no event
    bearer = credentials.bearer_key()
    payload = load(_schema, credentials.with_bearer_key(read_json_object(), bearer))
    g.payload = payload  # set first: metrics and the request log read it on a 403 or 404 too
    if "api_key" in payload:
        g.site, g.api_key = authenticate(get_store(), payload, bearer)
    else:  # the browser SDK: no key, so the page's origin must belong to the site
        g.site, g.api_key = browser.authenticate_keyless(get_store(), payload), None


@bp.post("/api/track")
@bp.post("/track")
@ratelimit.limited(per_key=True)  # the key's budget; keyless: the client IP's
def track() -> ResponseReturnValue:
    store = get_store()
    event, message = prepare_event(store, g.payload, g.site, g.api_key)
    metrics.event_judged(g.payload, g.site, message)
    if event is None:
        return jsonify(success=True, message=message)
    # Durable before the answer; a repeated event_id is acknowledged again, not re-stored.
    get_delivery(current_app).accept([event])
    # The body jsonify(success=True) would build, without building it per request.
    return current_app.response_class(_SUCCESS, mimetype="application/json")


def usage_recorder(app: Flask) -> keys.UsageRecorder:
    return app.extensions[USAGE_KEY]  # type: ignore[no-any-return]


def _shipping(app: Flask) -> Shipping:
    """How this process ships events: with its store, the app's enrichers, the sites as the
    lookup cache has them, and key usage noted by the usage recorder."""
    store = get_store(app)
    cache = lookup_cache(app)
    usage = usage_recorder(app)

    def site_of(site_id: str) -> dict[str, Any] | None:
        return cache.get(("site", site_id), lambda: sites.find_site(store, site_id))  # type: ignore[no-any-return]

    return Shipping(
        store,
        app.extensions[RUNNER_KEY],
        site_of,
        lambda key_id, moment: usage.touch(store, key_id, moment),
    )


def init_app(app: Flask) -> None:
    app.extensions[USAGE_KEY] = keys.UsageRecorder(app.config["KEY_USAGE_FLUSH_SECONDS"])
    delivery.init_app(app, lambda: _shipping(app))
    app.register_blueprint(bp)
    browser.init_app(app)
    # Only these paths get CORS headers: the admin API stays same-origin. The routes a page
    # calls echo its origin with credentials (browser.BROWSER_CORS); the batch endpoint is for
    # servers, open to any origin without credentials.
    batch_policy = {
        "origins": "*",
        "methods": ["POST", "OPTIONS"],
        "allow_headers": ["Content-Type", "Content-Encoding", "Authorization"],
        "max_age": 86400,
    }
    resources: dict[str, Any] = {r"/api/track/batch": batch_policy}
    resources.update({route: browser.BROWSER_CORS for route in browser.BROWSER_ROUTES})
    before = list(app.after_request_funcs.get(None, []))
    cors.init_app(app, resources=resources)
    app.after_request_funcs[None] = [
        f if f in before else _only_with_origin(f) for f in app.after_request_funcs[None]
    ]


def _only_with_origin(
    cors_after_request: Callable[[Response], Response],
) -> Callable[..., Response]:
    """Flask-CORS's response hook, skipped for /api/track and /track requests that are not
    cross-origin: there (a policy with credentials) it adds nothing without an ``Origin``
    header (tests/test_browser.py), but it matches the path against every resource pattern
    first, which costs server-side clients ~40 us a request. Other routes keep it: the batch
    route's open policy sends ``Access-Control-Allow-Origin: *`` even without an Origin."""

    def hook(response: Response) -> Response:
        if request.endpoint == _TRACK_ENDPOINT and "HTTP_ORIGIN" not in request.environ:
            return response  # (a preflight is an OPTIONS request with an Origin)
        return cors_after_request(response)

    return hook
