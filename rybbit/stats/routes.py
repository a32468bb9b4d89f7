"""``POST /api/v2/query``: a site's statistics (Plausible's Stats API v2 shape).

Authorised by an API key of the site with the ``stats:read`` scope, or the admin token, as
``Authorization: Bearer ...``.
"""

from __future__ import annotations

import hmac
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from flask import Blueprint, Flask, current_app, jsonify, request
from flask.typing import ResponseReturnValue

from .. import admin, delivery, keys, sites
from ..errors import ApiError
from ..payloads import read_json_object
from ..storage import EventQuery, MongoStorage, SQLiteStorage, Storage, get_store
from . import date_range, mongo_query, results, sqlite_query
from .plan import Groups, Plan, make_plan
from .query_schema import Query, load_query

bp = Blueprint("stats", __name__, url_prefix="/api/v2")


def _authorise(store: Storage, site_id: str) -> None:
    """Return if the request's Bearer credential may read ``site_id``'s statistics."""
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    given = given.strip()
    if scheme.lower() != "bearer" or not given:
        raise ApiError(401, "Unauthorized", headers={"WWW-Authenticate": "Bearer"})
    token: str | None = current_app.extensions[admin.EXTENSION_KEY]
    if token is not None and hmac.compare_digest(
        given.encode("latin-1", "replace"), token.encode("utf-8")
    ):
        return
    key = keys.check_key(keys.find_key(store, given), site_id)  # 403 "Invalid API key"
    if keys.STATS_SCOPE not in keys.scopes_of(key):
        raise ApiError(403, "This API key may not read stats (it lacks the stats:read scope)")


def _groups(store: Storage, plan: Plan) -> Groups:
    timeout = float(current_app.config["STATS_QUERY_TIMEOUT_SECONDS"])
    if isinstance(store, SQLiteStorage):
        return sqlite_query.run(store, plan, timeout)
    assert isinstance(store, MongoStorage)
    return mongo_query.run(store, plan, timeout)


def _first_event(store: Storage, site_id: str) -> datetime | None:
    found = store.find_events(EventQuery(site_id=site_id, newest_first=False), limit=1)
    return found[0]["timestamp"] if found else None


def answer(store: Storage, query: Query, site: dict[str, Any], now: datetime) -> dict[str, Any]:
    """The response body of a validated query on ``site``."""
    zone = ZoneInfo(sites.time_zone_of(site))
    first = _first_event(store, query.site_id) if query.date_range == "all" else None
    period = date_range.resolve(query.date_range, zone, now, first)
    plan = make_plan(query, zone, period)
    groups = _groups(store, plan)
    total_visitors = 0
    if "percentage" in query.metrics:
        whole = _groups(store, plan.without_dimensions())
        total_visitors = sum(counts.visitors for counts in whole.values())
    every = results.rows(query, groups, total_visitors)
    meta: dict[str, Any] = {}
    if query.time_labels:
        time_dim = next(dim for dim in plan.dimensions if dim.kind == "time")
        meta["time_labels"] = date_range.labels(period, time_dim.field)
    if query.total_rows:
        meta["total_rows"] = len(every)
    last = period.end - (period.end - period.start) / (period.end - period.start).total_seconds()
    return {
        "results": every[query.offset : query.offset + query.limit],
        "meta": meta,
        "query": {
            "site_id": query.site_id,
            "metrics": query.metrics,
            # Plausible's form: both ends included, to the second, in the site's zone.
            "date_range": [date_range.iso(period.start, zone), date_range.iso(last, zone)],
            "dimensions": query.dimensions,
            "filters": query.filters,
            "order_by": query.order_by or results.default_order(query),
            "include": {"total_rows": query.total_rows, "time_labels": query.time_labels},
            "pagination": {"limit": query.limit, "offset": query.offset},
        },
    }


@bp.post("/query")
def query_route() -> ResponseReturnValue:
    body = read_json_object()
    store = get_store()
    # Authorised before validated: without a credential, a caller learns nothing, not even
    # which of its fields are wrong.
    site_id = body.get("site_id")
    if isinstance(site_id, int) and not isinstance(site_id, bool):
        site_id = str(site_id)
    if not isinstance(site_id, str):
        site_id = ""
    _authorise(store, site_id)
    query = load_query(body)
    site = sites.find_site(store, query.site_id)
    if site is None:
        raise ApiError(404, "Site not found")
    delivery.settle(current_app)  # this client reads what this worker acknowledged
    return jsonify(answer(store, query, site, datetime.now(UTC)))


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)
