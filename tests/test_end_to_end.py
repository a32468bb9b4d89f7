"""Real gunicorn, two workers, real HTTP on a loopback port, on both stores."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.gunicorn_service import Service, run_service

CACHE_SECONDS = 1


def wait_out_the_cache() -> None:
    time.sleep(CACHE_SECONDS + 0.2)


@pytest.fixture
def service(tmp_path: Path, mongo_uri: str | None) -> Iterator[Service]:
    # These tests send bursts with one key; the rate limit has its own end-to-end test.
    # A short lookup cache, so that admin changes reach every worker within a test's patience.
    with run_service(
        tmp_path, mongo_uri, RYBBIT_RATE_LIMIT="off", RYBBIT_AUTH_CACHE_SECONDS=str(CACHE_SECONDS)
    ) as running:
        yield running


@pytest.fixture
def credentials(service: Service) -> tuple[str, str]:
    site = json.loads(
        service.flask("sites", "create", "--name", "API", "--domain", "api.example.com")
    )
    key = json.loads(service.flask("keys", "create", site["site_id"]))
    return site["site_id"], key["api_key"]


def test_concurrent_events_over_http_are_all_stored(
    service: Service, credentials: tuple[str, str]
) -> None:
    site_id, api_key = credentials
    session = requests.Session()

    def send(i: int) -> int:
        body = {"api_key": api_key, "site_id": site_id, "pathname": f"/p/{i}"}
        return session.post(f"{service.base_url}/api/track", json=body, timeout=10).status_code

    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = list(pool.map(send, range(200)))
    assert statuses == [200] * 200
    exported = [
        json.loads(line) for line in service.flask("events", "export", site_id).splitlines()
    ]
    assert sorted(e["pathname"] for e in exported) == sorted(f"/p/{i}" for i in range(200))


def test_reference_curl_examples_verbatim(service: Service, credentials: tuple[str, str]) -> None:
    """The two curl commands from the API reference, with only the base URL, key and site changed."""
    site_id, api_key = credentials
    pageview = """{
"api_key": "rb_your_api_key_here",
"site_id": "123",
"type": "pageview",
"pathname": "/api/users",
"hostname": "api.example.com",
"page_title": "User API Endpoint",
"user_agent": "MyApp/1.0 (Linux; x64)",
"ip_address": "192.168.1.1"
}"""
    custom = """{
"api_key": "rb_your_api_key_here",
"site_id": "123",
"type": "custom_event",
"pathname": "/checkout",
"event_name": "purchase",
"properties": "{\\"amount\\": 99.99, \\"currency\\": \\"USD\\", \\"product_id\\": \\"abc123\\"}"
}"""
    for body in (pageview, custom):
        body = body.replace("rb_your_api_key_here", api_key).replace('"123"', f'"{site_id}"')
        result = subprocess.run(
            [
                "curl",
                "-sS",
                "-X",
                "POST",
                f"{service.base_url}/api/track",
                "-H",
                "Content-Type: application/json",
                "-d",
                body,
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert json.loads(result.stdout) == {"success": True}
    events = [json.loads(line) for line in service.flask("events", "export", site_id).splitlines()]
    assert [e["type"] for e in events] == ["pageview", "custom_event"]
    assert events[0]["user_agent"] == "MyApp/1.0 (Linux; x64)" and "ip_address" not in events[0]
    assert events[1]["properties"] == {"amount": 99.99, "currency": "USD", "product_id": "abc123"}


def test_reference_python_example(
    service: Service, credentials: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reference's Python client, unchanged but for the base URL."""
    site_id, api_key = credentials
    monkeypatch.setenv("RYBBIT_API_KEY", api_key)
    monkeypatch.setenv("RYBBIT_SITE_ID", site_id)

    def track_event(event_data: dict[str, Any]) -> Any:
        response = requests.post(  # noqa: S113 - the reference's code, kept as written
            f"{service.base_url}/api/track",
            headers={"Content-Type": "application/json"},
            json={
                "api_key": os.getenv("RYBBIT_API_KEY"),
                "site_id": os.getenv("RYBBIT_SITE_ID"),
                **event_data,
            },
        )
        return response.json()

    assert track_event(
        {"type": "pageview", "pathname": "/api/users", "hostname": "api.example.com"}
    ) == {"success": True}
    assert track_event(
        {
            "type": "custom_event",
            "pathname": "/checkout",
            "event_name": "purchase",
            "properties": json.dumps({"amount": 99.99, "currency": "USD"}),
        }
    ) == {"success": True}
    events = [json.loads(line) for line in service.flask("events", "export", site_id).splitlines()]
    assert [(e["type"], e["pathname"]) for e in events] == [
        ("pageview", "/api/users"),
        ("custom_event", "/checkout"),
    ]


