"""The embedded back end: one SQLite database file through the standard library's sqlite3.

One table per collection, with real columns and indexes for what is looked up or sorted (a
site's events by time, event ids, key hashes, visitors' sessions by key and last_seen) and the
document itself as JSON (``codec``). Several gunicorn workers share the file:

- WAL mode, so readers never block the writer nor the writer the readers; every write is one
  ``BEGIN IMMEDIATE`` transaction (a group commit's events included), so writers queue on
  SQLite's lock instead of failing half-way.
- The busy timeout bounds how long a write waits for another process's transaction; past it
  sqlite3 raises "database is locked", which becomes StoreUnavailable (the contract's 503).
- No process-wide lock: each thread has its own connection, and an export reads from its own
  connection and snapshot, so neither listing nor export holds up ingestion.
- Checkpoints (copying the WAL back into the database file, with an fsync) run in a background
  thread of each process, every ``CHECKPOINT_SECONDS``, in PASSIVE mode (they wait for nobody
  and nobody waits for them). Left to SQLite, the commit that crosses 1,000 WAL pages runs one
  itself, which doubled the cost of a single-event commit (measured 85 against 150-180 us).
  A much larger automatic threshold stays as a safety net should the thread fall behind.
- ``synchronous=NORMAL`` (the default; ``EMBEDDED_SYNCHRONOUS``): a commit survives the process
  being killed at any point; after a power cut or OS crash the last commits may be rolled back.
  ``FULL`` syncs the WAL at every commit and survives those too, at a price in throughput.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import orjson
from bson import ObjectId

from ..jsonutil import json_default
from ..metrics import store_write
from ..native import os_thread, os_thread_local
from ..store_errors import DuplicateKey, StoreUnavailable
from ..write_errors import Refused
from . import codec
from .base import Doc, EventQuery, SessionExtend, SessionReplace, Storage

log = logging.getLogger(__name__)

FILENAME = "rybbit.sqlite3"
# 2: the events' stats columns (session_id, user_id, pathname, hostname, event_name).
SCHEMA_VERSION = 2
# Rows a retention or site deletion removes per transaction: short enough that a waiting
# writer is not held up for long, large enough to delete quickly.
DELETE_CHUNK = 2000
_EXPORT_FETCH = 1000
CHECKPOINT_SECONDS = 1.0
# WAL pages (4 KiB) past which a commit checkpoints by itself: only if the thread falls behind.
_AUTOCHECKPOINT_PAGES = 25_000
# The WAL file is cut back to this after a checkpoint (it is reused, not grown, meanwhile).
_WAL_SIZE_LIMIT = 64 * 1024 * 1024

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL,          -- codec.id_key(_id)
    site_id TEXT,
    ts INTEGER,                -- timestamp, epoch milliseconds
    type TEXT,
    keyed INTEGER,             -- 1: the _id came with the event (an event_id), NULL: made here
    doc TEXT NOT NULL,
    -- Copies of the fields the stats queries group and count by (rybbit.stats): reading them
    -- from the JSON took 0.7 s for a site's month of 100,000 events, the columns 0.2 s.
    session_id TEXT,
    user_id TEXT,
    pathname TEXT,
    hostname TEXT,
    event_name TEXT
);
-- Unique ids where a repeat can come: events whose _id the caller chose (from an event_id),
-- so a retried one is skipped. An ObjectId made here is unique by construction, and leaving
-- those events out spares most inserts a B-tree.
CREATE UNIQUE INDEX IF NOT EXISTS events_keyed_id ON events (id) WHERE keyed IS NOT NULL;
-- Listing, export, site deletion and retention (site by site) all walk this one. No index
-- on time alone, which would cost every insert a fourth B-tree. It also carries what the
-- common stats queries read (a site's sessions, visitors, types and pages in a period), which
-- they then read from the index alone, without the rows and their JSON: that halved them
-- (0.8 to 0.4 s for a site's month of 100,000 events). Inserts: bench/store measured 20-25 us
-- of CPU per event in batches before, 21-32 after, on a busy 2-core machine (in its noise).
CREATE INDEX IF NOT EXISTS events_site_ts ON events (site_id, ts, id, {stats_columns});
CREATE TABLE IF NOT EXISTS sites (
    id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    deleted_at INTEGER,
    doc TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS sites_seq ON sites (seq);
CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY,
    site_id TEXT NOT NULL,
    key_hash TEXT NOT NULL UNIQUE,
    created_at INTEGER,
    revoked_at INTEGER,
    doc TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS api_keys_site ON api_keys (site_id, created_at);
CREATE TABLE IF NOT EXISTS salts (
    id TEXT PRIMARY KEY,
    created_at INTEGER NOT NULL,
    doc TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY,       -- the visitor: "<site_id>:<user_id>"
    session_id TEXT NOT NULL,
    started_at INTEGER NOT NULL,
    last_seen INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS sessions_last_seen ON sessions (last_seen);
-- State documents of other collections (identified visitors, plugins), by collection and id.
CREATE TABLE IF NOT EXISTS documents (
    collection TEXT NOT NULL,
    id TEXT NOT NULL,
    doc TEXT NOT NULL,
    PRIMARY KEY (collection, id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (
    name TEXT PRIMARY KEY,
    value TEXT
);
"""

