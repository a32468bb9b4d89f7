"""Event retention and the events collection's kind, on both stores.

Neither FerretDB nor the embedded store has TTL indexes or time-series collections, so what runs
here is the detection, the fallback (the in-process purge) and, on FerretDB with a regular
collection standing in, the idempotency scheme of the time-series path. Time-series creation,
TTL indexes and collMod run only against real MongoDB (docs/retention.md).
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

import pymongo
import pytest
from flask import Flask
from flask.testing import FlaskClient

from rybbit import create_app, delivery, sites
from rybbit.events import encode_cursor, idempotent_id, now_ms, query_events
from rybbit.storage.retention import (
    BY_PURGE,
    BY_SERVER,
    IDS_COLLECTION,
    NEVER,
    REGULAR,
    TIMESERIES,
    Retention,
    Settings,
    record_ids,
    store_events,
)
from rybbit.store import MongoStorage, get_store
from tests.conftest import all_events, free_port, insert_raw_events

WEEK = 7


@pytest.fixture
def app_config(mongo_uri: str | None) -> dict[str, Any]:
    """This module's apps keep events for a week, unless a test says otherwise."""
    return {
        "TESTING": True,
        "MONGO_URI": mongo_uri,
        "LOAD_PLUGINS": [],
        "EVENT_RETENTION_DAYS": WEEK,
    }


@pytest.fixture(scope="session")
def server_features(mongo_server: str) -> dict[str, bool]:
    """What the MongoDB-wire server can do, found by trying (FerretDB 1.x: neither)."""
    client: pymongo.MongoClient[Any] = pymongo.MongoClient(mongo_server)
    db = client["rybbit_test_features"]
    features = {}
    try:
        for name, attempt in (
            ("timeseries", lambda: db.create_collection("ts", timeseries={"timeField": "t"})),
            ("ttl", lambda: db.ttl.create_index("t", expireAfterSeconds=60)),
        ):
            try:
                attempt()
                features[name] = True
            except pymongo.errors.OperationFailure:
                features[name] = False
    finally:
        client.drop_database("rybbit_test_features")
        client.close()
    return features


@pytest.fixture
def fallback(store_kind: str, request: pytest.FixtureRequest) -> None:
    """For tests of the fallback: skipped on a server that expires events itself."""
    if store_kind == "mongo" and request.getfixturevalue("server_features")["ttl"]:
        pytest.skip("this server has TTL indexes: see the test_real_mongodb_* tests")


@pytest.fixture
def no_timeseries(server_features: dict[str, bool]) -> None:
    if server_features["timeseries"]:
        pytest.skip("this server has time-series collections: see the test_real_mongodb_* tests")


@pytest.fixture
def real_timeseries(server_features: dict[str, bool]) -> None:
    if not server_features["timeseries"]:
        pytest.skip("needs MongoDB 5.0+ (TEST_MONGO_URI); FerretDB has no time-series collections")


def seed(app: Flask, site_id: str, **ages: timedelta) -> None:
    """Write events of the given ages straight into the collection (the API refuses times
    over 72 hours old, and the write path would start a purge); pathname = the age's name."""
    now = now_ms()
    docs = [
        {"site_id": site_id, "type": "pageview", "timestamp": now - age, "pathname": f"/{name}"}
        for name, age in ages.items()
    ]
    with app.app_context():
        insert_raw_events(get_store(), docs)


def paths(stored_events: Any) -> list[str]:
    return sorted(e["pathname"] for e in stored_events())


@pytest.mark.usefixtures("fallback")
def test_the_purge_deletes_events_older_than_the_retention(
    app: Flask, site: dict[str, Any], stored_events: Any
) -> None:
    seed(
        app,
        site["site_id"],
        ten_days=timedelta(days=10),
        eight_days=timedelta(days=8),
        six_days=timedelta(days=6),
        now=timedelta(0),
    )
    with app.app_context():
        store = get_store()
        assert (store.retention.mode, store.retention.expiry) == (REGULAR, BY_PURGE)
        assert store.retention.purge(store) == 2
        assert store.retention.purge(store) == 0
    assert paths(stored_events) == ["/now", "/six_days"]


