"""Per-API-key rate limiting: exact counts, the contract's 429, headers, and who pays."""

from __future__ import annotations

import logging
import signal
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient
from limits import parse
from limits.strategies import MovingWindowRateLimiter

from rybbit import create_app, keys, sites
from rybbit.extensions import limiter
from rybbit.ratelimit import LIMIT_SCOPE
from rybbit.store import get_store
from tests.conftest import free_port, redis_process


@pytest.fixture
def app_config(mongo_uri: str | None, rate_limit: str) -> dict[str, Any]:
    return {"TESTING": True, "MONGO_URI": mongo_uri, "RATE_LIMIT": rate_limit}


@pytest.fixture
def rate_limit() -> str:
    return "20 per second"


@pytest.fixture(params=["embedded"])
def store_kind(request: pytest.FixtureRequest) -> str:
    # The limiter does not touch the event store; one store is enough here.
    return str(request.param)


def send(client: FlaskClient, key: str, site_id: str, **fields: Any) -> Any:
    return client.post("/api/track", json={"api_key": key, "site_id": site_id, **fields})


def new_key(app: Flask, site_id: str) -> str:
    with app.app_context():
        return str(keys.create_key(get_store(), site_id)["api_key"])


def test_default_is_twenty_per_second_per_key(
    client: FlaskClient, site: dict[str, Any], api_key: str
) -> None:
    statuses = [send(client, api_key, site["site_id"]).status_code for _ in range(30)]
    assert statuses == [200] * 20 + [429] * 10


def test_429_body_and_headers(client: FlaskClient, site: dict[str, Any], api_key: str) -> None:
    first = send(client, api_key, site["site_id"])
    assert (
        first.headers["X-RateLimit-Limit"] == "20"
        and first.headers["X-RateLimit-Remaining"] == "19"
    )
    assert first.headers["RateLimit-Limit"] == "20" and first.headers["RateLimit-Remaining"] == "19"
    assert 0 <= int(first.headers["RateLimit-Reset"]) <= 1
    for _ in range(19):
        send(client, api_key, site["site_id"])
    limited = send(client, api_key, site["site_id"])
    assert limited.status_code == 429
    assert limited.get_json() == {
        "success": False,
        "error": "Rate limit exceeded. Maximum 20 requests per second per API key.",
    }
    assert (
        limited.headers["X-RateLimit-Remaining"] == "0"
        and limited.headers["RateLimit-Remaining"] == "0"
    )
    assert 0 <= int(limited.headers["Retry-After"]) <= 1


@pytest.mark.parametrize(
    ("rate_limit", "allowed", "message"),
    [
        ("3 per second", 3, "Maximum 3 requests per second per API key."),
        ("5 per 10 seconds", 5, "Maximum 5 requests per 10 seconds per API key."),
        ("2/minute", 2, "Maximum 2 requests per minute per API key."),
    ],
)
def test_configured_limit_sets_the_count_and_the_message(
    client: FlaskClient, site: dict[str, Any], api_key: str, allowed: int, message: str
) -> None:
    responses = [send(client, api_key, site["site_id"]) for _ in range(allowed + 2)]
    assert [r.status_code for r in responses] == [200] * allowed + [429] * 2
    assert responses[-1].get_json()["error"] == f"Rate limit exceeded. {message}"


@pytest.mark.parametrize("rate_limit", ["off", "OFF"])
def test_off_means_no_limit_and_no_headers(
    client: FlaskClient, site: dict[str, Any], api_key: str
) -> None:
    responses = [send(client, api_key, site["site_id"]) for _ in range(60)]
    assert {r.status_code for r in responses} == {200}
    assert "X-RateLimit-Limit" not in responses[-1].headers


def test_keys_have_separate_budgets(
    app: Flask, client: FlaskClient, site: dict[str, Any], api_key: str
) -> None:
    other = new_key(app, site["site_id"])
    for _ in range(20):
        send(client, api_key, site["site_id"])
    assert send(client, api_key, site["site_id"]).status_code == 429
    assert send(client, other, site["site_id"]).status_code == 200


def test_rejected_requests_spend_no_budget(
    client: FlaskClient, site: dict[str, Any], api_key: str
) -> None:
    for _ in range(30):
        assert send(client, api_key, site["site_id"], page_title=5).status_code == 400
        assert send(client, api_key, "999").status_code == 404
        assert send(client, "rb_" + "0" * 32, site["site_id"]).status_code == 403
    statuses = [send(client, api_key, site["site_id"]).status_code for _ in range(21)]
    assert statuses == [200] * 20 + [429]


