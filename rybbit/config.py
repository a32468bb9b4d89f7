"""Configuration defaults and how they are layered.

Order, later wins: these defaults -> ``instance/config.py`` -> ``RYBBIT_*`` environment
variables (``RYBBIT_FOO`` sets ``FOO``; values are parsed as JSON when they can be) ->
``MONGO_URI``, ``RATELIMIT_STORAGE_URI``, ``MAXMIND_ACCOUNT_ID`` and ``MAXMIND_LICENSE_KEY``
from the environment -> the mapping handed to ``create_app`` (tests).
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
    # Embedded store: how long a write waits for another process's transaction before the
    # request gets a 503 (SQLite's busy timeout), and when commits are synced to disk: NORMAL
    # survives a killed process, FULL also a power cut (at a cost in writes per second).
    "EMBEDDED_BUSY_TIMEOUT_MS": 2000,
    "EMBEDDED_SYNCHRONOUS": "NORMAL",
    # With MongoDB, when an event is acknowledged: "spool" (the default) once it is in this
    # process's spool in the instance folder, on disk (fdatasync), and shipped to MongoDB in
    # the background; "store" once MongoDB acknowledged it with MONGO_WRITE_CONCERN (slower;
    # for those who need e.g. w: majority before the answer). See docs/spool.md.
    "ACK": "spool",
    # The spool's folder (relative to the instance folder unless absolute), and how many
    # bytes of unshipped events it may hold (per worker) before requests get 503s.
    "SPOOL_DIR": "spool",
    "SPOOL_QUOTA_BYTES": 1024**3,
    # How long the shipper lets records gather before a shipment that would not be full
    # (Kafka's linger.ms): fewer, larger inserts cost MongoDB less. Events become readable in
    # MongoDB up to this much later; a request's own are shipped at once when it reads events.
    "SPOOL_LINGER_MS": 20,
    # Seconds a client is told to wait when the store is unavailable.
    "STORE_RETRY_AFTER": 2,
    # How long each process may keep using a site or API key document it read (seconds):
    # revocations and setting changes reach every worker within this time. 0: read each time.
    "AUTH_CACHE_SECONDS": 5,
    # While the store is unreachable, how much longer (seconds) each process keeps answering
    # with the last site and key documents (and "no such site/key") it read, so that events
    # keep being accepted into the spool through an outage; a key revoked meanwhile on another
    # worker keeps working in this one until the store is back. 0: 503 once they expire.
    "AUTH_CACHE_STALE_SECONDS": 3600,
    # How often each process writes API keys' last_used_at (seconds); never once per event.
    "KEY_USAGE_FLUSH_SECONDS": 60,
    # Events older than this many days (by their timestamp; fractions allowed) are removed;
    # None keeps them forever. See docs/retention.md.
    "EVENT_RETENTION_DAYS": None,
    # "auto": events in a time-series collection where the server has them (MongoDB 5+);
    # False: always a regular collection. Only decides how a new collection is created.
    "EVENTS_TIMESERIES": "auto",
    # Where the server cannot expire events (FerretDB, embedded store): how often each process
    # deletes expired ones, in the background of a write.
    "EVENT_PURGE_INTERVAL_SECONDS": 600,
    # POST /api/v2/query: how long one query may run in the store before it is stopped and
    # answered 503 (a year of a busy site, many dimensions), so none holds a worker for long.
    "STATS_QUERY_TIMEOUT_SECONDS": 30,
    # Bearer token for /api/admin; unset disables the admin API.
    "ADMIN_TOKEN": None,
    # GET /metrics (Prometheus): served, and requests recorded, unless false; with a token set,
    # only to requests bearing it (Authorization: Bearer ...).
    "METRICS_ENABLED": True,
    "METRICS_TOKEN": None,
    # Per-API-key limit ("20 per second", "100 per minute", ...) or "off".
    "RATE_LIMIT": "20 per second",
    # Per-client-IP limit for keyless (browser) requests to track and identify, or "off". A
    # page sends a few events per view; one browser must not flood a site.
    "KEYLESS_RATE_LIMIT": "20 per second",
    # Flask-Limiter: where the counts live. sqlite:// (a file in the instance folder, or
    # sqlite:///path/file) is shared by the workers of one machine; redis://host:6379 shares
    # them between machines too; memory:// is per process (a key gets workers x its limit).
    "RATELIMIT_STORAGE_URI": "sqlite://",
    "RATELIMIT_STRATEGY": "moving-window",
    "RATELIMIT_HEADERS_ENABLED": True,
    # When the limiter's storage is unreachable, each process counts on its own in memory
    # (so a key may get up to workers x its limit) and probes the storage again with backoff;
    # a request is never refused because the storage is down (logged).
    "RATELIMIT_SWALLOW_ERRORS": True,
    "RATELIMIT_IN_MEMORY_FALLBACK_ENABLED": True,
    # How long a Redis call of the limiter may take before the storage counts as down
    # (redis-py would otherwise wait forever on a frozen server); with sqlite://, how long a
    # call waits for another process's lock. A timeout given in RATELIMIT_STORAGE_URI's query
    # string or RATELIMIT_STORAGE_OPTIONS wins.
    "RATE_LIMIT_STORAGE_TIMEOUT_MS": 500,
    # Plugins: names of plugins not to use; which installed third-party plugins (entry points)
    # to load (None: all of them); per-plugin settings keyed by plugin name.
    "PLUGINS_DISABLED": [],
    "LOAD_PLUGINS": None,
    "PLUGIN_SETTINGS": {},
    # MaxMind City database for the geo enricher (relative to the instance folder).
    "GEOIP_DATABASE": "GeoLite2-City.mmdb",
    # How often (seconds) each worker checks whether the database file was replaced and reopens
    # it; 0 never checks. The check is one clock comparison per event, one stat per period.
    "GEOIP_RELOAD_SECONDS": 60,
    # `flask geoip update`: the MaxMind account id and licence key (text as given, also read
    # from the unprefixed MAXMIND_ACCOUNT_ID / MAXMIND_LICENSE_KEY environment variables).
    "MAXMIND_ACCOUNT_ID": None,
    "MAXMIND_LICENSE_KEY": None,
    # The edition to download, and where from: None is MaxMind's download URL for the edition;
    # a mirror's URL serves the same tar.gz (or a bare .mmdb).
    "GEOIP_EDITION": "GeoLite2-City",
    "GEOIP_DOWNLOAD_URL": None,
    # The archive's SHA-256 file: None derives MaxMind's (...?suffix=tar.gz.sha256) from a
    # MaxMind-style URL and checks nothing for other URLs; "off" never checks.
    "GEOIP_SHA256_URL": None,
    # Bounds of a download: seconds to connect and between bytes; largest archive or database.
    "GEOIP_DOWNLOAD_TIMEOUT": 60,
    "GEOIP_DOWNLOAD_MAX_BYTES": 1024**3,
    # How many reverse proxies in front of the service set X-Forwarded-For (0: none trusted).
    "TRUSTED_PROXIES": 0,
    # A visitor's session ends after this much inactivity.
    "SESSION_TIMEOUT_SECONDS": 1800,
    # Where visitors' session state lives: "store", or a Redis URI (redis://, rediss://,
    # redis+unix://, redis+sentinel://) shared by every worker and machine. None: Redis when
    # MONGO_URI is set and RATELIMIT_STORAGE_URI is a Redis URI (that one), else the store.
    # See rybbit/session_state.py. How long a Redis call may take before the shipment is
    # retried (with ACK=store, the request answered 503), so a frozen Redis holds up nothing.
    "SESSIONS_STORAGE_URI": None,
    "SESSIONS_STORAGE_TIMEOUT_MS": 2000,
    # POST /api/track/batch: most events and bytes (before and after gzip) per request.
    "BATCH_MAX_EVENTS": 500,
    "BATCH_MAX_CONTENT_LENGTH": 512 * 1024,
    # Group commit: most events one store write takes from concurrent requests.
    "GROUP_COMMIT_MAX_EVENTS": 5000,
    # Request bodies above this size get a 413 before they are parsed. 1 MiB is Rybbit's own
    # cap (Fastify's default body limit), so every event Rybbit accepts fits; a gzip body's
    # inflated size has the same cap.
    "MAX_CONTENT_LENGTH": 1024 * 1024,
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
    for name in ("ADMIN_TOKEN", "METRICS_TOKEN"):
        if os.environ.get(f"RYBBIT_{name}"):
            app.config[name] = os.environ[f"RYBBIT_{name}"]
    # Likewise MaxMind's credentials, also under the unprefixed names operators know them by.
    for name in ("MAXMIND_ACCOUNT_ID", "MAXMIND_LICENSE_KEY"):
        for variable in (f"RYBBIT_{name}", name):
            if os.environ.get(variable):
                app.config[name] = os.environ[variable]
    if test_config:
        app.config.from_mapping(test_config)


def instance_path_from_env() -> str | None:
    """The instance folder named by ``RYBBIT_INSTANCE_PATH``, made absolute."""
    path = os.environ.get("RYBBIT_INSTANCE_PATH")
    return os.path.abspath(path) if path else None
