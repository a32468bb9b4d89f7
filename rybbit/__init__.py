"""rybbit-track: a self-hostable, Rybbit-compatible server-side event tracking API."""

from __future__ import annotations

import logging
import os
from typing import Any

from flask import Flask

from . import (
    admin,
    batch,
    cli,
    errors,
    health,
    lookup_cache,
    metrics,
    openapi,
    plugin_loader,
    ratelimit,
    request_log,
    session_state,
    stats,
    store,
    track,
)
from .config import instance_path_from_env, load_config
from .jsonutil import JSONProvider
from .logging_setup import configure_logging
from .proxies import trust_proxies

log = logging.getLogger(__name__)


def create_app(test_config: dict[str, Any] | None = None) -> Flask:
    """Build the application: config, storage, enrichment, routes, error handlers, CLI."""
    configure_logging()
    app = Flask(__name__, instance_path=instance_path_from_env(), instance_relative_config=True)
    load_config(app, test_config)
    app.json = JSONProvider(app)
    os.makedirs(app.instance_path, exist_ok=True)
    if app.config["TRUSTED_PROXIES"]:
        trust_proxies(app, int(app.config["TRUSTED_PROXIES"]))

    store.init_app(app)
    lookup_cache.init_app(app)
    session_state.init_app(app)
    plugin_loader.init_app(app)
    errors.init_app(app)
    request_log.init_app(app)
    metrics.init_app(app)
    ratelimit.init_app(app)
    track.init_app(app)
    app.register_blueprint(batch.bp)
    health.init_app(app)
    admin.init_app(app)
    stats.init_app(app)
    openapi.init_app(app)
    cli.init_app(app)
    return app
