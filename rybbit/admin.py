"""``/api/admin``: manage sites, their settings and API keys, and read stored events.

Every route needs ``Authorization: Bearer <RYBBIT_ADMIN_TOKEN>``. Without a configured token the
admin API is off and answers 403.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Iterator
from typing import Any

from flask import Blueprint, Flask, Response, current_app, jsonify, request, stream_with_context
from flask.typing import ResponseReturnValue

from . import delivery, keys, sites
from .admin_schemas import (
    EventsQuerySchema,
    KeyCreateSchema,
    KeyRotateSchema,
    SiteCreateSchema,
    SiteUpdateSchema,
)
from .errors import ApiError
from .events import encode_cursor, export_lines, public_event, query_events
from .lookup_cache import lookup_cache
from .payloads import load, read_json_object
from .plugin_loader import plugin_reports
from .storage import get_store

log = logging.getLogger(__name__)

bp = Blueprint("admin", __name__, url_prefix="/api/admin")
EXTENSION_KEY = "rybbit.admin_token"
MIN_TOKEN_LENGTH = 32

_site_create = SiteCreateSchema()
_site_update = SiteUpdateSchema()
_key_create = KeyCreateSchema()
_key_rotate = KeyRotateSchema()
_events_query = EventsQuerySchema()


def _configured_token(app: Flask) -> str | None:
    """The admin token if it is usable; reasons it is not are logged (without the token)."""
    raw = app.config.get("ADMIN_TOKEN")
    if raw is None or raw == "":
        log.info("admin API disabled: RYBBIT_ADMIN_TOKEN is not set")
        return None
    token = str(raw)
    if token != token.strip():
        # The request side strips the header value, so a token with spaces around it could
        # never match: use it without them, and say so.
        log.warning("RYBBIT_ADMIN_TOKEN has white space around it; using it without")
        token = token.strip()
    if token.startswith("rb_"):
        log.error("admin API disabled: RYBBIT_ADMIN_TOKEN looks like an API key (rb_...)")
        return None
    if len(token) < MIN_TOKEN_LENGTH:
        log.error(
            "admin API disabled: RYBBIT_ADMIN_TOKEN has %d characters, it needs at least %d; "
            "make one with: python -c 'import secrets; print(secrets.token_urlsafe(32))'",
            len(token),
            MIN_TOKEN_LENGTH,
        )
        return None
    return token


@bp.before_request
def _require_admin() -> None:
    token: str | None = current_app.extensions[EXTENSION_KEY]
    if token is None:
        raise ApiError(403, "Admin API disabled")
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    # WSGI hands headers over as latin-1 text; encoding back gives the bytes that were sent.
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        given.strip().encode("latin-1", "replace"), token.encode("utf-8")
    ):
        raise ApiError(401, "Unauthorized", headers={"WWW-Authenticate": "Bearer"})


@bp.after_request
def _forget_cached_documents(response: Response) -> Response:
    """Changes take effect at once in this process; other processes see them within
    AUTH_CACHE_SECONDS (see lookup_cache)."""
    if request.method not in ("GET", "HEAD", "OPTIONS"):
        lookup_cache().clear()
    return response


def _site_or_404(site_id: str) -> dict[str, Any]:
    site = sites.find_site(get_store(), site_id)
    if site is None:
        raise ApiError(404, "Site not found")
    return site


@bp.post("/sites")
def create_site() -> ResponseReturnValue:
    data = load(_site_create, read_json_object())
    return jsonify(sites.create_site(get_store(), **data)), 201


@bp.get("/sites")
def list_sites() -> ResponseReturnValue:
    return jsonify(sites=sites.list_sites(get_store()))


@bp.get("/sites/<site_id>")
def get_site(site_id: str) -> ResponseReturnValue:
    return jsonify(sites.public_site(_site_or_404(site_id)))


@bp.patch("/sites/<site_id>")
def update_site(site_id: str) -> ResponseReturnValue:
    changes = load(_site_update, read_json_object())
    site = sites.update_site(get_store(), site_id, changes)
    if site is None:
        raise ApiError(404, "Site not found")
    return jsonify(site)


# After a DELETE, other processes may accept events for the site until their cached copy of
# it expires (AUTH_CACHE_SECONDS), and a request that was accepted may still be writing: the
# longest a request runs is gunicorn's timeout (gunicorn.conf.py).
REQUEST_TIME_BOUND_SECONDS = 30


@bp.delete("/sites/<site_id>")
def delete_site(site_id: str) -> ResponseReturnValue:
    """Delete a site and its events; on a deleted site, delete the events that arrived after."""
    store = get_store()
    delivery.settle(current_app)  # what this worker acknowledged for the site goes too
    deleted = sites.delete_site(store, site_id)
    if deleted is None:
        raise ApiError(404, "Site not found")
    delay = float(current_app.config["AUTH_CACHE_SECONDS"]) + REQUEST_TIME_BOUND_SECONDS
    sites.schedule_leftover_purge(store, site_id, delay)
    return jsonify(success=True, site_id=site_id, events_deleted=deleted)


@bp.get("/deleted-sites")
def list_deleted_sites() -> ResponseReturnValue:
    return jsonify(sites=sites.list_deleted_sites(get_store()))


@bp.post("/sites/<site_id>/api-keys")
def create_key(site_id: str) -> ResponseReturnValue:
    _site_or_404(site_id)
    data = load(_key_create, read_json_object()) if request.content_length else {}
    return jsonify(keys.create_key(get_store(), site_id, **data)), 201


@bp.get("/sites/<site_id>/api-keys")
def list_keys(site_id: str) -> ResponseReturnValue:
    _site_or_404(site_id)
    return jsonify(api_keys=keys.list_keys(get_store(), site_id))


@bp.delete("/sites/<site_id>/api-keys/<key_id>")
def revoke_key(site_id: str, key_id: str) -> ResponseReturnValue:
    _site_or_404(site_id)
    key = keys.revoke_key(get_store(), site_id, key_id)
    if key is None:
        raise ApiError(404, "API key not found")
    return jsonify(key)


@bp.post("/sites/<site_id>/api-keys/<key_id>/rotate")
def rotate_key(site_id: str, key_id: str) -> ResponseReturnValue:
    _site_or_404(site_id)
    data = load(_key_rotate, read_json_object()) if request.content_length else {}
    grace = int(data.get("grace_seconds", _key_rotate.fields["grace_seconds"].load_default))
    rotated = keys.rotate_key(get_store(), site_id, key_id, grace)
    if rotated is None:
        raise ApiError(404, "API key not found")
    return jsonify(rotated), 201


@bp.get("/sites/<site_id>/events")
def list_events(site_id: str) -> ResponseReturnValue:
    _site_or_404(site_id)
    delivery.settle(current_app)
    params = load(_events_query, request.args.to_dict())
    filters = {
        "start": params.get("start"),
        "end": params.get("end"),
        "event_type": params.get("type"),
        "newest_first": params["order"] == "desc",
    }
    store = get_store()
    if request.accept_mimetypes.best_match(["application/json", "application/x-ndjson"]) == (
        "application/x-ndjson"
    ):

        def lines() -> Iterator[str]:
            for line in export_lines(store, site_id, **filters):
                yield line + "\n"

        return Response(stream_with_context(lines()), mimetype="application/x-ndjson")

    limit = params["limit"]
    page = query_events(store, site_id, limit=limit + 1, after=params.get("cursor"), **filters)
    more = len(page) > limit
    page = page[:limit]
    next_cursor = encode_cursor(page[-1]) if more else None
    return jsonify(events=[public_event(e) for e in page], next_cursor=next_cursor)


@bp.get("/plugins")
def list_plugins() -> ResponseReturnValue:
    return jsonify(plugins=plugin_reports(current_app))


def init_app(app: Flask) -> None:
    app.extensions[EXTENSION_KEY] = _configured_token(app)
    app.register_blueprint(bp)
