"""What is the embedded SQLite store's own: several processes on one file, a process killed in
the middle of a transaction, a database locked past the busy timeout, pages that stay cheap,
exports beside ingestion, and the upgrade from the montydb-based store."""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import sqlite3
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from bson import ObjectId

from rybbit import create_app, keys, sites
from rybbit.events import idempotent_id, now_ms
from rybbit.storage import EventQuery, SQLiteStorage, StoreUnavailable, codec, get_store
from rybbit.storage import sqlite as sqlite_backend
from tests.conftest import all_events

CONFIG = {"TESTING": True, "MONGO_URI": None, "LOAD_PLUGINS": []}


def open_store(path: Path, **options: Any) -> SQLiteStorage:
    store = SQLiteStorage(str(path), **options)
    store.ensure_indexes()
    return store


def event(site_id: str = "1", n: int = 0, **fields: Any) -> dict[str, Any]:
    return {
        "site_id": site_id,
        "type": "pageview",
        "timestamp": datetime(2026, 1, 1, tzinfo=UTC) + timedelta(milliseconds=n),
        "pathname": f"/{n}",
        **fields,
    }


def test_documents_come_back_as_mongodb_would_hand_them_back() -> None:
    doc = {
        "_id": ObjectId(),
        "at": datetime(2026, 5, 4, 3, 2, 1, 123456, tzinfo=UTC),
        "naive": datetime(2026, 5, 4, 3, 2, 1),
        "properties": {"list": [1, 2.5, None, {"deep": "ü"}], "flag": True},
    }
    back = codec.loads(codec.dumps(doc))
    assert back["_id"] == doc["_id"]
    assert back["at"] == datetime(2026, 5, 4, 3, 2, 1, 123000, tzinfo=UTC), "milliseconds, UTC"
    assert back["naive"] == datetime(2026, 5, 4, 3, 2, 1, tzinfo=UTC), "naive counts as UTC"
    assert back["properties"] == doc["properties"]


@pytest.mark.parametrize(
    "fields",
    [
        {"received_at": datetime(2026, 5, 4, 3, 2, 1, 123000, tzinfo=UTC)},
        {"timestamp": datetime(2026, 5, 4, 3, 2, 1), "received_at": datetime(2026, 5, 4)},
        {"timestamp": "2026-05-04T03:02:01Z", "received_at": "not a date"},
        {"timestamp": None, "_id": ObjectId()},
        {"_id": 7, "session_start": datetime(2026, 5, 4, tzinfo=UTC)},
        {"_id": "text-id", "properties": {"at": datetime(2026, 5, 4, tzinfo=UTC)}},
    ],
)
def test_an_event_row_holds_what_codec_writes(fields: dict[str, Any]) -> None:
    """The row's JSON is codec's JSON of the event without its id (an id the column cannot
    give back stays in), whichever way its dates come; the caller's document is not changed
    beyond the id it is given."""
    doc = {**event(n=5), **fields}
    if doc["timestamp"] is None:
        del doc["timestamp"]
    original = dict(doc)
    row = sqlite_backend._event_row(doc)
    original.setdefault("_id", doc["_id"])
    assert doc == original and list(doc) == list(original)
    in_json = {k: v for k, v in doc.items() if k != "_id" or type(v) not in (ObjectId, str)}
    assert row[5] == codec.dumps(in_json)
    stamp = doc.get("timestamp")
    assert row[2] == (codec.to_ms(stamp) if isinstance(stamp, datetime) else None)
    assert row[0] == codec.id_key(doc["_id"])


# -- several processes ----------------------------------------------------------------------