# Ids the id column can give back (codec.id_key): ObjectIds and text.
_ID_TYPES_IN_COLUMN = (ObjectId, str)
# Tags (codec) as they appear in stored JSON text. No JSON string can hold these sequences
# (its quotes would be escaped), and stored keys never start with "$", so they are tags.
_DATE_TAG = re.compile(r'\{"\$date":(-?\d+)\}')
_OID_TAG = re.compile(r'\{"\$oid":"([0-9a-f]{24})"\}')

_INSERT_EVENT = (
    "INSERT OR IGNORE INTO events (id, site_id, ts, type, keyed, doc, session_id, user_id, "
    "pathname, hostname, event_name) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
# The stats columns (schema version 2), each a copy of the event's field of the same name.
STATS_COLUMNS = ("session_id", "user_id", "pathname", "hostname", "event_name")
# Those of them, and type, that events_site_ts carries (see SCHEMA).
INDEXED_STATS_COLUMNS = "session_id, user_id, type, pathname"
# Rows a migration fills per transaction (see _add_stats_columns).
_MIGRATE_CHUNK = 50_000


@contextlib.contextmanager
def translate_errors() -> Iterator[None]:
    """sqlite3's errors as the two outcomes callers handle: a unique key taken (DuplicateKey),
    or the database not answering in time or not writable (StoreUnavailable)."""
    try:
        yield
    except sqlite3.IntegrityError as exc:
        raise DuplicateKey(str(exc)) from exc
    except (sqlite3.OperationalError, sqlite3.DatabaseError) as exc:
        # "database is locked" past the busy timeout, a full disk, an unreadable file...
        log.warning("store unavailable: %s: %s", type(exc).__name__, exc)
        raise StoreUnavailable(type(exc).__name__) from exc


def _ms(value: Any) -> int | None:
    return codec.to_ms(value) if isinstance(value, datetime) else None


def _set_path(doc: Doc, dotted: str, value: Any) -> None:
    """``$set`` of one field; ``a.b`` reaches into (or creates) the sub-document ``a``."""
    *parents, last = dotted.split(".")
    target = doc
    for name in parents:
        child = target.get(name)
        if not isinstance(child, dict):
            child = target[name] = {}
        target = child
    target[last] = value


def _event_row(event: Doc, *, keyed: bool = False) -> tuple[Any, ...]:
    """The row of an event; ``keyed`` marks its id for the unique index even if it is made
    here (imports, where a rerun must skip what the first run copied)."""
    if "_id" not in event:
        event["_id"] = ObjectId()  # as pymongo does: the caller sees the id given
    else:
        keyed = True
    event_id = event["_id"]
    body = dict(event)  # a copy, changed below; copying whole then deleting is the quickest
    # The id column gives back an ObjectId or text id (_event_doc), so the JSON leaves it out:
    # that lets an export write the stored JSON nearly as it is (iter_event_lines).
    if type(event_id) in _ID_TYPES_IN_COLUMN:
        del body["_id"]
    # The two dates every event has, tagged here as codec's hook would tag them: orjson
    # calling back into Python for each cost ~0.5 us (3.4 -> 2.3 us a document).
    ts = _ms(body.get("timestamp"))
    if ts is not None:
        body["timestamp"] = {"$date": ts}
    received = body.get("received_at")
    if isinstance(received, datetime):
        body["received_at"] = {"$date": codec.to_ms(received)}
    return (
        codec.id_key(event_id),
        body.get("site_id"),
        ts,
        body.get("type"),
        1 if keyed else None,
        codec.dumps(body),
        _text(body.get("session_id")),
        _text(body.get("user_id")),
        _text(body.get("pathname")),
        _text(body.get("hostname")),
        _text(body.get("event_name")),
    )


def _text(value: Any) -> str | None:
    """A stats column's value: the field if it is text (what the service stores), else None, as
    json_extract would give something else for another type (see _add_stats_columns)."""
    return value if type(value) is str else None


def _event_rows(events: list[Doc]) -> tuple[list[tuple[Any, ...]], list[Exception | None] | None]:
    """The rows of the events that can be stored, and per event None or why it cannot (a
    value JSON cannot hold): that event fails alone, as a server's refusal would."""
    try:
        return [_event_row(event) for event in events], None
    except (TypeError, ValueError, OverflowError):
        pass
    rows: list[tuple[Any, ...]] = []
    outcomes: list[Exception | None] = []
    for event in events:
        try:
            rows.append(_event_row(event))
            outcomes.append(None)
        except (TypeError, ValueError, OverflowError) as exc:
            outcomes.append(Refused(None, f"cannot store this event: {exc}"))
    refused = sum(outcome is not None for outcome in outcomes)
    log.warning("store refused %d of %d events (not storable as JSON)", refused, len(events))
    return rows, outcomes


def _event_doc(key: str, text: str) -> Doc:
    """An event read back: its JSON, and its ``_id`` from the id column (_event_row)."""
    doc = codec.loads(text)
    if "_id" not in doc:
        doc["_id"] = key[2:] if key.startswith("s:") else ObjectId(key)
    return doc


# Seconds since the epoch of years 1000 to 9999, which strftime writes as isoformat does.
_PLAIN_YEARS = range(-30_610_224_000, 253_402_300_800)


@functools.lru_cache(maxsize=4096)
def _second_text(second: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))


