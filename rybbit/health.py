"""``GET /healthz`` (the process answers) and ``GET /readyz`` (it can do its job).

Ready means: the store answers a ping (within ``MONGO_TIMEOUT_MS``), the geo enricher has its
database or is disabled on purpose, and no plugin failed to load. Load balancers should route
on /readyz and restart on /healthz.
"""

from __future__ import annotations

from typing import Any

import pymongo
from flask import Blueprint, Flask, current_app, jsonify
from flask.typing import ResponseReturnValue

from . import delivery
from .delivery import get_delivery
from .plugin_loader import plugin_reports
from .store import StoreUnavailable, get_store

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> ResponseReturnValue:
    return jsonify(status="ok")


def _store_check() -> str | None:
    try:
        get_store().ping()
    except (StoreUnavailable, pymongo.errors.PyMongoError) as exc:
        return f"store unavailable: {type(exc).__name__}"
    return None


@bp.get("/readyz")
def readyz() -> ResponseReturnValue:
    checks: dict[str, Any] = {"store": _store_check() or "ok"}
    problems = [checks["store"]] if checks["store"] != "ok" else []
    if delivery.spooled(current_app):
        # Events are accepted into the spool while MongoDB is away (until the quota), so a
        # store outage alone does not take the service out of rotation. The backlog is this
        # worker's (/metrics adds up all workers').
        problems = []
        checks["spool"] = get_delivery(current_app).stats()  # type: ignore[union-attr]
    for plugin in plugin_reports(current_app):
        # Disabled on purpose is fine; failed to load, or enabled but not working, is not.
        if not plugin["healthy"] and plugin["status"] != "disabled by configuration":
            checks[plugin["name"]] = plugin["status"]
            problems.append(plugin["status"])
    if problems:  # the service's usual error shape, with the details beside it
        return jsonify(success=False, error="Not ready", status="not ready", checks=checks), 503
    return jsonify(success=True, status="ready", checks=checks)


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)
