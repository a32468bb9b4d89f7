"""What is stored, how, and what happens when the store is away. Runs on both stores."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pymongo
import pytest
from flask import Flask
from pymongo.errors import BulkWriteError

from rybbit import create_app, keys, sites
from rybbit.lookup_cache import lookup_cache
from rybbit.store import DuplicateKey, MongoStorage, StoreUnavailable, get_store, translate_errors
from tests.conftest import all_events


def test_stored_document_keeps_every_field(
    post: Any, stored_events: Any, site: dict[str, Any], api_key: str
) -> None:
    before = datetime.now(UTC)
    fields = {
        "type": "custom_event",
        "pathname": "/checkout",
        "hostname": "shop.example",
        "page_title": "Checkout",
        "referrer": "https://ref.example/",
        "user_id": "u-1",
        "user_agent": "MyApp/1.0 (Linux; x64)",
        "ip_address": "203.0.113.9",
        "querystring": "?utm_source=x",
        "language": "en",
        "screenWidth": 390,
        "screenHeight": 844,
        "event_name": "purchase",
        "properties": json.dumps({"amount": 99.99, "currency": "USD"}),
    }
    assert post(**fields).status_code == 200
    (event,) = stored_events()
    renamed_or_private = ("screenWidth", "screenHeight", "properties", "ip_address")
    expected = {k: v for k, v in fields.items() if k not in renamed_or_private}
    for name, value in expected.items():
        assert event[name] == value, name
    assert event["screen_width"] == 390 and event["screen_height"] == 844
    assert event["properties"] == {"amount": 99.99, "currency": "USD"}
    assert "ip_address" not in event, "raw IPs are kept only for sites with track_ip"
    assert event["site_id"] == site["site_id"]
    assert api_key not in json.dumps(event, default=str), "the key itself is never stored"
    assert event["api_key_id"].startswith("key_")
    stamp = event["timestamp"]
    assert stamp.utcoffset() == timedelta(0), "stores hand back UTC-aware datetimes"
    assert before - timedelta(milliseconds=1) <= stamp <= datetime.now(UTC)
    assert stamp.microsecond % 1000 == 0, "millisecond precision"


def test_rejected_requests_store_nothing(post: Any, stored_events: Any) -> None:
    assert post(type="custom_event").status_code == 400
    assert post(api_key="rb_" + "f" * 32).status_code == 403
    assert post(site_id="424242").status_code == 404
    assert stored_events() == []


def test_keys_are_stored_hashed(app: Flask, site: dict[str, Any]) -> None:
    with app.app_context():
        store = get_store()
        created = keys.create_key(store, site["site_id"], name="backend")
        doc = store.find_key(created["id"])
    assert keys.KEY_FORMAT.fullmatch(created["api_key"])
    assert created["api_key"] not in json.dumps(doc, default=str)
    assert doc["key_hash"] == hashlib.sha256(created["api_key"].encode()).hexdigest()
    assert doc["prefix"] == created["api_key"][:11] and doc["name"] == "backend"


def test_several_keys_per_site_all_work(
    app: Flask, site: dict[str, Any], client: Any, stored_events: Any
) -> None:
    with app.app_context():
        created = [keys.create_key(get_store(), site["site_id"])["api_key"] for _ in range(3)]
    for key in created:
        response = client.post("/api/track", json={"api_key": key, "site_id": site["site_id"]})
        assert response.status_code == 200
    assert len(stored_events()) == 3


@pytest.mark.parametrize("field", ["revoked_at", "expires_at"])
def test_revoked_or_expired_keys_are_refused(
    app: Flask, post: Any, api_key: str, field: str
) -> None:
    assert post().status_code == 200
    with app.app_context():
        store = get_store()
        key_id = store.find_key_by_hash(keys.hash_key(api_key))["_id"]
        store.update_key(key_id, {field: datetime.now(UTC) - timedelta(seconds=1)})
        lookup_cache().clear()  # as the admin API does after a change (see test_lookup_cache)
    response = post()
    assert response.status_code == 403
    assert response.get_json() == {"success": False, "error": "Invalid API key"}


def test_future_expiry_still_works(app: Flask, post: Any, api_key: str) -> None:
    with app.app_context():
        store = get_store()
        key_id = store.find_key_by_hash(keys.hash_key(api_key))["_id"]
        store.update_key(key_id, {"expires_at": datetime.now(UTC) + timedelta(hours=1)})
    assert post().status_code == 200


def test_site_ids_are_sequential_numbers(app: Flask) -> None:
    with app.app_context():
        created = [
            sites.create_site(get_store(), name=f"s{i}", domain=f"s{i}.example") for i in range(3)
        ]
    assert [s["site_id"] for s in created] == ["1", "2", "3"]


def test_a_write_with_repeated_ids_stores_each_event_once(app: Flask) -> None:
    # Repeats already stored and repeats within the one write: each is skipped, and none of
    # the others is lost.
    with app.app_context():
        store = get_store()
        store.insert_events([{"_id": "old", "n": 0}])
        store.insert_events(
            [
                {"_id": "a", "n": 1},
                {"_id": "old", "n": 2},
                {"_id": "b", "n": 3},
                {"_id": "a", "n": 4},
                {"_id": "c", "n": 5},
            ]
        )
        store.insert_events([{"_id": f"many{i}", "n": i} for i in range(200)])
        stored = {doc["_id"]: doc["n"] for doc in all_events(store)}
    assert {key: n for key, n in stored.items() if not key.startswith("many")} == {
        "old": 0,
        "a": 1,
        "b": 3,
        "c": 5,
    }
    assert sorted(n for key, n in stored.items() if key.startswith("many")) == list(range(200))


def test_data_survives_a_new_app_on_the_same_instance(
    instance_path: Path, app_config: dict[str, Any], post: Any, site: dict[str, Any]
) -> None:
    assert post(pathname="/persisted").status_code == 200
    again = create_app(app_config)
    with again.app_context():
        events = all_events(get_store(), site["site_id"])
    assert [e["pathname"] for e in events] == ["/persisted"]


def test_embedded_store_lives_in_the_instance_folder(instance_path: Path) -> None:
    app = create_app({"MONGO_URI": None})
    with app.app_context():
        sites.create_site(get_store(), name="x", domain="x.example")
    assert (instance_path / "data" / "rybbit.sqlite3").exists()


def test_mongo_indexes_are_created(mongo_server: str, instance_path: Path) -> None:
    uri = f"{mongo_server}/rybbit_test_indexes"
    app = create_app({"MONGO_URI": uri})
    client: pymongo.MongoClient[Any] = pymongo.MongoClient(uri)
    try:
        with app.app_context():
            get_store()
        db = client.get_default_database()
        event_keys = [list(ix["key"].items()) for ix in db.events.list_indexes()]
        assert [("site_id", 1), ("timestamp", 1)] in event_keys
        key_indexes = {ix["name"]: ix for ix in db.api_keys.list_indexes()}
        assert key_indexes["key_hash_1"].get("unique") is True
    finally:
        client.drop_database("rybbit_test_indexes")


def test_unreachable_store_gives_503_with_retry_after(instance_path: Path) -> None:
    from tests.conftest import free_port

    # Nothing listens on this port: every store call fails fast and must become a 503.
    app = create_app({"MONGO_URI": f"mongodb://127.0.0.1:{free_port()}/x", "MONGO_TIMEOUT_MS": 300})
    body = {"api_key": "rb_" + "0" * 32, "site_id": "1", "pathname": "/"}
    response = app.test_client().post("/api/track", json=body)
    assert response.status_code == 503
    assert response.get_json() == {"success": False, "error": "Storage unavailable, please retry"}
    assert response.headers["Retry-After"] == "2"


def test_write_concern_defaults_to_journaled(mongo_server: str, instance_path: Path) -> None:
    app = create_app({"MONGO_URI": f"{mongo_server}/rybbit_test_wc"})
    with app.app_context():
        store = get_store()
        assert isinstance(store, MongoStorage)
        concern = store.events.write_concern.document
        pymongo.MongoClient(mongo_server).drop_database("rybbit_test_wc")
    assert concern == {"w": 1, "j": True}


@pytest.mark.parametrize(
    ("details", "expected"),
    [
        ({"writeErrors": [{"code": 11000, "index": 0}], "writeConcernErrors": []}, DuplicateKey),
        # A duplicate beside an unmet write concern: the rest is not acknowledged either.
        (
            {
                "writeErrors": [{"code": 11000, "index": 0}],
                "writeConcernErrors": [{"code": 64, "errmsg": "waiting for replication"}],
            },
            StoreUnavailable,
        ),
        ({"writeErrors": [], "writeConcernErrors": [{"code": 64}]}, StoreUnavailable),
        ({"writeErrors": [{"code": 2, "index": 0}], "writeConcernErrors": []}, BulkWriteError),
        ({"writeErrors": [], "writeConcernErrors": []}, BulkWriteError),
    ],
)
def test_bulk_write_errors_are_told_apart(details: dict[str, Any], expected: type) -> None:
    """Only a write whose failures are all duplicates counts as stored; an unmet write concern
    is a 503, never a 200."""
    with pytest.raises(expected):
        with translate_errors():
            raise BulkWriteError(details)
