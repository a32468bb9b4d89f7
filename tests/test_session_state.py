"""Session state in Redis: which back end is chosen, keys that expire, and outages of Redis
that hold events back (spool) or answer 503 (direct) rather than store them without sessions.
The session behaviour itself runs against both back ends in tests/test_sessions.py."""

from __future__ import annotations

import logging
import signal
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pymongo
import pytest
import redis
import requests
from flask import Flask

from rybbit import create_app, delivery
from rybbit.session_state import KEY_PREFIX, chosen_uri, new_session_ids
from rybbit.storage import get_store
from tests.conftest import (
    all_events,
    forget_redis_sessions,
    free_port,
    redis_process,
    sessions_enricher,
)
from tests.gunicorn_service import run_service

REDIS = "redis://127.0.0.1:6379/2"


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({}, None),
        ({"MONGO_URI": "mongodb://m/db", "RATELIMIT_STORAGE_URI": REDIS}, REDIS),
        (
            {"MONGO_URI": "mongodb://m/db", "RATELIMIT_STORAGE_URI": "rediss://r:6380"},
            "rediss://r:6380",
        ),
        (
            {
                "MONGO_URI": "mongodb://m/db",
                "RATELIMIT_STORAGE_URI": "redis+sentinel://s:26379/main",
            },
            "redis+sentinel://s:26379/main",
        ),
        ({"MONGO_URI": "mongodb://m/db", "RATELIMIT_STORAGE_URI": "sqlite://"}, None),
        # A cluster cannot run one script over keys in many slots: the store.
        ({"MONGO_URI": "mongodb://m/db", "RATELIMIT_STORAGE_URI": "redis+cluster://c:7000"}, None),
        # The embedded store keeps its own: cheaper than a round trip (session_state's docstring).
        ({"RATELIMIT_STORAGE_URI": REDIS}, None),
        ({"SESSIONS_STORAGE_URI": REDIS}, REDIS),
        (
            {
                "MONGO_URI": "mongodb://m/db",
                "RATELIMIT_STORAGE_URI": REDIS,
                "SESSIONS_STORAGE_URI": "store",
            },
            None,
        ),
    ],
)
def test_where_sessions_live(config: dict[str, Any], expected: str | None) -> None:
    assert chosen_uri(config)[0] == expected


def test_the_limiter_options_come_with_its_uri() -> None:
    config = {
        "MONGO_URI": "mongodb://m/db",
        "RATELIMIT_STORAGE_URI": REDIS,
        "RATELIMIT_STORAGE_OPTIONS": {"password": "x"},
    }
    assert chosen_uri(config) == (REDIS, {"password": "x"})
    assert chosen_uri({**config, "SESSIONS_STORAGE_URI": REDIS})[1] == {}


@pytest.mark.parametrize("uri", ["mongodb://m/db", "redis+cluster://c:7000", "memory://"])
def test_an_unusable_setting_stops_start_up(instance_path: Path, uri: str) -> None:
    with pytest.raises(ValueError, match="SESSIONS_STORAGE_URI"):
        create_app({"TESTING": True, "LOAD_PLUGINS": [], "SESSIONS_STORAGE_URI": uri})


@pytest.fixture
def tracked(app: Flask, site: dict[str, Any], api_key: str) -> Any:
    """POST one event of ``user`` to ``target`` (default: this test's app)."""

    def _send(user: str, target: Flask | None = None, n: int = 0) -> Any:
        body = {
            "site_id": site["site_id"],
            "api_key": api_key,
            "user_id": user,
            "pathname": f"/{n}",
        }
        return (target or app).test_client().post("/api/track", json=body)

    return _send