def test_a_flood_of_bad_keys_does_not_lock_out_a_good_one(
    client: FlaskClient, site: dict[str, Any], api_key: str
) -> None:
    for i in range(100):
        send(client, f"rb_{i:032x}", site["site_id"])
    assert send(client, api_key, site["site_id"]).status_code == 200


def test_admin_routes_are_not_limited(instance_path: Any) -> None:
    app = create_app({"MONGO_URI": None, "ADMIN_TOKEN": "x" * 32, "RATE_LIMIT": "1 per minute"})
    client = app.test_client()
    statuses = {
        client.get("/api/admin/sites", headers={"Authorization": "Bearer " + "x" * 32}).status_code
        for _ in range(5)
    }
    assert statuses == {200}


def test_malformed_limit_fails_at_start_up(instance_path: Any) -> None:
    with pytest.raises(ValueError):
        create_app({"MONGO_URI": None, "RATE_LIMIT": "lots"})


def test_shared_redis_storage_counts_across_apps(instance_path: Any, redis_server: str) -> None:
    """Two apps (as two workers would be) on one Redis share each key's budget."""
    config = {
        "MONGO_URI": None,
        "RATE_LIMIT": "10 per 5 seconds",
        "RATELIMIT_STORAGE_URI": redis_server,
    }
    first = create_app(config)
    with first.app_context():
        site = sites.create_site(get_store(), name="r", domain="r.example")
        key = keys.create_key(get_store(), site["site_id"])["api_key"]
    statuses = [send(first.test_client(), key, site["site_id"]).status_code for _ in range(6)]
    second = create_app(config)
    statuses += [send(second.test_client(), key, site["site_id"]).status_code for _ in range(6)]
    assert statuses == [200] * 10 + [429] * 2


def app_with_keys(config: dict[str, Any], count: int = 1) -> tuple[Flask, str, list[str]]:
    """An app on the embedded store with ``config``, a site, and ``count`` API keys of it."""
    app = create_app({"MONGO_URI": None, **config})
    with app.app_context():
        site = sites.create_site(get_store(), name="r", domain="r.example")
        made = [keys.create_key(get_store(), site["site_id"])["api_key"] for _ in range(count)]
    return app, str(site["site_id"]), made


def limited_by_redis(port: int, rate_limit: str) -> dict[str, Any]:
    return {
        "RATE_LIMIT": rate_limit,
        "RATELIMIT_STORAGE_URI": f"redis://127.0.0.1:{port}",
        "RATE_LIMIT_STORAGE_TIMEOUT_MS": 300,
    }


def until_counted_in_redis(counted: redis.Redis, send_one: Any) -> None:
    """Keep sending until the counts are in Redis again: Flask-Limiter probes a storage it
    found down after 1 s, 2 s, 4 s ..."""
    deadline = time.monotonic() + 15
    while not counted.keys("*"):
        assert time.monotonic() < deadline, "never went back to Redis"
        send_one()
        time.sleep(0.2)


