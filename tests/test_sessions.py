"""Sessions under concurrency and in batches: one session per visitor, whoever gets there first."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from rybbit import create_app, delivery
from rybbit.store import get_store
from tests.conftest import age_sessions, sessions_enricher, sessions_storage


@pytest.fixture
def app_config(
    app_config: dict[str, Any], session_state: str, request: pytest.FixtureRequest
) -> dict[str, Any]:
    """Every behaviour here holds with sessions in the store and in Redis. Limits are read
    when the app is made: concurrent bursts here stay under them."""
    return {
        **app_config,
        **sessions_storage(request, session_state),
        "RATE_LIMIT": "10000 per second",
    }


store_state_only = pytest.mark.parametrize("session_state", ["store"], indirect=True)


def _body(site: dict[str, Any], api_key: str, user: str, n: int) -> dict[str, Any]:
    return {"api_key": api_key, "site_id": site["site_id"], "user_id": user, "pathname": f"/{n}"}


def _sessions_by_user(events: list[dict[str, Any]]) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for event in events:
        found.setdefault(event["user_id"], set()).add(event["session_id"])
    return found


def test_concurrent_first_events_of_a_visitor_share_one_session(
    app: Flask, site: dict[str, Any], api_key: str, stored_events: Any
) -> None:
    users = [f"user-{i}" for i in range(5)]
    barrier = threading.Barrier(10)

    def send(n: int) -> int:
        client = app.test_client()
        if n < 10:
            barrier.wait(5)  # ten first events at once
        return client.post("/api/track", json=_body(site, api_key, users[n % 5], n)).status_code

    with ThreadPoolExecutor(max_workers=10) as pool:
        assert list(pool.map(send, range(50))) == [200] * 50
    sessions = _sessions_by_user(stored_events())
    assert sorted(sessions) == users
    assert all(len(ids) == 1 for ids in sessions.values()), sessions
    assert len({next(iter(ids)) for ids in sessions.values()}) == 5


def test_two_processes_racing_on_a_new_visitor_agree(
    app: Flask,
    app_config: dict[str, Any],
    instance_path: Path,
    site: dict[str, Any],
    api_key: str,
    stored_events: Any,
) -> None:
    # A second app on the same store stands in for another gunicorn worker or machine: its
    # own caches and its own grouping, sharing only the store.
    other = create_app(app_config)
    barrier = threading.Barrier(2)

    def send(pair: tuple[Flask, int]) -> int:
        target, n = pair
        barrier.wait(5)
        body = _body(site, api_key, f"racer-{n // 2}", n)
        return target.test_client().post("/api/track", json=body).status_code

    with ThreadPoolExecutor(max_workers=2) as pool:
        for round_ in range(10):
            pairs = [(app, 2 * round_), (other, 2 * round_ + 1)]
            assert list(pool.map(send, pairs)) == [200, 200]
    sessions = _sessions_by_user(stored_events())
    assert len(sessions) == 10
    assert all(len(ids) == 1 for ids in sessions.values()), sessions


def test_a_batch_gives_each_visitor_one_session_continued_later(
    app: Flask, site: dict[str, Any], api_key: str, stored_events: Any
) -> None:
    client = app.test_client()
    items = [_body(site, api_key, f"b{n % 3}", n) for n in range(9)]
    assert client.post("/api/track/batch", json=items).get_json()["accepted"] == 9
    assert client.post("/api/track", json=_body(site, api_key, "b1", 99)).status_code == 200
    sessions = _sessions_by_user(stored_events())
    assert sorted(sessions) == ["b0", "b1", "b2"]
    assert all(len(ids) == 1 for ids in sessions.values()), sessions


def test_a_batch_ends_expired_sessions_and_continues_live_ones(
    app: Flask, app_config: dict[str, Any], site: dict[str, Any], api_key: str, stored_events: Any
) -> None:
    client = app.test_client()
    for user in ("live", "ended"):
        assert client.post("/api/track", json=_body(site, api_key, user, 0)).status_code == 200
    before = {e["user_id"]: e["session_id"] for e in stored_events()}
    age_sessions(app, datetime.now(UTC) - timedelta(minutes=31), f"{site['site_id']}:ended")
    # Sent to another worker: this one remembers both visitors' recent events.
    other_app = create_app(app_config)
    other = other_app.test_client()
    items = [_body(site, api_key, user, 1) for user in ("live", "ended", "new")]
    assert other.post("/api/track/batch", json=items).get_json()["accepted"] == 3
    delivery.close(other_app)  # with MongoDB: its spool shipped
    after = {e["user_id"]: e["session_id"] for e in stored_events()[2:]}
    assert after["live"] == before["live"]
    assert after["ended"] != before["ended"]
    assert after["new"] not in (before["live"], before["ended"], after["ended"])


def _session(key: str, n: int = 0) -> dict[str, Any]:
    at = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=n)
    return {"_id": key, "session_id": f"s-{key}-{n}", "started_at": at, "last_seen": at}


@store_state_only
def test_find_sessions_returns_the_documents_found(app: Flask) -> None:
    with app.app_context():
        store = get_store()
        docs = {key: _session(key) for key in ("a", "b", "c")}
        assert store.insert_sessions(list(docs.values())) == set(docs)
        assert store.find_sessions(["a"]) == {"a": docs["a"]}
        found = store.find_sessions(["c", "missing", "a"])
        assert found == {"a": docs["a"], "c": docs["c"]}
        assert store.find_sessions(["missing", "gone"]) == {}


# 30: large enough for the embedded store's one-transaction path, which must neither lose the
# rest of a group with a stored duplicate nor report the duplicate as inserted.
@store_state_only
@pytest.mark.parametrize("size", [2, 30])
def test_insert_missing_inserts_only_free_ids_and_says_which(app: Flask, size: int) -> None:
    with app.app_context():
        store = get_store()
        assert store.insert_sessions([_session("taken", 1)]) == {"taken"}
        new = [_session(f"v{i}", i) for i in range(size)]
        docs = new[:1] + [_session("taken", 99)] + new[1:]
        assert store.insert_sessions(docs) == {doc["_id"] for doc in new}
        last = f"v{size - 1}"
        found = store.find_sessions(["v0", "taken", last])
        assert {key: doc["session_id"] for key, doc in found.items()} == {
            "v0": "s-v0-0",
            "taken": "s-taken-1",
            last: f"s-{last}-{size - 1}",
        }
        assert store.insert_sessions(docs) == set()
        fresh = [_session(f"w{i}", i) for i in range(size)]
        assert store.insert_sessions(fresh) == {doc["_id"] for doc in fresh}


@pytest.mark.ack_store
def test_a_session_ends_after_real_inactivity_in_the_same_worker(
    app_config: dict[str, Any],
    instance_path: Path,
    site: dict[str, Any],
    api_key: str,
    stored_events: Any,
) -> None:
    short = create_app({**app_config, "SESSION_TIMEOUT_SECONDS": 1})
    client = short.test_client()
    for n in range(2):
        assert client.post("/api/track", json=_body(site, api_key, "idle", n)).status_code == 200
    time.sleep(1.2)
    assert client.post("/api/track", json=_body(site, api_key, "idle", 2)).status_code == 200
    assert client.post("/api/track", json=_body(site, api_key, "idle", 3)).status_code == 200
    ids = [e["session_id"] for e in stored_events()]
    assert ids[0] == ids[1] != ids[2] == ids[3]


def _stored_last_seen(app: Flask, site: dict[str, Any], user: str) -> datetime:
    with app.app_context():
        doc = (
            get_store()
            .find_sessions([f"{site['site_id']}:{user}"])
            .get(f"{site['site_id']}:{user}")
        )
    assert doc is not None
    return doc["last_seen"]  # type: ignore[no-any-return]


@store_state_only
@pytest.mark.ack_store
def test_last_seen_writes_are_coalesced_within_the_write_interval(
    app_config: dict[str, Any],
    instance_path: Path,
    site: dict[str, Any],
    api_key: str,
    stored_events: Any,
) -> None:
    # A 10 s timeout gives a 1 s write interval (a tenth of the timeout, at most a minute).
    app = create_app({**app_config, "SESSION_TIMEOUT_SECONDS": 10})
    client = app.test_client()

    def send(user: str, n: int) -> None:
        assert client.post("/api/track", json=_body(site, api_key, user, n)).status_code == 200

    send("a", 0)
    written = _stored_last_seen(app, site, "a")
    send("a", 1)  # within the interval: no write
    assert _stored_last_seen(app, site, "a") == written
    held_back = max(e["received_at"] for e in stored_events() if e["user_id"] == "a")
    assert held_back > written

    time.sleep(1.1)
    send("a", 2)  # over the interval since the stored one: written at once
    latest = max(e["received_at"] for e in stored_events() if e["user_id"] == "a")
    assert latest > held_back
    assert _stored_last_seen(app, site, "a") == latest
    assert len({e["session_id"] for e in stored_events() if e["user_id"] == "a"}) == 1


def test_workers_racing_at_the_timeout_boundary_converge_on_one_session(app: Flask) -> None:
    """Worker A continues a session from memory while worker B, handling a later event first,
    finds it ended and replaces it: A's write must notice, and both go on with B's session."""
    from plugins.sessions import SessionsEnricher
    from rybbit.enrichment import EnrichmentContext

    timeout = timedelta(minutes=30)
    state = sessions_enricher(app).redis  # None: in the store
    a, b = SessionsEnricher(timeout, state), SessionsEnricher(timeout, state)
    t0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    with app.app_context():
        store = get_store()

        def visit(worker: SessionsEnricher, at: datetime) -> str:
            event: dict[str, Any] = {"site_id": "1", "user_id": "v"}
            context = EnrichmentContext(
                site={}, remote_addr=None, client_ip=None, headers={}, received_at=at, store=store
            )
            worker.enrich(event, context)
            return str(event["session_id"])

        first = visit(a, t0)
        replaced = visit(b, t0 + timeout + timedelta(seconds=1))  # B: ended, a new session
        assert replaced != first
        # A's event from just before the boundary, handled after B's: A must not keep its id.
        assert visit(a, t0 + timeout - timedelta(seconds=1)) == replaced
        later = t0 + timeout + timedelta(minutes=2)
        assert visit(a, later) == visit(b, later + timedelta(seconds=1)) == replaced
