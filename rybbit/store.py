"""One storage layer, driven through pymongo's collection API.

With ``MONGO_URI`` it talks to that MongoDB deployment (or any MongoDB-wire server); without it,
to montydb, an embedded document store with pymongo's API that keeps its data in SQLite files
under the instance folder. Callers see the same ``Store`` either way.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import sqlite3
import threading
from collections.abc import Iterator
from typing import Any

import montydb.errors
import montydb.storage
import pymongo
import pymongo.errors
from flask import Flask, current_app
from pymongo.write_concern import WriteConcern

from .group_commit import GroupCommit
from .metrics import store_write
from .retention import Retention
from .retention import init_app as init_retention
from .store_errors import DuplicateKey, EventsRefused, StoreUnavailable
from .write_errors import outcomes as per_document_outcomes

log = logging.getLogger(__name__)

EXTENSION_KEY = "rybbit.store"
COLLECTIONS = ("events", "sites", "api_keys", "salts", "sessions")


# montydb raises its own duplicate-key errors (inserts, and upserts in its storage layer).
_DUPLICATE_ERRORS: tuple[type[BaseException], ...] = (
    pymongo.errors.DuplicateKeyError,
    montydb.errors.DuplicateKeyError,
    montydb.storage.StorageDuplicateKeyError,
)
# Documents from which the embedded store inserts a group in one transaction (_insert_embedded).
_EMBEDDED_INSERT_MANY_FROM = 20
# "NotImplemented" and "CommandNotSupported": features a MongoDB-wire server lacks.
_NOT_SUPPORTED_CODES = (115, 238)


# Errors that mean "try again later" rather than "this request is wrong".
_TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    pymongo.errors.ConnectionFailure,  # includes timeouts, AutoReconnect, NotPrimary
    pymongo.errors.ExecutionTimeout,
    pymongo.errors.WTimeoutError,
    pymongo.errors.WriteConcernError,
    sqlite3.OperationalError,  # embedded store: locked or unwritable database
)


@contextlib.contextmanager
def translate_errors() -> Iterator[None]:
    """Turn driver errors into the two outcomes callers handle: unavailable, duplicate."""
    try:
        yield
    except _DUPLICATE_ERRORS as exc:
        raise DuplicateKey(str(exc)) from exc
    except pymongo.errors.BulkWriteError as exc:
        if exc.details.get("writeConcernErrors"):
            # The writes may be applied but are not known to meet the write concern (a
            # majority wait timed out, a failover): not acknowledged, so the client retries.
            log.warning("store unavailable: write concern not met")
            raise StoreUnavailable("WriteConcernError") from exc
        write_errors = exc.details.get("writeErrors", [])
        if write_errors and all(e.get("code") == 11000 for e in write_errors):
            indexes = tuple(int(e["index"]) for e in write_errors if "index" in e)
            raise DuplicateKey(str(exc), indexes) from exc
        raise
    except _TRANSIENT_ERRORS as exc:
        log.warning("store unavailable: %s", type(exc).__name__)
        raise StoreUnavailable(type(exc).__name__) from exc


class Store:
    """The collections the service uses, and the few operations it needs on them."""

    def __init__(self, db: Any, *, embedded: bool, group_commit_max_events: int = 5000) -> None:
        self.db = db
        self.embedded = embedded
        self._in_scans: bool | None = None  # see _scans_for_in
        self.group_commit: GroupCommit[dict[str, Any], Exception | None] = GroupCommit(
            self.insert_events, group_commit_max_events
        )
        # The events collection's kind and expiry (retention.py); configured by _StoreHolder.
        self.retention = Retention()
        # montydb's SQLite engine keeps its current connection on a shared attribute, so one
        # process must not run two operations on it at once.
        self._lock: contextlib.AbstractContextManager[Any] = (
            threading.Lock() if embedded else contextlib.nullcontext()
        )
        # Collection handles, made once: pymongo builds a new object (and options) per lookup,
        # which every event would otherwise pay for several times.
        self._collections: dict[tuple[str, bool], Any] = {}

    def _collection(self, name: str, state: bool = False) -> Any:
        handle = self._collections.get((name, state))
        if handle is None:
            handle = self.db[name]
            if state and not self.embedded:
                handle = handle.with_options(write_concern=WriteConcern(w=1, j=False))
            self._collections[(name, state)] = handle
        return handle

    @property
    def events(self) -> Any:
        return self._collection("events")

    @property
    def sites(self) -> Any:
        return self._collection("sites")

    @property
    def api_keys(self) -> Any:
        return self._collection("api_keys")

    def find_by_ids(self, collection: Any, ids: list[Any]) -> dict[Any, dict[str, Any]]:
        """The documents of ``collection`` with these ``_id``s, by ``_id``: one ``$in`` query,
        or one query per id where the server would scan the collection for an ``$in``."""
        with self.op():
            if len(ids) == 1 or self._scans_for_in():
                found = (collection.find_one({"_id": each}) for each in ids)
                return {doc["_id"]: doc for doc in found if doc is not None}
            return {doc["_id"]: doc for doc in collection.find({"_id": {"$in": ids}})}

    def insert_missing(self, collection: Any, docs: list[dict[str, Any]]) -> set[Any]:
        """Insert each document whose ``_id`` is free, in one write; the ``_id``s inserted.
        Meant for the state collections (see _insert_embedded for the embedded store)."""
        if not docs:
            return set()
        if self.embedded:
            return self._insert_embedded(collection, docs, together=True)
        try:
            with self.op():
                collection.insert_many(docs, ordered=False)
        except DuplicateKey as exc:
            refused = {docs[index]["_id"] for index in exc.indexes}
            return {doc["_id"] for doc in docs} - refused
        return {doc["_id"] for doc in docs}

    def _insert_embedded(
        self, collection: Any, docs: list[dict[str, Any]], *, together: bool
    ) -> set[Any]:
        """insert_missing on montydb; ``together`` allows one insert_many for a large group.

        montydb's insert_many is one SQLite transaction (0.03 ms a document, against 1.1 ms
        for each insert_one's), but it first reads every key of the collection (8.5 ms at
        20,000 documents): worth it for a batch's visitors, not for one event's, and never for
        the ever-growing events. Against a stored duplicate it is all or nothing
        (sqlite3.IntegrityError), against one within the call it is not, so it takes only
        distinct ids. After any duplicate, each document goes alone, and only the duplicates
        are refused."""
        if (
            together
            and len(docs) >= _EMBEDDED_INSERT_MANY_FROM
            and len({doc["_id"] for doc in docs}) == len(docs)
        ):
            try:
                with self.op():
                    collection.insert_many(docs)
                return {doc["_id"] for doc in docs}
            except (DuplicateKey, sqlite3.IntegrityError, montydb.errors.BulkWriteError):
                pass
        inserted = set()
        for doc in docs:
            try:
                with self.op():
                    collection.insert_one(doc)
                inserted.add(doc["_id"])
            except DuplicateKey:
                pass
        return inserted

    def _scans_for_in(self) -> bool:
        """True on FerretDB 1.x: it looks up a single _id by index but filters an ``$in``
        by reading every document (measured: 100 ms for 10 ids among 5,000 documents, where
        ten lookups take 7 ms). MongoDB and the embedded store answer an ``$in`` in one go."""
        if self._in_scans is None:
            if self.embedded:
                self._in_scans = False
            else:
                info = self.db.client.admin.command("buildInfo")
                self._in_scans = "ferretdbVersion" in info
        return self._in_scans

    def state(self, name: str) -> Any:
        """A collection for derived, rebuildable state (sessions, salts): acknowledged but not
        journaled, since losing the last write costs at most a split session, while waiting
        for the journal would cost every event a disk flush."""
        return self._collection(name, state=True)

    @contextlib.contextmanager
    def op(self) -> Iterator[None]:
        """Run one store operation: serialised on the embedded store, errors translated."""
        with self._lock, translate_errors():
            yield

    def commit_events(self, events: list[dict[str, Any]]) -> None:
        """Store events for a request, sharing one write with concurrent requests (see
        group_commit); returns once they are acknowledged, raises as insert_events does.
        When some of them were not stored but others were, EventsRefused names them (by
        position in ``events``): refused for what they hold, or to be retried (a transient
        per-document error). StoreUnavailable only when none of them was stored, so that a
        request answered 503 has stored nothing."""
        outcomes = self.group_commit.submit(events)
        failed = {i: error for i, error in enumerate(outcomes) if error is not None}
        retry = frozenset(i for i, error in failed.items() if isinstance(error, StoreUnavailable))
        if retry and len(failed) == len(events):
            raise StoreUnavailable("write error")
        if failed:
            reasons = {i: str(error) for i, error in failed.items() if i not in retry}
            raise EventsRefused(reasons, retry)

    @store_write  # metrics: each write's duration, and its errors
    def insert_events(self, events: list[dict[str, Any]]) -> list[Exception | None] | None:
        """Store events; one whose ``_id`` exists (a repeated ``event_id``) is skipped, as
        already stored. Any other failure of the whole write raises, and the caller must not
        acknowledge. Where the server refuses single documents, the others are stored and the
        result has, per event, None or the error for its sender (see write_errors)."""
        if not events:
            return None
        if self.retention.prepare_insert(self):  # time-series: no unique _id, see retention.py
            return self.retention.insert_timeseries(self, events)
        if self.embedded:
            self._insert_embedded(self.events, events, together=False)
            return None
        try:
            with self._lock, translate_errors():
                self.events.insert_many(events, ordered=False)
        except DuplicateKey:
            pass  # only duplicates failed (translate_errors checks); the rest are stored
        except pymongo.errors.BulkWriteError as exc:  # some documents refused, not the write
            return per_document_outcomes(exc.details, len(events))
        return None

    def ensure_indexes(self) -> None:
        """Create the indexes the read paths need; montydb has none and skips this."""
        self.retention.ensure(self)  # first: events may have to be created as time-series
        if self.embedded:
            return
        with self.op():
            self.events.create_index([("site_id", 1), ("timestamp", 1)])
            self.api_keys.create_index("key_hash", unique=True)
            self.api_keys.create_index("site_id")
        # Backstops for state the identity and sessions enrichers also clean up themselves.
        self.create_ttl_index("salts", "created_at", 48 * 3600)
        self.create_ttl_index("sessions", "last_seen", 24 * 3600)

    def create_ttl_index(self, collection: str, field: str, seconds: int) -> bool:
        """A TTL index where the server has them; False where it does not (FerretDB 1.x),
        in which case the caller's own clean-up is all there is."""
        try:
            with self.op():
                self.db[collection].create_index(field, expireAfterSeconds=seconds)
        except pymongo.errors.OperationFailure as exc:
            if exc.code not in _NOT_SUPPORTED_CODES:
                raise
            log.info("no TTL index on %s.%s: the server does not support them", collection, field)
            return False
        return True


