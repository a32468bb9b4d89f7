"""The storage interface's operations, one by one, on both back ends (the ``store_kind``
fixture): what the service's modules rely on, said once for MongoDB and SQLite alike."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from flask import Flask

from rybbit import keys, sites
from rybbit.storage import DuplicateKey, EventQuery, SessionExtend, SessionReplace, get_store

T0 = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture
def store(app: Flask) -> Any:
    with app.app_context():
        yield get_store()


def test_sites_live_deleted_and_numbered(store: Any) -> None:
    first = sites.create_site(store, name="a", domain="a.example")
    second = sites.create_site(store, name="b", domain="b.example")
    assert store.update_site(first["site_id"], {"settings.block_bots": False, "name": "A"})
    doc = store.find_site(first["site_id"])
    assert doc["name"] == "A" and doc["settings"]["block_bots"] is False
    assert doc["settings"]["track_ip"] is False, "a dotted $set leaves the other settings"
    assert sites.delete_site(store, second["site_id"]) == 0, "deleted, with no events"
    assert store.find_site(second["site_id"]) is None
    assert store.find_deleted_site(second["site_id"])["name"] == "b"
    assert store.find_deleted_site(first["site_id"]) is None
    assert [d["_id"] for d in store.list_deleted_sites()] == [second["site_id"]]
    assert [d["_id"] for d in store.list_sites()] == [first["site_id"]]
    assert not store.update_site(second["site_id"], {"name": "again"}), "a tombstone stays"
    assert store.last_site_seq() == 2
    with pytest.raises(DuplicateKey):
        store.insert_site({"_id": first["site_id"], "seq": 9, "deleted_at": None})


def test_keys_by_hash_site_and_use(store: Any) -> None:
    site = sites.create_site(store, name="a", domain="a.example")
    made = []
    for n in range(3):
        made.append(keys.create_key(store, site["site_id"], name=f"k{n}"))
        time.sleep(0.002)  # apart by more than the stored milliseconds
    assert [k["name"] for k in keys.list_keys(store, site["site_id"])] == ["k0", "k1", "k2"]
    doc = store.find_key_by_hash(keys.hash_key(made[1]["api_key"]))
    assert doc["_id"] == made[1]["id"]
    assert store.find_key(made[1]["id"], "other-site") is None
    store.record_key_uses({made[1]["id"]: T0 + timedelta(hours=1)})
    store.record_key_uses({made[1]["id"]: T0})  # never lowered
    assert store.find_key(made[1]["id"])["last_used_at"] == T0 + timedelta(hours=1)
    assert store.revoke_site_keys(site["site_id"], T0) == 3
    assert not store.update_key(made[0]["id"], {"name": "x"}, live=True)
    assert store.find_key_by_hash(keys.hash_key(made[0]["api_key"]))["revoked_at"] == T0


def test_salts_one_per_day_and_deleted_by_day(store: Any) -> None:
    mine = {"_id": "2026-01-02", "salt": "aa", "created_at": T0 + timedelta(days=1)}
    theirs = {**mine, "salt": "bb"}
    assert store.salt_for_day(mine)["salt"] == "aa"
    assert store.salt_for_day(theirs)["salt"] == "aa", "the first stored salt wins"
    store.salt_for_day({"_id": "2026-01-03", "salt": "cc", "created_at": T0})
    assert store.delete_salts_before("2026-01-03") == 1
    assert [s["_id"] for s in store.list_salts()] == ["2026-01-03"]


def test_sessions_conditional_changes(store: Any) -> None:
    def doc(key: str, session: str, seen: datetime) -> dict[str, Any]:
        return {"_id": key, "session_id": session, "started_at": T0, "last_seen": seen}

    assert store.insert_sessions([doc("v1", "s1", T0), doc("v2", "s2", T0)]) == {"v1", "v2"}
    later = T0 + timedelta(minutes=5)
    assert store.update_sessions([SessionExtend("v1", "s1", later)])
    assert not store.update_sessions([SessionExtend("v1", "other", later)]), "another session"
    assert store.update_sessions([SessionExtend("v1", "s1", T0)]), "matched, not lowered"
    assert store.find_sessions(["v1"])["v1"]["last_seen"] == later
    fresh = {"session_id": "s3", "started_at": later, "last_seen": later}
    ended_before = T0 + timedelta(minutes=1)
    assert store.update_sessions([SessionReplace("v2", "s2", ended_before, fresh)])
    assert not store.update_sessions([SessionReplace("v1", "s1", ended_before, fresh)])
    assert store.find_sessions(["v2"])["v2"]["session_id"] == "s3"
    assert store.delete_sessions_before(later) == 0
    assert store.delete_sessions_before(later + timedelta(seconds=1)) == 2
    assert store.list_sessions() == []


@pytest.mark.parametrize("asked", [1, 5, 150])
def test_sessions_found_by_key_however_many_are_asked(store: Any, asked: int) -> None:
    """One visitor or a shipment's hundreds (MongoDB answers by $in; FerretDB by one query
    per key below a hundred, by $in above)."""
    docs = [
        {"_id": f"v{n}", "session_id": f"s{n}", "started_at": T0, "last_seen": T0}
        for n in range(300)
    ]
    store.insert_sessions(docs)
    keys = [f"v{n}" for n in range(0, 2 * asked, 2)] + ["unknown"]
    found = store.find_sessions(keys)
    assert sorted(found) == sorted(keys[:-1])
    assert all(found[f"v{n}"]["session_id"] == f"s{n}" for n in range(0, 2 * asked, 2))


def test_events_pages_counts_and_deletes(store: Any) -> None:
    events = [
        {"site_id": s, "type": t, "timestamp": T0 + timedelta(seconds=n), "n": n}
        for n, (s, t) in enumerate(
            [("1", "pageview"), ("1", "custom_event"), ("2", "pageview")] * 4
        )
    ]
    store.insert_events(events)
    assert store.count_events() == 12 and store.count_events("1") == 8
    page = store.find_events(EventQuery(site_id="1", newest_first=False), 3)
    assert [e["n"] for e in page] == [0, 1, 3]
    after = (page[-1]["timestamp"], page[-1]["_id"])
    rest = store.find_events(EventQuery(site_id="1", newest_first=False, after=after), 100)
    assert [e["n"] for e in rest] == [4, 6, 7, 9, 10]
    typed = store.find_events(EventQuery(site_id="1", event_type="custom_event"), 100)
    assert [e["n"] for e in typed] == [10, 7, 4, 1]
    window = EventQuery(site_id="1", start=T0 + timedelta(seconds=3), end=T0 + timedelta(seconds=7))
    assert [e["n"] for e in store.iter_events(window)] == [6, 4, 3]
    assert store.delete_events_before(T0 + timedelta(seconds=6)) == 6
    assert store.delete_site_events("2") == 2
    assert store.count_events() == 4


def test_state_documents_by_collection_and_id(store: Any) -> None:
    assert store.find_document("plugin_state", "a") is None
    store.put_document("plugin_state", {"_id": "a", "n": 1, "at": T0})
    store.put_document("other", {"_id": "a", "n": 9})
    store.put_document("plugin_state", {"_id": "a", "n": 2})  # replaced whole
    assert store.find_document("plugin_state", "a") == {"_id": "a", "n": 2}
    assert store.find_document("other", "a") == {"_id": "a", "n": 9}