def _writer(path: str, worker: int, count: int, shared: int) -> None:
    """A process writing ``count`` events of its own from 4 threads through group commit, and
    ``shared`` events every writer also writes (the same event_ids)."""
    store = SQLiteStorage(path, busy_timeout_ms=10_000)

    def write(part: int) -> None:
        for n in range(part, count, 4):
            store.commit_events([event(n=n, pathname=f"/w{worker}/{n}")])
        for n in range(part, shared, 4):
            store.commit_events([event(n=n, _id=idempotent_id("1", f"shared-{n}"))])

    threads = [threading.Thread(target=write, args=(part,)) for part in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def test_several_processes_write_one_file_without_loss_or_duplicates(tmp_path: Path) -> None:
    path = tmp_path / "rybbit.sqlite3"
    open_store(path).close()
    context = multiprocessing.get_context("spawn")  # as gunicorn workers: each its own process
    writers = [context.Process(target=_writer, args=(str(path), w, 300, 100)) for w in range(4)]
    for process in writers:
        process.start()
    for process in writers:
        process.join(60)
        assert process.exitcode == 0
    stored = all_events(open_store(path))
    assert len(stored) == 4 * 300 + 100
    assert len({e["_id"] for e in stored}) == len(stored)
    own = [e["pathname"] for e in stored if e["pathname"].startswith("/w")]
    assert sorted(own) == sorted(f"/w{w}/{n}" for w in range(4) for n in range(300))


# -- a process killed mid-transaction ---------------------------------------------------------


def _die_in_a_transaction(path: str, ready: Any) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany(
        sqlite_backend._INSERT_EVENT,
        [sqlite_backend._event_row(event(n=n, pathname="/torn")) for n in range(500)],
    )
    ready.set()
    time.sleep(60)  # killed long before this ends


def test_a_process_killed_mid_transaction_leaves_no_trace_and_no_lock(tmp_path: Path) -> None:
    path = tmp_path / "rybbit.sqlite3"
    store = open_store(path, busy_timeout_ms=500)
    store.insert_events([event(n=1, pathname="/kept")])
    context = multiprocessing.get_context("spawn")
    ready = context.Event()
    victim = context.Process(target=_die_in_a_transaction, args=(str(path), ready))
    victim.start()
    assert ready.wait(30)
    with pytest.raises(StoreUnavailable):  # it holds the write lock while it lives
        store.insert_events([event(n=2, pathname="/while-locked")])
    os.kill(victim.pid, signal.SIGKILL)
    victim.join(10)
    store.insert_events([event(n=3, pathname="/after")])  # the lock went with the process
    assert [e["pathname"] for e in all_events(store)] == ["/kept", "/after"]
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)


# -- a database locked past the busy timeout --------------------------------------------------


def test_a_write_locked_out_past_the_busy_timeout_is_a_503_not_a_hang(
    instance_path: Path,
) -> None:
    app = create_app({**CONFIG, "EMBEDDED_BUSY_TIMEOUT_MS": 300})
    with app.app_context():
        site = sites.create_site(get_store(), name="s", domain="s.example")
        key = keys.create_key(get_store(), site["site_id"])["api_key"]
        store = get_store()
    client = app.test_client()
    body = {"api_key": key, "site_id": site["site_id"], "pathname": "/"}
    assert client.post("/api/track", json=body).status_code == 200
    assert isinstance(store, SQLiteStorage)
    blocker = sqlite3.connect(store.path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # another process's long write transaction
    try:
        started = time.monotonic()
        response = client.post("/api/track", json={**body, "pathname": "/locked"})
        took = time.monotonic() - started
        assert response.status_code == 503
        assert response.get_json() == {
            "success": False,
            "error": "Storage unavailable, please retry",
        }
        assert response.headers["Retry-After"]
        assert 0.3 <= took < 2, "bounded by the busy timeout"
        # WAL: readers are not blocked by the writer.
        assert len(all_events(store)) == 1
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert client.post("/api/track", json={**body, "pathname": "/after"}).status_code == 200
    assert [e["pathname"] for e in all_events(store)] == ["/", "/after"]


def test_the_store_file_is_in_wal_mode(tmp_path: Path) -> None:
    open_store(tmp_path / "x.sqlite3").close()
    with sqlite3.connect(tmp_path / "x.sqlite3") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)