class TestDefaultChoice:
    @pytest.fixture
    def app_config(self, app_config: dict[str, Any], redis_server: str) -> dict[str, Any]:
        forget_redis_sessions(redis_server)
        return {**app_config, "RATELIMIT_STORAGE_URI": redis_server}

    @pytest.mark.ack_store
    def test_redis_with_mongodb_the_store_when_embedded(
        self,
        app: Flask,
        store_kind: str,
        redis_server: str,
        site: dict[str, Any],
        tracked: Any,
    ) -> None:
        assert tracked("u1").status_code == 200
        in_redis = redis.Redis.from_url(redis_server).keys(f"{KEY_PREFIX}*")
        with app.app_context():
            in_store = get_store().list_sessions()
        if store_kind == "mongo":
            assert in_redis == [f"{KEY_PREFIX}{site['site_id']}:u1".encode()]
            assert in_store == []
        else:
            assert in_redis == []
            assert [doc["_id"] for doc in in_store] == [f"{site['site_id']}:u1"]

    def test_the_choice_is_logged(
        self, app_config: dict[str, Any], store_kind: str, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.INFO)
        create_app(app_config)
        said = [r.getMessage() for r in caplog.records if r.name == "rybbit.session_state"]
        expected = "Redis (redis://)" if store_kind == "mongo" else "the store"
        assert said == [f"sessions: state in {expected}"]  # no host: a URI may hold a password


@pytest.mark.ack_store
def test_keys_say_the_session_and_expire_by_themselves(
    app_config: dict[str, Any],
    instance_path: Path,
    redis_server: str,
    site: dict[str, Any],
    tracked: Any,
    stored_events: Any,
) -> None:
    forget_redis_sessions(redis_server)
    short = create_app(
        {**app_config, "SESSIONS_STORAGE_URI": redis_server, "SESSION_TIMEOUT_SECONDS": 1}
    )
    assert tracked("brief", short).status_code == 200
    client = redis.Redis.from_url(redis_server)
    name = f"{KEY_PREFIX}{site['site_id']}:brief"
    (event,) = stored_events()
    assert client.hget(name, "sid") == event["session_id"].encode()
    assert 0 < client.pttl(name) <= 2000  # twice the timeout
    time.sleep(2.2)
    assert client.exists(name) == 0


@pytest.fixture
def own_redis() -> Any:
    """A Redis of this test's own, to freeze."""
    port = free_port()
    with redis_process(port) as proc:
        yield proc, f"redis://127.0.0.1:{port}"


@pytest.mark.parametrize("store_kind", ["mongo"], indirect=True)
def test_a_frozen_redis_holds_shipments_back_until_it_answers(
    app_config: dict[str, Any],
    instance_path: Path,
    own_redis: Any,
    site: dict[str, Any],
    tracked: Any,
) -> None:
    proc, uri = own_redis
    app = create_app(
        {**app_config, "SESSIONS_STORAGE_URI": uri, "SESSIONS_STORAGE_TIMEOUT_MS": 200}
    )
    try:
        assert tracked("v", app, 0).status_code == 200
        assert delivery.get_delivery(app).flush(10)
        proc.send_signal(signal.SIGSTOP)
        try:
            # Acknowledged into the spool as ever; shipping them without sessions is refused.
            assert [tracked("v", app, n).status_code for n in (1, 2, 3)] == [200] * 3
            deadline = time.monotonic() + 10
            while delivery.get_delivery(app).stats()["ship_errors_total"] < 2:
                assert time.monotonic() < deadline, "the shipper tried"
                time.sleep(0.05)
            with app.app_context():
                assert len(all_events(get_store())) == 1
            stats = delivery.get_delivery(app).stats()
            assert stats["backlog_events"] == 3 and stats["refused_total"] == 0
        finally:
            proc.send_signal(signal.SIGCONT)
        assert delivery.get_delivery(app).flush(15)
        with app.app_context():
            events = all_events(get_store())
        assert len(events) == 4
        assert len({e["session_id"] for e in events}) == 1, "the session went on through it"
    finally:
        delivery.close(app)


