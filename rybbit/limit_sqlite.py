"""A ``limits`` storage in a SQLite file: rate-limit counts shared by the processes of one machine.

Registered with ``limits`` under the ``sqlite`` scheme (``limits`` registers every ``Storage``
subclass by its ``STORAGE_SCHEME``), so Flask-Limiter builds it from its ordinary setting:
``RATELIMIT_STORAGE_URI=sqlite:///path/to/ratelimit.sqlite``. It is the default with no Redis
configured (``sqlite://``, a file in the instance folder; see rybbit.ratelimit): every gunicorn
worker of the machine counts in the same file, so a key's limit holds exactly on the machine,
with no server to run. Redis is the way to share counts between machines.

The moving window keeps one row per hit (its time and cost) and counts the rows of the last
window inside one ``BEGIN IMMEDIATE`` transaction, so concurrent processes cannot both take
the last slot. Counters need no durability: the file runs with ``synchronous=OFF`` (a power cut
may forget recent hits, which only means a key may briefly get more than its limit).

Calls are short and blocking (SQLite's C code); under gevent they hold the worker's loop for
their few microseconds, as any CPU work does. One connection per process, opened lazily (a
connection must not cross a fork) and serialised by a lock for threaded workers.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from typing import Any

from limits.storage import MovingWindowSupport, Storage

SCHEME = "sqlite"
_PURGE_SECONDS = 60.0  # how often a process deletes the rows of windows long past
_CREATION = threading.Lock()  # see SQLiteStorage._state

_SCHEMA = (
    # One row per hit of the moving window; ``expires`` lets a purge drop rows of any limit.
    "CREATE TABLE IF NOT EXISTS window_entries"
    " (key TEXT NOT NULL, at REAL NOT NULL, expires REAL NOT NULL, amount INTEGER NOT NULL)",
    "CREATE INDEX IF NOT EXISTS window_entries_key_at ON window_entries (key, at)",
    # Fixed-window counters (the "fixed-window" strategy, should someone configure it).
    "CREATE TABLE IF NOT EXISTS counters"
    " (key TEXT PRIMARY KEY, value INTEGER NOT NULL, expires REAL NOT NULL) WITHOUT ROWID",
)


def path_of(uri: str) -> str:
    """``sqlite:///var/lib/x.sqlite`` -> ``/var/lib/x.sqlite`` (empty for ``sqlite://``)."""
    return uri.split("://", 1)[1].split("?", 1)[0]