# -- listing and export -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "query",
    [
        EventQuery(site_id="1"),
        EventQuery(site_id="1", newest_first=False, after=(datetime.now(UTC), ObjectId())),
        EventQuery(
            site_id="1",
            start=datetime.now(UTC) - timedelta(days=1),
            end=datetime.now(UTC),
            event_type="pageview",
            after=(datetime.now(UTC), ObjectId()),
        ),
        EventQuery(
            site_id="1",
            newest_first=False,
            start=datetime.now(UTC) - timedelta(days=1),
            end=datetime.now(UTC),
            after=(datetime.now(UTC), ObjectId()),
        ),
    ],
)
def test_a_page_starts_at_its_cursor_in_the_index(tmp_path: Path, query: EventQuery) -> None:
    """A page costs the same at any depth: SQLite seeks to the cursor on the (site, time, id)
    index and reads no more than the page, with no sort."""
    store = open_store(tmp_path / "x.sqlite3")
    where, params, direction = sqlite_backend._events_where(query)
    sql = f"SELECT doc FROM events WHERE {where} ORDER BY ts {direction}, id {direction} LIMIT 5"
    plan = " ".join(row[3] for row in store._conn().execute(f"EXPLAIN QUERY PLAN {sql}", params))
    assert "USING INDEX events_site_ts" in plan
    assert "TEMP B-TREE" not in plan, "no sort"
    if query.after is not None:
        assert ("(ts,id)>(?,?)" if not query.newest_first else "(ts,id)<(?,?)") in plan