@pytest.mark.parametrize("store_kind", ["embedded"], indirect=True)
def test_a_frozen_redis_answers_503_when_the_request_waits_for_the_store(
    app_config: dict[str, Any],
    instance_path: Path,
    own_redis: Any,
    site: dict[str, Any],
    tracked: Any,
) -> None:
    proc, uri = own_redis
    app = create_app(
        {**app_config, "SESSIONS_STORAGE_URI": uri, "SESSIONS_STORAGE_TIMEOUT_MS": 200}
    )
    assert tracked("w", app, 0).status_code == 200
    proc.send_signal(signal.SIGSTOP)
    try:
        started = time.monotonic()
        response = tracked("w", app, 1)
        assert response.status_code == 503
        assert response.headers["Retry-After"]
        assert time.monotonic() - started < 2, "bounded by SESSIONS_STORAGE_TIMEOUT_MS"
    finally:
        proc.send_signal(signal.SIGCONT)
    assert tracked("w", app, 2).status_code == 200
    with app.app_context():
        events = all_events(get_store())
    assert [e["pathname"] for e in events] == ["/0", "/2"], "the refused event was not stored"
    assert events[0]["session_id"] == events[1]["session_id"]


@pytest.mark.ack_store
@pytest.mark.parametrize("store_kind", ["mongo"], indirect=True)
def test_one_redis_round_trip_a_shipment(
    app_config: dict[str, Any],
    instance_path: Path,
    own_redis: Any,
    site: dict[str, Any],
    api_key: str,
    tracked: Any,
    stored_events: Any,
) -> None:
    _, uri = own_redis
    app = create_app({**app_config, "SESSIONS_STORAGE_URI": uri, "RATE_LIMIT": "off"})
    assert tracked("first", app).status_code == 200  # the script is loaded once, not counted
    counted = redis.Redis.from_url(uri)
    counted.config_resetstat()
    items = [
        {"site_id": site["site_id"], "api_key": api_key, "user_id": f"v{n % 10}", "pathname": "/"}
        for n in range(30)
    ]
    assert app.test_client().post("/api/track/batch", json=items).get_json()["accepted"] == 30
    stats = counted.info("commandstats")
    sent = {name: int(stat["calls"]) for name, stat in stats.items() if "info" not in name}
    assert sent["cmdstat_evalsha"] == 1, "ten visitors, thirty events: one call"
    assert "cmdstat_get" not in sent and "cmdstat_eval" not in sent
    sessions = {e["user_id"]: e["session_id"] for e in stored_events()[1:]}
    assert len(sessions) == len(set(sessions.values())) == 10


