"""Storage: one interface (``base.Storage``), two back ends, retention.

``MONGO_URI`` set: ``mongo.MongoStorage`` on that deployment. Unset: ``sqlite.SQLiteStorage``,
the embedded default, in ``<instance>/<EMBEDDED_STORE_DIR>/rybbit.sqlite3``; a folder the
montydb-based store of earlier versions wrote is migrated into it on first start
(``migrate_montydb``). Each process opens its own store on first use: neither pymongo clients
nor sqlite3 connections survive a fork.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading

import pymongo.errors
from flask import Flask, current_app

from ..store_errors import DuplicateKey, EventsRefused, StoreUnavailable
from . import retention
from .base import EventQuery, SessionExtend, SessionReplace, Storage
from .migrate_montydb import migrate_if_needed
from .mongo import MongoStorage, open_mongo
from .retention import Retention
from .sqlite import FILENAME, SQLiteStorage

__all__ = [
    "DuplicateKey",
    "EventQuery",
    "EventsRefused",
    "MongoStorage",
    "SQLiteStorage",
    "SessionExtend",
    "SessionReplace",
    "Storage",
    "StoreUnavailable",
    "get_store",
    "init_app",
]

log = logging.getLogger(__name__)

EXTENSION_KEY = "rybbit.store"


def embedded_dir(app: Flask) -> str:
    return os.path.join(app.instance_path, app.config["EMBEDDED_STORE_DIR"])


class _StoreHolder:
    """Opens the store on first use in each process."""

    def __init__(self, app: Flask) -> None:
        self.app = app
        self._pid: int | None = None
        self._store: Storage | None = None
        self._lock = threading.Lock()

    def get(self) -> Storage:
        pid = os.getpid()
        if self._store is not None and self._pid == pid:
            return self._store
        with self._lock:
            if self._store is None or self._pid != pid:
                self._store, self._pid = self._open(), pid
        return self._store

    def _open(self) -> Storage:
        settings = Retention.for_app(self.app)
        if not self.app.config["MONGO_URI"]:
            # Local: a failure here (unwritable folder, locked past the timeout) is raised.
            return open_embedded(self.app, settings)
        store = open_mongo(self.app)
        store.retention = settings
        try:
            store.ensure_indexes()
        except (StoreUnavailable, pymongo.errors.PyMongoError) as exc:
            # Not fatal: serving without an index beats not serving; retried on the next
            # process start.
            log.error("could not create indexes (%s); continuing without", exc)
        return store


def open_embedded(app: Flask, settings: Retention | None = None) -> SQLiteStorage:
    """The SQLite store, its schema created and any montydb data migrated into it. Several
    workers may start at once: a file lock lets one of them do that while the others wait."""
    folder = embedded_dir(app)
    os.makedirs(folder, exist_ok=True)
    store = SQLiteStorage(
        os.path.join(folder, FILENAME),
        busy_timeout_ms=int(app.config["EMBEDDED_BUSY_TIMEOUT_MS"]),
        synchronous=str(app.config["EMBEDDED_SYNCHRONOUS"]),
        group_commit_max_events=app.config["GROUP_COMMIT_MAX_EVENTS"],
    )
    store.retention = settings or Retention.for_app(app)
    with open(os.path.join(folder, ".open.lock"), "w") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        store.ensure_indexes()
        migrate_if_needed(store, folder)
    return store


def init_app(app: Flask) -> None:
    """Register the lazily opened store on the app."""
    app.extensions[EXTENSION_KEY] = _StoreHolder(app)
    retention.init_app(app)  # checks EVENT_RETENTION_DAYS & co.
    target = "MongoDB" if app.config["MONGO_URI"] else "embedded store (SQLite)"
    log.info("storage: %s", target)


def get_store(app: Flask | None = None) -> Storage:
    """This process's store for ``app`` (default: the current app)."""
    app = app or current_app._get_current_object()  # type: ignore[attr-defined]
    holder: _StoreHolder = app.extensions[EXTENSION_KEY]
    return holder.get()
