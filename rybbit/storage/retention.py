"""Event retention, and which kind of collection holds the events.

``EVENT_RETENTION_DAYS`` (None: keep forever) is enforced by the server where it can be:

- MongoDB 5.0+ (``EVENTS_TIMESERIES`` "auto", the default): ``events`` is created as a
  time-series collection (time field ``timestamp``, meta field ``site_id``) with
  ``expireAfterSeconds``; the server drops expired buckets itself.
- Other MongoDB servers, or an ``events`` collection that already exists as a regular one: a
  TTL index on ``timestamp``.
- Servers without TTL indexes (FerretDB 1.x) and the embedded store: each process deletes
  expired events itself, in a background thread started from the write path at most once per
  ``EVENT_PURGE_INTERVAL_SECONDS``; ``flask --app app retention purge`` does it on demand. On
  the embedded store the purge deletes by the indexed time in small transactions, so writers
  never wait long for it.

The kind of collection is decided once per process, before its first insert: on an existing
``events`` collection, by what it is; otherwise by trying to create a time-series one and
falling back to a regular collection when the server refuses the option. Several processes
may race to create it; the loser reads what the winner made. A changed retention is applied
at start-up (collMod of the TTL index or of the time-series ``expireAfterSeconds``).

Idempotency in time-series mode. A regular collection's unique ``_id`` index is what keeps a
retried ``event_id`` from being stored twice (see ``events.idempotent_id``); time-series
collections enforce no unique index. There, the ids of client-identified events are recorded
in a regular side collection, ``event_ids`` (``_id`` = the event's deterministic id; TTL'd with
the events). A write first drops events whose id is recorded already, stores the rest, and only
then records their ids. Recording ids before storing could acknowledge a retry of an event that
was never stored; this order never loses an acknowledged event, at the price of exactly-once
becoming at-least-once: if the process dies or the id write fails between the two writes, or two
processes take the same id at the same moment, the event can be stored twice (both copies
with the same ``_id``, so readers can tell).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pymongo.errors
from flask import Flask

from ..native import os_thread
from ..store_errors import DuplicateKey, StoreUnavailable
from ..write_errors import outcomes

if TYPE_CHECKING:  # only for types: the back ends import this module, never the reverse
    from .base import Storage as Store
    from .mongo import MongoStorage

log = logging.getLogger(__name__)

EXTENSION_KEY = "rybbit.retention"
IDS_COLLECTION = "event_ids"
TIMESERIES_OPTIONS = {"timeField": "timestamp", "metaField": "site_id", "granularity": "seconds"}

REGULAR, TIMESERIES = "regular", "timeseries"
# How expired events go: the server (TTL index or time-series expiry), this process's purge,
# or not at all (no retention).
BY_SERVER, BY_PURGE, NEVER = "server", "purge", "never"

# "NotImplemented" and "CommandNotSupported" (FerretDB); an unknown ``create`` field
# (MongoDB before 5.0: Location40415); "InvalidOptions".
_NO_TIMESERIES_CODES = frozenset({115, 238, 40415, 72})
_NOT_SUPPORTED_CODES = frozenset({115, 238})
_NAMESPACE_EXISTS = 48
_INDEX_NOT_FOUND = 27
_INDEX_CONFLICT_CODES = frozenset({85, 86})  # IndexOptionsConflict, IndexKeySpecsConflict


@dataclass(frozen=True)
class Settings:
    """Retention settings, checked once when the app is created."""

    seconds: int | None = None  # None: events are kept forever
    timeseries: bool = True  # use a time-series collection where the server has them
    purge_interval: float = 600.0

    @classmethod
    def from_config(cls, config: Any) -> Settings:
        """Read and check the settings; ValueError names the one that is wrong."""
        return cls(
            seconds=_retention_seconds(config.get("EVENT_RETENTION_DAYS")),
            timeseries=_timeseries_setting(config.get("EVENTS_TIMESERIES", "auto")),
            purge_interval=_purge_interval(config.get("EVENT_PURGE_INTERVAL_SECONDS", 600)),
        )


def _retention_seconds(days: Any) -> int | None:
    if days is None or str(days).strip().lower() in ("", "off", "none", "null", "forever"):
        return None
    if isinstance(days, bool) or not isinstance(days, int | float | str):
        raise ValueError(f"EVENT_RETENTION_DAYS must be a number of days or null, not {days!r}")
    try:
        value = float(days)
    except ValueError:
        raise ValueError(f"EVENT_RETENTION_DAYS must be a number of days, not {days!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"EVENT_RETENTION_DAYS must be more than 0 (or null), not {days!r}")
    return max(1, round(value * 86400))


def _timeseries_setting(value: Any) -> bool:
    text = str(value).strip().lower()
    if text in ("auto", "true", "on", "yes", "1"):
        return True
    if text in ("false", "off", "no", "never", "0"):
        return False
    raise ValueError(f'EVENTS_TIMESERIES must be "auto" or false, not {value!r}')


def _purge_interval(value: Any) -> float:
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"EVENT_PURGE_INTERVAL_SECONDS must be a number, not {value!r}") from None
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"EVENT_PURGE_INTERVAL_SECONDS must be 0 or more, not {value!r}")
    return seconds


class Retention:
    """One process's view of the events collection: its kind, how events expire, the purge."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or Settings()
        self.mode: str | None = None  # REGULAR or TIMESERIES once decided
        self.expiry = NEVER
        self.reason = ""  # why this mode, for the log and `retention status`
        self._ensure_lock = threading.Lock()
        self._purge_lock = threading.Lock()
        self._next_purge = float("-inf")  # monotonic; the first write after start-up purges
        self._purge_thread: threading.Thread | None = None
        self.last_purge: dict[str, Any] | None = None

    @classmethod
    def for_app(cls, app: Flask) -> Retention:
        settings = app.extensions.get(EXTENSION_KEY) or Settings.from_config(app.config)
        return cls(settings)

    @property
    def timeseries(self) -> bool:
        return self.mode == TIMESERIES

    # -- start-up ---------------------------------------------------------------------------

    def ensure(self, store: Store) -> None:
        """Decide the events collection's kind (creating it if need be) and apply the
        retention to it. Raises StoreUnavailable when the store cannot be reached; then the
        next insert tries again before it writes."""
        with self._ensure_lock:
            mode, reason = self._events_collection(store)
            expiry = self._apply_expiry(store, mode)
            self.mode, self.expiry, self.reason = mode, expiry, reason
        log.info("events: %s", self.describe_line())

    def _events_collection(self, store: Store) -> tuple[str, str]:
        if store.embedded:
            return REGULAR, "embedded store (no time-series collections)"
        existing = _collection_info(store, "events")
        if existing is not None:
            return _mode_of_existing(existing, self.settings)
        if not self.settings.timeseries:
            return REGULAR, "time-series collections disabled by EVENTS_TIMESERIES"
        return _create_timeseries(store, self.settings)

    def _apply_expiry(self, store: Store, mode: str) -> str:
        """Bring the server's expiry in line with the settings; how events will expire."""
        seconds = self.settings.seconds
        if store.embedded:
            return NEVER if seconds is None else BY_PURGE
        try:
            if mode == TIMESERIES:
                _set_timeseries_expiry(store, seconds)
                # The ids expire with their events; a retry of an expired event is new again.
                _sync_ttl_index(store, IDS_COLLECTION, "timestamp", seconds)
                return NEVER if seconds is None else BY_SERVER
            has_ttl = _sync_ttl_index(store, "events", "timestamp", seconds)
        except StoreUnavailable:
            raise
        except pymongo.errors.PyMongoError as exc:
            # Not allowed, or some server's quirk: keep serving, and purge ourselves where we
            # can (a time-series collection keeps the expiry it had).
            log.error("events: could not apply the retention to the server (%s)", exc)
            if mode == TIMESERIES:
                return NEVER if seconds is None else BY_SERVER
            has_ttl = False
        if seconds is None:
            return NEVER
        return BY_SERVER if has_ttl else BY_PURGE

    # -- the write path ---------------------------------------------------------------------

    def prepare_insert(self, store: Store) -> bool:
        """Before each insert: decide the collection's kind if start-up could not (it must be
        created before the first insert), start a purge if one is due. True when the events go
        to a time-series collection: then ``insert_timeseries`` stores them."""
        if self.mode is None:
            self._ensure_before_insert(store)
        if self.expiry == BY_PURGE:
            self._maybe_purge(store)
        return self.mode == TIMESERIES

    def _ensure_before_insert(self, store: Store) -> None:
        try:
            self.ensure(store)
        except StoreUnavailable:
            raise  # the insert would fail as well: a 503, and the next one tries again
        except Exception:
            # Never refuse events over this: a regular collection keeps them just as well.
            log.exception("events: could not decide the collection kind; using a regular one")
            with self._ensure_lock:
                if self.mode is None:
                    self.mode, self.reason = REGULAR, "the kind could not be decided"
                    if self.settings.seconds is not None:
                        self.expiry = BY_PURGE

    def insert_timeseries(
        self, store: MongoStorage, events: list[dict[str, Any]]
    ) -> list[Exception | None] | None:
        """Store events in a time-series collection, each client-identified one once (see the
        module docstring): drop the ids already recorded, store, then record the new ids.
        Returns what insert_events does: None, or per event None or its error (the server
        refused single documents; only the stored ones' ids are recorded)."""
        fresh, marks = self._unseen(store, events)
        outcomes = store_events(store, fresh)  # raises: nothing recorded, the client retries
        if outcomes is None:
            record_ids(store, marks)
            return None
        failed = {fresh[i].get("_id") for i, error in enumerate(outcomes) if error is not None}
        record_ids(store, [mark for mark in marks if mark["_id"] not in failed])
        # Back to positions in ``events``: a skipped repeat of an id shares the outcome of the
        # event of that id stored in this write, if any (else it was stored before: None).
        position = {id(event): i for i, event in enumerate(fresh)}
        by_id = {e["_id"]: outcomes[i] for i, e in enumerate(fresh) if "event_id" in e}
        return [
            outcomes[position[id(event)]] if id(event) in position else by_id.get(event["_id"])
            for event in events
        ]

    @staticmethod
    def _unseen(
        store: MongoStorage, events: list[dict[str, Any]]
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """The events to store (not recorded, first of their id in this write), and the id
        records to write once they are stored."""
        wanted = list({event["_id"] for event in events if "event_id" in event})
        seen: set[Any] = set()
        if wanted:
            with store.op():
                found = store.state(IDS_COLLECTION).find({"_id": {"$in": wanted}}, {"_id": 1})
                seen = {doc["_id"] for doc in found}
        fresh, marks = [], []
        for event in events:
            if "event_id" in event:
                if event["_id"] in seen:
                    continue
                seen.add(event["_id"])
                marks.append({"_id": event["_id"], "timestamp": event["timestamp"]})
            fresh.append(event)
        return fresh, marks

    # -- the purge (servers without TTL indexes, embedded store) ---------------------------

    def _maybe_purge(self, store: Store) -> None:
        """Start a background purge if the interval has passed: one clock read per write,
        never a wait, never an error for the request."""
        now = time.monotonic()
        if now < self._next_purge:
            return
        with self._purge_lock:
            running = self._purge_thread is not None and self._purge_thread.is_alive()
            if now < self._next_purge or running:
                return
            self._next_purge = now + self.settings.purge_interval
            if store.embedded:  # SQLite blocks: off a gevent worker's loop (rybbit.native)
                thread = os_thread(self._purge_quietly, "rybbit-retention", (store,))
            else:  # pymongo's sockets belong to the loop's thread
                thread = threading.Thread(
                    target=self._purge_quietly, args=(store,), name="rybbit-retention", daemon=True
                )
            self._purge_thread = thread
        try:
            thread.start()
        except RuntimeError as exc:  # no thread to be had: try again next interval
            log.warning("retention: could not start the purge (%s)", exc)

    def _purge_quietly(self, store: Store) -> None:
        try:
            self.purge(store)
        except Exception as exc:
            log.warning(
                "retention: purge failed, retried in %ss (%s: %s)",
                self.settings.purge_interval,
                type(exc).__name__,
                exc,
            )

    def wait_for_purge(self, timeout: float = 30) -> None:
        """Wait for a running background purge (tests, shutdown)."""
        thread = self._purge_thread
        if thread is not None:
            thread.join(timeout)

    def purge(self, store: Store) -> int:
        """Delete events older than the retention now; how many. Nothing to do without a
        retention, or on a time-series collection (the server expires those; before 7.0 it
        also refuses deletes by time)."""
        if self.mode is None:
            self.ensure(store)
        seconds = self.settings.seconds
        if seconds is None or self.mode == TIMESERIES:
            return 0
        cutoff = datetime.now(UTC) - timedelta(seconds=seconds)
        started = time.monotonic()
        # On a server one statement; on the embedded store small transactions on the time index.
        deleted = store.delete_events_before(cutoff)
        took = time.monotonic() - started
        self.last_purge = {"at": datetime.now(UTC), "deleted": deleted, "cutoff": cutoff}
        if deleted:
            log.info(
                "retention: deleted %d events older than %s in %.2fs",
                deleted,
                cutoff.isoformat(),
                took,
            )
        return deleted

    # -- reporting --------------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        seconds = self.settings.seconds
        return {
            "events_collection": self.mode,
            "reason": self.reason,
            "retention_days": None if seconds is None else seconds / 86400,
            "expiry": self.expiry,
            "purge_interval_seconds": self.settings.purge_interval
            if self.expiry == BY_PURGE
            else None,
            "last_purge": self.last_purge,
        }

    def describe_line(self) -> str:
        kind = "time-series collection" if self.mode == TIMESERIES else "regular collection"
        seconds = self.settings.seconds
        if seconds is None:
            expiry = "kept forever (EVENT_RETENTION_DAYS unset)"
        elif self.expiry == BY_SERVER:
            how = "expireAfterSeconds" if self.mode == TIMESERIES else "a TTL index"
            expiry = f"expired by the server after {seconds}s ({how})"
        else:
            expiry = (
                f"deleted after {seconds}s by this process's purge, "
                f"at most every {self.settings.purge_interval:g}s"
            )
        return f"{kind} ({self.reason}); {expiry}"


# -- store operations ------------------------------------------------------------------------


def store_events(
    store: MongoStorage, events: list[dict[str, Any]]
) -> list[Exception | None] | None:
    """Insert events with the store's (journaled) write concern. A duplicate ``_id`` can only
    be refused by a regular collection standing in for a time-series one; it is stored. When
    the server refuses single documents, the others are stored: per event, None or its error
    (write_errors), so one refused document fails only its own request."""
    if not events:
        return None
    try:
        with store.op():
            store.events.insert_many(events, ordered=False)
    except DuplicateKey:
        pass
    except pymongo.errors.BulkWriteError as exc:  # store.op() lets only per-document ones by
        return outcomes(exc.details, len(events))
    return None


def record_ids(store: MongoStorage, marks: list[dict[str, Any]]) -> None:
    """Record the ids of stored events. Its events are stored already, so a failure is
    logged, not raised: the request is acknowledged, and a retry may store a copy."""
    if not marks:
        return
    try:
        with store.op():
            # Not journaled: a lost record costs at most a duplicate, as a crash here would.
            store.state(IDS_COLLECTION).insert_many(marks, ordered=False)
    except DuplicateKey:
        pass  # another process recorded the same id meanwhile
    except Exception as exc:
        log.warning(
            "event ids not recorded (%s): a retry of these events may store a copy",
            type(exc).__name__,
        )


def _collection_info(store: MongoStorage, name: str) -> dict[str, Any] | None:
    with store.op():
        found = list(store.db.list_collections(filter={"name": name}))
    return found[0] if found else None


def _mode_of_existing(info: dict[str, Any], settings: Settings) -> tuple[str, str]:
    if info.get("type") == TIMESERIES:
        if not settings.timeseries:
            log.warning(
                "events is a time-series collection; EVENTS_TIMESERIES=false cannot "
                "change that (see docs/retention.md to migrate)"
            )
        return TIMESERIES, "existing time-series collection"
    if settings.timeseries:
        return REGULAR, "existing regular collection, kept as it is"
    return REGULAR, "existing regular collection; time-series disabled by EVENTS_TIMESERIES"


def _create_timeseries(store: MongoStorage, settings: Settings) -> tuple[str, str]:
    """Create ``events`` as a time-series collection, or say why it is a regular one."""
    options: dict[str, Any] = {"timeseries": TIMESERIES_OPTIONS}
    if settings.seconds is not None:
        options["expireAfterSeconds"] = settings.seconds
    try:
        with store.op():
            store.db.create_collection("events", check_exists=False, **options)
    except (pymongo.errors.CollectionInvalid, pymongo.errors.OperationFailure) as exc:
        code = getattr(exc, "code", None)
        if isinstance(exc, pymongo.errors.CollectionInvalid) or code == _NAMESPACE_EXISTS:
            # Another process (or an insert) created it first: take what it made.
            info = _collection_info(store, "events")
            if info is not None:
                mode, _ = _mode_of_existing(info, settings)
                return mode, f"created by another process as a {mode} collection"
            raise
        name = (getattr(exc, "details", None) or {}).get("codeName", "")
        if code not in _NO_TIMESERIES_CODES:
            log.warning(
                "events: creating a time-series collection failed (%s); using a regular collection",
                exc,
            )
        return REGULAR, f"the server does not support time-series collections: {name} ({code})"
    return TIMESERIES, "time-series collection created"


def _set_timeseries_expiry(store: MongoStorage, seconds: int | None) -> None:
    info = _collection_info(store, "events") or {}
    current = (info.get("options") or {}).get("expireAfterSeconds")
    if (None if current is None else int(current)) == seconds:
        return
    with store.op():
        store.db.command({"collMod": "events", "expireAfterSeconds": seconds or "off"})
    log.info("events: time-series expireAfterSeconds %s -> %s", current, seconds or "off")


def _sync_ttl_index(store: MongoStorage, collection: str, field: str, seconds: int | None) -> bool:
    """Make the TTL index on ``field`` expire after ``seconds`` (None: no TTL index). False
    where the server has no TTL indexes (FerretDB 1.x) or an index is in the way."""
    coll = store.db[collection]
    with store.op():
        current = next((ix for ix in coll.list_indexes() if dict(ix["key"]) == {field: 1}), None)
    if seconds is None:
        if current is not None and "expireAfterSeconds" in current:
            try:
                with store.op():
                    coll.drop_index(current["name"])
            except pymongo.errors.OperationFailure as exc:
                if exc.code != _INDEX_NOT_FOUND:  # another process dropped it
                    raise
            log.info("%s: TTL index on %s dropped (no retention)", collection, field)
        return False
    if current is None:
        try:
            with store.op():
                coll.create_index(field, expireAfterSeconds=seconds)
            return True
        except pymongo.errors.OperationFailure as exc:
            if exc.code in _NOT_SUPPORTED_CODES:
                return False
            if exc.code not in _INDEX_CONFLICT_CODES:
                raise
            # Another process created it meanwhile, with another retention: set ours.
    elif "expireAfterSeconds" not in current:
        log.warning(
            "%s: an index on %s without expiry is in the way of the TTL index", collection, field
        )
        return False
    elif int(current["expireAfterSeconds"]) == seconds:
        return True
    try:
        with store.op():
            store.db.command(
                {
                    "collMod": collection,
                    "index": {"keyPattern": {field: 1}, "expireAfterSeconds": seconds},
                }
            )
    except pymongo.errors.OperationFailure as exc:
        if exc.code in _NOT_SUPPORTED_CODES:
            return False
        raise
    log.info("%s: TTL index on %s now expires after %ss", collection, field, seconds)
    return True


# -- app wiring ------------------------------------------------------------------------------


def init_app(app: Flask) -> None:
    """Check the settings (a wrong one stops start-up); ``flask retention`` is in rybbit.cli."""
    app.extensions[EXTENSION_KEY] = Settings.from_config(app.config)