@pytest.mark.parametrize("store_kind", ["embedded"], indirect=True)
def test_a_refusing_redis_answers_503_and_says_why(
    app_config: dict[str, Any],
    instance_path: Path,
    own_redis: Any,
    tracked: Any,
    stored_events: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    _, uri = own_redis
    app = create_app({**app_config, "SESSIONS_STORAGE_URI": uri})
    control = redis.Redis.from_url(uri)
    control.config_set("maxmemory", 1)  # every write refused: OOM
    try:
        assert tracked("m", app, 0).status_code == 503
    finally:
        control.config_set("maxmemory", 0)
    # (the start-up line, INFO, is captured too when an earlier test left the level there)
    said = [
        r for r in caplog.records if r.name == "rybbit.session_state" and r.levelno > logging.INFO
    ]
    assert [r.levelname for r in said] == ["ERROR"] and "maxmemory" in said[0].getMessage()
    assert stored_events() == []
    assert tracked("m", app, 1).status_code == 200


@pytest.mark.ack_store
def test_a_key_of_another_type_is_replaced_not_fatal(
    app_config: dict[str, Any],
    instance_path: Path,
    redis_server: str,
    site: dict[str, Any],
    tracked: Any,
    stored_events: Any,
) -> None:
    forget_redis_sessions(redis_server)
    app = create_app({**app_config, "SESSIONS_STORAGE_URI": redis_server})
    client = redis.Redis.from_url(redis_server)
    name = f"{KEY_PREFIX}{site['site_id']}:odd"
    client.set(name, "not a hash")
    assert tracked("odd", app).status_code == 200
    (event,) = stored_events()
    assert client.hget(name, "sid") == event["session_id"].encode()


@pytest.mark.parametrize(
    "uri",
    [
        "redis://127.0.0.1:1/0",
        "rediss://:secret@127.0.0.1:1/3",
        "redis+unix:///nonexistent.sock",
        "redis+sentinel://127.0.0.1:1,127.0.0.1:2/mymaster",
    ],
)
def test_start_up_contacts_no_redis_and_bounds_every_call(instance_path: Path, uri: str) -> None:
    app = create_app(
        {"LOAD_PLUGINS": [], "SESSIONS_STORAGE_URI": uri, "SESSIONS_STORAGE_TIMEOUT_MS": 300}
    )  # nothing listens there: start-up did not try
    options = sessions_enricher(app).redis.client.connection_pool.connection_kwargs
    assert options["socket_timeout"] == options["socket_connect_timeout"] == 0.3
    assert options["retry"].get_retries() == 1  # not redis-py's three, with backoff


def test_new_session_ids_are_uuid4_hex_like_the_stores() -> None:

    ids = new_session_ids(5000)
    assert len(set(ids)) == 5000
    parsed = [uuid.UUID(hex=i) for i in ids]
    assert all(
        u.version == 4 and u.variant == uuid.RFC_4122 and u.hex == i
        for u, i in zip(parsed, ids, strict=True)
    )
    assert new_session_ids(0) == []


def test_gunicorn_workers_sharing_redis_agree_on_sessions(
    tmp_path: Path, mongo_server: str, redis_server: str
) -> None:
    forget_redis_sessions(redis_server)
    database = f"rybbit_test_sessions_e2e_{uuid.uuid4().hex[:8]}"
    try:
        with run_service(
            tmp_path,
            f"{mongo_server}/{database}",
            workers=2,
            RATELIMIT_STORAGE_URI=redis_server,  # sessions follow it there (the default)
            RYBBIT_RATE_LIMIT="1000 per second",
        ) as service:
            site = service.admin("POST", "/sites", {"name": "S", "domain": "s.example"})
            key = service.admin("POST", f"/sites/{site['site_id']}/api-keys", {})

            def send(n: int) -> int:
                body = {
                    "api_key": key["api_key"],
                    "site_id": site["site_id"],
                    "user_id": f"e2e-{n % 5}",
                    "pathname": f"/{n}",
                }
                url = f"{service.base_url}/api/track"
                return requests.post(url, json=body, timeout=10).status_code  # new connection

            with ThreadPoolExecutor(max_workers=8) as pool:
                assert list(pool.map(send, range(60))) == [200] * 60
            assert len(service.worker_pids(200)) == 2, "both workers took events"
            said = {
                r["message"] for r in service.log_records() if r["logger"] == "rybbit.session_state"
            }
            assert said == {"sessions: state in Redis (redis://)"}
            events = pymongo.MongoClient(mongo_server)[database]["events"]
            deadline = time.monotonic() + 20
            while events.count_documents({}) < 60:  # shipped from both workers' spools
                assert time.monotonic() < deadline
                time.sleep(0.2)
            sessions: dict[str, set[str]] = {}
            for event in events.find({}, {"user_id": 1, "session_id": 1}):
                sessions.setdefault(event["user_id"], set()).add(event["session_id"])
        assert sorted(sessions) == [f"e2e-{n}" for n in range(5)]
        assert all(len(ids) == 1 for ids in sessions.values()), sessions
        assert len({ids.pop() for ids in sessions.values()}) == 5
    finally:
        pymongo.MongoClient(mongo_server).drop_database(database)


@pytest.mark.ack_store
def test_salted_user_ids_never_reach_redis(
    app_config: dict[str, Any],
    instance_path: Path,
    redis_server: str,
    site: dict[str, Any],
    tracked: Any,
) -> None:
    from rybbit import sites

    forget_redis_sessions(redis_server)
    app = create_app({**app_config, "SESSIONS_STORAGE_URI": redis_server})
    with app.app_context():
        sites.update_site(get_store(), site["site_id"], {"settings": {"salt_user_ids": True}})
    assert tracked("alice@example.com", app).status_code == 200
    names = redis.Redis.from_url(redis_server).keys(f"{KEY_PREFIX}*")
    assert len(names) == 1 and b"alice" not in names[0]