def test_pages_and_export_see_every_event_once_in_order(tmp_path: Path) -> None:
    store = open_store(tmp_path / "x.sqlite3")
    # Equal timestamps across page boundaries: the id breaks the tie.
    store.insert_events([event(n=n // 3) for n in range(100)] + [event("2", n=5)])
    expected = all_events(store, "1")
    assert len(expected) == 100
    for newest_first in (False, True):
        seen: list[Any] = []
        after = None
        while True:
            page = store.find_events(
                EventQuery(site_id="1", newest_first=newest_first, after=after), 7
            )
            seen += page
            if len(page) < 7:
                break
            after = (page[-1]["timestamp"], page[-1]["_id"])
        order = expected[::-1] if newest_first else expected
        assert [e["_id"] for e in seen] == [e["_id"] for e in order]
    exported = list(store.iter_events(EventQuery(site_id="1", newest_first=False)))
    assert exported == expected


def test_an_open_export_holds_up_no_writer(tmp_path: Path) -> None:
    store = open_store(tmp_path / "x.sqlite3", busy_timeout_ms=200)
    store.insert_events([event(n=n) for n in range(3000)])
    export = store.iter_events(EventQuery(site_id="1", newest_first=False))
    first = next(export)  # a read transaction is open now, mid-way through
    started = time.monotonic()
    for n in range(50):
        store.insert_events([event(n=10_000 + n, pathname="/during")])
    assert time.monotonic() - started < 2
    rest = list(export)
    assert 1 + len(rest) == 3000, "the export reads one snapshot: none of the later events"
    assert first["pathname"] == "/0"
    assert store.count_events("1") == 3050


# -- retention and site deletion in small transactions ---------------------------------------


def test_deletions_go_in_small_transactions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_backend, "DELETE_CHUNK", 10)
    store = open_store(tmp_path / "x.sqlite3")
    old = datetime(2026, 1, 1, tzinfo=UTC)
    store.insert_events([event(n=n) for n in range(95)])  # all on 2026-01-01
    store.insert_events([event("2", n=n) for n in range(25)])
    store.insert_events([{**event(n=n), "timestamp": old + timedelta(days=2)} for n in range(5)])
    commits: list[str] = []
    conn = store._conn()
    conn.set_trace_callback(lambda sql: commits.append(sql) if sql == "COMMIT" else None)
    assert store.delete_events_before(old + timedelta(days=1)) == 120
    assert len(commits) >= 12, "at most ten rows a transaction"
    assert store.delete_site_events("1") == 5
    assert store.count_events() == 0


# -- upgrading from the montydb store ---------------------------------------------------------


def _write_with_montydb(folder: Path) -> dict[str, Any]:
    """A store folder as the montydb-based embedded store wrote it (same storage options)."""
    from montydb import MontyClient, set_storage

    folder.mkdir(parents=True)
    set_storage(str(folder), storage="sqlite", use_bson=True, check_same_thread=False)
    db = MontyClient(str(folder), tz_aware=True)["rybbit"]
    now = now_ms()
    api_key = keys.generate_key()
    site = {
        "_id": "1",
        "seq": 1,
        "name": "Old",
        "domain": "old.example",
        "settings": {"block_bots": True, "excluded_ips": []},
        "created_at": now,
        "deleted_at": None,
        "user_id_salt": "ab" * 32,
    }
    gone = {**site, "_id": "2", "seq": 2, "name": "Gone", "deleted_at": now}
    db.sites.insert_many([site, gone])
    key = {
        "_id": "key_0123456789abcdef",
        "site_id": "1",
        "key_hash": keys.hash_key(api_key),
        "prefix": keys.key_prefix(api_key),
        "name": "backend",
        "created_at": now,
        "last_used_at": now,
        "revoked_at": None,
        "expires_at": None,
    }
    db.api_keys.insert_one(key)
    events = [
        {
            "site_id": "1",
            "type": "custom_event",
            "timestamp": now - timedelta(minutes=n),
            "received_at": now,
            "pathname": f"/old/{n}",
            "properties": {"amount": n, "tags": ["a", {"b": n}]},
            "api_key_id": key["_id"],
        }
        for n in range(1200)
    ]
    events.append({**events[0], "_id": idempotent_id("1", "order-7"), "pathname": "/order"})
    db.events.insert_many(events)
    db.salts.insert_one({"_id": now.strftime("%Y-%m-%d"), "salt": "cd" * 32, "created_at": now})
    db.sessions.insert_one(
        {"_id": "1:u1", "session_id": "s-old", "started_at": now, "last_seen": now}
    )
    return {"api_key": api_key, "key": key, "site": site, "events": events}


def test_a_store_montydb_wrote_is_migrated_without_loss(
    instance_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    old = _write_with_montydb(instance_path / "data")
    caplog.set_level(logging.INFO)
    app = create_app(CONFIG)
    with app.app_context():
        store = get_store()
    (line,) = [r.getMessage() for r in caplog.records if "migrated the montydb store" in r.message]
    assert "sites: 2, api_keys: 1, salts: 1, sessions: 1" in line and "events: 1201" in line
    assert old["api_key"] not in line

    assert [s["_id"] for s in store.list_sites()] == ["1"], "the deleted site stays deleted"
    assert store.find_site("1") == old["site"]
    assert store.last_site_seq() == 2, "a deleted site's number is never handed out again"
    assert store.find_key_by_hash(keys.hash_key(old["api_key"])) == old["key"]
    migrated = {e["_id"]: e for e in all_events(store)}
    assert len(migrated) == 1201
    for each in old["events"]:
        assert migrated[each["_id"]] == each
    assert [s["salt"] for s in store.list_salts()] == ["cd" * 32]
    assert store.find_sessions(["1:u1"])["1:u1"]["session_id"] == "s-old"

    # The old key still works, and a retried event_id from before the upgrade is not new.
    client = app.test_client()
    body = {"api_key": old["api_key"], "site_id": "1", "pathname": "/new"}
    assert client.post("/api/track", json=body).status_code == 200
    assert client.post("/api/track", json={**body, "event_id": "order-7"}).status_code == 200
    assert store.count_events() == 1202

    # Once: a new process on the same folder migrates nothing again.
    caplog.clear()
    again = create_app(CONFIG)
    with again.app_context():
        assert get_store().count_events() == 1202
    assert not [r for r in caplog.records if "migrating the montydb" in r.message]


def test_a_migration_cut_short_is_completed_on_the_next_start(instance_path: Path) -> None:
    _write_with_montydb(instance_path / "data")
    store = open_store(instance_path / "data" / sqlite_backend.FILENAME)
    # As if the process died after copying part of the events (before the done marker).
    from rybbit.storage.migrate_montydb import read_collection

    part = list(read_collection(str(instance_path / "data" / "rybbit" / "events.collection")))
    store.import_documents("events", part[:500])
    store.close()
    app = create_app(CONFIG)
    with app.app_context():
        assert get_store().count_events() == 1201


def test_the_embedded_store_needs_no_montydb() -> None:
    import tomllib

    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
    assert not [r for r in project["dependencies"] if r.startswith("montydb")]
    source = Path(sqlite_backend.__file__).parent
    assert "import montydb" not in "".join(p.read_text() for p in source.glob("*.py"))


def test_export_lines_are_what_json_dumps_writes() -> None:
    import json

    from rybbit.events import event_to_json, public_event
    from rybbit.jsonutil import json_default

    event = {
        "_id": ObjectId(),
        "timestamp": datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC),
        "pathname": '/ünïcode/\u2028/"quoted"',
        "properties": {"n": 1.1, "big": 2**53 + 1, "list": [True, None, {"x": -0.5}]},
        "screen_width": 390,
    }
    expected = json.dumps(
        public_event(event), default=json_default, ensure_ascii=False, separators=(",", ":")
    )
    assert event_to_json(event) == expected


def test_export_lines_from_stored_text_equal_event_to_json(tmp_path: Path) -> None:
    from rybbit.events import event_to_json

    store = open_store(tmp_path / "x.sqlite3")
    at = datetime(2026, 3, 4, 5, 6, 7, 891000, tzinfo=UTC)
    store.insert_events(
        [
            event(n=1),  # an ObjectId made by the store
            event(n=2, _id=idempotent_id("1", "e-2")),  # an event_id's ObjectId
            event(n=3, _id='text-id \u00e9 "q"'),
            event(n=4, _id=42),  # another kind of id: kept inside the JSON
            event(
                n=5,
                properties={"_id": "not the id", "when": at, "ref": ObjectId(), "list": [at]},
                page_title='\u2028 ünï \\ {"$date":1}',
            ),
        ]
    )
    query = EventQuery(site_id="1", newest_first=False)
    lines = list(store.iter_event_lines(query, event_to_json))
    assert lines == [event_to_json(e) for e in store.iter_events(query)]
    assert len(lines) == 5
    assert '"when":"2026-03-04T05:06:07.891Z"' in lines[4]
    assert '"page_title":"\u2028 ünï \\\\ {\\"$date\\":1}"' in lines[4]
    assert lines[3].endswith('"id":42}') and lines[2].endswith('"id":"text-id é \\"q\\""}')


@pytest.mark.parametrize(
    "millis",
    [
        0,
        -1,
        -1500,
        999,
        1_796_225_360_095,
        253_402_300_799_999,
        -30_610_224_000_001,
        -62135596800000,
    ],
)
def test_export_dates_are_written_as_json_default_writes_them(millis: int) -> None:
    from rybbit.jsonutil import json_default

    match = sqlite_backend._DATE_TAG.match(f'{{"$date":{millis}}}')
    assert match is not None
    assert sqlite_backend._iso(match) == f'"{json_default(codec.from_ms(millis))}"'


def test_an_event_json_cannot_hold_is_refused_alone(instance_path: Path) -> None:
    from rybbit.storage import EventsRefused

    app = create_app(CONFIG)
    with app.app_context():
        store = get_store()
        events = [{"n": 0}, {"n": 1, "x": {1, 2}}, {"n": 2}, {"n": 3, "big": 2**70}]
        with pytest.raises(EventsRefused) as raised:
            store.commit_events(events)
        assert sorted(raised.value.reasons) == [1, 3]
        assert sorted(e["n"] for e in all_events(store)) == [0, 2]
