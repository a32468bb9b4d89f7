"""rybbit-track: a self-hostable, Rybbit-compatible server-side event tracking API."""

from __future__ import annotations

import logging
import os
from typing import Any

from flask import Flask

from . import cli, enrichment, errors, store, track
from .config import instance_path_from_env, load_config

log = logging.getLogger(__name__)


def create_app(test_config: dict[str, Any] | None = None) -> Flask:
    """Build the application: config, storage, enrichment, routes, error handlers, CLI."""
    app = Flask(__name__, instance_path=instance_path_from_env(), instance_relative_config=True)
    load_config(app, test_config)
    app.json.sort_keys = False  # keep bodies in the contract's field order
    os.makedirs(app.instance_path, exist_ok=True)

    store.init_app(app)
    enrichment.init_app(app)
    errors.init_app(app)
    app.register_blueprint(track.bp)
    cli.init_app(app)
    return app
