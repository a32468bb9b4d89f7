"""Upgrading: move the data of the montydb-based embedded store into the SQLite store.

Earlier versions kept the embedded store in montydb's SQLite engine: ``monty.storage.cfg`` in
the store folder, and per collection a file ``rybbit/<collection>.collection`` holding a table
``documents(k, v)`` with each document as BSON in ``v``. Those files are plain SQLite, and
pymongo's ``bson`` decodes the documents, so montydb itself is not needed to read them.

The migration runs when a store folder has montydb's files and the SQLite store has no record
of having taken them in. It copies every collection (inserts that skip what is there already,
so a migration cut short by a crash is simply run again), then records that it is done. The
montydb files are left in place, untouched, for the operator to delete.
"""

from __future__ import annotations

import glob
import logging
import os
import sqlite3
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import bson
from bson import json_util
from bson.codec_options import CodecOptions

if TYPE_CHECKING:
    from .sqlite import SQLiteStorage

log = logging.getLogger(__name__)

MARKER = "montydb_migrated_at"
CONFIG_FILE = "monty.storage.cfg"
DATABASE = "rybbit"  # the database name the old store used
COLLECTIONS = ("sites", "api_keys", "salts", "sessions", "user_aliases", "user_profiles", "events")
_CODEC = CodecOptions(tz_aware=True, tzinfo=UTC)
_CHUNK = 5000


def has_montydb_store(folder: str) -> bool:
    return os.path.exists(os.path.join(folder, CONFIG_FILE))


def read_collection(path: str) -> Iterator[dict[str, Any]]:
    """Every document of one montydb collection file."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        for (value,) in conn.execute("SELECT v FROM documents"):
            if isinstance(value, str):  # a store made with use_bson=False keeps JSON
                yield json_util.loads(value)
            else:
                yield bson.decode(value, codec_options=_CODEC)
    finally:
        conn.close()


def migrate_if_needed(store: SQLiteStorage, folder: str) -> dict[str, int] | None:
    """Migrate the montydb store in ``folder`` unless there is none or it was done; the count
    of documents taken in per collection, or None."""
    if not has_montydb_store(folder) or store.meta(MARKER) is not None:
        return None
    return migrate(store, folder)


def migrate(store: SQLiteStorage, folder: str) -> dict[str, int]:
    started = time.monotonic()
    log.warning("embedded store: migrating the montydb store in %s to SQLite ...", folder)
    counts: dict[str, int] = {}
    for name in COLLECTIONS:
        path = os.path.join(folder, DATABASE, f"{name}.collection")
        counts[name] = 0
        if not os.path.exists(path):
            continue
        chunk: list[dict[str, Any]] = []
        for doc in read_collection(path):
            chunk.append(doc)
            if len(chunk) >= _CHUNK:
                counts[name] += store.import_documents(name, chunk)
                chunk = []
        counts[name] += store.import_documents(name, chunk)
    others = sorted(
        os.path.basename(path).removesuffix(".collection")
        for path in glob.glob(os.path.join(folder, DATABASE, "*.collection"))
        if os.path.basename(path).removesuffix(".collection") not in COLLECTIONS
    )
    if others:
        log.warning("embedded store: montydb collections not migrated (unknown): %s", others)
    store.set_meta(MARKER, datetime.now(UTC).isoformat())
    log.warning(
        "embedded store: migrated the montydb store in %s to %s in %.1fs (%s); the montydb "
        "files (%s, %s/) are no longer used and may be deleted",
        folder,
        store.path,
        time.monotonic() - started,
        ", ".join(f"{name}: {count}" for name, count in counts.items()),
        CONFIG_FILE,
        DATABASE,
    )
    return counts