def _open_mongo(app: Flask) -> Store:
    uri = app.config["MONGO_URI"]
    timeout = int(app.config["MONGO_TIMEOUT_MS"])
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
        uri,
        tz_aware=True,
        serverSelectionTimeoutMS=timeout,
        connectTimeoutMS=timeout,
        socketTimeoutMS=timeout * 3,
        appname="rybbit-track",
    )
    name = app.config["MONGO_DB_NAME"]
    if name:
        db = client[name]
    else:
        db = client.get_default_database(default="rybbit")
    db = db.with_options(write_concern=WriteConcern(**app.config["MONGO_WRITE_CONCERN"]))
    return Store(db, embedded=False, group_commit_max_events=app.config["GROUP_COMMIT_MAX_EVENTS"])


def _open_embedded(app: Flask) -> Store:
    from montydb import MontyClient, set_storage

    path = os.path.join(app.instance_path, app.config["EMBEDDED_STORE_DIR"])
    os.makedirs(path, exist_ok=True)
    # Several gunicorn workers may open the store at once. montydb creates config files and
    # collection tables on first use without guarding against other processes, so do all of
    # that here, one process at a time.
    with open(os.path.join(path, ".open.lock"), "w") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        if not os.path.exists(os.path.join(path, "monty.storage.cfg")):
            set_storage(path, storage="sqlite", use_bson=True, check_same_thread=False)
        # tz_aware as for pymongo: both stores hand back UTC-aware datetimes.
        db = MontyClient(path, tz_aware=True)["rybbit"]
        existing = set(db.list_collection_names())
        for name in COLLECTIONS:
            if name not in existing:
                db.create_collection(name)
    return Store(db, embedded=True, group_commit_max_events=app.config["GROUP_COMMIT_MAX_EVENTS"])