@pytest.mark.usefixtures("fallback")
def test_a_write_starts_the_purge_in_the_background_at_most_once_per_interval(
    app: Flask, site: dict[str, Any], post: Any, stored_events: Any
) -> None:
    seed(app, site["site_id"], old=timedelta(days=WEEK + 1), recent=timedelta(days=WEEK - 1))
    assert post(pathname="/tracked").status_code == 200
    with app.app_context():
        retention = get_store().retention
    retention.wait_for_purge()
    assert paths(stored_events) == ["/recent", "/tracked"]
    assert retention.last_purge is not None and retention.last_purge["deleted"] == 1

    # Within the interval (600 s by default) writes start no purge.
    seed(app, site["site_id"], old_again=timedelta(days=WEEK + 1))
    assert post(pathname="/tracked_again").status_code == 200
    retention.wait_for_purge()
    assert "/old_again" in paths(stored_events)
    assert retention.last_purge["deleted"] == 1


@pytest.mark.usefixtures("fallback")
@pytest.mark.ack_store
def test_retention_in_fractions_of_a_day_applies_to_accepted_client_times(
    instance_path: Path, app_config: dict[str, Any]
) -> None:
    # An hour's retention: an event timed two hours ago is accepted (within 72 hours), then
    # purged; a retention shorter than 72 hours can remove events right after their 200.
    app = create_app({**app_config, "EVENT_RETENTION_DAYS": 1 / 24})
    with app.app_context():
        store = get_store()
        assert store.retention.settings.seconds == 3600
        site = sites.create_site(store, name="s", domain="s.example")
        from rybbit import keys

        key = keys.create_key(store, site["site_id"])["api_key"]
    client = app.test_client()
    two_hours_ago = int((time.time() - 7200) * 1000)
    for path, stamp in (("/two_hours_ago", two_hours_ago), ("/now", None)):
        body = {"api_key": key, "site_id": site["site_id"], "pathname": path}
        if stamp is not None:
            body["timestamp"] = stamp
        assert client.post("/api/track", json=body).status_code == 200
    with app.app_context():
        store = get_store()
        store.retention.wait_for_purge()
        store.retention.purge(store)
        left = [e["pathname"] for e in all_events(store)]
    assert left == ["/now"]


@pytest.mark.usefixtures("fallback")
def test_without_a_retention_events_are_kept_forever(
    instance_path: Path, app_config: dict[str, Any], stored_events: Any
) -> None:
    app = create_app({**app_config, "EVENT_RETENTION_DAYS": None})
    seed(app, "1", year=timedelta(days=365))
    with app.app_context():
        store = get_store()
        assert store.retention.expiry == NEVER
        assert store.retention.purge(store) == 0
        assert store.count_events() == 1
        assert store.retention.prepare_insert(store) is False
    assert store.retention._purge_thread is None, "no retention, no purge thread"


@pytest.mark.usefixtures("fallback")
def test_detection_chooses_a_regular_collection_and_says_why(
    instance_path: Path,
    app_config: dict[str, Any],
    store_kind: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="rybbit.storage.retention")
    app = create_app(app_config)
    with app.app_context():
        store = get_store()
        described = store.retention.describe()
    assert described["events_collection"] == "regular"
    assert described["expiry"] == "purge" and described["purge_interval_seconds"] == 600
    if store_kind == "mongo":
        # FerretDB reports MongoDB 7.0 but refuses the option: detection must try, not trust
        # the version number.
        assert described["reason"] == (
            "the server does not support time-series collections: NotImplemented (238)"
        )
        with store.op():
            (info,) = list(store.db.list_collections(filter={"name": "events"}))
        assert info["type"] == "collection"
    else:
        assert described["reason"].startswith("embedded store")
    (line,) = [r.getMessage() for r in caplog.records if r.name == "rybbit.storage.retention"]
    assert line.startswith("events: regular collection (")
    assert "deleted after 604800s by this process's purge, at most every 600s" in line