def _iso(match: re.Match[str]) -> str:
    """A tagged date as json_default writes it (``2026-01-02T03:04:05.678Z``), quoted. Events
    of an export fall in few distinct seconds, so the text of each second is made once."""
    millis = int(match.group(1))
    second, rest = divmod(millis, 1000)
    if second not in _PLAIN_YEARS:
        return f'"{json_default(codec.from_ms(millis))}"'
    return f'"{_second_text(second)}.{rest:03d}Z"'


def _export_line(key: str, text: str, to_json: Callable[[Doc], str]) -> str:
    """``to_json`` of the event, made from its stored JSON as text, which gives the same line
    (tested) several times faster: tagged dates and ObjectIds written as the service writes
    them, and the id last, where ``public_event`` puts it."""
    if key.startswith("s:"):
        public_id = orjson.dumps(key[2:]).decode()
    elif ":" not in key:  # an ObjectId's hex digits
        public_id = f'"{key}"'
    else:  # an id of another kind, kept inside the JSON: the long way
        return to_json(_event_doc(key, text))
    body = _OID_TAG.sub(r'"\1"', _DATE_TAG.sub(_iso, text))
    return ("{" if body == "{}" else body[:-1] + ",") + '"id":' + public_id + "}"


def _site_row(doc: Doc) -> tuple[Any, ...]:
    return (doc["_id"], int(doc.get("seq", 0)), _ms(doc.get("deleted_at")), codec.dumps(doc))


def _key_row(doc: Doc) -> tuple[Any, ...]:
    return (
        doc["_id"],
        doc["site_id"],
        doc["key_hash"],
        _ms(doc.get("created_at")),
        _ms(doc.get("revoked_at")),
        codec.dumps(doc),
    )


def _session_doc(row: tuple[Any, ...]) -> Doc:
    return {
        "_id": row[0],
        "session_id": row[1],
        "started_at": codec.from_ms(row[2]),
        "last_seen": codec.from_ms(row[3]),
    }


def _session_row(doc: Doc) -> tuple[Any, ...]:
    return (
        doc["_id"],
        doc["session_id"],
        codec.to_ms(doc["started_at"]),
        codec.to_ms(doc["last_seen"]),
    )


def _events_where(query: EventQuery) -> tuple[str, list[Any], str]:
    """The WHERE clause and parameters of a query, and its sort direction."""
    clauses: list[str] = []
    params: list[Any] = []
    if query.site_id is not None:
        clauses.append("site_id = ?")
        params.append(query.site_id)
    if query.after is not None:
        stamp, last_id = query.after
        # A row value comparison: SQLite walks the (site_id, ts, id) index from this point
        # (before the time window's clauses, or SQLite may start from the window's edge).
        clauses.append(f"(ts, id) {'<' if query.newest_first else '>'} (?, ?)")
        params += [codec.to_ms(stamp), codec.id_key(last_id)]
    if query.start is not None:
        clauses.append("ts >= ?")
        params.append(codec.to_ms(query.start))
    if query.end is not None:
        clauses.append("ts < ?")
        params.append(codec.to_ms(query.end))
    if query.event_type is not None:
        clauses.append("type = ?")
        params.append(query.event_type)
    direction = "DESC" if query.newest_first else "ASC"
    return " AND ".join(clauses) or "1", params, direction