class SQLiteStorage(Storage, MovingWindowSupport):
    """Rate-limit state in one SQLite file, shared by all processes that open it."""

    STORAGE_SCHEME = [SCHEME]

    def __init__(
        self, uri: str, wrap_exceptions: bool = False, timeout: float = 2.0, **options: Any
    ) -> None:
        """``timeout``: seconds a call waits for another process's transaction (busy timeout)."""
        super().__init__(uri, wrap_exceptions=wrap_exceptions, **options)
        self.path = path_of(uri)
        if not self.path:
            raise ValueError("sqlite:// needs a file path, e.g. sqlite:///var/lib/ratelimit.sqlite")
        self.timeout = float(timeout)
        # (pid, connection, lock): a connection must not cross a fork.
        self._per_process: tuple[int, sqlite3.Connection, Any] | None = None
        self._next_purge = 0.0

    @property
    def base_exceptions(self) -> type[Exception] | tuple[type[Exception], ...]:
        return sqlite3.Error

    def _state(self) -> tuple[sqlite3.Connection, Any]:
        """This process's connection and the lock that serialises its use (new ones after a
        fork). Made once under a module-wide lock: two threads making the first call at once
        would otherwise each open one and use the other's, mid-transaction. That lock is held
        for plain C calls only, which never yield to gevent's loop, so a real lock is right."""
        state = self._per_process
        if state is None or state[0] != os.getpid():
            with _CREATION:
                state = self._per_process
                if state is None or state[0] != os.getpid():
                    state = (os.getpid(), self._open(), threading.Lock())
                    self._per_process = state
        return state[1], state[2]

    def _open(self) -> sqlite3.Connection:
        folder = os.path.dirname(self.path)
        if folder:
            os.makedirs(folder, exist_ok=True)
        # isolation_level=None: transactions are begun here, explicitly and IMMEDIATE.
        connection = sqlite3.connect(
            self.path, timeout=self.timeout, isolation_level=None, check_same_thread=False
        )
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=OFF")
        for statement in _SCHEMA:
            connection.execute(statement)
        return connection

    def _write(self, work: Any) -> Any:
        """Run ``work(connection, now)`` in one write transaction; ``now`` is read once the
        transaction holds the write lock, so hits are stored in the order they were counted."""
        connection, lock = self._state()
        with lock:
            connection.execute("BEGIN IMMEDIATE")
            try:
                now = time.time()
                result = work(connection, now)
                if now >= self._next_purge:
                    self._next_purge = now + _PURGE_SECONDS
                    connection.execute("DELETE FROM window_entries WHERE expires < ?", (now,))
                    connection.execute("DELETE FROM counters WHERE expires < ?", (now,))
                connection.execute("COMMIT")
            except BaseException:
                if connection.in_transaction:
                    connection.execute("ROLLBACK")
                raise
            return result

    def _read(self, sql: str, parameters: tuple[Any, ...]) -> Any:
        connection, lock = self._state()
        with lock:
            return connection.execute(sql, parameters).fetchone()

    # -- moving window ------------------------------------------------------------------------

    def acquire_with_window(
        self, key: str, limit: int, expiry: int, amount: int = 1
    ) -> tuple[bool, float, int]:
        """Take ``amount`` entries if the window has room; in the same transaction, the window
        after it: (acquired, start of the window, entries in it)."""

        def work(connection: sqlite3.Connection, now: float) -> tuple[bool, float, int]:
            count, oldest = connection.execute(
                "SELECT coalesce(sum(amount), 0), min(at) FROM window_entries"
                " WHERE key = ? AND at >= ?",
                (key, now - expiry),
            ).fetchone()
            acquired = amount <= limit and count + amount <= limit
            if acquired:
                connection.execute(
                    "INSERT INTO window_entries VALUES (?, ?, ?, ?)",
                    (key, now, now + expiry, amount),
                )
                count += amount
                oldest = now if oldest is None else oldest
            return acquired, (now if oldest is None else oldest), int(count)

        return self._write(work)  # type: ignore[no-any-return]

    def acquire_entry(self, key: str, limit: int, expiry: int, amount: int = 1) -> bool:
        return self.acquire_with_window(key, limit, expiry, amount)[0]

    def get_moving_window(self, key: str, limit: int, expiry: int) -> tuple[float, int]:
        now = time.time()
        count, oldest = self._read(
            "SELECT coalesce(sum(amount), 0), min(at) FROM window_entries"
            " WHERE key = ? AND at >= ?",
            (key, now - expiry),
        )
        return (now if oldest is None else oldest), int(count)

    # -- fixed window and housekeeping ----------------------------------------------------------

    def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        def work(connection: sqlite3.Connection, now: float) -> int:
            row = connection.execute(
                "INSERT INTO counters VALUES (?, ?, ?) ON CONFLICT (key) DO UPDATE SET"
                " value = CASE WHEN expires > ? THEN value + excluded.value"
                " ELSE excluded.value END,"
                " expires = CASE WHEN expires > ? THEN expires ELSE excluded.expires END"
                " RETURNING value",
                (key, amount, now + expiry, now, now),
            ).fetchone()
            return int(row[0])

        return self._write(work)  # type: ignore[no-any-return]

    def _counter(self, key: str) -> tuple[int, float] | None:
        row = self._read(
            "SELECT value, expires FROM counters WHERE key = ? AND expires > ?", (key, time.time())
        )
        return (int(row[0]), float(row[1])) if row else None

    def get(self, key: str) -> int:
        counter = self._counter(key)
        return counter[0] if counter else 0

    def get_expiry(self, key: str) -> float:
        counter = self._counter(key)
        return counter[1] if counter else time.time()

    def check(self) -> bool:
        return bool(self._read("SELECT 1", ()) == (1,))

    def clear(self, key: str) -> None:
        def work(connection: sqlite3.Connection, now: float) -> None:
            connection.execute("DELETE FROM window_entries WHERE key = ?", (key,))
            connection.execute("DELETE FROM counters WHERE key = ?", (key,))

        self._write(work)

    def reset(self) -> int | None:
        def work(connection: sqlite3.Connection, now: float) -> int:
            keys = connection.execute(
                "SELECT count(*) FROM (SELECT key FROM window_entries"
                " UNION SELECT key FROM counters)"
            ).fetchone()[0]
            connection.execute("DELETE FROM window_entries")
            connection.execute("DELETE FROM counters")
            return int(keys)

        return self._write(work)  # type: ignore[no-any-return]