def test_errors_over_http_are_json(service: Service) -> None:
    response = requests.get(f"{service.base_url}/api/track", timeout=5)
    assert response.status_code == 405 and response.json() == {
        "success": False,
        "error": "Method not allowed",
    }
    response = requests.post(
        f"{service.base_url}/api/track",
        data="x" * (1024 * 1024 + 1),
        headers={"Content-Type": "application/json"},
        timeout=5,
    )
    assert response.status_code == 413 and response.json()["success"] is False


def test_admin_changes_reach_every_worker_within_the_cache_period(service: Service) -> None:
    site = service.admin("POST", "/sites", {"name": "Multi", "domain": "multi.example"})
    key = service.admin("POST", f"/sites/{site['site_id']}/api-keys", {"name": "k"})
    assert [r.status_code for r in service.track_many(key)] == [200] * 40

    service.admin("DELETE", f"/sites/{site['site_id']}/api-keys/{key['id']}")
    wait_out_the_cache()
    revoked = service.track_many(key)
    assert [r.status_code for r in revoked] == [403] * 40
    assert len(service.worker_pids(403)) == 2, "both workers refused the revoked key"

    second = service.admin("POST", f"/sites/{site['site_id']}/api-keys", {})
    rotated = service.admin(
        "POST", f"/sites/{site['site_id']}/api-keys/{second['id']}/rotate", {"grace_seconds": 0}
    )
    wait_out_the_cache()
    assert {r.status_code for r in service.track_many(second)} == {403}
    assert {r.status_code for r in service.track_many(rotated)} == {200}

    service.admin(
        "PATCH", f"/sites/{site['site_id']}", {"settings": {"excluded_ips": ["10.9.0.0/16"]}}
    )
    wait_out_the_cache()
    filtered = service.track_many(rotated, ip_address="10.9.8.7")
    assert {r.json().get("message") for r in filtered} == {"Event not tracked - IP excluded"}
    stored = service.flask("events", "export", site["site_id"]).splitlines()
    assert len(stored) == 80, "only the accepted events were stored"


def test_stats_query_reads_its_own_writes_through_gunicorn(service: Service) -> None:
    """Under gunicorn's workers (gevent by default: the embedded store's query runs in the
    hub's thread pool), over one connection, a key with both scopes sends events and reads
    them back at once."""
    site = json.loads(service.flask("sites", "create", "--name", "S", "--domain", "s.example"))
    key = json.loads(
        service.flask(
            "keys", "create", site["site_id"], "--scope", "ingest", "--scope", "stats:read"
        )
    )["api_key"]
    session = requests.Session()
    for path in ("/a", "/b", "/a"):
        body = {"api_key": key, "site_id": site["site_id"], "pathname": path}
        assert session.post(f"{service.base_url}/api/track", json=body, timeout=10).ok
    query = {
        "site_id": site["site_id"],
        "metrics": ["pageviews", "visits"],
        "date_range": "day",
        "dimensions": ["event:page"],
    }
    response = session.post(
        f"{service.base_url}/api/v2/query",
        json=query,
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    rows = {tuple(r["dimensions"]): r["metrics"] for r in response.json()["results"]}
    assert rows == {("/a",): [2, 1], ("/b",): [1, 1]}
