"""The MongoDB back end: any MongoDB-wire server, through pymongo. The production store.

Writes use the configured write concern (journaled by default), so a 200 means the event is on
disk; derived state (sessions, salts, event-id records) is acknowledged but not journaled (see
``state``). Indexes: ``events: site_id+timestamp`` (listing, export, site deletion),
``api_keys: key_hash`` (unique) and ``site_id``; TTL indexes as backstops for salts and
sessions where the server has them.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pymongo
import pymongo.errors
from flask import Flask
from pymongo import UpdateOne
from pymongo.write_concern import WriteConcern

from ..metrics import store_write
from ..store_errors import DuplicateKey, StoreUnavailable
from ..write_errors import outcomes as per_document_outcomes
from .base import Doc, EventQuery, SessionExtend, SessionReplace, Storage

log = logging.getLogger(__name__)
# Ids from which one scanning ``$in`` beats a query per id on FerretDB (see _scans_for_in):
# a shipment of new visitors asks for hundreds at once.
_SCANNING_IN_MIN_KEYS = 100

_LIVE = {"deleted_at": None}
# "NotImplemented" and "CommandNotSupported": features a MongoDB-wire server lacks.
_NOT_SUPPORTED_CODES = (115, 238)

# Errors that mean "try again later" rather than "this request is wrong".
_TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    pymongo.errors.ConnectionFailure,  # includes timeouts, AutoReconnect, NotPrimary
    pymongo.errors.ExecutionTimeout,
    pymongo.errors.WTimeoutError,
    pymongo.errors.WriteConcernError,
)


@contextlib.contextmanager
def translate_errors() -> Iterator[None]:
    """Turn driver errors into the two outcomes callers handle: unavailable, duplicate."""
    try:
        yield
    except pymongo.errors.DuplicateKeyError as exc:
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


def _events_filter(query: EventQuery) -> dict[str, Any]:
    found: dict[str, Any] = {}
    if query.site_id is not None:
        found["site_id"] = query.site_id
    window: dict[str, Any] = {}
    if query.start is not None:
        window["$gte"] = query.start
    if query.end is not None:
        window["$lt"] = query.end
    if window:
        found["timestamp"] = window
    if query.event_type is not None:
        found["type"] = query.event_type
    if query.after is not None:
        stamp, last_id = query.after
        beyond = "$lt" if query.newest_first else "$gt"
        found["$or"] = [
            {"timestamp": {beyond: stamp}},
            {"timestamp": stamp, "_id": {beyond: last_id}},
        ]
    return found


class MongoStorage(Storage):
    """The storage interface on a pymongo database."""

    embedded = False

    def __init__(self, db: Any, *, group_commit_max_events: int = 5000) -> None:
        super().__init__(group_commit_max_events=group_commit_max_events)
        self.db = db
        self._in_scans: bool | None = None  # see _scans_for_in
        # Collection handles, made once: pymongo builds a new object (and options) per lookup,
        # which every event would otherwise pay for several times.
        self._collections: dict[tuple[str, bool], Any] = {}

    @contextlib.contextmanager
    def op(self) -> Iterator[None]:
        with translate_errors():
            yield

    def _collection(self, name: str, state: bool = False) -> Any:
        handle = self._collections.get((name, state))
        if handle is None:
            handle = self.db[name]
            if state:
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

    def state(self, name: str) -> Any:
        """A collection for derived, rebuildable state (sessions, salts): acknowledged but not
        journaled, since losing the last write costs at most a split session, while waiting
        for the journal would cost every event a disk flush."""
        return self._collection(name, state=True)

    # -- lifecycle ---------------------------------------------------------------------------

    def ensure_indexes(self) -> None:
        self.retention.ensure(self)  # first: events may have to be created as time-series
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

    def ping(self) -> None:
        try:
            with self.op():
                self.db.command("ping")
        except pymongo.errors.PyMongoError as exc:
            raise StoreUnavailable(type(exc).__name__) from exc

    def close(self) -> None:
        self.db.client.close()

    # -- events ------------------------------------------------------------------------------

    @store_write  # metrics: each write's duration, and its errors
    def insert_events(self, events: list[Doc]) -> list[Exception | None] | None:
        if not events:
            return None
        if self.retention.prepare_insert(self):  # time-series: no unique _id, see retention.py
            return self.retention.insert_timeseries(self, events)
        try:
            with self.op():
                self.events.insert_many(events, ordered=False)
        except DuplicateKey:
            pass  # only duplicates failed (translate_errors checks); the rest are stored
        except pymongo.errors.BulkWriteError as exc:  # some documents refused, not the write
            return per_document_outcomes(exc.details, len(events))
        return None

    def _sorted_events(self, query: EventQuery) -> Any:
        direction = -1 if query.newest_first else 1
        return self.events.find(_events_filter(query)).sort(
            [("timestamp", direction), ("_id", direction)]
        )

    def find_events(self, query: EventQuery, limit: int) -> list[Doc]:
        with self.op():
            return list(self._sorted_events(query).limit(limit))

    def iter_events(self, query: EventQuery) -> Iterator[Doc]:
        with self.op():
            cursor = self._sorted_events(query).batch_size(1000)
            try:
                yield from cursor
            finally:
                cursor.close()

    def count_events(self, site_id: str | None = None) -> int:
        with self.op():
            return int(self.events.count_documents({} if site_id is None else {"site_id": site_id}))

    def delete_site_events(self, site_id: str) -> int:
        with self.op():
            return int(self.events.delete_many({"site_id": site_id}).deleted_count)

    def delete_events_before(self, cutoff: datetime) -> int:
        with self.op():
            return int(self.events.delete_many({"timestamp": {"$lt": cutoff}}).deleted_count)

    # -- sites -------------------------------------------------------------------------------

    def last_site_seq(self) -> int:
        with self.op():
            last = list(self.sites.find({}, {"seq": 1}).sort("seq", -1).limit(1))
        return int(last[0]["seq"]) if last else 0

    def insert_site(self, doc: Doc) -> None:
        with self.op():
            self.sites.insert_one(doc)

    def find_site(self, site_id: str) -> Doc | None:
        with self.op():
            return self.sites.find_one({"_id": site_id, **_LIVE})  # type: ignore[no-any-return]

    def list_sites(self) -> list[Doc]:
        with self.op():
            return list(self.sites.find(_LIVE).sort("seq", 1))

    def find_deleted_site(self, site_id: str) -> Doc | None:
        with self.op():
            found = self.sites.find_one({"_id": site_id, "deleted_at": {"$ne": None}})
        return found  # type: ignore[no-any-return]

    def list_deleted_sites(self) -> list[Doc]:
        with self.op():
            return list(self.sites.find({"deleted_at": {"$ne": None}}).sort("seq", 1))

    def update_site(self, site_id: str, fields: Doc) -> bool:
        with self.op():
            result = self.sites.update_one({"_id": site_id, **_LIVE}, {"$set": fields})
        return bool(result.matched_count)

    # -- API keys ----------------------------------------------------------------------------

    def insert_key(self, doc: Doc) -> None:
        with self.op():
            self.api_keys.insert_one(doc)

    def find_key(self, key_id: str, site_id: str | None = None) -> Doc | None:
        query = {"_id": key_id} if site_id is None else {"_id": key_id, "site_id": site_id}
        with self.op():
            return self.api_keys.find_one(query)  # type: ignore[no-any-return]

    def find_key_by_hash(self, key_hash: str) -> Doc | None:
        with self.op():
            return self.api_keys.find_one({"key_hash": key_hash})  # type: ignore[no-any-return]

    def list_keys(self, site_id: str) -> list[Doc]:
        with self.op():
            return list(self.api_keys.find({"site_id": site_id}).sort("created_at", 1))

    def update_key(
        self, key_id: str, fields: Doc, *, site_id: str | None = None, live: bool = False
    ) -> bool:
        query: dict[str, Any] = {"_id": key_id}
        if site_id is not None:
            query["site_id"] = site_id
        if live:
            query["revoked_at"] = None
        with self.op():
            return bool(self.api_keys.update_one(query, {"$set": fields}).matched_count)

    def revoke_site_keys(self, site_id: str, at: datetime) -> int:
        with self.op():
            result = self.api_keys.update_many(
                {"site_id": site_id, "revoked_at": None}, {"$set": {"revoked_at": at}}
            )
        return int(result.modified_count)

    def record_key_uses(self, uses: dict[str, datetime]) -> None:
        for key_id, used_at in uses.items():
            with self.op():
                self.api_keys.update_one({"_id": key_id}, {"$max": {"last_used_at": used_at}})

    # -- identity salts ----------------------------------------------------------------------

    def salt_for_day(self, candidate: Doc) -> Doc:
        salts = self.state("salts")
        with self.op():
            found = salts.find_one({"_id": candidate["_id"]})
        if found is not None:
            return found  # type: ignore[no-any-return]
        try:
            with self.op():
                salts.insert_one(dict(candidate))
            return candidate
        except DuplicateKey:  # another worker made the day's salt first: use theirs
            with self.op():
                return salts.find_one({"_id": candidate["_id"]})  # type: ignore[no-any-return]

    def delete_salts_before(self, day: str) -> int:
        with self.op():
            return int(self.state("salts").delete_many({"_id": {"$lt": day}}).deleted_count)

    def list_salts(self) -> list[Doc]:
        with self.op():
            return list(self.state("salts").find({}))

    # -- other state documents ------------------------------------------------------------

    def find_document(self, collection: str, doc_id: str) -> Doc | None:
        with self.op():
            return self.state(collection).find_one({"_id": doc_id})  # type: ignore[no-any-return]

    def put_document(self, collection: str, doc: Doc) -> None:
        with self.op():
            self.state(collection).replace_one({"_id": doc["_id"]}, doc, upsert=True)

    # -- visitor sessions --------------------------------------------------------------------

    def find_sessions(self, keys: list[str]) -> dict[str, Doc]:
        """One ``$in`` query; on a server that scans the collection for it (FerretDB 1.x), one
        query per id unless there are many."""
        if not keys:
            return {}
        sessions = self.state("sessions")
        with self.op():
            if len(keys) == 1 or (self._scans_for_in() and len(keys) < _SCANNING_IN_MIN_KEYS):
                found = (sessions.find_one({"_id": each}) for each in keys)
                return {doc["_id"]: doc for doc in found if doc is not None}
            return {doc["_id"]: doc for doc in sessions.find({"_id": {"$in": keys}})}

    def _scans_for_in(self) -> bool:
        """True on FerretDB 1.x (SQLite back end): it reads every document for an ``$in``, and
        slowly (measured among 50,000 sessions: 1.4 s for 10 ids, 3.3 s for 1,000), while a
        single-id query costs ~25 ms there. MongoDB answers an ``$in`` from its index."""
        if self._in_scans is None:
            info = self.db.client.admin.command("buildInfo")
            self._in_scans = "ferretdbVersion" in info
        return self._in_scans

    def insert_sessions(self, docs: list[Doc]) -> set[str]:
        if not docs:
            return set()
        try:
            with self.op():
                self.state("sessions").insert_many([dict(doc) for doc in docs], ordered=False)
        except DuplicateKey as exc:
            refused = {docs[index]["_id"] for index in exc.indexes}
            return {doc["_id"] for doc in docs} - refused
        return {doc["_id"] for doc in docs}

    def update_sessions(self, changes: list[SessionReplace | SessionExtend]) -> bool:
        if not changes:
            return True
        writes = []
        for change in changes:
            if isinstance(change, SessionReplace):
                query = {
                    "_id": change.key,
                    "session_id": change.session_id,
                    "last_seen": {"$lt": change.ended_before},
                }
                writes.append(UpdateOne(query, {"$set": change.new}))
            else:
                query = {"_id": change.key, "session_id": change.session_id}
                writes.append(UpdateOne(query, {"$max": {"last_seen": change.last_seen}}))
        with self.op():
            result = self.state("sessions").bulk_write(writes, ordered=False)
        return bool(result.matched_count == len(changes))

    def delete_sessions_before(self, before: datetime) -> int:
        with self.op():
            result = self.state("sessions").delete_many({"last_seen": {"$lt": before}})
        return int(result.deleted_count)

    def list_sessions(self) -> list[Doc]:
        with self.op():
            return list(self.state("sessions").find({}))


def open_mongo(app: Flask) -> MongoStorage:
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
    return MongoStorage(db, group_commit_max_events=app.config["GROUP_COMMIT_MAX_EVENTS"])