def test_time_series_can_be_turned_off(instance_path: Path, mongo_server: str) -> None:
    uri = f"{mongo_server}/rybbit_test_no_timeseries"
    app = create_app({"MONGO_URI": uri, "EVENTS_TIMESERIES": False, "LOAD_PLUGINS": []})
    try:
        with app.app_context():
            retention = get_store().retention
        assert retention.mode == REGULAR
        assert retention.reason == "time-series collections disabled by EVENTS_TIMESERIES"
        assert retention.expiry == NEVER
    finally:
        pymongo.MongoClient(mongo_server).drop_database("rybbit_test_no_timeseries")


@pytest.mark.usefixtures("fallback")
def test_ensure_indexes_again_and_with_a_changed_retention(
    app: Flask, app_config: dict[str, Any], site: dict[str, Any], stored_events: Any
) -> None:
    seed(app, site["site_id"], two_hours=timedelta(hours=2), now=timedelta(0))
    with app.app_context():
        store = get_store()
        store.ensure_indexes()
        store.ensure_indexes()
        for days in (None, 1 / 24, WEEK):
            store.retention = Retention(
                Settings(seconds=None if days is None else round(days * 86400))
            )
            store.ensure_indexes()
            assert store.retention.mode == REGULAR
            assert store.retention.expiry == (NEVER if days is None else BY_PURGE)
        assert store.retention.purge(store) == 0
    # A restart with a shorter retention takes effect.
    shorter = create_app({**app_config, "EVENT_RETENTION_DAYS": 1 / 24})
    with shorter.app_context():
        store = get_store()
        assert store.retention.purge(store) == 1
    assert paths(stored_events) == ["/now"]


def test_event_ids_stay_idempotent_with_a_retention(post: Any, stored_events: Any) -> None:
    for _ in range(3):
        assert post(event_id="order-1", pathname="/a").status_code == 200
    assert paths(stored_events) == ["/a"]


def test_the_purge_never_fails_or_delays_a_write(caplog: pytest.LogCaptureFixture) -> None:
    # A store nobody answers: the purge takes the full server-selection timeout and fails.
    client: pymongo.MongoClient[Any] = pymongo.MongoClient(
        f"mongodb://127.0.0.1:{free_port()}/x", serverSelectionTimeoutMS=300
    )
    dead = MongoStorage(client["x"])
    retention = Retention(Settings(seconds=3600))
    retention.mode, retention.expiry = REGULAR, BY_PURGE
    started = time.monotonic()
    assert retention.prepare_insert(dead) is False
    assert time.monotonic() - started < 0.1, "the purge runs beside the write, not in it"
    retention.wait_for_purge()
    assert time.monotonic() - started >= 0.3
    assert any("purge failed" in r.getMessage() for r in caplog.records)
    client.close()


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({}, Settings(None, True, 600)),
        ({"EVENT_RETENTION_DAYS": 30}, Settings(30 * 86400, True, 600)),
        ({"EVENT_RETENTION_DAYS": "0.5"}, Settings(43200, True, 600)),
        ({"EVENT_RETENTION_DAYS": "off"}, Settings(None, True, 600)),
        ({"EVENTS_TIMESERIES": False}, Settings(None, False, 600)),
        ({"EVENTS_TIMESERIES": "auto", "EVENT_PURGE_INTERVAL_SECONDS": 0}, Settings(None, True, 0)),
    ],
)
def test_settings(config: dict[str, Any], expected: Settings) -> None:
    assert Settings.from_config(config) == expected


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("EVENT_RETENTION_DAYS", 0),
        ("EVENT_RETENTION_DAYS", -1),
        ("EVENT_RETENTION_DAYS", "a week"),
        ("EVENT_RETENTION_DAYS", True),
        ("EVENTS_TIMESERIES", "sometimes"),
        ("EVENT_PURGE_INTERVAL_SECONDS", -5),
    ],
)
def test_a_wrong_setting_stops_start_up(instance_path: Path, name: str, value: Any) -> None:
    with pytest.raises(ValueError, match=name):
        create_app({name: value})