def test_unreachable_limiter_storage_counts_in_memory_and_logs_once(
    instance_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    dead = f"redis://127.0.0.1:{free_port()}"
    app, site_id, (key,) = app_with_keys(
        {"RATE_LIMIT": "2 per minute", "RATELIMIT_STORAGE_URI": dead}
    )
    caplog.set_level(logging.INFO)
    statuses = [send(app.test_client(), key, site_id).status_code for _ in range(5)]
    # The process counts on its own: the limit still holds, and nothing was refused for the
    # outage itself.
    assert statuses == [200, 200, 429, 429, 429]
    outage = [r for r in caplog.records if "storage unreachable" in r.getMessage()]
    assert len(outage) == 1, "one warning for the outage, not one per request"
    assert key not in caplog.text


def test_a_frozen_limiter_storage_costs_one_timeout_then_recovers(
    instance_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()
    with redis_process(port) as redis_proc:
        app, site_id, (key,) = app_with_keys(limited_by_redis(port, "1000 per minute"))
        caplog.set_level(logging.INFO)
        client = app.test_client()
        counted = redis.Redis(port=port, socket_timeout=2)
        assert send(client, key, site_id).status_code == 200
        assert counted.keys("*"), "counted in Redis while it answers"

        redis_proc.send_signal(signal.SIGSTOP)  # frozen: connections hang, nothing refused
        try:
            started = time.monotonic()
            statuses = [send(client, key, site_id).status_code for _ in range(20)]
            took = time.monotonic() - started
        finally:
            redis_proc.send_signal(signal.SIGCONT)
        assert statuses == [200] * 20
        # One timeout for the first request (the limit check; the headers then come from
        # memory), not one or two per request.
        assert took < 2.0, f"20 requests against a frozen Redis took {took:.1f} s"

        counted.flushall()
        until_counted_in_redis(counted, lambda: send(client, key, site_id))
    assert any("recovered" in r.getMessage() for r in caplog.records)


def test_batches_alone_switch_to_memory_and_back(instance_path: Any) -> None:
    # Batch-only traffic: no decorated route is there to notice the outage or the recovery.
    port = free_port()
    with redis_process(port) as redis_proc:
        app, site_id, api_keys = app_with_keys(limited_by_redis(port, "3 per minute"), count=3)
        client = app.test_client()

        def batch() -> list[int | None]:
            items = [{"api_key": k, "site_id": site_id} for k in api_keys]
            body = client.post("/api/track/batch", json=items).get_json()
            return [None if r["success"] else 429 for r in body["results"]]

        counted = redis.Redis(port=port, socket_timeout=2)
        redis_proc.send_signal(signal.SIGSTOP)
        try:
            started = time.monotonic()
            outcomes = [batch() for _ in range(4)]
            took = time.monotonic() - started
        finally:
            redis_proc.send_signal(signal.SIGCONT)
        # One timeout, then memory: three keys in four batches did not wait twelve times.
        assert took < 1.5, f"4 batches against a frozen Redis took {took:.1f} s"
        # Counted in memory, the limit still holds: each key's fourth batch is refused.
        assert outcomes == [[None] * 3] * 3 + [[429] * 3]

        counted.flushall()
        until_counted_in_redis(counted, batch)


# What the scripts run inside Redis (commandstats counts those too); not round trips.
IN_SCRIPTS = {"lindex", "lpush", "ltrim", "expire", "llen"}


def redis_calls(counted: redis.Redis) -> dict[str, int]:
    """Commands clients sent Redis since the last CONFIG RESETSTAT, by name (INFO, CONFIG
    and what ran inside scripts aside)."""
    stats = counted.info("commandstats")
    calls = {name.removeprefix("cmdstat_"): int(stat["calls"]) for name, stat in stats.items()}
    return {
        name: count
        for name, count in calls.items()
        if name not in IN_SCRIPTS and not name.startswith(("info", "config"))
    }


def test_one_redis_round_trip_a_request_headers_included(instance_path: Any) -> None:
    port = free_port()
    with redis_process(port):
        app, site_id, (key, other) = app_with_keys(limited_by_redis(port, "5 per minute"), 2)
        client = app.test_client()
        counted = redis.Redis(port=port, socket_timeout=2)
        send(client, other, site_id)  # the script is loaded once, not counted below
        counted.config_resetstat()
        responses = [send(client, key, site_id) for _ in range(7)]
        assert [r.status_code for r in responses] == [200] * 5 + [429] * 2
        assert [r.headers["X-RateLimit-Remaining"] for r in responses] == list("4321000")
        assert responses[-1].headers["RateLimit-Limit"] == "5"
        assert redis_calls(counted) == {"evalsha": 7}, "one call a request, 200 or 429"

        counted.config_resetstat()
        items = [{"api_key": k, "site_id": site_id} for k in (key, other, key)]
        outcomes = client.post("/api/track/batch", json=items).get_json()["results"]
        assert [r["success"] for r in outcomes] == [False, True, False]
        assert redis_calls(counted) == {"evalsha": 2}, "a batch: one call for each key"


def test_concurrent_hits_share_redis_calls_and_stay_exact(instance_path: Any) -> None:
    """Requests waiting at once in a process go to Redis together, and each is still counted
    exactly once, in order: 40 threads on a key allowed 25 get exactly 25 yeses."""
    from limits.storage import storage_from_string

    from rybbit.limit_window import counter_for

    port = free_port()
    with redis_process(port) as redis_proc:
        counter = counter_for(storage_from_string(f"redis://127.0.0.1:{port}"), "moving-window")
        item, other = parse("25 per minute"), parse("3 per minute")
        counter.hit(other, ("warm-up",))  # loads the script and opens a connection
        counted = redis.Redis(port=port, socket_timeout=2)
        counted.config_resetstat()
        answers: list[tuple[bool, Any]] = []
        # Redis stopped: the first hit's call waits, the other 39 queue up behind it.
        redis_proc.send_signal(signal.SIGSTOP)
        threads = [
            threading.Thread(target=lambda: answers.append(counter.hit(item, ("k", "track"))))
            for _ in range(40)
        ]
        for thread in threads:
            thread.start()
        time.sleep(0.3)
        redis_proc.send_signal(signal.SIGCONT)
        for thread in threads:
            thread.join(timeout=10)
        assert len(answers) == 40
        assert sum(allowed for allowed, _ in answers) == 25
        remaining = sorted(window.remaining for allowed, window in answers if allowed)
        assert remaining == list(range(25)), "each allowed hit saw the window it left"
        assert all(window.remaining == 0 for allowed, window in answers if not allowed)
        calls = redis_calls(counted).get("evalsha", 0)
        assert 2 <= calls <= 3, f"40 concurrent hits took {calls} calls"


def test_limits_counted_by_hand_and_by_limits_share_one_key(
    instance_path: Any, redis_server: str
) -> None:
    """The one-call script keeps limits' own layout: Flask-Limiter's tools (its CLI, a
    worker of an earlier version) see the same counts."""
    app, site_id, (key,) = app_with_keys(
        {"RATE_LIMIT": "4 per minute", "RATELIMIT_STORAGE_URI": redis_server}
    )
    client = app.test_client()
    send(client, key, site_id)
    keys_in_redis = redis.Redis.from_url(redis_server).keys("LIMITS:*/track/4/1/minute")
    assert len(keys_in_redis) == 1, "limits' key name: LIMITS:LIMITER/<key id>/track/4/1/minute"
    key_id = keys_in_redis[0].decode().split("/")[1]
    strategy, item = MovingWindowRateLimiter(limiter.storage), parse("4 per minute")
    assert strategy.get_window_stats(item, key_id, LIMIT_SCOPE).remaining == 3
    assert strategy.hit(item, key_id, LIMIT_SCOPE)  # a hit counted by limits itself...
    response = send(client, key, site_id)
    assert response.headers["X-RateLimit-Remaining"] == "1"  # ...is seen by the script


def test_app_wide_middleware_is_gone_unless_app_wide_limits_are_set(instance_path: Any) -> None:
    plain = create_app({"MONGO_URI": None})
    assert limiter._check_request_limit not in plain.before_request_funcs.get(None, [])

    token = "x" * 32
    app = create_app(
        {"MONGO_URI": None, "ADMIN_TOKEN": token, "RATELIMIT_APPLICATION": "2 per minute"}
    )
    try:
        client = app.test_client()
        statuses = [
            client.get("/api/admin/sites", headers={"Authorization": f"Bearer {token}"})
            for _ in range(3)
        ]
        assert [r.status_code for r in statuses] == [200, 200, 429]
        assert statuses[-1].get_json()["success"] is False
    finally:
        limiter.limit_manager.set_application_limits([])  # the limiter is process-wide


def test_embedded_default_is_a_sqlite_file_in_the_instance_folder(
    client: FlaskClient, app: Flask, site: dict[str, Any], api_key: str
) -> None:
    assert app.config["RATELIMIT_STORAGE_URI"] == "sqlite://" + str(
        Path(app.instance_path) / "ratelimit.sqlite"
    )
    assert send(client, api_key, site["site_id"]).status_code == 200
    assert (Path(app.instance_path) / "ratelimit.sqlite").stat().st_size > 0


def test_a_redis_that_dropped_connections_or_scripts_is_not_an_outage(
    instance_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()
    with redis_process(port):
        app, site_id, (key,) = app_with_keys(limited_by_redis(port, "10 per minute"))
        client = app.test_client()
        counted = redis.Redis(port=port, socket_timeout=2)
        remaining = [send(client, key, site_id).headers["X-RateLimit-Remaining"]]
        counted.client_kill_filter(_type="normal", skipme=True)  # as a restart or idle timeout
        remaining.append(send(client, key, site_id).headers["X-RateLimit-Remaining"])
        counted.script_flush()
        remaining.append(send(client, key, site_id).headers["X-RateLimit-Remaining"])
        assert remaining == ["9", "8", "7"], "every hit counted in Redis, none in memory"
    assert "unreachable" not in caplog.text


def test_a_locked_sqlite_file_costs_one_bounded_wait_then_memory(
    instance_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    app, site_id, (key,) = app_with_keys(
        {"RATE_LIMIT": "2 per minute", "RATE_LIMIT_STORAGE_TIMEOUT_MS": 100}
    )
    client = app.test_client()
    assert send(client, key, site_id).status_code == 200  # counted in the file
    blocker = sqlite3.connect(instance_path / "ratelimit.sqlite", isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")  # another process holding the file's write lock
    try:
        started = time.monotonic()
        statuses = [send(client, key, site_id).status_code for _ in range(4)]
        took = time.monotonic() - started
    finally:
        blocker.execute("ROLLBACK")
    # In memory from the first wait on: the process counts alone, from zero.
    assert statuses == [200, 200, 429, 429]
    assert took < 0.9, f"one 100 ms wait, not one per request (took {took:.2f} s)"
    assert len([r for r in caplog.records if "unreachable" in r.getMessage()]) == 1