class _StoreHolder:
    """Opens the store on first use in each process: pymongo clients are not fork-safe."""

    def __init__(self, app: Flask) -> None:
        self.app = app
        self._pid: int | None = None
        self._store: Store | None = None
        self._lock = threading.Lock()

    def get(self) -> Store:
        pid = os.getpid()
        if self._store is not None and self._pid == pid:
            return self._store
        with self._lock:
            if self._store is None or self._pid != pid:
                if self.app.config["MONGO_URI"]:
                    store = _open_mongo(self.app)
                else:
                    store = _open_embedded(self.app)
                store.retention = Retention.for_app(self.app)
                try:
                    store.ensure_indexes()
                except (StoreUnavailable, pymongo.errors.PyMongoError) as exc:
                    # Not fatal: serving without an index beats not serving; retried on the
                    # next process start.
                    log.error("could not create indexes (%s); continuing without", exc)
                self._store, self._pid = store, pid
        return self._store


def init_app(app: Flask) -> None:
    """Register the lazily opened store on the app."""
    app.extensions[EXTENSION_KEY] = _StoreHolder(app)
    init_retention(app)  # checks EVENT_RETENTION_DAYS & co.; adds `flask retention`
    target = "MongoDB" if app.config["MONGO_URI"] else "embedded store"
    log.info("storage: %s", target)


def get_store(app: Flask | None = None) -> Store:
    """This process's store for ``app`` (default: the current app)."""
    app = app or current_app._get_current_object()  # type: ignore[attr-defined]
    holder: _StoreHolder = app.extensions[EXTENSION_KEY]
    return holder.get()