def test_retention_from_the_environment(
    instance_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RYBBIT_EVENT_RETENTION_DAYS", "90")
    monkeypatch.setenv("RYBBIT_EVENTS_TIMESERIES", "false")
    app = create_app({"LOAD_PLUGINS": []})
    with app.app_context():
        settings = get_store().retention.settings
    assert settings == Settings(90 * 86400, False, 600)


@pytest.mark.usefixtures("fallback")
def test_cli_status_and_purge(app: Flask, site: dict[str, Any], stored_events: Any) -> None:
    seed(app, site["site_id"], old=timedelta(days=WEEK + 1), now=timedelta(0))
    runner = app.test_cli_runner()
    status = runner.invoke(args=["retention", "status"])
    assert status.exit_code == 0, status.output
    assert json.loads(status.output) | {"reason": None} == {
        "events_collection": "regular",
        "reason": None,
        "retention_days": WEEK,
        "expiry": "purge",
        "purge_interval_seconds": 600,
        "last_purge": None,
    }
    purged = runner.invoke(args=["retention", "purge"])
    assert purged.exit_code == 0, purged.output
    assert json.loads(purged.output) == {"deleted": 1}
    assert paths(stored_events) == ["/now"]


def test_cli_purge_without_a_retention_says_so(
    instance_path: Path, app_config: dict[str, Any]
) -> None:
    app = create_app({**app_config, "EVENT_RETENTION_DAYS": None})
    result = app.test_cli_runner().invoke(args=["retention", "purge"])
    assert result.exit_code != 0
    assert "EVENT_RETENTION_DAYS is not set" in result.output


# The time-series write path, on FerretDB with a regular collection standing in: it shows the
# ids bookkeeping (pre-check, events first, ids after), not the server's time-series behaviour.


@pytest.fixture
def timeseries_stand_in(
    mongo_server: str, instance_path: Path, no_timeseries: None, monkeypatch: pytest.MonkeyPatch
) -> Any:
    # ACK=store: requests write through this app's store object, the one set to time-series
    # mode here (a spool's shipper would write through a store of its own).
    monkeypatch.setenv("RYBBIT_ACK", "store")
    name = f"rybbit_test_ts_stand_in_{uuid.uuid4().hex[:8]}"
    app = create_app({"TESTING": True, "MONGO_URI": f"{mongo_server}/{name}", "LOAD_PLUGINS": []})
    with app.app_context():
        store = get_store()
    store.retention.mode, store.retention.expiry = TIMESERIES, BY_SERVER
    yield app, store
    delivery.close(app)
    pymongo.MongoClient(mongo_server).drop_database(name)


def ids_recorded(store: MongoStorage) -> list[Any]:
    with store.op():
        return [doc["_id"] for doc in store.state(IDS_COLLECTION).find({})]


def test_stand_in_event_ids_are_recorded_after_their_events(timeseries_stand_in: Any) -> None:
    app, store = timeseries_stand_in
    with app.app_context():
        site = sites.create_site(store, name="s", domain="s.example")
        from rybbit import keys

        key = keys.create_key(store, site["site_id"])["api_key"]
    client: FlaskClient = app.test_client()
    base = {"api_key": key, "site_id": site["site_id"]}
    for _ in range(3):
        response = client.post("/api/track", json={**base, "event_id": "e1", "pathname": "/a"})
        assert response.status_code == 200
    assert client.post("/api/track", json={**base, "pathname": "/no-id"}).status_code == 200
    # A batch repeating an id in itself and one stored before: each stored once.
    items = [{**base, "event_id": i, "pathname": f"/{i}"} for i in ("e2", "e2", "e1")]
    assert client.post("/api/track/batch", json=items).get_json()["accepted"] == 3

    stored = all_events(store)
    assert sorted(e["pathname"] for e in stored) == ["/a", "/e2", "/no-id"]
    expected_ids = {idempotent_id(site["site_id"], e) for e in ("e1", "e2")}
    assert set(ids_recorded(store)) == expected_ids
    with store.op():
        marks = {d["_id"]: d for d in store.state(IDS_COLLECTION).find({})}
    for event in stored:
        if "event_id" in event:  # the record expires with its event
            assert marks[event["_id"]]["timestamp"] == event["timestamp"]

    # The read paths work as they do on a regular collection.
    first = query_events(store, site["site_id"], newest_first=False, limit=2)
    rest = query_events(
        store, site["site_id"], newest_first=False, limit=2, after=encode_cursor(first[-1])
    )
    assert sorted(e["pathname"] for e in first + rest) == ["/a", "/e2", "/no-id"]
    assert store.retention.purge(store) == 0, "a time-series collection expires by itself"
    assert sites.delete_site(store, site["site_id"])
    assert all_events(store) == []


def test_stand_in_a_recorded_id_is_acknowledged_not_stored(timeseries_stand_in: Any) -> None:
    _, store = timeseries_stand_in
    event_id = idempotent_id("1", "seen")
    record_ids(store, [{"_id": event_id, "timestamp": now_ms()}])
    event = {"_id": event_id, "event_id": "seen", "site_id": "1", "timestamp": now_ms()}
    store.insert_events([event])
    assert all_events(store) == [], "the record alone (no unique _id involved) kept it out"


def test_stand_in_a_failed_write_records_no_id(timeseries_stand_in: Any) -> None:
    _, store = timeseries_stand_in
    event = {
        "_id": idempotent_id("1", "e"),
        "event_id": "e",
        "site_id": "1",
        "timestamp": now_ms(),
    }
    # The server refuses the document ("$" key): it fails, the client gets no 200...
    outcomes = store.insert_events([{**event, "$bad": 1}])
    assert outcomes is not None and type(outcomes[0]).__name__ == "Refused"
    assert ids_recorded(store) == []
    # ...and its retry is stored: recording the id first would have lost it.
    store.insert_events([dict(event)])
    assert [e["event_id"] for e in all_events(store)] == ["e"]
    assert ids_recorded(store) == [event["_id"]]


def test_stand_in_a_crash_between_the_writes_leaves_the_retry_unblocked(
    timeseries_stand_in: Any,
) -> None:
    _, store = timeseries_stand_in
    event = {
        "_id": idempotent_id("1", "e"),
        "event_id": "e",
        "site_id": "1",
        "timestamp": now_ms(),
    }
    store_events(store, [dict(event)])  # stored, then the process dies before record_ids
    assert ids_recorded(store) == []
    store.insert_events([dict(event)])  # the client's retry passes the pre-check
    assert ids_recorded(store) == [event["_id"]]
    # One document here only because the stand-in's _id is unique; a time-series collection
    # would now hold two copies with this _id (at-least-once, docs/retention.md).
    assert [e["_id"] for e in all_events(store)] == [event["_id"]]


# Real MongoDB only (TEST_MONGO_URI=mongodb://...): skipped on FerretDB, which has neither TTL
# indexes nor time-series collections. Written to MongoDB's documentation.


@pytest.fixture
def real_db(
    mongo_server: str, instance_path: Path, server_features: dict[str, bool]
) -> Iterator[tuple[str, Any]]:
    if not server_features["ttl"]:
        pytest.skip("needs a server with TTL indexes (MongoDB, via TEST_MONGO_URI)")
    name = f"rybbit_test_real_{uuid.uuid4().hex[:8]}"
    client: pymongo.MongoClient[Any] = pymongo.MongoClient(mongo_server, tz_aware=True)
    yield f"{mongo_server}/{name}", client[name]
    client.drop_database(name)
    client.close()


def real_store(uri: str, **config: Any) -> MongoStorage:
    app = create_app({"TESTING": True, "MONGO_URI": uri, "LOAD_PLUGINS": [], **config})
    return get_store(app)


def ttl_seconds(collection: Any) -> list[int]:
    return [
        int(ix["expireAfterSeconds"])
        for ix in collection.list_indexes()
        if "expireAfterSeconds" in ix
    ]


@pytest.mark.usefixtures("real_timeseries")
def test_real_mongodb_events_go_to_an_expiring_time_series_collection(real_db: Any) -> None:
    uri, db = real_db
    retention = real_store(uri, EVENT_RETENTION_DAYS=WEEK).retention
    assert (retention.mode, retention.expiry) == (TIMESERIES, BY_SERVER)
    (info,) = db.list_collections(filter={"name": "events"})
    assert info["type"] == "timeseries"
    assert info["options"]["timeseries"]["timeField"] == "timestamp"
    assert info["options"]["timeseries"]["metaField"] == "site_id"
    assert info["options"]["expireAfterSeconds"] == WEEK * 86400
    assert ttl_seconds(db[IDS_COLLECTION]) == [WEEK * 86400]


@pytest.mark.usefixtures("real_timeseries")
def test_real_mongodb_a_changed_retention_is_applied_at_start_up(real_db: Any) -> None:
    uri, db = real_db
    real_store(uri, EVENT_RETENTION_DAYS=WEEK)
    for days, expected in ((1, 86400), (None, None), (2, 2 * 86400)):
        real_store(uri, EVENT_RETENTION_DAYS=days)
        (info,) = db.list_collections(filter={"name": "events"})
        assert info["options"].get("expireAfterSeconds") == expected
        assert ttl_seconds(db[IDS_COLLECTION]) == ([] if expected is None else [expected])


@pytest.mark.usefixtures("real_timeseries")
def test_real_mongodb_event_ids_are_stored_once_in_a_time_series_collection(
    real_db: Any,
) -> None:
    uri, db = real_db
    store = real_store(uri)

    def event() -> dict[str, Any]:
        return {
            "_id": idempotent_id("1", "e"),
            "event_id": "e",
            "site_id": "1",
            "timestamp": now_ms(),
        }

    store.insert_events([event(), event()])
    store.insert_events([event()])
    assert db.events.count_documents({"event_id": "e"}) == 1
    # What the recorded ids prevent: the collection itself takes a copy with the same _id.
    store_events(store, [event()])
    assert db.events.count_documents({"event_id": "e"}) == 2


@pytest.mark.usefixtures("real_timeseries")
def test_real_mongodb_reads_and_site_deletion_on_a_time_series_collection(real_db: Any) -> None:
    uri, db = real_db
    store = real_store(uri)
    site = sites.create_site(store, name="s", domain="s.example")
    now = now_ms()
    store.insert_events(
        [
            {
                "site_id": site["site_id"],
                "type": "pageview",
                "timestamp": now - timedelta(seconds=i),
            }
            for i in range(5)
        ]
    )
    first = query_events(store, site["site_id"], limit=3)
    rest = query_events(store, site["site_id"], limit=3, after=encode_cursor(first[-1]))
    assert len(first) == 3 and len(rest) == 2
    assert [e["timestamp"] for e in first + rest] == [now - timedelta(seconds=i) for i in range(5)]
    assert sites.delete_site(store, site["site_id"])  # metaField-only delete: MongoDB 5.0.5+
    assert db.events.count_documents({}) == 0


@pytest.mark.usefixtures("real_timeseries")
def test_real_mongodb_processes_racing_to_create_the_collection_agree(real_db: Any) -> None:
    uri, db = real_db
    config = {"TESTING": True, "MONGO_URI": uri, "LOAD_PLUGINS": []}
    apps = [create_app(config) for _ in range(4)]  # each opens its own client, as workers do
    with ThreadPoolExecutor(4) as pool:
        modes = [store.retention.mode for store in pool.map(get_store, apps)]
    assert modes == [TIMESERIES] * 4
    (info,) = db.list_collections(filter={"name": "events"})
    assert info["type"] == "timeseries"


def test_real_mongodb_an_existing_regular_collection_is_kept(real_db: Any) -> None:
    uri, db = real_db
    db.create_collection("events")
    retention = real_store(uri, EVENT_RETENTION_DAYS=WEEK).retention
    assert (retention.mode, retention.expiry) == (REGULAR, BY_SERVER)
    assert retention.reason == "existing regular collection, kept as it is"


def test_real_mongodb_a_regular_collection_gets_a_ttl_index(real_db: Any) -> None:
    uri, db = real_db
    for days, expected in ((WEEK, WEEK * 86400), (1, 86400), (None, None)):
        retention = real_store(uri, EVENT_RETENTION_DAYS=days, EVENTS_TIMESERIES=False).retention
        assert retention.mode == REGULAR
        assert retention.expiry == (NEVER if days is None else BY_SERVER)
        assert ttl_seconds(db.events) == ([] if expected is None else [expected])


class _RefusingEvents:
    """A time-series events collection (MongoDB 5+, not available here) whose server refuses
    the documents of path /bad with ``code``, storing the others, as insert_many reports it."""

    def __init__(self, code: int) -> None:
        self.code = code
        self.stored: list[dict[str, Any]] = []

    def insert_many(self, documents: list[dict[str, Any]], ordered: bool) -> None:
        assert ordered is False
        errors = [
            {"index": i, "code": self.code, "errmsg": "refused"}
            for i, d in enumerate(documents)
            if d["pathname"] == "/bad"
        ]
        self.stored += [d for d in documents if d["pathname"] != "/bad"]
        if errors:
            raise pymongo.errors.BulkWriteError(
                {"writeErrors": errors, "writeConcernErrors": [], "nInserted": len(self.stored)}
            )


class _IdRecords:
    def __init__(self) -> None:
        self.ids: list[Any] = []

    def find(self, query: dict[str, Any], projection: dict[str, Any]) -> list[dict[str, Any]]:
        return [{"_id": i} for i in self.ids if i in query["_id"]["$in"]]

    def insert_many(self, marks: list[dict[str, Any]], ordered: bool) -> None:
        self.ids += [mark["_id"] for mark in marks]


class _TimeseriesStore:
    def __init__(self, code: int) -> None:
        self.events = _RefusingEvents(code)
        self.records = _IdRecords()

    def op(self) -> Any:
        from rybbit.store import translate_errors

        return translate_errors()

    def state(self, name: str) -> _IdRecords:
        assert name == IDS_COLLECTION
        return self.records


@pytest.mark.parametrize(("code", "error"), [(2, "Refused"), (91, "StoreUnavailable")])
def test_a_refused_document_in_a_timeseries_write_fails_only_its_event(
    code: int, error: str
) -> None:
    store = _TimeseriesStore(code)
    store.records.ids.append("s:old")  # stored by an earlier write
    events = [
        {"_id": "s:a", "event_id": "a", "pathname": "/a", "timestamp": 1},
        {"_id": "s:b", "event_id": "b", "pathname": "/bad", "timestamp": 1},
        {"_id": "s:c", "pathname": "/c", "timestamp": 1},
        {"_id": "s:b", "event_id": "b", "pathname": "/bad", "timestamp": 1},  # repeat in write
        {"_id": "s:old", "event_id": "old", "pathname": "/old", "timestamp": 1},
    ]
    outcomes = Retention().insert_timeseries(store, events)  # type: ignore[arg-type]
    assert outcomes is not None
    assert [type(o).__name__ if o else None for o in outcomes] == [None, error, None, error, None]
    assert [e["pathname"] for e in store.events.stored] == ["/a", "/c"]
    assert store.records.ids == ["s:old", "s:a"]  # the refused event's id is not recorded