class SQLiteStorage(Storage):
    """The storage interface on one SQLite file."""

    embedded = True

    def __init__(
        self,
        path: str,
        *,
        busy_timeout_ms: int = 2000,
        synchronous: str = "NORMAL",
        group_commit_max_events: int = 5000,
    ) -> None:
        super().__init__(group_commit_max_events=group_commit_max_events)
        self.path = path
        self.busy_timeout = busy_timeout_ms / 1000
        if synchronous.upper() not in ("OFF", "NORMAL", "FULL", "EXTRA"):
            raise ValueError(f"EMBEDDED_SYNCHRONOUS must be NORMAL or FULL, not {synchronous!r}")
        self.synchronous = synchronous.upper()
        # In WAL mode, NORMAL syncs at checkpoints only (the checkpoint thread's); FULL and
        # EXTRA at every commit.
        self.syncs_each_commit = self.synchronous in ("FULL", "EXTRA")
        self._local = os_thread_local()
        self._checkpoint_lock = threading.Lock()
        self._checkpointer: threading.Thread | None = None
        self._closed = threading.Event()

    # -- connections and transactions -------------------------------------------------------
    # One connection per OS thread. Under gevent, that is one connection shared by a worker's
    # greenlets: opening one per greenlet (per request) would cost more than the request. It
    # is safe because SQLite calls never yield to another greenlet, so one greenlet's
    # transaction always ends before another's begins; what does yield mid-read (the export's
    # cursor) opens a connection of its own.

    def connect(self) -> sqlite3.Connection:
        """A new connection with this store's settings (autocommit: transactions are explicit)."""
        with translate_errors():
            conn = sqlite3.connect(
                self.path,
                timeout=self.busy_timeout,
                isolation_level=None,
                check_same_thread=False,
                cached_statements=64,
            )
            conn.execute(f"PRAGMA synchronous={self.synchronous}")
            conn.execute(f"PRAGMA wal_autocheckpoint={_AUTOCHECKPOINT_PAGES}")
            conn.execute(f"PRAGMA journal_size_limit={_WAL_SIZE_LIMIT}")
        return conn

    def _start_checkpoints(self) -> None:
        """Start this process's checkpoint thread, once (on its first write)."""
        with self._checkpoint_lock:
            if self._checkpointer is not None:
                return
            self._checkpointer = os_thread(self._checkpoint_loop, "rybbit-sqlite-checkpoint")
        self._checkpointer.start()

    def _checkpoint_loop(self) -> None:
        conn: sqlite3.Connection | None = None
        while not self._closed.wait(CHECKPOINT_SECONDS):
            try:
                if conn is None:
                    conn = self.connect()
                conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            except (StoreUnavailable, sqlite3.Error) as exc:
                # The next round tries again; the automatic threshold is the backstop.
                log.warning("embedded store: checkpoint failed (%s)", exc)
        if conn is not None:
            conn.close()

    def _conn(self) -> sqlite3.Connection:
        """This thread's connection: threads never share one, so none waits on another's."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self.connect()
        return conn

    @contextlib.contextmanager
    def op(self) -> Iterator[None]:
        with translate_errors():
            yield

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction. IMMEDIATE takes the write lock at once (waiting up to the
        busy timeout), so a transaction never fails half-way for want of it."""
        conn = self._conn()
        with translate_errors():
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    def _read(self, sql: str, params: Any = ()) -> list[Any]:
        with translate_errors():
            return self._conn().execute(sql, params).fetchall()

    # -- lifecycle ---------------------------------------------------------------------------

    def ensure_indexes(self) -> None:
        conn = self._conn()
        with translate_errors():
            # WAL is a property of the file: set once, kept by every later connection.
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                log.warning("embedded store: journal mode is %s, not WAL", mode)
        with self._write() as conn:
            # Statement by statement: executescript would commit the transaction first.
            schema = SCHEMA.replace("{stats_columns}", INDEXED_STATS_COLUMNS)
            for statement in re.sub(r"--[^\n]*", "", schema).split(";"):
                if statement.strip():
                    conn.execute(statement)
        self._add_stats_columns()
        self.retention.ensure(self)

    def _add_stats_columns(self) -> None:
        """Schema version 1 to 2: add the stats columns to a database written before them, fill
        them from the stored JSON a chunk of rows per transaction (so another process's writer
        waits at most one chunk), then rebuild events_site_ts with them. About 13 s per million
        events. Each chunk records how far it got (meta ``stats_columns_filled_to``) in its
        transaction: a process stopped half-way (a gunicorn worker past its timeout, the first
        request having opened the store) leaves the next one to carry on from there."""
        conn = self._conn()
        with translate_errors():
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            have = {row[1] for row in conn.execute("PRAGMA table_info(events)")}
        if version >= SCHEMA_VERSION and have.issuperset(STATS_COLUMNS):
            return
        missing = [name for name in STATS_COLUMNS if name not in have]
        started = time.monotonic()
        with self._write() as conn:
            for name in missing:
                conn.execute(f"ALTER TABLE events ADD COLUMN {name} TEXT")
            # Rows after this one were written by this version, columns filled.
            last = conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0]
            if missing:
                conn.execute(
                    "INSERT OR REPLACE INTO meta (name, value) VALUES (?, ?)",
                    ("stats_columns_last", str(last)),
                )
            last = int(self._meta_in(conn, "stats_columns_last") or last)
            done = int(self._meta_in(conn, "stats_columns_filled_to") or 0)
        if last > done:
            log.warning(
                "embedded store: adding the stats columns to events %d to %d (about 13 s per "
                "million; `flask --app app retention status` does it outside gunicorn) ...",
                done + 1,
                last,
            )
        assignments = ", ".join(
            # Text only, as _text keeps: json_extract would give numbers as numbers.
            f"{name} = CASE json_type(doc, '$.{name}') WHEN 'text' "
            f"THEN json_extract(doc, '$.{name}') END"
            for name in STATS_COLUMNS
        )
        for first in range(done, last, _MIGRATE_CHUNK):
            upto = min(first + _MIGRATE_CHUNK, last)
            with self._write() as conn:
                conn.execute(
                    f"UPDATE events SET {assignments} WHERE seq > ? AND seq <= ?", (first, upto)
                )
                conn.execute(
                    "INSERT OR REPLACE INTO meta (name, value) VALUES (?, ?)",
                    ("stats_columns_filled_to", str(upto)),
                )
        with self._write() as conn:
            # The index as version 2 has it (version 1's had the first three columns only).
            conn.execute("DROP INDEX IF EXISTS events_site_ts")
            conn.execute(
                f"CREATE INDEX events_site_ts ON events (site_id, ts, id, {INDEXED_STATS_COLUMNS})"
            )
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        if last > done:
            log.warning("embedded store: stats columns added in %.1f s", time.monotonic() - started)

    @staticmethod
    def _meta_in(conn: sqlite3.Connection, name: str) -> str | None:
        row = conn.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return row[0] if row else None

    def stats_connection(self) -> sqlite3.Connection:
        """A connection of its own for one stats query (rybbit.stats.sqlite_query), which
        makes temporary tables: closing it drops them, and no other read shares its state."""
        conn = self.connect()
        with translate_errors():
            conn.execute("PRAGMA temp_store = MEMORY")
        return conn

    def ping(self) -> None:
        self._read("SELECT 1 FROM sites LIMIT 1")

    def close(self) -> None:
        self._closed.set()
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def meta(self, name: str) -> str | None:
        rows = self._read("SELECT value FROM meta WHERE name = ?", (name,))
        return rows[0][0] if rows else None

    # -- events ------------------------------------------------------------------------------

    @store_write  # metrics: each write's duration, and its errors
    def insert_events(self, events: list[Doc]) -> list[Exception | None] | None:
        if not events:
            return None
        self.retention.prepare_insert(self)  # starts a purge when one is due; never waits
        if self._checkpointer is None:
            self._start_checkpoints()
        rows, outcomes = _event_rows(events)
        if len(rows) == 1:
            # One statement is one transaction already: no BEGIN and COMMIT round.
            with translate_errors():
                self._conn().execute(_INSERT_EVENT, rows[0])
        elif rows:
            with self._write() as conn:
                conn.executemany(_INSERT_EVENT, rows)
        return outcomes

    def find_events(self, query: EventQuery, limit: int) -> list[Doc]:
        where, params, direction = _events_where(query)
        rows = self._read(
            f"SELECT id, doc FROM events WHERE {where} "
            f"ORDER BY ts {direction}, id {direction} LIMIT ?",
            [*params, limit],
        )
        return [_event_doc(key, doc) for key, doc in rows]

    def _event_rows(self, query: EventQuery) -> Iterator[tuple[str, str]]:
        where, params, direction = _events_where(query)
        sql = f"SELECT id, doc FROM events WHERE {where} ORDER BY ts {direction}, id {direction}"
        # Its own connection: one read transaction (a consistent snapshot) for the whole
        # export, which in WAL mode holds up no writer.
        conn = self.connect()
        try:
            with translate_errors():
                cursor = conn.execute(sql, params)
            while True:
                with translate_errors():
                    rows = cursor.fetchmany(_EXPORT_FETCH)
                if not rows:
                    return
                yield from rows
        finally:
            conn.close()

    def iter_events(self, query: EventQuery) -> Iterator[Doc]:
        for key, doc in self._event_rows(query):
            yield _event_doc(key, doc)

    def iter_event_lines(self, query: EventQuery, to_json: Callable[[Doc], str]) -> Iterator[str]:
        for key, doc in self._event_rows(query):
            yield _export_line(key, doc, to_json)

    def count_events(self, site_id: str | None = None) -> int:
        if site_id is None:
            return int(self._read("SELECT count(*) FROM events")[0][0])
        return int(self._read("SELECT count(*) FROM events WHERE site_id = ?", (site_id,))[0][0])

    def _delete_in_chunks(self, where: str, params: tuple[Any, ...]) -> int:
        """Delete matching events a chunk per transaction, so no writer waits long."""
        sql = (
            f"DELETE FROM events WHERE seq IN (SELECT seq FROM events WHERE {where} LIMIT "
            f"{DELETE_CHUNK})"
        )
        deleted = 0
        while True:
            with self._write() as conn:
                count = conn.execute(sql, params).rowcount
            deleted += count
            if count < DELETE_CHUNK:
                return deleted

    def delete_site_events(self, site_id: str) -> int:
        return self._delete_in_chunks("site_id = ?", (site_id,))

    def delete_events_before(self, cutoff: datetime) -> int:
        """Site by site, each a range of the (site, time) index."""
        before = codec.to_ms(cutoff)
        deleted = self._delete_in_chunks("site_id IS NULL AND ts < ?", (before,))
        site_id = ""
        while True:
            # The next site id: one seek on the index per site, however many events.
            found = self._read("SELECT min(site_id) FROM events WHERE site_id > ?", (site_id,))
            if found[0][0] is None:
                return deleted
            site_id = found[0][0]
            deleted += self._delete_in_chunks("site_id = ? AND ts < ?", (site_id, before))

    # -- sites -------------------------------------------------------------------------------

    def last_site_seq(self) -> int:
        return int(self._read("SELECT coalesce(max(seq), 0) FROM sites")[0][0])

    def insert_site(self, doc: Doc) -> None:
        with self._write() as conn:
            conn.execute(
                "INSERT INTO sites (id, seq, deleted_at, doc) VALUES (?, ?, ?, ?)", _site_row(doc)
            )

    def find_site(self, site_id: str) -> Doc | None:
        rows = self._read("SELECT doc FROM sites WHERE id = ? AND deleted_at IS NULL", (site_id,))
        return codec.loads(rows[0][0]) if rows else None

    def list_sites(self) -> list[Doc]:
        rows = self._read("SELECT doc FROM sites WHERE deleted_at IS NULL ORDER BY seq")
        return [codec.loads(doc) for (doc,) in rows]

    def find_deleted_site(self, site_id: str) -> Doc | None:
        rows = self._read(
            "SELECT doc FROM sites WHERE id = ? AND deleted_at IS NOT NULL", (site_id,)
        )
        return codec.loads(rows[0][0]) if rows else None

    def list_deleted_sites(self) -> list[Doc]:
        rows = self._read("SELECT doc FROM sites WHERE deleted_at IS NOT NULL ORDER BY seq")
        return [codec.loads(doc) for (doc,) in rows]

    def update_site(self, site_id: str, fields: Doc) -> bool:
        with self._write() as conn:
            row = conn.execute(
                "SELECT doc FROM sites WHERE id = ? AND deleted_at IS NULL", (site_id,)
            ).fetchone()
            if row is None:
                return False
            doc = codec.loads(row[0])
            for name, value in fields.items():
                _set_path(doc, name, value)
            conn.execute(
                "UPDATE sites SET id = ?, seq = ?, deleted_at = ?, doc = ? WHERE id = ?",
                (*_site_row(doc), site_id),
            )
        return True

    # -- API keys ----------------------------------------------------------------------------

    def insert_key(self, doc: Doc) -> None:
        with self._write() as conn:
            conn.execute(
                "INSERT INTO api_keys (id, site_id, key_hash, created_at, revoked_at, doc) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                _key_row(doc),
            )

    def find_key(self, key_id: str, site_id: str | None = None) -> Doc | None:
        if site_id is None:
            rows = self._read("SELECT doc FROM api_keys WHERE id = ?", (key_id,))
        else:
            rows = self._read(
                "SELECT doc FROM api_keys WHERE id = ? AND site_id = ?", (key_id, site_id)
            )
        return codec.loads(rows[0][0]) if rows else None

    def find_key_by_hash(self, key_hash: str) -> Doc | None:
        rows = self._read("SELECT doc FROM api_keys WHERE key_hash = ?", (key_hash,))
        return codec.loads(rows[0][0]) if rows else None

    def list_keys(self, site_id: str) -> list[Doc]:
        rows = self._read(
            "SELECT doc FROM api_keys WHERE site_id = ? ORDER BY created_at, id", (site_id,)
        )
        return [codec.loads(doc) for (doc,) in rows]

    def _rewrite_keys(self, conn: sqlite3.Connection, docs: list[Doc]) -> None:
        conn.executemany(
            "UPDATE api_keys SET id = ?, site_id = ?, key_hash = ?, created_at = ?, "
            "revoked_at = ?, doc = ? WHERE id = ?",
            [(*_key_row(doc), doc["_id"]) for doc in docs],
        )

    def update_key(
        self, key_id: str, fields: Doc, *, site_id: str | None = None, live: bool = False
    ) -> bool:
        sql = "SELECT doc FROM api_keys WHERE id = ?"
        params: list[Any] = [key_id]
        if site_id is not None:
            sql += " AND site_id = ?"
            params.append(site_id)
        if live:
            sql += " AND revoked_at IS NULL"
        with self._write() as conn:
            row = conn.execute(sql, params).fetchone()
            if row is None:
                return False
            doc = codec.loads(row[0])
            for name, value in fields.items():
                _set_path(doc, name, value)
            self._rewrite_keys(conn, [doc])
        return True

    def revoke_site_keys(self, site_id: str, at: datetime) -> int:
        with self._write() as conn:
            rows = conn.execute(
                "SELECT doc FROM api_keys WHERE site_id = ? AND revoked_at IS NULL", (site_id,)
            ).fetchall()
            docs = [{**codec.loads(doc), "revoked_at": at} for (doc,) in rows]
            self._rewrite_keys(conn, docs)
        return len(docs)

    def record_key_uses(self, uses: dict[str, datetime]) -> None:
        if not uses:
            return
        with self._write() as conn:
            changed = []
            for key_id, used_at in uses.items():
                row = conn.execute("SELECT doc FROM api_keys WHERE id = ?", (key_id,)).fetchone()
                if row is None:
                    continue
                doc = codec.loads(row[0])
                current = doc.get("last_used_at")
                if current is None or codec.to_ms(current) < codec.to_ms(used_at):
                    doc["last_used_at"] = used_at
                    changed.append(doc)
            self._rewrite_keys(conn, changed)

    # -- identity salts ----------------------------------------------------------------------

    def salt_for_day(self, candidate: Doc) -> Doc:
        with self._write() as conn:
            conn.execute(
                "INSERT OR IGNORE INTO salts (id, created_at, doc) VALUES (?, ?, ?)",
                (candidate["_id"], codec.to_ms(candidate["created_at"]), codec.dumps(candidate)),
            )
            row = conn.execute("SELECT doc FROM salts WHERE id = ?", (candidate["_id"],)).fetchone()
        return codec.loads(row[0])

    def delete_salts_before(self, day: str) -> int:
        with self._write() as conn:
            return int(conn.execute("DELETE FROM salts WHERE id < ?", (day,)).rowcount)

    def list_salts(self) -> list[Doc]:
        return [codec.loads(doc) for (doc,) in self._read("SELECT doc FROM salts ORDER BY id")]

    # -- other state documents ------------------------------------------------------------

    def find_document(self, collection: str, doc_id: str) -> Doc | None:
        rows = self._read(
            "SELECT doc FROM documents WHERE collection = ? AND id = ?", (collection, doc_id)
        )
        return codec.loads(rows[0][0]) if rows else None

    def put_document(self, collection: str, doc: Doc) -> None:
        with self._write() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO documents (collection, id, doc) VALUES (?, ?, ?)",
                (collection, doc["_id"], codec.dumps(doc)),
            )

    # -- visitor sessions --------------------------------------------------------------------

    def find_sessions(self, keys: list[str]) -> dict[str, Doc]:
        if not keys:
            return {}
        found: dict[str, Doc] = {}
        # SQLite allows 32,766 parameters; a group takes at most a few thousand visitors.
        for start in range(0, len(keys), 10_000):
            chunk = keys[start : start + 10_000]
            rows = self._read(
                "SELECT id, session_id, started_at, last_seen FROM sessions "
                f"WHERE id IN ({','.join('?' * len(chunk))})",
                chunk,
            )
            found.update((row[0], _session_doc(row)) for row in rows)
        return found

    def insert_sessions(self, docs: list[Doc]) -> set[str]:
        if not docs:
            return set()
        inserted = set()
        with self._write() as conn:
            for doc in docs:
                cursor = conn.execute(
                    "INSERT OR IGNORE INTO sessions (id, session_id, started_at, last_seen) "
                    "VALUES (?, ?, ?, ?)",
                    _session_row(doc),
                )
                if cursor.rowcount:
                    inserted.add(doc["_id"])
        return inserted

    def update_sessions(self, changes: list[SessionReplace | SessionExtend]) -> bool:
        if not changes:
            return True
        matched = 0
        with self._write() as conn:
            for change in changes:
                if isinstance(change, SessionReplace):
                    cursor = conn.execute(
                        "UPDATE sessions SET session_id = ?, started_at = ?, last_seen = ? "
                        "WHERE id = ? AND session_id = ? AND last_seen < ?",
                        (
                            change.new["session_id"],
                            codec.to_ms(change.new["started_at"]),
                            codec.to_ms(change.new["last_seen"]),
                            change.key,
                            change.session_id,
                            codec.to_ms(change.ended_before),
                        ),
                    )
                else:
                    cursor = conn.execute(
                        "UPDATE sessions SET last_seen = max(last_seen, ?) "
                        "WHERE id = ? AND session_id = ?",
                        (codec.to_ms(change.last_seen), change.key, change.session_id),
                    )
                matched += cursor.rowcount
        return matched == len(changes)

    def delete_sessions_before(self, before: datetime) -> int:
        with self._write() as conn:
            cursor = conn.execute(
                "DELETE FROM sessions WHERE last_seen < ?", (codec.to_ms(before),)
            )
        return int(cursor.rowcount)

    def list_sessions(self) -> list[Doc]:
        rows = self._read("SELECT id, session_id, started_at, last_seen FROM sessions ORDER BY id")
        return [_session_doc(row) for row in rows]

    # -- upgrading ---------------------------------------------------------------------------

    def set_meta(self, name: str, value: str) -> None:
        with self._write() as conn:
            conn.execute("INSERT OR REPLACE INTO meta (name, value) VALUES (?, ?)", (name, value))

    def import_documents(self, collection: str, docs: list[Doc]) -> int:
        """Copy documents of a collection in one transaction, skipping those whose id is
        stored already (migrations, restores); how many were new."""
        if not docs:
            return 0
        if collection == "events":
            sql, rows = _INSERT_EVENT, [_event_row(doc, keyed=True) for doc in docs]
        elif collection == "sites":
            sql = "INSERT OR IGNORE INTO sites (id, seq, deleted_at, doc) VALUES (?, ?, ?, ?)"
            rows = [_site_row(doc) for doc in docs]
        elif collection == "api_keys":
            sql = (
                "INSERT OR IGNORE INTO api_keys (id, site_id, key_hash, created_at, revoked_at, "
                "doc) VALUES (?, ?, ?, ?, ?, ?)"
            )
            rows = [_key_row(doc) for doc in docs]
        elif collection == "salts":
            sql = "INSERT OR IGNORE INTO salts (id, created_at, doc) VALUES (?, ?, ?)"
            rows = [(doc["_id"], codec.to_ms(doc["created_at"]), codec.dumps(doc)) for doc in docs]
        elif collection == "sessions":
            sql = (
                "INSERT OR IGNORE INTO sessions (id, session_id, started_at, last_seen) "
                "VALUES (?, ?, ?, ?)"
            )
            rows = [_session_row(doc) for doc in docs]
        elif collection in ("user_aliases", "user_profiles"):
            sql = "INSERT OR IGNORE INTO documents (collection, id, doc) VALUES (?, ?, ?)"
            rows = [(collection, doc["_id"], codec.dumps(doc)) for doc in docs]
        else:
            raise ValueError(f"unknown collection {collection!r}")
        with self._write() as conn:
            before = conn.total_changes
            conn.executemany(sql, rows)
            return conn.total_changes - before
