"""Configuration defaults and how they are layered.

Order, later wins: these defaults -> ``instance/config.py`` -> ``RYBBIT_*`` environment
variables (``RYBBIT_FOO`` sets ``FOO``; values are parsed as JSON when they can be) ->
``MONGO_URI`` and ``RATELIMIT_STORAGE_URI`` from the environment -> the mapping handed to
``create_app`` (tests).
"""

import os
from typing import Any

from flask import Flask

DEFAULTS: dict[str, Any] = {
    # None: use the embedded store under the instance folder.
    "MONGO_URI": None,
    # Database name; None takes it from the URI path, else "rybbit".
    "MONGO_DB_NAME": None,
    # Bounded waits so a dead store turns into a 503, never a hung request.
    "MONGO_TIMEOUT_MS": 2000,
    # Acknowledge an event only once the store has it in its journal.
    "MONGO_WRITE_CONCERN": {"w": 1, "j": True},
    # Folder (relative to the instance folder unless absolute) of the embedded store.
    "EMBEDDED_STORE_DIR": "data",
    # Seconds a client is told to wait when the store is unavailable.
    "STORE_RETRY_AFTER": 2,
    # How often each process writes API keys' last_used_at (seconds); never once per event.
    "KEY_USAGE_FLUSH_SECONDS": 60,
    # Bearer token for /api/admin; unset disables the admin API.
    "ADMIN_TOKEN": None,
    # Per-API-key limit ("20 per second", "100 per minute", ...) or "off".
    "RATE_LIMIT": "20 per second",
    # Flask-Limiter: where the counts live. memory:// is per process; share them between
    # workers and machines with redis://host:6379 (or mongodb://...).
    "RATELIMIT_STORAGE_URI": "memory://",
    "RATELIMIT_STRATEGY": "moving-window",
    "RATELIMIT_HEADERS_ENABLED": True,
    # Fail open when the limiter's storage is unreachable (logged).
    "RATELIMIT_SWALLOW_ERRORS": True,
    # Plugins: names of plugins not to use; which installed third-party plugins (entry points)
    # to load (None: all of them); per-plugin settings keyed by plugin name.
    "PLUGINS_DISABLED": [],
    "LOAD_PLUGINS": None,
    "PLUGIN_SETTINGS": {},
    # MaxMind City database for the geo enricher (relative to the instance folder).
    "GEOIP_DATABASE": "GeoLite2-City.mmdb",
    # How many reverse proxies in front of the service set X-Forwarded-For (0: none trusted).
    "TRUSTED_PROXIES": 0,
    # A visitor's session ends after this much inactivity.
    "SESSION_TIMEOUT_SECONDS": 1800,
    # POST /api/track/batch: most events and bytes (before and after gzip) per request.
    "BATCH_MAX_EVENTS": 500,
    "BATCH_MAX_CONTENT_LENGTH": 512 * 1024,
    # Request bodies above this size get a 413 before they are parsed.
    "MAX_CONTENT_LENGTH": 64 * 1024,
}


def load_config(app: Flask, test_config: dict[str, Any] | None) -> None:
    """Fill ``app.config`` from the layers described in this module's docstring."""
    app.config.from_mapping(DEFAULTS)
    app.config.from_pyfile("config.py", silent=True)
    app.config.from_prefixed_env("RYBBIT")
    # Unprefixed names, as operators know them from MongoDB and Flask-Limiter.
    for name in ("MONGO_URI", "RATELIMIT_STORAGE_URI"):
        if os.environ.get(name):
            app.config[name] = os.environ[name]
    # A secret is text as given: the JSON parsing above would turn "000123..." into a number.
    if os.environ.get("RYBBIT_ADMIN_TOKEN"):
        app.config["ADMIN_TOKEN"] = os.environ["RYBBIT_ADMIN_TOKEN"]
    if test_config:
        app.config.from_mapping(test_config)


def instance_path_from_env() -> str | None:
    """The instance folder named by ``RYBBIT_INSTANCE_PATH``, made absolute."""
    path = os.environ.get("RYBBIT_INSTANCE_PATH")
    return os.path.abspath(path) if path else None
