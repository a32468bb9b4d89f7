"""The tracking path's per-process cache of site and key documents, and its staleness bound."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from rybbit import create_app, delivery, keys, sites
from rybbit.lookup_cache import LookupCache, lookup_cache
from rybbit.store import get_store
from tests.conftest import ferretdb_process, free_port

TOKEN = "cache-test-admin-token-0123456789abcdef"
CACHE_SECONDS = 0.5


@pytest.fixture
def app_config(app_config: dict[str, Any]) -> dict[str, Any]:
    return {**app_config, "AUTH_CACHE_SECONDS": CACHE_SECONDS, "ADMIN_TOKEN": TOKEN}


def track(client: FlaskClient, site_id: str, api_key: str) -> int:
    response = client.post("/api/track", json={"api_key": api_key, "site_id": site_id})
    return int(response.status_code)


def test_a_change_made_elsewhere_applies_within_the_cache_period(
    app: Flask, client: FlaskClient, site: dict[str, Any]
) -> None:
    with app.app_context():
        key = keys.create_key(get_store(), site["site_id"])
    assert track(client, site["site_id"], key["api_key"]) == 200
    # Revoked by another process (here: straight in the store): this one's cache holds the
    # key document for at most CACHE_SECONDS.
    with app.app_context():
        keys.revoke_key(get_store(), site["site_id"], key["id"])
    revoked_at = time.monotonic()
    while track(client, site["site_id"], key["api_key"]) == 200:
        assert time.monotonic() - revoked_at < CACHE_SECONDS + 0.5
        time.sleep(0.05)
    assert track(client, site["site_id"], key["api_key"]) == 403


def test_new_sites_and_keys_work_at_once(app: Flask, client: FlaskClient) -> None:
    # Misses are not cached: a failed lookup does not hide what is created right after it.
    assert track(client, "999", "rb_" + "a" * 32) == 404
    with app.app_context():
        site = sites.create_site(get_store(), name="New", domain="new.example")
        assert track(client, site["site_id"], "rb_" + "a" * 32) == 403
        key = keys.create_key(get_store(), site["site_id"])
    assert track(client, site["site_id"], key["api_key"]) == 200


def test_changes_through_the_admin_api_apply_at_once_in_this_process(
    client: FlaskClient, site: dict[str, Any]
) -> None:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    key = client.post(
        f"/api/admin/sites/{site['site_id']}/api-keys", json={}, headers=headers
    ).get_json()
    assert track(client, site["site_id"], key["api_key"]) == 200
    client.delete(f"/api/admin/sites/{site['site_id']}/api-keys/{key['id']}", headers=headers)
    assert track(client, site["site_id"], key["api_key"]) == 403


def test_expiry_is_judged_on_each_use_even_when_cached(
    app: Flask, client: FlaskClient, site: dict[str, Any]
) -> None:
    with app.app_context():
        store = get_store()
        old = keys.create_key(store, site["site_id"])
        assert track(client, site["site_id"], old["api_key"]) == 200  # now cached
        keys.rotate_key(store, site["site_id"], old["id"], grace_seconds=0.3)
    assert track(client, site["site_id"], old["api_key"]) == 200  # within the grace period
    time.sleep(0.35)
    # The cached document's expires_at predates the rotation, so only a fresh read knows it;
    # either way the key must stop working once CACHE_SECONDS have passed.
    deadline = time.monotonic() + CACHE_SECONDS + 0.5
    while track(client, site["site_id"], old["api_key"]) == 200:
        assert time.monotonic() < deadline
        time.sleep(0.05)


@pytest.fixture
def outage_app(instance_path: Path, tmp_path: Path) -> Iterator[tuple[Flask, Any]]:
    """An app (ACK=spool) on a FerretDB of its own, which the test may kill."""
    port = free_port()
    with ferretdb_process(tmp_path / "ferretdb", port) as server:
        app = create_app(
            {
                "TESTING": True,
                "MONGO_URI": f"mongodb://127.0.0.1:{port}/outage",
                "LOAD_PLUGINS": [],
                "AUTH_CACHE_SECONDS": CACHE_SECONDS,
                "AUTH_CACHE_STALE_SECONDS": 3,
                "MONGO_TIMEOUT_MS": 300,
                "RATE_LIMIT": "off",
            }
        )
        try:
            yield app, server
        finally:
            delivery.close(app)


def test_while_the_store_is_down_the_last_answers_are_served_for_a_bounded_time(
    outage_app: tuple[Flask, Any],
) -> None:
    app, server = outage_app
    client = app.test_client()
    with app.app_context():
        store = get_store()
        site = sites.create_site(store, name="Outage", domain="outage.example")
        other = sites.create_site(store, name="Never read", domain="unread.example")
        key = keys.create_key(store, site["site_id"])["api_key"]
        unread = keys.create_key(store, other["site_id"])["api_key"]
    unknown = "rb_" + "b" * 32
    assert track(client, site["site_id"], key) == 200
    assert track(client, site["site_id"], unknown) == 403  # a miss, read from the store
    server.kill()
    server.wait(10)
    killed_at = time.monotonic()
    time.sleep(CACHE_SECONDS + 0.1)  # the documents read are no longer fresh
    started = time.monotonic()
    assert track(client, site["site_id"], key) == 200  # the last document: spooled
    assert track(client, site["site_id"], unknown) == 403  # the last "no such key"
    # A site never read has no last answer: 503, at once (no new read within a second of
    # the failed one, so no MongoDB timeout is waited out).
    assert track(client, other["site_id"], unread) == 503
    assert time.monotonic() - started < 2.0
    # Bounded: AUTH_CACHE_STALE_SECONDS (3) past AUTH_CACHE_SECONDS, then 503s.
    while track(client, site["site_id"], key) == 200:
        assert time.monotonic() - killed_at < CACHE_SECONDS + 3 + 2
        time.sleep(0.1)
    assert time.monotonic() - killed_at > 3
    assert track(client, site["site_id"], key) == 503


def test_a_frozen_store_is_waited_on_by_one_request_the_others_get_the_last_answer(
    outage_app: tuple[Flask, Any],
) -> None:
    app, server = outage_app
    # A read stuck on a frozen server can take several times MONGO_TIMEOUT_MS (pymongo's pool
    # and monitor wait in turn): the bound on stale answers is not what this test is about.
    lookup_cache(app).stale_seconds = 60
    lookup_cache(app).patience = 0.05  # the wait for another thread's read, before going on
    with app.app_context():
        store = get_store()
        site = sites.create_site(store, name="Frozen", domain="frozen.example")
        key = keys.create_key(store, site["site_id"])["api_key"]
    assert track(app.test_client(), site["site_id"], key) == 200
    server.send_signal(signal.SIGSTOP)  # reads now hang until MongoDB's timeout
    try:
        time.sleep(CACHE_SECONDS + 0.1)
        results: list[tuple[int, float]] = []

        def one() -> None:
            started = time.monotonic()
            status = track(app.test_client(), site["site_id"], key)
            results.append((status, time.monotonic() - started))

        threads = [threading.Thread(target=one) for _ in range(8)]
        for thread in threads:
            thread.start()
            time.sleep(0.02)  # the first one is reading the site again by now
        for thread in threads:
            thread.join(30)
    finally:
        server.send_signal(signal.SIGCONT)
    assert [status for status, _ in results] == [200] * 8
    # One request waits on the site's read, one on the key's; the others answer as soon as
    # they gave up waiting for those.
    slow = [elapsed for _, elapsed in results if elapsed > 0.25]
    assert len(slow) <= 2, results


def test_a_read_failing_otherwise_than_an_outage_gives_waiters_no_stale_answer() -> None:
    """Only an unreachable store justifies the last known document: when the thread reading
    a key again fails for another reason, the threads that waited on it read for themselves
    (a revoked key must not be served for an hour because of one odd error)."""
    cache = LookupCache(seconds=0.01, stale_seconds=3600)
    assert cache.get("key", lambda: {"revoked": False}) == {"revoked": False}
    time.sleep(0.02)  # expired: the next get reads again
    reading, release = threading.Event(), threading.Event()

    def failing_read() -> Any:
        reading.set()
        release.wait(5)
        raise RuntimeError("not an outage")

    failures: list[BaseException] = []

    def first() -> None:
        try:
            cache.get("key", failing_read)
        except RuntimeError as exc:
            failures.append(exc)

    thread = threading.Thread(target=first)
    thread.start()
    assert reading.wait(5)
    answers: list[Any] = []
    waiter = threading.Thread(target=lambda: answers.append(cache.get("key", lambda: None)))
    waiter.start()
    time.sleep(0.05)  # the waiter is waiting on the first read (patience 0.25 s)
    release.set()
    thread.join(5)
    waiter.join(5)
    assert len(failures) == 1
    assert answers == [None], "the waiter read the store itself: the key is gone"
